//! The status a user reads, typed: `GET /_supervisor/status`, `/health`, `/metrics`, the
//! dashboard, `dmp-contained status|wait|logs` and the "unavailable" page all read these types.
//!
//! Owner: the control loop (src/supervisor/) is the only writer. After every step it builds a
//! `Status` and publishes it on a `tokio::sync::watch` channel (`Shared::status`); readers take
//! the latest snapshot without a round trip through the loop. Facts that change without a
//! lifecycle event (uptimes, captured line counts, watch trains, output counters) belong to
//! other owners and are filled in at read time by `Status::refresh`.
//! This module may not touch lifecycle state; it only describes it.

mod watch;
pub use watch::WatchState;

use crate::plan::Kind;
use crate::process::ExitInfo;
use crate::progress::Link;
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The last event (`GET /_supervisor/events`) this snapshot includes.
    pub event_seq: u64,
    /// The critical path of the first start (empty until the stack was ready once).
    pub critical_path: Vec<Link>,
    pub supervisor: SupervisorStatus,
    pub entries: Vec<EntryStatus>,
    /// The config reload in progress, else the last one (src/reload.rs).
    pub config_reload: Option<Report>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_s: f64,
    pub state: Overall,
    pub config: std::path::PathBuf,
    pub output: crate::logs::OutputStats,
    #[serde(skip)]
    pub started: Option<Instant>,
}

/// The stack as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    Starting,
    Running,
    /// A required entry failed.
    Degraded,
    Stopping,
}

impl Overall {
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Starting => "starting",
            Overall::Running => "running",
            Overall::Degraded => "degraded",
            Overall::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryStatus {
    /// Its index in the plan (entries removed by a config reload are not shown).
    #[serde(skip)]
    pub idx: usize,
    pub name: String,
    /// From the supervisor's start to first leaving `waiting`.
    pub waited_s: Option<f64>,
    /// From first leaving `waiting` to first ready/done.
    pub duration_s: Option<f64>,
    pub kind: Kind,
    pub state: State,
    pub pid: Option<u32>,
    /// Ready (longrun) or done/cached (oneshot).
    pub ready: bool,
    pub required: bool,
    pub critical: bool,
    /// Unix ms.
    pub started_at: Option<u64>,
    pub ready_at: Option<u64>,
    pub uptime_s: Option<f64>,
    pub time_to_ready_s: Option<f64>,
    pub restarts: u32,
    pub runs: u32,
    pub last_exit: Option<ExitInfo>,
    pub last_probe: Option<ProbeResult>,
    /// Why it is in this state (waiting for, backoff, failed because, ...).
    pub reason: Option<String>,
    /// Dependencies as written (`name`, `name:healthy`, `name:done?`).
    pub after: Vec<String>,
    pub command: Vec<String>,
    /// Declared env, secret-looking values redacted.
    pub env: BTreeMap<String, String>,
    pub log_lines: u64,
    /// Hot-reload state (watched entries and cascade targets).
    pub watch: Option<WatchStatus>,
    pub cache_key: Option<String>,
    /// The last lines logged, for a failed entry.
    pub log_tail: Option<Vec<String>>,
    /// Since the current process started (for `uptime_s`).
    #[serde(skip)]
    pub started: Option<Instant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Unix time in ms when the reload began.
    pub at: u64,
    /// The first files of the train (relative to the watched root), and how many in all.
    pub files: Vec<String>,
    pub count: usize,
    /// Set when the train came from another entry (`restart_with`, a step's dependents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub duration_s: f64,
    pub outcome: TrainOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Entries reloaded after this one (dependents of a step, `restart_with`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cascade: Vec<CascadeRecord>,
    /// The watch actions the train ran, when not a plain restart (src/watch/actions.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// One entry reloaded after a train's own entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CascadeRecord {
    pub name: String,
    pub outcome: TrainOutcome,
    pub error: Option<String>,
}

/// How a train (or one entry of its cascade) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainOutcome {
    /// A longrun is ready again.
    Ready,
    /// A oneshot completed, or the train's actions (no restart) succeeded.
    Done,
    Failed,
}

impl TrainOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainOutcome::Ready => "ready",
            TrainOutcome::Done => "done",
            TrainOutcome::Failed => "failed",
        }
    }
}

