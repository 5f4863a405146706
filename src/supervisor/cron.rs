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
