//! What one train does: ask the control loop to reload the entry (`Control::Reload`, which
//! replies once it is ready again, or why not), then its cascade; or run the train's other
//! actions (src/watch/actions.rs); or stop a reload loop. Every train ends as a
//! [`TrainRecord`] in the entry's `WatchState`.
//!
//! Owns the watcher's [`Reloader`] and its loop guards. It may not write lifecycle state: it
//! only asks the loop through `Control` and records what the loop answered.

use super::actions::{self, LoopGuard};
use crate::control::{Control, Shared};
use crate::plan::{Kind, WatchAction};
use crate::status::{CascadeRecord, TrainOutcome, TrainRecord, WatchState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Files named per train in status.
const KEEP_FILES: usize = 10;
/// Log lines attached to a failed train.
const TAIL_LINES: usize = 15;

/// Runs the trains of one watcher task. Cloned into each train.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    /// Reload-loop detection, per entry this watcher reloads (its own, and the step of a `run`
    /// action). A watcher replaced by a config reload starts with fresh guards.
    guards: Arc<Mutex<HashMap<usize, LoopGuard>>>,
}

impl Reloader {
    pub fn new(shared: Arc<Shared>) -> Reloader {
        Reloader {
            shared,
            guards: Arc::default(),
        }
    }

    /// Works on the loop guard of `idx`.
    fn guard<R>(&self, idx: usize, f: impl FnOnce(&mut LoopGuard) -> R) -> R {
        let mut g = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        f(g.entry(idx).or_default())
    }

    /// One train of `idx`: reload it, then its cascade; record everything in status.
    pub async fn train(&self, idx: usize, files: Vec<String>) {
        let shared = &self.shared;
        let plan = shared.plan();
        let e = &plan.entries[idx];
        let count = files.len();
        tracing::info!(
            "{}: {count} changed ({}{}); reloading",
            e.name,
            files.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if count > 3 { ", ..." } else { "" }
        );
        if let Some(rec) = self.reload_loop(idx, &files) {
            shared.watch(idx).record(rec);
            return;
        }
        let rec = match Box::pin(self.other_actions(idx, &files)).await {
            Some(rec) => rec,
            None => reload_with_cascade(shared, idx, &files).await,
        };
        shared.watch(idx).record(rec);
        self.guard(idx, |g| g.end(SystemTime::now()));
    }

