//! Transitions of one entry: `set` (the only place a state changes), starting and stopping its
//! runner, and what an exit means (restart after a backoff, done, failed). Everything here
//! writes `Rt` and nothing else writes it.

use super::{facts, Effect, Gate, Internal, Supervisor};
use crate::control::Refused;
use crate::plan::Kind;
use crate::process::ExitInfo;
use crate::runner::{Cause, Event, EventKind, RunnerCmd};
use crate::state::{Decision, State};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

impl Supervisor {
    pub(super) fn set(&mut self, i: usize, to: State) {
        let from = self.state(i);
        if from == to {
            return;
        }
        debug_assert!(
            crate::state::allowed(from, to),
            "{}: {from:?} -> {to:?}",
            self.entry(i).name
        );
        if !crate::state::allowed(from, to) {
            tracing::error!(
                "{}: unexpected transition {from:?} -> {to:?}",
                self.entry(i).name
            );
        }
        self.rt[i].state = Some(to);
        // Held sockets close when no process is coming (a reload passes through Stopped with
        // a restart due: its backlog must survive).
        let no_process_coming =
            to == State::Failed || (to == State::Stopped && !self.rt[i].restart_after_stop);
        if no_process_coming && !self.entry(i).listen.is_empty() {
            let _ = self.runners[i].send(RunnerCmd::Release);
        }
        self.resolve_reloads(i, to);
        self.on_transition(i, from, to);
        if to == State::Ready && std::mem::take(&mut self.rt[i].crashed) {
            self.restart_followers(i);
        }
    }

    /// `restart_with` applies to every restart: after `i` restarted by itself (a crash), the
    /// entries naming it restart too, as after a reload of it.
    pub(super) fn restart_followers(&mut self, i: usize) {
        for t in self.plan.cascade_targets(i) {
            tracing::info!(
                "{}: restarting with `{}` (it restarted after exiting)",
                self.entry(t).name,
                self.entry(i).name
            );
            let (reply, _) = oneshot::channel();
            self.reload(t, 0, reply);
        }
    }

    pub(super) fn start(&mut self, i: usize) {
        let rt = &mut self.rt[i];
        rt.gen += 1;
        rt.reason = None;
        rt.pid = None;
        rt.started = Some(Instant::now());
        rt.started_at = Some(crate::logs::now_ms());
        rt.ready_at = None;
        rt.time_to_ready = None;
        rt.runs += 1;
        let to = match self.entry(i).kind {
            Kind::Longrun => State::Starting,
            Kind::Oneshot => State::Running,
        };
        self.set(i, to);
        match self.cache.gate_start(&facts!(self), i) {
            Gate::Open => {
                let _ = self.runners[i].send(RunnerCmd::Start);
            }
            Gate::Deferred(why) => self.rt[i].reason = Some(why),
        }
    }

