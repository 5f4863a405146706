//! The validated, immutable plan the supervisor runs (output of `config::load`).

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Longrun,
    Oneshot,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Longrun => "longrun",
            Kind::Oneshot => "oneshot",
        }
    }
}

/// What a dependent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cond {
    Started,
    Ready,
    Done,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dep {
    pub idx: usize,
    pub name: String,
    pub cond: Cond,
    /// `after = ["name:cond?"]`: a skipped dependency counts as satisfied (and does not skip
    /// this entry); a name absent from the table is no edge at all.
    pub optional: bool,
}

impl Dep {
    /// `name:cond`, with `?` when optional.
    pub fn label(&self) -> String {
        let q = if self.optional { "?" } else { "" };
        format!("{}:{}{q}", self.name, cond_name(self.cond))
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Tcp(String),
    Http {
        url: String,
        status: Option<u16>,
        body: Option<String>,
    },
    Exec(Vec<String>),
    Postgres(String),
    Redis(String),
    /// Readiness only: a line of the entry's output matching this regex (src/notify.rs).
    Log(String),
    /// Readiness only: `READY=1` on `NOTIFY_SOCKET` (src/notify.rs); with a watchdog
    /// interval, `WATCHDOG=1` must then come at least that often.
    Notify(#[serde(with = "opt_secs")] Option<Duration>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub kind: ProbeKind,
    #[serde(with = "secs")]
    pub interval: Duration,
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "secs")]
    pub start_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub policy: Policy,
    #[serde(with = "secs")]
    pub backoff: Duration,
    #[serde(with = "secs")]
    pub backoff_max: Duration,
    pub max_restarts: u32,
    #[serde(with = "secs")]
    pub window: Duration,
    #[serde(with = "secs")]
    pub stable_after: Duration,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            policy: Policy::Always,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    Auto,
    Native,
    Poll,
}

#[derive(Debug, Clone, Serialize)]
pub struct Watch {
    pub paths: Vec<PathBuf>,
    pub ignore: Vec<String>,
    #[serde(with = "secs")]
    pub debounce: Duration,
    pub mode: WatchMode,
    #[serde(with = "secs")]
    pub poll_interval: Duration,
    /// What a change does when no rule of `on` matches its file (src/watch/actions.rs).
    pub action: WatchAction,
    /// Per path group: the first rule whose globs match a changed file decides its action.
    pub on: Vec<WatchRule>,
}

