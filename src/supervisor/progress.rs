//! Progress hooks of the control loop (a child module of `supervisor`): every state change
//! goes out on the broadcast as a `progress::Event`, start-up spans are recorded, and the
//! first time every required entry is ready a `Ready` event carries the critical path.

use super::Supervisor;
use crate::progress::{critical_path, Event, Link};
use crate::state::State;

impl Supervisor {
    /// The URL the ready line tells a person to open.
    pub fn set_ready_url(&mut self, url: String) {
        self.progress.url = url;
    }

    fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(super) fn on_transition(&mut self, i: usize, from: State, to: State) {
        let t_s = self.now_s();
        let span = &mut self.rt[i].span;
        if from == State::Waiting && span.start_s.is_none() && to != State::Skipped {
            span.start_s = Some(t_s);
        }
        if matches!(to, State::Ready | State::Done | State::Cached) && span.end_s.is_none() {
            span.end_s = Some(t_s);
        }
        let last_line = (to == State::Failed)
            .then(|| {
                self.logs[i]
                    .tail(20)
                    .iter()
                    .rev()
                    .map(|l| l.text.trim().to_string())
                    .find(|l| !l.is_empty())
            })
            .flatten();
        self.progress.seq += 1;
        let ev = Event::State {
            seq: self.progress.seq,
            t_s,
            name: self.entry(i).name.clone(),
            from,
            to,
            reason: self.rt[i].reason.clone().or_else(|| self.waiting_for(i)),
            last_line,
        };
        let _ = self.progress.tx.send(ev);
        if !self.progress.ready_announced && self.stack_ready() {
            self.progress.ready_announced = true;
            self.progress.seq += 1;
            let ev = Event::Ready {
                seq: self.progress.seq,
                t_s,
                critical_path: self.critical_path(),
                cached: self
                    .live()
                    .into_iter()
                    .filter(|&i| self.state(i) == State::Cached)
                    .count(),
                url: self.progress.url.clone(),
            };
            let _ = self.progress.tx.send(ev);
        }
    }

    /// Every required entry ready / done / cached / skipped.
    fn stack_ready(&self) -> bool {
        self.stopping.is_none()
            && self
                .live()
                .into_iter()
                .all(|i| self.entry(i).optional || self.state(i).is_healthy())
    }

    /// The critical path of the first start (empty until the stack was ready once).
    fn critical_path(&self) -> Vec<Link> {
        let spans: Vec<_> = self
            .rt
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut s = r.span.clone();
                if self.entry(i).optional {
                    s.end_s = None;
                }
                s
            })
            .collect();
        critical_path(&spans)
    }

    /// Status `critical_path`: empty until the stack was ready once.
    pub(super) fn critical_path_status(&self) -> Vec<Link> {
        if self.progress.ready_announced {
            self.critical_path()
        } else {
            Vec::new()
        }
    }

    /// Per entry: `waited_s` (start of the supervisor to leaving `waiting`) and `duration_s`
    /// (leaving `waiting` to first ready/done).
    pub(super) fn span_status(&self, i: usize) -> (Option<f64>, Option<f64>) {
        let s = &self.rt[i].span;
        (s.start_s, s.start_s.zip(s.end_s).map(|(a, b)| b - a))
    }
}