    /// Stops entry `i` within its own `stop_timeout`, and within the shutdown budget when the
    /// supervisor is stopping.
    pub(super) fn stop_entry(&mut self, i: usize) {
        let s = self.state(i);
        self.rt[i].gen += 1;
        if s == State::Backoff {
            self.set(i, State::Stopped);
            return;
        }
        self.set(i, State::Stopping);
        let e = self.entry(i);
        let own = tokio::time::Instant::now() + e.stop_timeout;
        let deadline = self.stopping.map_or(own, |budget| own.min(budget));
        let _ = self.runners[i].send(RunnerCmd::Stop { deadline });
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        let i = ev.idx;
        let name = self.entry(i).name.clone();
        match ev.kind {
            EventKind::Spawned { pid } => {
                self.rt[i].pid = Some(pid);
                tracing::info!("{name}: started (pid {pid})");
            }
            EventKind::Probe(r) => {
                self.rt[i].last_probe = Some(crate::status::ProbeResult {
                    ok: r.is_ok(),
                    error: r.err(),
                    at: crate::logs::now_ms(),
                });
            }
            EventKind::Ready => {
                if self.state(i) == State::Starting {
                    let t = self.rt[i].started.map(|s| s.elapsed()).unwrap_or_default();
                    self.rt[i].time_to_ready = Some(t);
                    self.rt[i].ready_at = Some(crate::logs::now_ms());
                    self.set(i, State::Ready);
                    tracing::info!("{name}: ready after {:.3}s", t.as_secs_f64());
                }
            }
            EventKind::SpawnFailed(msg) => {
                tracing::error!("{name}: {msg}");
                self.logs[i].note(&self.out, format!("[dmp-contained] {msg}"));
                self.rt[i].reason = Some(msg.clone());
                let exit = ExitInfo {
                    code: Some(127),
                    signal: None,
                    at: crate::logs::now_ms(),
                };
                self.after_exit(i, exit, Some(msg));
            }
            EventKind::Lost { reason, cmds } => self.on_lost(i, reason, cmds),
            EventKind::StopDone => {
                if self.state(i) == State::Stopping {
                    self.set(i, State::Stopped);
                    self.rt[i].pid = None;
                }
                if std::mem::take(&mut self.rt[i].restart_after_stop) && self.stopping.is_none() {
                    self.rt[i].user_stopped = false;
                    self.rt[i].restarts += 1;
                    self.set(i, State::Waiting);
                }
            }
            EventKind::Exited { exit, cause } => self.on_exited(i, exit, cause),
        }
    }

    /// Its runner died (a panic): the runner was replaced, its processes killed.
    fn on_lost(&mut self, i: usize, reason: String, cmds: mpsc::UnboundedSender<RunnerCmd>) {
        let name = self.entry(i).name.clone();
        self.runners[i] = cmds;
        self.rt[i].pid = None;
        tracing::error!("{name}: {reason}; its processes were killed");
        self.logs[i].note(&self.out, format!("[dmp-contained] {reason}"));
        match self.state(i) {
            State::Stopping => self.on_event(Event {
                idx: i,
                kind: EventKind::StopDone,
            }),
            State::Starting | State::Ready | State::Running => {
                let exit = ExitInfo {
                    code: None,
                    signal: None,
                    at: crate::logs::now_ms(),
                };
                self.after_exit(i, exit, Some(reason));
            }
            _ => {}
        }
    }

    /// Its process exited: stopped by us, by itself, or by a failed probe.
    fn on_exited(&mut self, i: usize, exit: ExitInfo, cause: Cause) {
        let name = self.entry(i).name.clone();
        self.rt[i].pid = None;
        let what = exit.describe();
        match &cause {
            Cause::Stopped => {
                tracing::info!("{name}: stopped ({what})");
                self.rt[i].last_exit = Some(exit);
                // StopDone (next on the same channel) completes the transition.
            }
            Cause::Own => {
                if self.entry(i).kind == Kind::Longrun || !exit.success() {
                    tracing::warn!("{name}: exited with {what}");
                } else {
                    tracing::info!("{name}: done");
                }
                self.after_exit(i, exit, None);
            }
            Cause::Probe(reason) => {
                tracing::warn!("{name}: {reason}; process stopped ({what})");
                self.logs[i].note(&self.out, format!("[dmp-contained] {reason}"));
                self.after_exit(i, exit, Some(reason.clone()));
            }
        }
    }

