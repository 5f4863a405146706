//! What a runner watches while its process runs: readiness (a probe, sd_notify or a log
//! line), liveness (a probe or the sd_notify watchdog), and a long step's progress notes.
//! Results go back to the runner; it may not touch the process or lifecycle state.

use super::Runner;
use crate::logs::{EntryLog, Output};
use crate::plan::{Entry, Kind, ProbeKind};
use std::time::Duration;
use tokio::time::Instant;

/// A longrun's readiness (at once without a probe); a oneshot is never "ready" (it is done).
pub(super) async fn ready(
    entry: &Entry,
    log_rx: Option<crate::notify::LogRx>,
    notify: &Option<crate::notify::Notify>,
    log: &EntryLog,
    out: &Output,
    report: impl Fn(&Result<(), String>),
) -> Result<(), String> {
    match (&entry.ready, entry.kind == Kind::Longrun) {
        (Some(p), true) => match (&p.kind, log_rx, notify) {
            (ProbeKind::Log(re), Some(rx), _) => {
                crate::notify::wait_log(rx, re, p.start_period).await
            }
            (ProbeKind::Notify(_), _, Some(n)) => n.ready(p.start_period, log, out).await,
            _ => crate::probe::wait_ready(p, Some(entry), report).await,
        },
        (None, true) => Ok(()),
        (_, false) => std::future::pending().await,
    }
}

/// A longrun's liveness failure (the sd_notify watchdog, or its liveness probe); never
/// without one.
pub(super) async fn liveness(
    entry: &Entry,
    watchdog: Option<Duration>,
    notify: &Option<crate::notify::Notify>,
    report: impl Fn(&Result<(), String>),
) -> String {
    if let (Some(d), Some(n)) = (watchdog, notify) {
        return n.watchdog(d).await;
    }
    match &entry.liveness {
        Some(p) if entry.kind == Kind::Longrun => {
            crate::probe::watch_liveness(p, Some(entry), report).await
        }
        _ => std::future::pending().await,
    }
}

/// The next tick of an optional interval (never, without one).
pub(super) async fn tick(i: Option<&mut tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Runner {
    /// A step still running after `progress`: say for how long, and what it printed last.
    pub(super) fn note_progress(&self, started: Instant) {
        let secs = started.elapsed().as_secs();
        let last = self
            .log
            .tail(50)
            .into_iter()
            .rev()
            .find(|l| !l.text.starts_with("[dmp-contained]"));
        let what = match last {
            Some(l) => {
                let ago = crate::logs::now_ms().saturating_sub(l.ts) / 1000;
                let text: String = l.text.chars().take(160).collect();
                format!("last output {ago} s ago: {text}")
            }
            None => format!("no output yet from `{}`", self.entry.command.join(" ")),
        };
        self.log.note(
            &self.out,
            format!("[dmp-contained] still running after {secs} s; {what}"),
        );
    }
}