    /// A train caused by the previous reloads themselves ([`LoopGuard`]): watching is paused
    /// and the record names the file.
    fn reload_loop(&self, idx: usize, files: &[String]) -> Option<TrainRecord> {
        let plan = self.shared.plan();
        let e = &plan.entries[idx];
        let roots = e
            .watch
            .as_ref()
            .map(|w| w.paths.as_slice())
            .unwrap_or_default();
        let written = match self.guard(idx, |g| g.window()) {
            Some(w) => files
                .iter()
                .filter(|f| actions::modified_in(roots, f, w))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let looping = self.guard(idx, |g| g.start(written, SystemTime::now()))?;
        let file = looping.join("`, `");
        let why = format!(
            "reload loop: `{file}` changed during each of the last {} reloads (written by `{}` itself, by what it starts, or the supervisor's own output?); \
             watching is paused: add it to the watch `ignore`, or resume with `dmp-contained resume {}`",
            actions::LOOP_TRAINS,
            e.name,
            e.name
        );
        tracing::error!("{}: {why}", e.name);
        self.shared.watch(idx).pause();
        self.guard(idx, |g| *g = LoopGuard::default());
        let at = crate::logs::now_ms();
        Some(actions_record(at, files, 0.0, Some(why), "none".into()))
    }

    /// Runs the train's actions other than `restart` (src/watch/actions.rs). Returns their
    /// record when no restart follows, None when the entry restarts as before.
    async fn other_actions(&self, idx: usize, files: &[String]) -> Option<TrainRecord> {
        let plan = self.shared.plan();
        let e = &plan.entries[idx];
        let acts = e
            .watch
            .as_ref()
            .map(|w| actions::classify(w, files))
            .unwrap_or_else(|| vec![WatchAction::Restart]);
        if acts == [WatchAction::Restart] {
            return None;
        }
        let (at, t0) = (crate::logs::now_ms(), Instant::now());
        let mut errors = Vec::new();
        let mut restart = false;
        for a in &acts {
            tracing::info!("{}: watch action {}", e.name, actions::describe(a));
            let r = match a {
                WatchAction::Run(step, _) => {
                    // The step's train reloads what depends on it (this entry too, if it does).
                    Box::pin(self.train(*step, files.to_vec())).await;
                    let watch = self.shared.watch(*step);
                    let held = watch.info().trains.back().and_then(|t| t.error.clone());
                    held.map_or(Ok(()), Err)
                }
                WatchAction::Exec(argv) => actions::exec(e, argv).await,
                WatchAction::Signal(sig) => actions::signal(e, *sig),
                WatchAction::Restart => {
                    restart = !acts.iter().any(|a| matches!(a, WatchAction::Run(s, _) if self.shared.plan().cascade_targets(*s).contains(&idx)));
                    Ok(())
                }
                WatchAction::None => Ok(()),
            };
            if let Err(err) = r {
                tracing::warn!("{}: watch action failed: {err}", e.name);
                errors.push(err);
            }
        }
        if restart && errors.is_empty() {
            return None;
        }
        let action = if acts.is_empty() {
            "none".into()
        } else {
            let names: Vec<String> = acts.iter().map(actions::describe).collect();
            names.join(", ")
        };
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let took = t0.elapsed().as_secs_f64();
        Some(actions_record(at, files, took, error, action))
    }
}

/// The record of a train that ran `action` instead of a plain restart: `failed` with `error`,
/// else `done`.
fn actions_record(
    at: u64,
    files: &[String],
    duration_s: f64,
    error: Option<String>,
    action: String,
) -> TrainRecord {
    TrainRecord {
        at,
        files: files.iter().take(KEEP_FILES).cloned().collect(),
        count: files.len(),
        via: None,
        duration_s,
        outcome: match error {
            Some(_) => TrainOutcome::Failed,
            None => TrainOutcome::Done,
        },
        error,
        log_tail: vec![],
        cascade: vec![],
        action: Some(action),
    }
}

/// Restarts `idx`, then what reloads with it (`restart_with`, a step's dependents) unless it
/// failed: those are then held on the previous code, and say why.
async fn reload_with_cascade(shared: &Arc<Shared>, idx: usize, files: &[String]) -> TrainRecord {
    let plan = shared.plan();
    let e = &plan.entries[idx];
    let count = files.len();
    let shown: Vec<String> = files.iter().take(KEEP_FILES).cloned().collect();
    let mut rec = reload_one(shared, idx, shown.clone(), count, None).await;
    let targets = shared.plan().cascade_targets(idx);
    if rec.outcome == TrainOutcome::Failed {
        let why = format!(
            "not reloaded: `{}` failed ({}); still running the previous code",
            e.name,
            rec.error.clone().unwrap_or_default()
        );
        for t in targets {
            tracing::warn!("{}: {why}", shared.plan().entries[t].name);
            shared.watch(t).info().held = Some(why.clone());
        }
    } else if !targets.is_empty() {
        let mut set = tokio::task::JoinSet::new();
        for t in targets {
            let sh = shared.clone();
            let (f, via) = (shown.clone(), e.name.clone());
            set.spawn(async move { (t, reload_one(&sh, t, f, count, Some(via)).await) });
        }
        while let Some(Ok((t, r))) = set.join_next().await {
            rec.cascade.push(CascadeRecord {
                name: shared.plan().entries[t].name.clone(),
                outcome: r.outcome,
                error: r.error,
            });
        }
    }
    rec
}

/// Asks the control loop to reload `idx`; resolves when it is ready/done, or with why not.
async fn request(shared: &Shared, idx: usize, files: usize) -> Result<(), String> {
    let (reply, rx) = oneshot::channel();
    shared
        .control
        .send(Control::Reload { idx, files, reply })
        .await
        .map_err(|_| "the supervisor is stopping".to_string())?;
    rx.await
        .unwrap_or_else(|_| Err("the supervisor is stopping".into()))
}

/// A cascade reload of an entry in flight, counted in its watch state until dropped (also
/// when the reload is cancelled).
struct Cascade<'a>(&'a WatchState);

impl<'a> Cascade<'a> {
    fn mark(state: &'a WatchState) -> Cascade<'a> {
        state.info().cascades += 1;
        Cascade(state)
    }
}

impl Drop for Cascade<'_> {
    fn drop(&mut self) {
        self.0.info().cascades -= 1;
    }
}

/// Reloads one entry and returns its record (also stored when it came `via` a cascade).
async fn reload_one(
    shared: &Shared,
    idx: usize,
    files: Vec<String>,
    count: usize,
    via: Option<String>,
) -> TrainRecord {
    let plan = shared.plan();
    let e = &plan.entries[idx];
    let state = &shared.watch(idx);
    let at = crate::logs::now_ms();
    let t0 = Instant::now();
    // A cascade reload shows as `reloading` while it runs. It counts itself apart from the
    // entry's own train, which may be in flight too (a `run` action whose step reloads this
    // entry): each clears only its own mark.
    let _cascade = via.is_some().then(|| Cascade::mark(state));
    let r = request(shared, idx, count).await;
    let duration = t0.elapsed();
    let (outcome, error, log_tail) = match r {
        Ok(()) => {
            let o = if e.kind == Kind::Oneshot {
                TrainOutcome::Done
            } else {
                TrainOutcome::Ready
            };
            tracing::info!(
                "{}: reloaded, {} after {:.3}s",
                e.name,
                o.as_str(),
                duration.as_secs_f64()
            );
            (o, None, vec![])
        }
        Err(err) => {
            tracing::warn!("{}: reload failed: {err}", e.name);
            let tail = shared
                .entry_log(idx)
                .tail(TAIL_LINES)
                .iter()
                .map(|l| l.text.clone())
                .collect();
            (TrainOutcome::Failed, Some(err), tail)
        }
    };
    let rec = TrainRecord {
        at,
        files,
        count,
        via: via.clone(),
        duration_s: duration.as_secs_f64(),
        outcome,
        error,
        log_tail,
        cascade: vec![],
        action: None,
    };
    if via.is_some() {
        state.record(rec.clone());
    }
    rec
}