/// What watches an entry's tree (`watch.mode` in status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatcherMode {
    /// inotify.
    Native,
    /// Our own scanner (`mode = "poll"`, or `auto`'s fallback).
    Poll,
    /// Watching could not be set up (or stopped); `note` says why.
    Error,
}

impl WatcherMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatcherMode::Native => "native",
            WatcherMode::Poll => "poll",
            WatcherMode::Error => "error",
        }
    }
}

/// The `watch` field of an entry's status (src/status/watch.rs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchStatus {
    pub watched: bool,
    /// None until the watcher is set up.
    pub mode: Option<WatcherMode>,
    /// Why `auto` ended up polling, or why watching failed.
    pub note: Option<String>,
    pub paused: bool,
    /// Changed files waiting for the next train.
    pub pending: usize,
    pub reloading: bool,
    pub reloads: u64,
    /// Why this entry still runs older code (its step failed).
    pub held: Option<String>,
    pub trains: Vec<TrainRecord>,
}

// Config reload (src/reload.rs applies it; these are what status shows).

/// What asked for the reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `dmp-contained reload` / `POST /_supervisor/reload`.
    Api,
    Sighup,
    /// `[supervisor] watch_config`: the table was saved.
    Watch,
}

/// How a reload ended (or that it is still going).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Stopping and starting.
    Applying,
    Applied,
    /// Applied, but an entry it started failed.
    Failed,
    /// The table is invalid: nothing changed.
    Invalid,
    /// Not attempted (shutting down, another reload running): nothing changed.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applying => "applying",
            Outcome::Applied => "applied",
            Outcome::Failed => "failed",
            Outcome::Invalid => "invalid",
            Outcome::Refused => "refused",
        }
    }
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Sighup => "sighup",
            Trigger::Watch => "watch",
        }
    }
}

/// The last reload, as status shows it (`config_reload`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Unix milliseconds.
    pub at: u64,
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Re-rendered templates whose output changed (destination paths).
    pub templates: Vec<String>,
    /// Entries that took in a re-rendered file: `name: signal SIGHUP` / `name: restart` /
    /// `name: its watcher`.
    pub template_actions: Vec<String>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    /// Unix milliseconds when it settled (every started entry ready/done or failed).
    pub finished_at: Option<u64>,
}

impl Report {
    pub fn new(trigger: Trigger) -> Report {
        Report {
            at: crate::logs::now_ms(),
            trigger,
            outcome: Outcome::Applying,
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            unchanged: Vec::new(),
            templates: Vec::new(),
            template_actions: Vec::new(),
            errors: Vec::new(),
            notes: Vec::new(),
            finished_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    pub error: Option<String>,
    /// Unix ms.
    pub at: u64,
}

/// A required entry that keeps the stack from being healthy (`GET /health`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotReady {
    pub name: String,
    pub state: State,
    pub reason: Option<String>,
}

/// `GET /health`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<NotReady>,
}

impl EntryStatus {
    /// The names of its dependencies (`after` holds them as `name:cond` with `?` if optional).
    pub fn dependency_names(&self) -> impl Iterator<Item = &str> {
        self.after
            .iter()
            .filter_map(|d| d.split(':').next())
            .map(|d| d.trim_end_matches('?'))
    }

    /// The reason; for a failed entry, with the last line it logged (unless the reason has it).
    pub fn reason_with_last_line(&self) -> String {
        let reason = self.reason.clone().unwrap_or_default();
        let last = self
            .log_tail
            .iter()
            .flatten()
            .rev()
            .find(|l| !l.trim().is_empty());
        match last {
            Some(l) if self.state == State::Failed && !reason.contains(l.trim()) => {
                format!("{reason}; last log line: {}", l.trim())
            }
            _ => reason,
        }
    }
}

