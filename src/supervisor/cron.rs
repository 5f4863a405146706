//! `schedule = "cron expr"` of a step: an owner beside the lifecycle core. Its timers are
//! armed once the stack is up (and for entries a config reload adds); a timer that fires asks
//! the core for a real run (`Effect::Rerun`) unless the step is busy or kept down.

use super::{Effect, Facts, Internal};
use crate::plan::Plan;
use crate::state::State;
use std::time::Duration;
use tokio::sync::mpsc;

pub(super) struct Cron {
    armed: bool,
    tx: mpsc::UnboundedSender<Internal>,
}

impl Cron {
    pub(super) fn new(tx: mpsc::UnboundedSender<Internal>) -> Cron {
        Cron { armed: false, tx }
    }

    /// Every pass of the loop: the timers are armed the first time every required entry is
    /// healthy.
    pub(super) fn progress(&mut self, f: &Facts) {
        if self.armed
            || !f
                .live()
                .all(|i| f.state(i).is_healthy() || f.entry(i).optional)
        {
            return;
        }
        self.armed = true;
        for i in f.live() {
            self.arm(f.plan, i);
        }
    }

    /// Entries a config reload added (their timers start at once when the stack was up).
    pub(super) fn added(&self, plan: &Plan, added: &[usize]) {
        if self.armed {
            for &i in added {
                self.arm(plan, i);
            }
        }
    }

    fn arm(&self, plan: &Plan, i: usize) {
        let Some(expr) = plan.entries[i].schedule.clone() else {
            return;
        };
        let Ok(cron) = croner::Cron::new(&expr).parse() else {
            return;
        };
        let now = chrono::Local::now();
        let Ok(next) = cron.find_next_occurrence(&now, false) else {
            return;
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = tx.send(Internal::Cron { idx: i });
        });
    }

    /// A timer of step `idx` fired: the next one is armed; a run is due unless the step is
    /// active, waiting, stopped by request, or its dependencies are not ready.
    pub(super) fn fired(&self, f: &Facts, idx: usize) -> Option<Effect> {
        if f.stopping {
            return None;
        }
        self.arm(f.plan, idx);
        let name = &f.entry(idx).name;
        let s = f.state(idx);
        let deps_ok = f
            .entry(idx)
            .after
            .iter()
            .all(|d| d.satisfied_by(f.state(d.idx)));
        if s.is_active() || s == State::Waiting || !deps_ok || f.rt[idx].user_stopped {
            tracing::info!(
                "{name}: schedule fired but the step is {} (or its dependencies are not ready); skipped this time",
                s.to_string()
            );
            return None;
        }
        tracing::info!("{name}: scheduled run");
        Some(Effect::Rerun(idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::Rt;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_timer_runs_the_step_only_when_it_is_idle_and_its_dependencies_are_up() {
        let src = "[process.db]\ncommand = \"sleep 1\"\n\
                   [step.tidy]\ncommand = \"true\"\nafter = [\"db\"]\nschedule = \"0 3 * * *\"\n";
        let env = std::env::vars().collect();
        let p = crate::config::parse(std::path::Path::new("/tmp/t.toml"), src, &env);
        let plan = Arc::new(p.map_err(|e| e.to_string()).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let cron = Cron::new(tx);
        let (db_i, tidy_i) = (plan.index("db").unwrap(), plan.index("tidy").unwrap());
        let at = |db: State, tidy: State, user_stopped: bool| {
            let mut rt = [Rt::default(), Rt::default()];
            rt[db_i].state = Some(db);
            rt[tidy_i].state = Some(tidy);
            rt[tidy_i].user_stopped = user_stopped;
            let f = Facts {
                plan: &plan,
                rt: &rt,
                stopping: false,
            };
            matches!(cron.fired(&f, tidy_i), Some(Effect::Rerun(i)) if i == tidy_i)
        };
        assert!(at(State::Ready, State::Done, false));
        assert!(at(State::Ready, State::Failed, false));
        assert!(!at(State::Ready, State::Running, false), "busy");
        assert!(!at(State::Ready, State::Waiting, false), "already due");
        assert!(!at(State::Starting, State::Done, false), "db not ready");
        assert!(!at(State::Ready, State::Done, true), "stopped by the user");
    }
}