    /// An entry's process ended on its own (or never started): decide what comes next.
    pub(super) fn after_exit(&mut self, i: usize, exit: ExitInfo, reason: Option<String>) {
        let kind = self.entry(i).kind;
        let success = exit.success() && reason.is_none();
        let code = exit.as_code();
        self.rt[i].last_exit = Some(exit.clone());
        if self.stopping.is_some() || self.state(i) == State::Stopping {
            self.set(i, State::Stopped);
            return;
        }
        if kind == Kind::Oneshot {
            if success {
                if let Gate::Deferred(why) = self.cache.gate_done(&facts!(self), i) {
                    self.rt[i].reason = Some(why);
                    return;
                }
                self.set(i, State::Done);
                self.resolve_waiters(i, Ok(format!("{} done", self.entry(i).name)));
            } else {
                let why = reason.unwrap_or_else(|| format!("failed with {}", exit.describe()));
                self.fail(i, why, code);
            }
            return;
        }
        let uptime = self.rt[i].started.map(|s| s.elapsed()).unwrap_or_default();
        let policy = self.entry(i).restart.clone();
        match self.rt[i]
            .history
            .decide(&policy, success, uptime, Instant::now())
        {
            Decision::RestartAfter(d) => {
                self.rt[i].crashed = true;
                self.rt[i].reason = Some(match &reason {
                    Some(r) => format!("{r}; restarting in {d:?}"),
                    None => format!("exited with {}; restarting in {d:?}", exit.describe()),
                });
                self.set(i, State::Backoff);
                let gen = self.rt[i].gen;
                if d.is_zero() {
                    self.on_internal(Internal::BackoffDone { idx: i, gen });
                } else {
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = tx.send(Internal::BackoffDone { idx: i, gen });
                    });
                }
            }
            Decision::Stay => {
                self.rt[i].reason = Some(format!("exited with {}", exit.describe()));
                self.set(i, State::Stopped);
            }
            Decision::Fail(why) => {
                let why = match reason {
                    Some(r) => format!("{why}; last: {r}"),
                    None => format!("{why}; last: {}", exit.describe()),
                };
                self.fail(i, why, code);
            }
        }
    }

    pub(super) fn fail(&mut self, i: usize, why: String, code: i32) {
        let name = self.entry(i).name.clone();
        tracing::error!("{name}: failed: {why}");
        self.rt[i].failed_while_unready = self
            .entry(i)
            .after
            .iter()
            .find(|d| !d.satisfied_by(self.state(d.idx)))
            .map(|d| d.name.clone());
        self.rt[i].reason = Some(why.clone());
        self.set(i, State::Failed);
        let exit_code = self.rt[i].last_exit.as_ref().and_then(|x| x.code);
        self.resolve_waiters(
            i,
            Err(Refused::Failed {
                message: why,
                exit_code,
            }),
        );
        if self.entry(i).critical {
            tracing::error!("{name} is critical: shutting down with exit code {code}");
            self.begin_shutdown(Some(if code == 0 { 1 } else { code }));
        }
    }

    pub(super) fn resolve_waiters(&mut self, i: usize, r: Result<String, Refused>) {
        for w in self.rt[i].waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }

    /// Applies what an owner beside the core asked for (src/supervisor/cache, cron.rs).
    pub(super) fn apply(&mut self, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Launch(i) => {
                    let _ = self.runners[i].send(RunnerCmd::Start);
                }
                Effect::Reason(i, why) => self.rt[i].reason = why,
                Effect::Cached(i) => {
                    self.rt[i].started_at = None;
                    self.set(i, State::Cached);
                    let name = &self.entry(i).name;
                    self.resolve_waiters(i, Ok(format!("{name} cached")));
                }
                Effect::Done(i) => {
                    self.set(i, State::Done);
                    let name = &self.entry(i).name;
                    self.resolve_waiters(i, Ok(format!("{name} done")));
                }
                Effect::Hold(i) => self.rt[i].held = true,
                Effect::Release(i) => {
                    self.rt[i].held = false;
                    let down = self.state(i) == State::Stopped && !self.rt[i].user_stopped;
                    if self.stopping.is_none() && down {
                        self.set(i, State::Waiting);
                    }
                }
                Effect::Stop(i) => self.stop_entry(i),
                Effect::Rerun(i) => {
                    self.cache.force(i);
                    self.set(i, State::Waiting);
                }
            }
        }
    }
}
