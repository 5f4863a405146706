//! The live watch state of each entry: written by its watcher task (src/watch/), read by
//! `Status::refresh` and switched by `pause`/`resume`. It owns no lifecycle state.

use super::{TrainOutcome, TrainRecord, WatchStatus, WatcherMode};
use crate::plan::Plan;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Trains kept in status per entry.
const KEEP_TRAINS: usize = 10;

#[derive(Debug, Default)]
pub struct Info {
    /// None until the watcher is set up.
    pub mode: Option<WatcherMode>,
    /// Why `auto` ended up polling, or why watching failed.
    pub note: Option<String>,
    pub pending: usize,
    /// The entry's own train runs (set by its watcher's train driver).
    pub reloading: bool,
    /// Cascade reloads of this entry in flight (another entry's train reloads it).
    pub cascades: usize,
    pub reloads: u64,
    /// Why this entry still runs older code (its step failed).
    pub held: Option<String>,
    pub trains: VecDeque<TrainRecord>,
}

/// Per-entry watch status and the pause switch. Exists for every entry; shown in status for
/// watched entries and for entries reloaded by a cascade.
pub struct WatchState {
    watched: bool,
    cascaded: bool,
    paused: tokio::sync::watch::Sender<bool>,
    info: Mutex<Info>,
}

impl WatchState {
    pub fn for_plan(plan: &Plan) -> Vec<Arc<WatchState>> {
        let targets: HashSet<usize> = (0..plan.entries.len())
            .filter(|&i| plan.entries[i].watch.is_some())
            .flat_map(|i| plan.cascade_targets(i))
            .collect();
        plan.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Arc::new(WatchState {
                    watched: e.watch.is_some() && !e.removed,
                    cascaded: targets.contains(&i),
                    paused: tokio::sync::watch::channel(false).0,
                    info: Mutex::new(Info::default()),
                })
            })
            .collect()
    }

    /// Follows the pause switch (the watcher's train driver).
    pub fn subscribe_paused(&self) -> tokio::sync::watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// Pauses without a reply (a reload loop was detected).
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn watched(&self) -> bool {
        self.watched
    }

    /// The watcher's mode and why (set up, fallen back to polling, failed, set up again).
    pub fn set_mode(&self, mode: WatcherMode, note: Option<String>) {
        let mut i = self.info();
        i.mode = Some(mode);
        i.note = note;
    }

    pub fn info(&self) -> std::sync::MutexGuard<'_, Info> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `pause`/`resume` from the API. Err when the entry is not watched.
    pub fn set_paused(&self, paused: bool, name: &str) -> Result<String, String> {
        if !self.watched {
            return Err(format!("`{name}` has no [watch] table"));
        }
        let was = self.paused.send_replace(paused);
        Ok(match (was, paused) {
            (false, true) => format!("watching {name} paused; changes will wait for resume"),
            (true, false) => format!("watching {name} resumed"),
            (_, true) => format!("watching {name} is already paused"),
            (_, false) => format!("watching {name} is not paused"),
        })
    }

    pub fn record(&self, t: TrainRecord) {
        let mut i = self.info();
        i.reloads += 1;
        if t.outcome != TrainOutcome::Failed {
            i.held = None;
        }
        i.trains.push_back(t);
        while i.trains.len() > KEEP_TRAINS {
            i.trains.pop_front();
        }
    }

    /// The `watch` field of the entry's status (None: not watched, not a cascade target).
    pub fn status(&self) -> Option<WatchStatus> {
        if !self.watched && !self.cascaded {
            return None;
        }
        let i = self.info();
        Some(WatchStatus {
            watched: self.watched,
            mode: i.mode,
            note: i.note.clone(),
            paused: *self.paused.borrow(),
            pending: i.pending,
            reloading: i.reloading || i.cascades > 0,
            reloads: i.reloads,
            held: i.held.clone(),
            trains: i.trains.iter().cloned().collect(),
        })
    }
}
