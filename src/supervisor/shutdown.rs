//! Signals and the end: every catchable signal has a deliberate effect, a stop runs in reverse
//! dependency order within the shutdown budget, and the init shim's stop plan is kept current
//! should this process be killed.

use super::{Supervisor, SIGNAL_REPEAT_WINDOW};
use crate::plan::Plan;
use crate::runner::RunnerCmd;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

impl Supervisor {
    /// Every catchable signal has a deliberate effect (README "Signals").
    pub(super) fn on_any_signal(&mut self, sig: i32) {
        let name = signal_name(sig);
        match sig {
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => self.on_signal(&name),
            libc::SIGHUP => {
                tracing::info!("SIGHUP: reloading the process table");
                let (reply, _) = oneshot::channel();
                self.config_reload(crate::reload::Trigger::Sighup, reply);
            }
            libc::SIGUSR1 => {
                tracing::info!("SIGUSR1: nothing to reopen (service output goes to stdout and the in-memory log ring)")
            }
            libc::SIGUSR2 => eprint!("{}", self.status_text()),
            libc::SIGWINCH | libc::SIGURG | libc::SIGCONT => {
                tracing::debug!("{name} ignored")
            }
            _ => tracing::warn!("{name} ignored"),
        }
    }

    /// One line per entry (SIGUSR2).
    pub(super) fn status_text(&self) -> String {
        let mut s = format!(
            "dmp-contained status (SIGUSR2): {}\n",
            self.overall().as_str()
        );
        for i in self.live() {
            let pid = self.rt[i].pid.map(|p| p.to_string()).unwrap_or("-".into());
            s += &format!(
                "  {:<24} {:<9} pid {:<8} restarts {}\n",
                self.entry(i).name,
                self.state(i).to_string(),
                pid,
                self.rt[i].restarts
            );
        }
        s
    }

    /// Keeps the init shim's stop plan current (src/pid1.rs `StopPlan`): what to stop, with
    /// which signal, in which order, should this process be killed.
    pub(super) fn write_stop_plan(&mut self) {
        let Some(path) = &self.stop_plan else {
            return;
        };
        let entries = self
            .stop_order()
            .into_iter()
            .filter_map(|i| {
                let e = self.entry(i);
                Some(crate::pid1::PlannedStop {
                    signal: e.stop_signal,
                    timeout: e.stop_timeout,
                    pgid: self.rt[i].pid?,
                    marker: crate::process::marker(&e.name),
                })
            })
            .collect();
        let text = crate::pid1::StopPlan {
            budget: self.plan.settings.shutdown_timeout,
            entries,
        }
        .render();
        if text != self.stop_plan_written {
            if let Err(e) = crate::cache::replace(path, text.as_bytes()) {
                tracing::warn!("cannot write the stop plan {}: {e}", path.display());
            }
            self.stop_plan_written = text;
        }
    }

    /// Dependents before their dependencies (the reverse of a topological order).
    pub(super) fn stop_order(&self) -> Vec<usize> {
        fn visit(p: &Plan, i: usize, seen: &mut Vec<bool>, out: &mut Vec<usize>) {
            if std::mem::replace(&mut seen[i], true) {
                return;
            }
            for d in &p.entries[i].after {
                visit(p, d.idx, seen, out);
            }
            out.push(i);
        }
        let mut seen = vec![false; self.rt.len()];
        let mut out = Vec::new();
        for i in self.live() {
            visit(&self.plan, i, &mut seen, &mut out);
        }
        out.reverse();
        out
    }

    pub(super) fn on_signal(&mut self, name: &str) {
        if let Some(at) = self.stop_requested_at {
            // One keypress or `docker stop` can arrive twice (directly and through the init
            // shim, or via a process-group kill): repeats within the window are the same request.
            if at.elapsed() < SIGNAL_REPEAT_WINDOW {
                tracing::info!("{name} repeated within {SIGNAL_REPEAT_WINDOW:?}: already stopping");
                return;
            }
        }
        self.stop_requested_at.get_or_insert_with(Instant::now);
        if self.stopping.is_some() {
            tracing::warn!("second {name}: killing every process group now");
            for r in &self.runners {
                let _ = r.send(RunnerCmd::Kill);
            }
        } else {
            tracing::info!("{name} received: stopping in reverse dependency order");
            self.begin_shutdown(None);
        }
    }

    pub(super) fn begin_shutdown(&mut self, code: Option<i32>) {
        if self.stopping.is_none() {
            // Everything is killed a little before the budget ends, so that draining, exiting
            // and the init shim's sweep still fit in it (`docker stop` allows 10 s).
            let budget = self.plan.settings.shutdown_timeout;
            let reserve = (budget / 5).min(Duration::from_secs(1));
            let deadline = tokio::time::Instant::now() + budget - reserve;
            self.stopping = Some(deadline);
            if code.is_some() {
                self.exit_code = code;
            }
            // The budget is a named timer: when it runs out, everything is killed.
            let runners = self.runners.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                for r in &runners {
                    let _ = r.send(RunnerCmd::Kill);
                }
            });
        }
    }
}

/// Every catchable signal but CHLD (tokio's reaping), PIPE (ignored: writes fail with
/// EPIPE instead) and the fault signals ILL, FPE, SEGV, BUS (a handler would loop on a real
/// fault), as one stream of signal numbers.
pub(super) fn listen_signals() -> mpsc::UnboundedReceiver<i32> {
    let (tx, rx) = mpsc::unbounded_channel();
    let skip = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGCHLD,
        libc::SIGPIPE,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGSEGV,
        libc::SIGBUS,
    ];
    let sigs = (1..32).chain(libc::SIGRTMIN()..=libc::SIGRTMAX());
    for sig in sigs.filter(|s| !skip.contains(s)) {
        match signal(SignalKind::from_raw(sig)) {
            Ok(mut stream) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() && tx.send(sig).is_ok() {}
                });
            }
            Err(e) => tracing::warn!("cannot handle {}: {e}", signal_name(sig)),
        }
    }
    rx
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("SIGRTMIN+{}", sig - libc::SIGRTMIN()),
    }
}
