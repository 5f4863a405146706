//! The lifecycle state machine (pure): states, the table of allowed transitions, and the
//! restart decision after an exit. Tested without processes.

use crate::plan::{Policy, Restart};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its dependencies.
    Waiting,
    /// Longrun spawned, readiness not yet confirmed.
    Starting,
    /// Longrun ready (probe passed, or started without a probe).
    Ready,
    /// Oneshot running.
    Running,
    /// Waiting before the next restart.
    Backoff,
    /// Stop signal sent, waiting for the process group to empty.
    Stopping,
    /// Stopped by request, or exited cleanly with no restart due.
    Stopped,
    /// Oneshot finished with exit code 0.
    Done,
    /// Oneshot skipped because its cache key matched.
    Cached,
    /// Permanently failed (crash loop, spawn error, port taken, oneshot failed).
    Failed,
    /// Not run: `when_exists` missing or a dependency was skipped.
    Skipped,
    /// In a profile that is not active (or depends on such an entry): not run until started.
    Off,
}

use State::*;

/// `(to, from…)`: a transition to `to` is allowed only from one of `from`.
pub const ALLOWED_TRANSITIONS: &[(State, &[State])] = &[
    (
        Waiting,
        &[Stopped, Failed, Done, Cached, Backoff, Skipped, Off],
    ),
    (
        Starting,
        &[Waiting, Backoff, Stopped, Failed, Ready, Starting],
    ),
    (Ready, &[Starting]),
    (Running, &[Waiting, Done, Failed, Cached, Stopped]),
    (Backoff, &[Starting, Ready, Stopping]),
    (Stopping, &[Starting, Ready, Running, Backoff]),
    (Stopped, &[Stopping, Starting, Ready, Waiting, Backoff]),
    (Done, &[Running]),
    // Running: the key was computed off the loop while the step was already `running`.
    (Cached, &[Waiting, Running]),
    (
        Failed,
        &[Waiting, Starting, Ready, Running, Backoff, Stopping],
    ),
    (Skipped, &[Waiting]),
    (Off, &[Waiting]),
];

pub fn allowed(from: State, to: State) -> bool {
    ALLOWED_TRANSITIONS
        .iter()
        .any(|(t, froms)| *t == to && froms.contains(&from))
}

impl State {
    /// Is a dependency in this state satisfied for `cond`?
    pub fn satisfies(self, cond: crate::plan::Cond) -> bool {
        use crate::plan::Cond;
        match cond {
            Cond::Started => matches!(self, Starting | Ready),
            Cond::Ready => self == Ready,
            Cond::Done => matches!(self, Done | Cached),
        }
    }

    /// Has this entry a live process (or may get one without a new start command)?
    pub fn is_active(self) -> bool {
        matches!(self, Starting | Ready | Running | Backoff | Stopping)
    }

    /// Its name in status, events and messages (`ready`, `backoff`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Waiting => "waiting",
            Starting => "starting",
            Ready => "ready",
            Running => "running",
            Backoff => "backoff",
            Stopping => "stopping",
            Stopped => "stopped",
            Done => "done",
            Cached => "cached",
            Failed => "failed",
            Skipped => "skipped",
            Off => "off",
        }
    }

    /// Healthy for `/health`: ready longruns and finished oneshots.
    pub fn is_healthy(self) -> bool {
        matches!(self, Ready | Done | Cached | Skipped | Off)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What to do after a longrun exited on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    /// No restart due (policy): the entry stays stopped.
    Stay,
    Fail(String),
}

/// Restart bookkeeping of one longrun (owned by the supervisor).
#[derive(Debug, Default, Clone)]
pub struct RestartHistory {
    /// Restarts within the current window.
    recent: Vec<Instant>,
    /// Consecutive quick crashes (reset after `stable_after` of uptime).
    pub streak: u32,
}

