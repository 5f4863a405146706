//! What both exports share: which entries become services, what each waits for, its volumes,
//! and what cannot be carried over faithfully (the notes `export` prints).

use super::rewrite::Rewriter;
use crate::plan::{Cond, Kind, Plan, Probe};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a service waits for one of its dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Started,
    Healthy,
    Completed,
}

#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub idx: usize,
    pub name: String,
    pub kind: Kind,
    /// Direct dependencies, by service name.
    pub deps: Vec<(String, Wait)>,
    pub ports: Vec<u16>,
    pub volumes: Vec<Volume>,
    /// The entry's stop timeout plus a margin for the supervisor itself.
    pub stop_grace: Duration,
    pub ready: Option<Probe>,
    pub liveness: Option<Probe>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    /// The table's path inside the image.
    pub config: String,
    /// The table's directory where `export` runs (canonical), for [`Model::image_path`].
    pub host_dir: PathBuf,
}

#[derive(Debug)]
pub struct Model {
    pub services: Vec<Service>,
    /// Named volumes in first-use order.
    pub volumes: Vec<String>,
    /// Everything that is not exported faithfully, one line each.
    pub notes: Vec<String>,
    pub opts: Options,
}

pub const CACHE_VOLUME: &str = "cache";

impl Model {
    pub fn build(plan: &Plan, opts: Options) -> Model {
        let mut notes = Vec::new();
        // A skipped entry skips what depends on it (the supervisor's rule): both are left out.
        let mut out = vec![false; plan.entries.len()];
        for &i in plan.levels.iter().flatten() {
            let e = &plan.entries[i];
            if let Some(why) = &e.skip {
                out[i] = true;
                notes.push(format!("{}: left out: {why}", e.name));
            } else if let Some(d) = e.after.iter().find(|d| out[d.idx]) {
                out[i] = true;
                notes.push(format!("{}: left out: depends on {}", e.name, d.name));
            }
        }
        let mut volumes = vec![CACHE_VOLUME.to_string()];
        let mut services = Vec::new();
        for &i in plan.levels.iter().flatten() {
            if out[i] {
                continue;
            }
            let e = &plan.entries[i];
            let deps = e
                .after
                .iter()
                .map(|d| {
                    let wait = match (plan.entries[d.idx].kind, d.cond) {
                        (Kind::Oneshot, _) => Wait::Completed,
                        (Kind::Longrun, Cond::Started) => Wait::Started,
                        (Kind::Longrun, _) => Wait::Healthy,
                    };
                    (d.name.clone(), wait)
                })
                .collect();
            let mut vols = vec![Volume {
                name: CACHE_VOLUME.into(),
                path: plan.settings.cache_dir.clone(),
            }];
            // A data directory belongs to its service and to the steps that prepare it.
            let mut owners = vec![i];
            if e.kind == Kind::Oneshot {
                owners.extend(
                    plan.dependents(i)
                        .filter(|&o| plan.entries[o].kind == Kind::Longrun),
                );
            }
            for o in owners {
                if let Some(dir) = &plan.entries[o].data_dir {
                    let name = format!("{}-data", plan.entries[o].name);
                    if !volumes.contains(&name) {
                        volumes.push(name.clone());
                    }
                    vols.push(Volume {
                        name,
                        path: dir.clone(),
                    });
                }
            }
            services.push(Service {
                idx: i,
                name: e.name.clone(),
                kind: e.kind,
                deps,
                ports: e.ports.clone(),
                volumes: vols,
                stop_grace: e.stop_timeout + Duration::from_secs(2),
                ready: e.ready.clone(),
                liveness: e.liveness.clone(),
            });
            notes.extend(entry_notes(plan, i));
        }
        Model {
            services,
            volumes,
            notes,
            opts,
        }
    }

    /// The container's command: the same table, only this entry, its dependencies elsewhere.
    pub fn args(&self, s: &Service) -> Vec<String> {
        vec![
            "up".into(),
            "--config".into(),
            self.opts.config.clone(),
            "--as-service".into(),
            s.name.clone(),
        ]
    }