impl Status {
    pub fn entry(&self, name: &str) -> Option<&EntryStatus> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Fills in what changes between lifecycle events, from the owners of those facts: the
    /// entries' logs and watchers (indexed like the plan) and the output queue.
    pub fn refresh(
        &mut self,
        logs: &[std::sync::Arc<crate::logs::EntryLog>],
        watch: impl Fn(usize) -> Option<WatchStatus>,
        output: crate::logs::OutputStats,
    ) {
        if let Some(t) = self.supervisor.started {
            self.supervisor.uptime_s = t.elapsed().as_secs_f64();
        }
        self.supervisor.output = output;
        for e in &mut self.entries {
            let i = e.idx;
            e.uptime_s = e
                .state
                .is_active()
                .then(|| e.started.map(|t| t.elapsed().as_secs_f64()))
                .flatten();
            if let Some(log) = logs.get(i) {
                e.log_lines = log.total_lines();
            }
            e.watch = watch(i);
        }
    }

    /// Replaces each entry's secret values wherever the snapshot could show them: declared
    /// env, command, reason, probe error. `secrets[name]` are that entry's values
    /// (`crate::redact::secret_values`).
    pub fn scrub(&mut self, secrets: &std::collections::HashMap<String, Vec<String>>) {
        for e in &mut self.entries {
            let Some(secrets) = secrets.get(&e.name) else {
                continue;
            };
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let scrub = |s: &mut String| *s = crate::redact::scrub(s, &secrets);
            e.env.values_mut().for_each(scrub);
            e.command.iter_mut().for_each(scrub);
            e.reason.iter_mut().for_each(scrub);
            if let Some(p) = e.last_probe.as_mut() {
                p.error.iter_mut().for_each(scrub);
            }
        }
    }

    /// Required entries that are not ready/done (skipped and off entries count as fine).
    pub fn not_ready(&self) -> Vec<NotReady> {
        self.entries
            .iter()
            .filter(|e| e.required && !e.state.is_healthy())
            .map(|e| NotReady {
                name: e.name.clone(),
                state: e.state,
                reason: e.reason.clone(),
            })
            .collect()
    }

    pub fn health(&self) -> Health {
        let not_ready = self.not_ready();
        Health {
            healthy: not_ready.is_empty(),
            not_ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: State, reason: &str, tail: Option<&[&str]>) -> EntryStatus {
        EntryStatus {
            idx: 0,
            name: "app".into(),
            waited_s: None,
            duration_s: None,
            kind: Kind::Longrun,
            state,
            pid: None,
            ready: false,
            required: true,
            critical: false,
            started_at: None,
            ready_at: None,
            uptime_s: None,
            time_to_ready_s: None,
            restarts: 0,
            runs: 0,
            last_exit: None,
            last_probe: None,
            reason: Some(reason.into()),
            after: vec![],
            command: vec![],
            env: BTreeMap::new(),
            log_lines: 0,
            watch: None,
            cache_key: None,
            log_tail: tail.map(|t| t.iter().map(|l| l.to_string()).collect()),
            started: None,
        }
    }

    #[test]
    fn reason_has_the_last_log_line_once() {
        let e = entry(
            State::Failed,
            "crash loop",
            Some(&["a", "ImportError: no module x", ""]),
        );
        assert_eq!(
            e.reason_with_last_line(),
            "crash loop; last log line: ImportError: no module x"
        );
        let e = entry(
            State::Failed,
            "failed: ImportError: no module x",
            Some(&["ImportError: no module x"]),
        );
        assert_eq!(
            e.reason_with_last_line(),
            "failed: ImportError: no module x"
        );
        let e = entry(State::Backoff, "restarting in 1s", Some(&["boom"]));
        assert_eq!(e.reason_with_last_line(), "restarting in 1s");
    }

    #[test]
    fn health_counts_required_entries_only() {
        let mut failed = entry(State::Failed, "x", None);
        let mut st = Status {
            event_seq: 0,
            critical_path: vec![],
            supervisor: SupervisorStatus {
                version: "0".into(),
                pid: 1,
                uptime_s: 0.0,
                state: Overall::Degraded,
                config: "t.toml".into(),
                output: Default::default(),
                started: None,
            },
            entries: vec![
                entry(State::Ready, "", None),
                entry(State::Skipped, "", None),
            ],
            config_reload: None,
        };
        assert!(st.health().healthy);
        failed.required = false;
        st.entries.push(failed.clone());
        assert!(st.health().healthy);
        failed.required = true;
        st.entries.push(failed);
        let h = st.health();
        assert!(!h.healthy);
        assert_eq!(h.not_ready.len(), 1);
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["not_ready"][0]["state"], "failed");
        let ok = serde_json::to_value(Status::health(&Status {
            entries: vec![],
            ..st.clone()
        }))
        .unwrap();
        assert_eq!(ok, serde_json::json!({"healthy": true}));
    }