/// What a watched change does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchAction {
    /// Stop and start the entry (waits until it is ready again).
    Restart,
    /// Send this signal to the entry's main process (nginx: SIGHUP re-reads its config).
    Signal(#[serde(serialize_with = "signal_name")] Signal),
    /// Run this command in the entry's context (user, cwd, environment); no restart.
    Exec(Vec<String>),
    /// Re-run this step (its index and name), then reload what depends on it.
    Run(usize, String),
    /// Nothing (the app re-reads these files itself).
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchRule {
    pub files: Vec<String>,
    pub action: WatchAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cache {
    pub inputs: Vec<String>,
    pub outputs: Vec<PathBuf>,
    pub key_extra: Vec<String>,
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub command: Vec<String>,
    pub cwd: PathBuf,
    /// The full environment the entry starts with (inherited + env files + `env`).
    #[serde(skip)]
    pub env: Vec<(String, String)>,
    /// Only the variables the table declares (for status, redacted, and for cache keys).
    pub declared_env: Vec<(String, String)>,
    pub user: Option<User>,
    pub after: Vec<Dep>,
    pub ports: Vec<u16>,
    /// Sockets the supervisor binds once and passes to every process (src/sockets.rs).
    pub listen: Vec<std::net::SocketAddr>,
    #[serde(serialize_with = "signal_name")]
    pub stop_signal: Signal,
    #[serde(with = "secs")]
    pub stop_timeout: Duration,
    pub critical: bool,
    pub optional: bool,
    /// Why the entry will not run (when_exists missing), decided at load time.
    pub skip: Option<String>,
    pub ready: Option<Probe>,
    pub liveness: Option<Probe>,
    pub restart: Restart,
    pub watch: Option<Watch>,
    pub cache: Option<Cache>,
    pub schedule: Option<String>,
    /// Longrun: the directory holding the service's data (snapshotted by `cache.snapshot`).
    pub data_dir: Option<PathBuf>,
    pub restart_with: Vec<usize>,
    /// Step: killed and `failed` ("timed out after N s") when it runs longer.
    #[serde(with = "opt_secs")]
    pub timeout: Option<Duration>,
    /// Step: how often a "still running" note goes to its log (None: never).
    #[serde(with = "opt_secs")]
    pub progress: Option<Duration>,
    /// Its profiles (none: always on).
    pub profiles: Vec<String>,
    /// In profiles none of which is active: `off` until `dmp-contained start NAME`.
    pub off: bool,
    /// Removed by a config reload (src/reload.rs): a tombstone that keeps the indices of the
    /// entries after it stable; not addressable, not shown, never started.
    #[serde(skip)]
    pub removed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Template {
    pub src: PathBuf,
    pub dest: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub api_listen: String,
    pub socket: PathBuf,
    pub token_env: String,
    pub cache_dir: PathBuf,
    #[serde(with = "secs")]
    pub shutdown_timeout: Duration,
    pub log_lines: usize,
    /// Per-entry log files with rotation (src/logfile.rs); none when unset.
    pub log_dir: Option<PathBuf>,
    pub log_max_size: u64,
    pub log_max_files: usize,
    /// Reload the table when it is saved (src/reload.rs).
    pub watch_config: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub file: PathBuf,
    pub settings: Settings,
    pub templates: Vec<Template>,
    /// Variables of the interpolation environment (for template rendering).
    #[serde(skip)]
    pub vars: std::collections::BTreeMap<String, String>,
    pub entries: Vec<Entry>,
    /// Entry indices grouped by start level.
    pub levels: Vec<Vec<usize>>,
}

impl Plan {
    /// Entries reloaded after `idx` reloads successfully: the longruns after a oneshot, and every
    /// entry naming `idx` in `restart_with`.
    /// Transitive: what follows a target follows too (all of them reload together).
    pub fn cascade_targets(&self, idx: usize) -> Vec<usize> {
        let plan = self;
        let direct = |x: usize| {
            let mut v: Vec<usize> = Vec::new();
            if plan.entries[x].kind == Kind::Oneshot {
                v.extend(
                    plan.dependents(x)
                        .filter(|&d| plan.entries[d].kind == Kind::Longrun),
                );
            }
            v.extend(
                (0..plan.entries.len()).filter(|&i| plan.entries[i].restart_with.contains(&x)),
            );
            v
        };
        let mut out: Vec<usize> = Vec::new();
        let mut stack = direct(idx);
        while let Some(t) = stack.pop() {
            if t != idx && !out.contains(&t) {
                out.push(t);
                stack.extend(direct(t));
            }
        }
        out.sort_unstable();
        out
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.name == name && !e.removed)
    }

    /// Indices of the entries that are not tombstones (src/reload.rs).
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.entries.len()).filter(|&i| !self.entries[i].removed)
    }

    /// Entries that list `idx` in their `after`.
    pub fn dependents(&self, idx: usize) -> impl Iterator<Item = usize> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.after.iter().any(|d| d.idx == idx))
            .map(|(i, _)| i)
    }

    /// Keeps only `only` (plus their transitive dependencies) when non-empty, then removes
    /// `without`. A removed dependency counts as satisfied: the developer runs it elsewhere.
    pub fn select(mut self, only: &[String], without: &[String]) -> Result<Plan, String> {
        for n in only.iter().chain(without) {
            if self.index(n).is_none() {
                return Err(format!("unknown entry `{n}` (known: {})", self.names()));
            }
        }
        let mut keep = vec![only.is_empty(); self.entries.len()];
        let mut stack: Vec<usize> = only.iter().filter_map(|n| self.index(n)).collect();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(self.entries[i].after.iter().map(|d| d.idx));
            }
        }
        for n in without {
            keep[self.index(n).unwrap()] = false;
        }
        let mut new_idx = vec![usize::MAX; self.entries.len()];
        let mut k = 0;
        for (i, slot) in new_idx.iter_mut().enumerate() {
            if keep[i] {
                *slot = k;
                k += 1;
            }
        }
        let old = std::mem::take(&mut self.entries);
        for (i, mut e) in old.into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            e.after.retain(|d| keep[d.idx]);
            for d in &mut e.after {
                d.idx = new_idx[d.idx];
            }
            e.restart_with = e
                .restart_with
                .iter()
                .filter(|&&r| keep[r])
                .map(|&r| new_idx[r])
                .collect();
            self.entries.push(e);
        }
        let deps: Vec<Vec<usize>> = self
            .entries
            .iter()
            .map(|e| e.after.iter().map(|d| d.idx).collect())
            .collect();
        self.levels = crate::graph::levels(&deps).expect("subset of a DAG is a DAG");
        Ok(self)
    }

    pub fn names(&self) -> String {
        self.entries
            .iter()
            .filter(|e| !e.removed)
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Human-readable start plan by levels (`dmp-contained check`).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}: {} entries, {} levels\n",
            self.file.display(),
            self.entries.len(),
            self.levels.len()
        );
        for (l, nodes) in self.levels.iter().enumerate() {
            s.push_str(&format!("level {l}:\n"));
            for &i in nodes {
                let e = &self.entries[i];
                let kind = match e.kind {
                    Kind::Longrun => "longrun",
                    Kind::Oneshot => "oneshot",
                };
                let after: Vec<String> = e.after.iter().map(|d| d.label()).collect();
                s.push_str(&format!("  {:<28} {kind}", e.name));
                if !after.is_empty() {
                    s.push_str(&format!("  after {}", after.join(", ")));
                }
                if let Some(why) = &e.skip {
                    s.push_str(&format!("  [skipped: {why}]"));
                }
                s.push('\n');
            }
        }
        s
    }
}

pub fn cond_name(c: Cond) -> &'static str {
    match c {
        Cond::Started => "started",
        Cond::Ready => "ready",
        Cond::Done => "done",
    }
}

fn signal_name<S: serde::Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

mod secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod opt_secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