    /// Where a file of the checkout is inside the image: paths under the table's directory, or
    /// its parent, keep their place relative to the table; others stay as they are.
    pub fn image_path(&self, host: &Path) -> PathBuf {
        let img_dir = Path::new(&self.opts.config)
            .parent()
            .unwrap_or(Path::new("/"));
        let dir = &self.opts.host_dir;
        let host = &host.canonicalize().unwrap_or(host.to_path_buf());
        if let Ok(rel) = host.strip_prefix(dir) {
            return img_dir.join(rel);
        }
        match (dir.parent(), img_dir.parent()) {
            (Some(d), Some(i)) if d != Path::new("/") => match host.strip_prefix(d) {
                Ok(rel) => i.join(rel),
                Err(_) => host.to_path_buf(),
            },
            _ => host.to_path_buf(),
        }
    }

    pub fn health_cmd(&self) -> Vec<String> {
        vec![
            "dmp-contained".into(),
            "--config".into(),
            self.opts.config.clone(),
            "health".into(),
        ]
    }
}

/// What one entry loses in a container of its own.
fn entry_notes(plan: &Plan, i: usize) -> Vec<String> {
    let e = &plan.entries[i];
    let mut notes = Vec::new();
    if !is_dns_label(&e.name) {
        notes.push(format!(
            "{}: not a DNS name: other services cannot reach it by name",
            e.name
        ));
    }
    if e.kind == Kind::Longrun && plan.dependents(i).next().is_some() {
        if let Some(arg) = loopback_listen(&e.command) {
            notes.push(format!(
                "{}: listens on loopback only (`{arg}`): the services that depend on it cannot reach it from their containers",
                e.name
            ));
        }
    }
    if e.watch.is_some() {
        notes.push(format!(
            "{}: hot reload (`watch`) only sees the image's copy of the code: bind-mount the code into this service to keep it (compose: `--mount`)",
            e.name
        ));
    }
    if let Some(s) = e.cache.as_ref().and_then(|c| c.snapshot.as_ref()) {
        notes.push(format!(
            "{}: data snapshots (`snapshot = \"{s}\"`) are not exported: {s} runs in another container, so the step runs every time",
            e.name
        ));
    }
    for &r in &e.restart_with {
        notes.push(format!(
            "{}: `restart_with` {} does not cross containers",
            e.name, plan.entries[r].name
        ));
    }
    let rw = Rewriter::for_entry(plan, i);
    let mut seen = Vec::new();
    let mut check = |what: String, text: &str| {
        for addr in rw.unresolved(&rw.apply(text)) {
            if !seen.contains(&(what.clone(), addr.clone())) {
                notes.push(format!(
                    "{}: cannot rewrite `{addr}` ({what}): no dependency of {} listens there, so inside its own container it reaches nothing",
                    e.name, e.name
                ));
                seen.push((what.clone(), addr));
            }
        }
    };
    // Variables of the global env_file are every entry's: only the ones the entry declares
    // itself are attributed to it.
    for (k, v) in &e.declared_env {
        if plan.vars.get(k) != Some(v) {
            check(format!("env {k}"), v);
        }
    }
    check("command".into(), &e.command.join(" "));
    for t in &plan.templates {
        if !e
            .command
            .iter()
            .any(|a| a.contains(&*t.dest.to_string_lossy()))
        {
            continue;
        }
        if let Ok(src) = std::fs::read_to_string(&t.src) {
            let text = crate::interp::expand(&src, &|n| plan.vars.get(n).cloned()).unwrap_or(src);
            let name = t.src.file_name().unwrap_or_default().to_string_lossy();
            check(format!("template {name}"), &text);
        }
    }
    notes
}

/// A listen-address flag set to loopback in a command line (`--host 127.0.0.1`, `--bind …`,
/// `listen_addresses=…`).
fn loopback_listen(argv: &[String]) -> Option<String> {
    static LISTEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(--host|--bind|--listen|listen_addresses)(\s+|=)'?(127\.0\.0\.1|localhost)\b",
        )
        .unwrap()
    });
    LISTEN.find(&argv.join(" ")).map(|m| m.as_str().to_string())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