    #[test]
    fn exit_signal_round_trips_by_name() {
        let x = ExitInfo {
            code: None,
            signal: Some(nix::sys::signal::Signal::SIGKILL),
            at: 5,
        };
        let v = serde_json::to_value(&x).unwrap();
        assert_eq!(v["signal"], "SIGKILL");
        assert_eq!(x.as_code(), 137);
        let back: ExitInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, x);
    }

    /// The watch field as docs/WATCH.md shows it: outcomes and modes are the same strings as
    /// when they were strings, and read back as the same values.
    #[test]
    fn watch_status_json_is_the_documented_text() {
        let train = |outcome, cascade| TrainRecord {
            at: 1,
            files: vec!["app.py".into()],
            count: 1,
            via: None,
            duration_s: 0.5,
            outcome,
            error: None,
            log_tail: vec![],
            cascade,
            action: None,
        };
        let w = WatchStatus {
            watched: true,
            mode: Some(WatcherMode::Poll),
            note: None,
            paused: false,
            pending: 0,
            reloading: false,
            reloads: 2,
            held: None,
            trains: vec![
                train(TrainOutcome::Done, vec![]),
                train(
                    TrainOutcome::Ready,
                    vec![CascadeRecord {
                        name: "web".into(),
                        outcome: TrainOutcome::Failed,
                        error: Some("x".into()),
                    }],
                ),
            ],
        };
        let text = serde_json::to_string(&w).unwrap();
        let t = r#"{"at":1,"files":["app.py"],"count":1,"duration_s":0.5,"outcome":"#;
        assert_eq!(
            text,
            format!(
                r#"{{"watched":true,"mode":"poll","note":null,"paused":false,"pending":0,"reloading":false,"reloads":2,"held":null,"trains":[{t}"done"}},{t}"ready","cascade":[{{"name":"web","outcome":"failed","error":"x"}}]}}]}}"#
            )
        );
        let back: WatchStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(back.mode, Some(WatcherMode::Poll));
        assert_eq!(back.trains[1].cascade[0].outcome, TrainOutcome::Failed);
        for (m, s) in [
            (WatcherMode::Native, "native"),
            (WatcherMode::Poll, "poll"),
            (WatcherMode::Error, "error"),
        ] {
            assert_eq!(serde_json::to_value(m).unwrap(), s);
            assert_eq!(m.as_str(), s);
        }
        for (o, s) in [
            (TrainOutcome::Ready, "ready"),
            (TrainOutcome::Done, "done"),
            (TrainOutcome::Failed, "failed"),
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), s);
            assert_eq!(o.as_str(), s);
        }
    }
}
