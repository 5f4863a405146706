//! One entry, section by section: `RawEntry` → `Entry`, with no I/O (users, files and the
//! working directory are resolved afterwards by `os`). Each section reports its errors at its
//! own key through `EntryCx`.

use super::errors::{closest, join, Errors, KeyPath, Seg};
use super::os::{self, Pending};
use super::raw::{RawCommand, RawEntry, RawPort, RawRestart};
use super::{interp, Cx};
use crate::plan::*;
use std::time::Duration;

/// An entry as declared: its name and kind, where it is, and its raw keys (a bad key left out).
pub(super) struct Decl {
    pub name: String,
    pub kind: Kind,
    pub at: KeyPath,
    pub raw: RawEntry,
    /// Keys left out because their value was bad (already reported).
    pub dropped: Vec<KeyPath>,
}

impl Decl {
    /// Whether a key at or under `key` was left out (or the whole entry was).
    pub fn dropped(&self, key: &str) -> bool {
        self.dropped
            .iter()
            .any(|p| p.is_empty() || p[0] == Seg::Key(key.into()))
    }

    pub fn section(&self) -> &'static str {
        section(self.kind)
    }
}

pub(super) fn section(kind: Kind) -> &'static str {
    match kind {
        Kind::Longrun => "process",
        Kind::Oneshot => "step",
    }
}

/// Every declared entry by name, for dependencies and references.
pub(super) struct Names<'a> {
    pub decls: &'a [Decl],
    pub list: Vec<&'a str>,
}

impl<'a> Names<'a> {
    pub fn new(decls: &'a [Decl]) -> Self {
        let list = decls.iter().map(|d| d.name.as_str()).collect();
        Names { decls, list }
    }

    pub fn index(&self, n: &str) -> Option<usize> {
        self.list.iter().position(|m| *m == n)
    }
}

/// The entry being resolved: its name and place, the interpolation variables, the errors.
pub(super) struct EntryCx<'c, 'e> {
    pub kind: Kind,
    /// "`name`", the prefix of most messages.
    pub ctx: String,
    pub at: &'c KeyPath,
    pub cx: &'c Cx<'c>,
    pub errs: &'c mut Errors<'e>,
}

impl EntryCx<'_, '_> {
    /// An error at `key` (a path under the entry).
    pub fn err(&mut self, key: &[&str], msg: impl Into<String>) {
        self.errs.at_key(&join(self.at, key), msg);
    }

    /// An error at `key` under `rel` (a path under the entry that may hold array indices).
    pub fn err_in(&mut self, rel: &[Seg], key: &str, msg: impl Into<String>) {
        let mut path = self.at.clone();
        path.extend(rel.iter().cloned());
        path.push(Seg::Key(key.to_string()));
        self.errs.at_key(&path, msg);
    }

    /// `s` with `${…}` expanded; an unset variable is an error at `key`.
    pub fn expand(&mut self, key: &[&str], s: &str) -> String {
        match interp::expand(s, &|n| self.cx.vars.get(n).cloned()) {
            Ok(v) => v,
            Err(e) => {
                self.err(key, e);
                s.to_string()
            }
        }
    }

    pub fn duration(&mut self, key: &[&str], v: &Option<String>, default: Duration) -> Duration {
        super::duration(self.errs, &join(self.at, key), v, default)
    }
}