impl RestartHistory {
    /// Decides after an exit with `success` after `uptime`, at `now`.
    pub fn decide(
        &mut self,
        policy: &Restart,
        success: bool,
        uptime: Duration,
        now: Instant,
    ) -> Decision {
        let due = match policy.policy {
            Policy::Always => true,
            Policy::OnFailure => !success,
            Policy::Never => false,
        };
        if !due {
            return if success {
                Decision::Stay
            } else {
                Decision::Fail("exited with failure and restart policy forbids a restart".into())
            };
        }
        if uptime >= policy.stable_after {
            self.streak = 0;
        }
        self.recent
            .retain(|t| now.duration_since(*t) < policy.window);
        if self.recent.len() as u32 >= policy.max_restarts {
            return Decision::Fail(format!(
                "crash loop: {} restarts within {:?} (max_restarts = {})",
                self.recent.len(),
                policy.window,
                policy.max_restarts
            ));
        }
        self.recent.push(now);
        let delay = backoff(policy, self.streak);
        self.streak += 1;
        Decision::RestartAfter(delay)
    }
}

/// First restart is immediate; then `backoff`, doubled each time, capped at `backoff_max`.
pub fn backoff(policy: &Restart, streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (streak - 1).min(20);
    policy
        .backoff
        .saturating_mul(factor)
        .min(policy.backoff_max)
}

// Inherent to `Dep` (src/plan.rs) but written here: the plan holds no lifecycle states.
impl crate::plan::Dep {
    /// Is this edge satisfied while the dependency is in `s`?
    pub fn satisfied_by(&self, s: State) -> bool {
        s.satisfies(self.cond) || (self.optional && matches!(s, State::Skipped | State::Off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_name_and_honours_width() {
        assert_eq!(State::Backoff.to_string(), "backoff");
        assert_eq!(format!("[{:<9}]", State::Ready), "[ready    ]");
    }

    #[test]
    fn names_are_the_serialized_names() {
        for (to, froms) in ALLOWED_TRANSITIONS {
            for s in froms.iter().chain([to]) {
                assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            }
        }
    }

    #[test]
    fn transition_table() {
        let rows = [
            (Waiting, Starting, true),
            (Starting, Ready, true),
            (Ready, Backoff, true),
            (Backoff, Starting, true),
            (Ready, Stopping, true),
            (Stopping, Stopped, true),
            (Waiting, Running, true),
            (Running, Done, true),
            (Waiting, Cached, true),
            (Waiting, Skipped, true),
            (Waiting, Ready, false),
            (Done, Ready, false),
            (Stopped, Ready, false),
            (Skipped, Starting, false),
            (Cached, Done, false),
            (Running, Ready, false),
        ];
        for (from, to, ok) in rows {
            assert_eq!(allowed(from, to), ok, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn restart_backoff_and_crash_loop() {
        let p = Restart {
            max_restarts: 3,
            ..Restart::default()
        };
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        let q = Duration::from_millis(10);
        assert_eq!(
            h.decide(&p, false, q, t0),
            Decision::RestartAfter(Duration::ZERO)
        );
        assert_eq!(
            h.decide(&p, false, q, t0),
            Decision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            h.decide(&p, false, q, t0),
            Decision::RestartAfter(Duration::from_millis(200))
        );
        assert!(
            matches!(h.decide(&p, false, q, t0), Decision::Fail(m) if m.contains("crash loop"))
        );
        // After the window passes, restarts are allowed again; a long uptime resets the streak.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            h.decide(&p, false, Duration::from_secs(11), later),
            Decision::RestartAfter(Duration::ZERO)
        );
    }

    #[test]
    fn policies() {
        let mut h = RestartHistory::default();
        let now = Instant::now();
        let d = Duration::ZERO;
        let never = Restart {
            policy: Policy::Never,
            ..Restart::default()
        };
        assert_eq!(h.decide(&never, true, d, now), Decision::Stay);
        assert!(matches!(h.decide(&never, false, d, now), Decision::Fail(_)));
        let onf = Restart {
            policy: Policy::OnFailure,
            ..Restart::default()
        };
        assert_eq!(h.decide(&onf, true, d, now), Decision::Stay);
        assert!(matches!(
            h.decide(&onf, false, d, now),
            Decision::RestartAfter(_)
        ));
    }

    #[test]
    fn backoff_is_capped() {
        let p = Restart::default();
        assert_eq!(backoff(&p, 30), p.backoff_max);
    }
}
