//! Requests from the API, the CLI and the watchers (`Control`): `start`/`stop`/`restart`/`run`,
//! `pause`/`resume`, hot reloads of one entry, waiting for an entry to settle. Each is answered
//! with a message or a `Refused` variant.

use super::{facts, Supervisor};
use crate::control::{Action, Control, Refused};
use crate::plan::Kind;
use crate::state::{RestartHistory, State};
use tokio::sync::oneshot;

impl Supervisor {
    pub(super) fn on_control(&mut self, c: Control) {
        match c {
            Control::Shutdown(reply) => {
                self.shutdown_waiters.push(reply);
                self.begin_shutdown(None);
            }
            Control::Reload { idx, files, reply } => self.reload(idx, files, reply),
            Control::AwaitSettled { idx, reply } => match self.state(idx) {
                State::Ready | State::Done | State::Cached => {
                    let _ = reply.send(Ok(()));
                }
                State::Starting | State::Stopping | State::Waiting | State::Running
                    if self.stopping.is_none() =>
                {
                    self.rt[idx].reload_waiters.push(reply)
                }
                s => {
                    let why = self.rt[idx].reason.clone();
                    let _ = reply.send(Err(why.unwrap_or_else(|| s.to_string())));
                }
            },
            Control::Snapshot { op, name, reply } => {
                self.cache.request(&facts!(self), op, name, reply)
            }
            Control::ConfigReload { trigger, reply } => self.config_reload(trigger, reply),
            Control::Act {
                action,
                name,
                reply,
            } => {
                let r = self.act(action, &name);
                match r {
                    Ok(Some(msg)) => {
                        let _ = reply.send(Ok(msg));
                    }
                    Ok(None) => self.rt[self.plan.index(&name).unwrap()].waiters.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// Applies a mutation. `Ok(None)` means: reply when the oneshot finishes.
    pub(super) fn act(&mut self, action: Action, name: &str) -> Result<Option<String>, Refused> {
        if self.stopping.is_some() {
            return Err("the supervisor is shutting down".into());
        }
        let i = self.plan.index(name).ok_or_else(|| Refused::UnknownEntry {
            name: name.into(),
            known: self.plan.names(),
        })?;
        let s = self.state(i);
        if self.is_retiring(i) {
            return Err(Refused::Conflict(format!(
                "`{name}` is being replaced by a config reload; try again when it settles"
            )));
        }
        if s == State::Skipped {
            return Err(Refused::Conflict(format!(
                "`{name}` is skipped: {}",
                self.rt[i].reason.clone().unwrap_or_default()
            )));
        }
        if s == State::Off && matches!(action, Action::Start | Action::Run | Action::Restart) {
            return Ok(Some(self.turn_on(i)));
        }
        match action {
            Action::Pause | Action::Resume => self.watch[i]
                .set_paused(action == Action::Pause, name)
                .map(Some)
                .map_err(Refused::Conflict),
            Action::Stop => {
                // Held for a snapshot copy too: the user's stop outlasts the hold.
                self.rt[i].user_stopped = true;
                if s.is_active() && s != State::Stopping {
                    self.stop_entry(i);
                    Ok(Some(format!("stopping {name}")))
                } else {
                    Ok(Some(format!("{name} is not running ({})", s)))
                }
            }
            Action::Start | Action::Run | Action::Restart => self.act_start(action, i, s),
        }
    }

    /// `start`, `run` or `restart` of entry `i` (in state `s`), not off, not skipped.
    fn act_start(&mut self, action: Action, i: usize, s: State) -> Result<Option<String>, Refused> {
        let name = self.entry(i).name.clone();
        let kind = self.entry(i).kind;
        if action == Action::Run && kind != Kind::Oneshot {
            return Err(Refused::Conflict(format!(
                "`{name}` is a longrun; `run` is for [step] entries (use restart)"
            )));
        }
        if action == Action::Start && s.is_active() && s != State::Backoff {
            return Ok(Some(format!("{name} is already {}", s)));
        }
        // A step never runs twice at once: `run` joins the current run's result.
        if kind == Kind::Oneshot && s == State::Running {
            if action == Action::Run {
                return Ok(None);
            }
            return Err(Refused::Conflict(format!(
                "`{name}` is running; a step never runs concurrently with itself (`run {name}` waits for this run's result)"
            )));
        }
        let deps_ok = self
            .entry(i)
            .after
            .iter()
            .all(|d| d.satisfied_by(self.state(d.idx)));
        if !deps_ok {
            return Err(Refused::Conflict(format!(
                "`{name}` cannot start yet: its dependencies are not satisfied"
            )));
        }
        self.rt[i].user_stopped = false;
        self.rt[i].history = RestartHistory::default();
        if s.is_active() && s != State::Backoff {
            self.rt[i].restart_after_stop = true;
            if s != State::Stopping {
                self.stop_entry(i);
            }
        } else {
            // From backoff: cancel the pending timer and start now.
            self.rt[i].gen += 1;
            if s != State::Waiting {
                self.set(i, State::Waiting);
            }
            if action != Action::Start && kind == Kind::Oneshot {
                self.cache.force(i);
            }
            if action != Action::Start {
                self.rt[i].restarts += u32::from(self.rt[i].runs > 0 && kind == Kind::Longrun);
            }
        }
        if kind == Kind::Oneshot && action == Action::Run {
            return Ok(None);
        }
        Ok(Some(format!(
            "{} {name}",
            match action {
                Action::Start => "starting",
                _ => "restarting",
            }
        )))
    }

    /// Hot reload of entry `i` (see `Control::Reload`). Like a restart, but it also brings
    /// back an entry in backoff or failed: the save that fixes the code recovers it.
    pub(super) fn reload(
        &mut self,
        i: usize,
        files: usize,
        reply: oneshot::Sender<Result<(), String>>,
    ) {
        let name = self.entry(i).name.clone();
        let s = self.state(i);
        let refuse = if self.stopping.is_some() {
            Some("the supervisor is shutting down".to_string())
        } else if self.entry(i).removed || self.is_retiring(i) {
            Some(format!("{name} is being replaced by a config reload"))
        } else if self.rt[i].held {
            Some(format!(
                "{name} is held for a data snapshot; save again when it is back"
            ))
        } else if self.rt[i].user_stopped {
            Some(format!(
                "{name} was stopped by request; start it to run the new code"
            ))
        } else if let Some(d) = self
            .entry(i)
            .after
            .iter()
            .find(|d| !d.satisfied_by(self.state(d.idx)))
        {
            Some(format!("dependency `{}` is {}", d.name, self.state(d.idx)))
        } else if s == State::Skipped {
            Some(format!("{name} is skipped"))
        } else {
            None
        };
        if let Some(why) = refuse {
            let _ = reply.send(Err(why));
            return;
        }
        tracing::info!("{name}: reloading ({files} changed files)");
        self.rt[i].reload_waiters.push(reply);
        self.rt[i].history = RestartHistory::default();
        match s {
            State::Starting | State::Ready | State::Running => {
                self.rt[i].restart_after_stop = true;
                self.stop_entry(i);
            }
            State::Stopping => self.rt[i].restart_after_stop = true,
            // Its dependencies are satisfied: the next schedule starts it.
            State::Waiting => {}
            _ => {
                // Backoff, failed, stopped, done, cached: start again (a pending backoff
                // timer is stale once `gen` moves).
                self.rt[i].gen += 1;
                self.rt[i].restarts += u32::from(self.entry(i).kind == Kind::Longrun);
                self.set(i, State::Waiting);
            }
        }
    }

    /// Answers hot reloads of `i` once it lands somewhere that settles them.
    pub(super) fn resolve_reloads(&mut self, i: usize, to: State) {
        if self.rt[i].reload_waiters.is_empty() {
            return;
        }
        let r = match to {
            State::Ready | State::Done | State::Cached => Ok(()),
            State::Backoff | State::Failed => {
                Err(self.rt[i].reason.clone().unwrap_or_else(|| to.to_string()))
            }
            State::Stopped if !self.rt[i].restart_after_stop => Err(self.rt[i]
                .reason
                .clone()
                .unwrap_or_else(|| "stopped".into())),
            _ => return,
        };
        for w in self.rt[i].reload_waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }
}