/// The entry with every section resolved, and what the `os` stage has left to do.
pub(super) fn resolve(d: &Decl, names: &Names, cx: &Cx, errs: &mut Errors) -> (Entry, Pending) {
    let r = &d.raw;
    let mut e = EntryCx {
        kind: d.kind,
        ctx: format!("`{}`", d.name),
        at: &d.at,
        cx,
        errs,
    };
    kind_only_keys(r, &mut e);
    let pending = os::pending(r, &mut e);
    let cwd = match &r.cwd {
        Some(c) => os::resolve(cx.base, &e.expand(&["cwd"], c)),
        None => cx.base.to_path_buf(),
    };
    // A probe with a bad key left out is not checked further (it was reported).
    let mut probe = |key: &str, p| match d.dropped(key) {
        true => None,
        false => super::probe::probe(&mut e, key, p),
    };
    let (ready, liveness) = (probe("ready", &r.ready), probe("liveness", &r.liveness));
    let listen = super::probe::listen(&mut e, &r.listen);
    super::probe::held(
        &mut e,
        &listen,
        [("ready", &ready), ("liveness", &liveness)],
    );
    let timing = (
        e.duration(&["timeout"], &r.timeout, RawEntry::TIMEOUT),
        e.duration(&["progress"], &r.progress, RawEntry::PROGRESS),
    );
    let some = |d: Duration| Some(d).filter(|d| !d.is_zero());
    let (timeout, progress) = match d.kind {
        Kind::Longrun => (None, None),
        Kind::Oneshot => (some(timing.0), some(timing.1)),
    };
    let entry = Entry {
        name: d.name.clone(),
        kind: d.kind,
        command: command(r, d, &mut e),
        after: after(r, names, &mut e),
        ports: ports(r, &mut e),
        listen,
        stop_signal: stop_signal(r, &mut e),
        stop_timeout: e.duration(&["stop_timeout"], &r.stop_timeout, RawEntry::STOP_TIMEOUT),
        critical: r.critical,
        optional: r.optional,
        ready,
        liveness,
        restart: restart(r.restart.as_ref(), &mut e),
        watch: r
            .watch
            .as_ref()
            .map(|w| super::watch::watch(w, names, &mut e)),
        cache: r
            .cache
            .as_ref()
            .map(|c| super::watch::cache(c, names, &mut e)),
        schedule: r.schedule.clone(),
        data_dir: r
            .data_dir
            .as_ref()
            .map(|p| e.expand(&["data_dir"], p).into()),
        restart_with: restart_with(r, names, &mut e),
        timeout,
        progress,
        off: !r.profiles.is_empty() && !r.profiles.iter().any(|p| cx.profiles.contains(p)),
        profiles: r.profiles.clone(),
        removed: false,
        // Filled in by the `os` stage.
        cwd,
        env: Vec::new(),
        declared_env: Vec::new(),
        user: None,
        skip: None,
    };
    (entry, pending)
}

/// Keys that apply to one kind of entry only, with the message for the other kind.
fn kind_only_keys(r: &RawEntry, e: &mut EntryCx) {
    let longrun_only = [
        ("restart", r.restart.is_some()),
        ("data_dir", r.data_dir.is_some()),
        ("listen", !r.listen.is_empty()),
    ];
    let oneshot_only = [
        ("cache", r.cache.is_some()),
        ("schedule", r.schedule.is_some()),
        ("timeout", r.timeout.is_some()),
        ("progress", r.progress.is_some()),
    ];
    let (wrong, own) = match e.kind {
        Kind::Longrun => (&oneshot_only[..], "step"),
        Kind::Oneshot => (&longrun_only[..], "process"),
    };
    for (key, present) in wrong {
        if *present {
            let msg = format!("{}: `{key}` applies to [{own}] entries only", e.ctx);
            e.err(&[key], msg);
        }
    }
    if e.kind == Kind::Oneshot && (r.ready.is_some() || r.liveness.is_some()) {
        let key = if r.ready.is_some() {
            "ready"
        } else {
            "liveness"
        };
        let msg = format!(
            "{}: probes apply to [process] entries only; a oneshot is done when it exits 0",
            e.ctx
        );
        e.err(&[key], msg);
    }
    if let (Kind::Oneshot, Some(s)) = (e.kind, &r.schedule) {
        if let Err(err) = croner::Cron::new(s).parse() {
            let msg = format!("{}: bad cron expression {s:?}: {err}", e.ctx);
            e.err(&["schedule"], msg);
        }
    }
}

fn command(r: &RawEntry, d: &Decl, e: &mut EntryCx) -> Vec<String> {
    let command: Vec<String> = match &r.command {
        // Missing: said here; bad: said where its value was read (`dropped`).
        None => {
            if !d.dropped("command") {
                let msg = format!("[{}.{}]: missing field `command`", d.section(), d.name);
                e.err(&[], msg);
            }
            return Vec::new();
        }
        Some(RawCommand::Shell(s)) => {
            vec!["/bin/sh".into(), "-c".into(), e.expand(&["command"], s)]
        }
        Some(RawCommand::Argv(v)) => v.iter().map(|a| e.expand(&["command"], a)).collect(),
    };
    if command.is_empty() || command[0].is_empty() {
        let msg = format!("{}: `command` is empty", e.ctx);
        e.err(&["command"], msg);
    }
    command
}

