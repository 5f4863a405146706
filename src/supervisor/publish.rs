//! What users read, built from the loop's state after every step: the `Status` snapshot on the
//! watch channel (src/status). Reads `Rt`; writes only the channel.

use super::Supervisor;
use crate::state::State;
use crate::status::{EntryStatus, Overall, Status};
use std::sync::Arc;

impl Supervisor {
    /// The stack as a whole (removed entries do not count).
    pub(super) fn overall(&self) -> Overall {
        let live = self.live();
        if self.stopping.is_some() {
            Overall::Stopping
        } else if live
            .iter()
            .any(|&i| self.state(i) == State::Failed && !self.entry(i).optional)
        {
            Overall::Degraded
        } else if live
            .iter()
            .all(|&i| self.state(i).is_healthy() || self.entry(i).optional)
        {
            Overall::Running
        } else {
            Overall::Starting
        }
    }

    /// Publishes the status of this moment (readers fill in the live fields).
    pub(super) fn publish(&self) {
        let mut st = Status::clone(&self.status.borrow());
        st.event_seq = self.progress.seq;
        st.critical_path = self.critical_path_status();
        st.supervisor.state = self.overall();
        st.entries = self
            .live()
            .into_iter()
            .map(|i| self.entry_status(i))
            .collect();
        st.config_reload = self.reload_status();
        self.status.send_replace(Arc::new(st));
    }

    pub(super) fn entry_status(&self, i: usize) -> EntryStatus {
        let e = self.entry(i);
        let r = &self.rt[i];
        let s = self.state(i);
        let env = e
            .declared_env
            .iter()
            .map(|(k, v)| {
                let shown = if crate::interp::is_secret(k) {
                    "<redacted>".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect();
        let (waited_s, duration_s) = self.span_status(i);
        EntryStatus {
            idx: i,
            name: e.name.clone(),
            waited_s,
            duration_s,
            kind: e.kind,
            state: s,
            pid: r.pid,
            ready: s.satisfies(crate::plan::Cond::Ready) || s.satisfies(crate::plan::Cond::Done),
            required: !e.optional,
            critical: e.critical,
            started_at: r.started_at,
            ready_at: r.ready_at,
            uptime_s: None,
            time_to_ready_s: r.time_to_ready.map(|d| d.as_secs_f64()),
            restarts: r.restarts,
            runs: r.runs,
            last_exit: r.last_exit.clone(),
            last_probe: r.last_probe.clone(),
            reason: r.reason.clone().or_else(|| self.waiting_for(i)),
            after: e.after.iter().map(|d| d.label()).collect(),
            command: e.command.clone(),
            env,
            log_lines: 0,
            watch: None,
            cache_key: self.cache.key(i),
            log_tail: (s == State::Failed).then(|| {
                self.logs[i]
                    .tail(20)
                    .iter()
                    .map(|l| l.text.clone())
                    .collect()
            }),
            started: r.started,
        }
    }

    /// For a waiting entry: which dependencies it still waits for, and where they are.
    pub(super) fn waiting_for(&self, i: usize) -> Option<String> {
        if self.state(i) != State::Waiting {
            return None;
        }
        let missing: Vec<String> = self
            .entry(i)
            .after
            .iter()
            .filter(|d| !d.satisfied_by(self.state(d.idx)))
            .map(|d| {
                let now = self.state(d.idx).to_string();
                format!("{} (now {now})", d.label())
            })
            .collect();
        (!missing.is_empty()).then(|| format!("waiting for {}", missing.join(", ")))
    }
}

/// The status before the loop's first step.
pub(super) fn first_status(plan: &crate::plan::Plan, started: std::time::Instant) -> Status {
    Status {
        event_seq: 0,
        critical_path: Vec::new(),
        supervisor: crate::status::SupervisorStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s: 0.0,
            state: Overall::Starting,
            config: plan.file.clone(),
            output: Default::default(),
            started: Some(started),
        },
        entries: Vec::new(),
        config_reload: None,
    }
}
