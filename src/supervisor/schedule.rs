//! What starts next: waiting entries whose dependencies are satisfied start (or go `off` or
//! `skipped`), failed ones get a fresh start once their dependency is back, and during a
//! shutdown active entries stop, dependents first. Also: when the loop is finished.

use super::{facts, Supervisor};
use crate::plan::Kind;
use crate::state::{RestartHistory, State};

impl Supervisor {
    /// Done when nothing runs and nothing more can start (or we are stopping).
    pub(super) fn finished(&self) -> bool {
        let any_active = self.live().into_iter().any(|i| self.state(i).is_active());
        if any_active {
            return false;
        }
        if self.stopping.is_some() {
            return true;
        }
        if self.rt.iter().any(|r| r.kept_down()) || self.reload_pending() {
            return false;
        }
        // A save can still bring a watched entry (or its dependents) back.
        if self.watch.iter().any(|w| w.watched()) {
            return false;
        }
        self.live()
            .into_iter()
            .all(|i| self.state(i) != State::Waiting || self.blocked(i).is_some())
    }

    /// Why a waiting entry can never start (a dependency failed or stopped for good).
    pub(super) fn blocked(&self, i: usize) -> Option<String> {
        self.entry(i).after.iter().find_map(|d| {
            let s = self.state(d.idx);
            matches!(s, State::Failed | State::Stopped)
                .then(|| format!("blocked: dependency `{}` is {}", d.name, s))
        })
    }

    /// Starts every waiting entry whose dependencies are satisfied; during shutdown, stops
    /// every active entry none of whose dependents is still active.
    pub(super) fn schedule(&mut self) {
        if self.stopping.is_some() {
            for i in self.live() {
                let s = self.state(i);
                if !s.is_active() || s == State::Stopping {
                    continue;
                }
                let dependents_active = self
                    .transitive_dependents(i)
                    .any(|d| self.state(d).is_active());
                if !dependents_active {
                    self.stop_entry(i);
                }
            }
            return;
        }
        let f = facts!(self);
        self.cron.progress(&f);
        let fx = self.cache.progress(&f);
        self.apply(fx);
        self.retry_failed_for_dependencies();
        loop {
            let mut progressed = false;
            for i in self.live() {
                if self.state(i) != State::Waiting || self.rt[i].kept_down() || self.is_retiring(i)
                {
                    continue;
                }
                if let Some(why) = self.off_reason(i) {
                    self.rt[i].reason = Some(why);
                    self.set(i, State::Off);
                    progressed = true;
                    continue;
                }
                if let Some(why) = self.entry(i).skip.clone() {
                    self.rt[i].reason = Some(why.clone());
                    self.set(i, State::Skipped);
                    tracing::info!("{}: skipped: {why}", self.entry(i).name);
                    progressed = true;
                    continue;
                }
                let skipped_dep = self
                    .entry(i)
                    .after
                    .iter()
                    .find(|d| !d.optional && self.state(d.idx) == State::Skipped)
                    .map(|d| (d.name.clone(), self.rt[d.idx].reason.clone()));
                if let Some((d, cause)) = skipped_dep {
                    // The root cause travels down the chain: "dependency `a` is skipped: <why>".
                    let why = match cause {
                        Some(c) => format!("dependency `{d}` is skipped: {c}"),
                        None => format!("dependency `{d}` is skipped"),
                    };
                    tracing::info!("{}: skipped: {why}", self.entry(i).name);
                    self.rt[i].reason = Some(why);
                    self.set(i, State::Skipped);
                    progressed = true;
                    continue;
                }
                let ok = self
                    .entry(i)
                    .after
                    .iter()
                    .all(|d| d.satisfied_by(self.state(d.idx)));
                if ok {
                    self.start(i);
                    progressed = true;
                } else {
                    self.rt[i].reason = self.blocked(i);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// An entry that failed while one of its dependencies was not satisfied (a frontend whose
    /// api restarted under it) gets a fresh start, with a fresh restart budget, once all its
    /// dependencies are satisfied again.
    pub(super) fn retry_failed_for_dependencies(&mut self) {
        for i in self.live() {
            if self.state(i) != State::Failed || self.rt[i].kept_down() {
                continue;
            }
            let Some(dep) = self.rt[i].failed_while_unready.clone() else {
                continue;
            };
            let all_ok = self
                .entry(i)
                .after
                .iter()
                .all(|d| d.satisfied_by(self.state(d.idx)));
            if !all_ok {
                continue;
            }
            tracing::info!(
                "{}: dependency `{dep}` is ready again: fresh start after the failure",
                self.entry(i).name
            );
            let rt = &mut self.rt[i];
            rt.failed_while_unready = None;
            rt.history = RestartHistory::default();
            rt.gen += 1;
            rt.restarts += u32::from(self.plan.entries[i].kind == Kind::Longrun);
            self.set(i, State::Waiting);
        }
    }

    /// Every entry that depends on `i`, directly or through others (finished oneshots too:
    /// an app after `db-create` after `postgres` keeps Postgres up until the app has stopped).
    pub(super) fn transitive_dependents(&self, i: usize) -> impl Iterator<Item = usize> {
        let mut seen = vec![false; self.rt.len()];
        let mut stack: Vec<usize> = self.plan.dependents(i).collect();
        while let Some(d) = stack.pop() {
            if !std::mem::replace(&mut seen[d], true) {
                stack.extend(self.plan.dependents(d));
            }
        }
        seen.into_iter()
            .enumerate()
            .filter(|(_, s)| *s)
            .map(|(j, _)| j)
    }

    /// Why a waiting entry stays `off`: its profiles are not active (and it was not started),
    /// or a dependency it needs is off.
    pub(super) fn off_reason(&self, i: usize) -> Option<String> {
        let e = self.entry(i);
        if e.off && !self.rt[i].turned_on {
            return Some(format!(
                "in profile {} (not active): `dmp-contained start {}` starts it",
                e.profiles.join(", "),
                e.name
            ));
        }
        e.after
            .iter()
            .find(|d| !d.optional && self.state(d.idx) == State::Off)
            .map(|d| format!("dependency `{}` is off", d.name))
    }

    /// `start` of an off entry: it and every off entry it needs go back to waiting.
    pub(super) fn turn_on(&mut self, i: usize) -> String {
        let mut on = Vec::new();
        let mut stack = vec![i];
        while let Some(j) = stack.pop() {
            if self.state(j) != State::Off {
                continue;
            }
            self.rt[j].turned_on = true;
            self.rt[j].reason = None;
            self.set(j, State::Waiting);
            on.push(self.entry(j).name.clone());
            stack.extend(self.entry(j).after.iter().map(|d| d.idx));
        }
        // Entries off only through a dependency are re-decided (they start if it was the last).
        for j in self.live() {
            if self.state(j) == State::Off && !self.entry(j).off {
                self.set(j, State::Waiting);
            }
        }
        tracing::info!("started off entries: {}", on.join(", "));
        format!("starting {}", on.join(", "))
    }
}