fn after(r: &RawEntry, names: &Names, e: &mut EntryCx) -> Vec<Dep> {
    let mut after = Vec::new();
    for a in &r.after {
        let (a, optional) = match a.strip_suffix('?') {
            Some(a) => (a, true),
            None => (a.as_str(), false),
        };
        let (dn, cond) = match a.rsplit_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (a, None),
        };
        let Some(di) = names.index(dn) else {
            // An optional dependency that is not in the table is no edge.
            if !optional {
                let hint = closest(dn, &names.list)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                let msg = format!("{}: unknown dependency `{dn}`{hint}", e.ctx);
                e.err(&["after"], msg);
            }
            continue;
        };
        let dkind = names.decls[di].kind;
        let cond = match (cond, dkind) {
            (None | Some("ready"), Kind::Longrun) => Cond::Ready,
            (Some("started"), Kind::Longrun) => Cond::Started,
            (None | Some("done"), Kind::Oneshot) => Cond::Done,
            (Some(c), _) => {
                let ok = match dkind {
                    Kind::Longrun => "`ready` or `started` (it is a longrun)",
                    Kind::Oneshot => "`done` (it is a oneshot)",
                };
                let msg = format!(
                    "{}: bad condition `{a}`: `{dn}` can be awaited as {ok}, not `{c}`",
                    e.ctx
                );
                e.err(&["after"], msg);
                continue;
            }
        };
        after.push(Dep {
            idx: di,
            name: dn.to_string(),
            cond,
            optional,
        });
    }
    after
}

fn ports(r: &RawEntry, e: &mut EntryCx) -> Vec<u16> {
    let mut ports = Vec::new();
    for p in &r.ports {
        let bad = match p {
            RawPort::Number(n) => match u16::try_from(*n) {
                Ok(n) => {
                    ports.push(n);
                    continue;
                }
                Err(_) => format!("invalid value {n} for a port:"),
            },
            RawPort::Text(t) => {
                let v = e.expand(&["ports"], t);
                match v.trim().parse::<u16>() {
                    Ok(n) => {
                        ports.push(n);
                        continue;
                    }
                    Err(_) => format!("port {t:?} is {v:?},"),
                }
            }
        };
        let msg = format!("{}: {bad} not a port number (0-65535)", e.ctx);
        e.err(&["ports"], msg);
    }
    ports
}

fn stop_signal(r: &RawEntry, e: &mut EntryCx) -> nix::sys::signal::Signal {
    let Some(s) = &r.stop_signal else {
        return RawEntry::STOP_SIGNAL;
    };
    parse_signal(s).unwrap_or_else(|| {
        let msg = format!(
            "{}: unknown signal `{s}` (e.g. \"SIGTERM\", \"INT\", \"SIGQUIT\")",
            e.ctx
        );
        e.err(&["stop_signal"], msg);
        RawEntry::STOP_SIGNAL
    })
}

fn restart(rr: Option<&RawRestart>, e: &mut EntryCx) -> Restart {
    let mut restart = Restart::default();
    let Some(rr) = rr else { return restart };
    if let Some(p) = &rr.policy {
        restart.policy = match p.as_str() {
            "always" => Policy::Always,
            "on-failure" => Policy::OnFailure,
            "never" => Policy::Never,
            _ => {
                let msg = format!(
                    "{}: unknown restart policy `{p}` (always, on-failure, never)",
                    e.ctx
                );
                e.err(&["restart", "policy"], msg);
                Policy::Always
            }
        }
    }
    let mut dur = |k: &str, v: &Option<String>, d: Duration| e.duration(&["restart", k], v, d);
    restart.backoff = dur("backoff", &rr.backoff, restart.backoff);
    restart.backoff_max = dur("backoff_max", &rr.backoff_max, restart.backoff_max);
    restart.window = dur("window", &rr.window, restart.window);
    restart.stable_after = dur("stable_after", &rr.stable_after, restart.stable_after);
    restart.max_restarts = rr.max_restarts.unwrap_or(restart.max_restarts);
    restart
}

fn restart_with(r: &RawEntry, names: &Names, e: &mut EntryCx) -> Vec<usize> {
    let mut out = Vec::new();
    for n in &r.restart_with {
        match names.index(n) {
            Some(i) => out.push(i),
            None => {
                let msg = format!("{}: restart_with names unknown entry `{n}`", e.ctx);
                e.err(&["restart_with"], msg);
            }
        }
    }
    out
}

pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse().ok()
}
