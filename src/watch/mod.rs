//! Hot reload: one watcher task per watched entry.
//!
//! A file watcher (inotify through `notify`, or our own poller: `source.rs`) feeds changed
//! paths, filtered by the ignore rules (`ignores.rs`), into a *train*: changes collect until a
//! quiet period (the entry's `debounce`) passes, then one reload runs; changes that arrive
//! during a reload wait and form the next train. The train logic (`trains.rs`) is pure and
//! tested with paused time; the reload itself (`reload.rs`) is a request to the control loop
//! (`Control::Reload`), which owns lifecycle state and replies once the entry is ready again
//! (or why not). What a change does besides a restart is `actions.rs`. See docs/WATCH.md.
//!
//! This file owns the watcher task: [`spawn`], setting the watcher up, and setting it up again
//! after a watched root was deleted. The watch folder writes only the entries' `WatchState`
//! (status reads it); it may not write lifecycle state, which belongs to the loop.

pub mod actions;
mod ignores;
mod reload;
mod source;
mod trains;

use crate::control::Shared;
use crate::plan::Watch;
use crate::status::{WatchState, WatcherMode};
use ignores::Ignores;
use reload::Reloader;
use source::{Boxed, Sinks, Watching};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Spawns the watcher task of entry `idx` when it is watched (not when skipped); the handle
/// ends it (a config reload replaces the watchers of changed and removed entries).
pub fn spawn(shared: &Arc<Shared>, idx: usize) -> Option<tokio::task::AbortHandle> {
    let plan = shared.plan();
    let e = &plan.entries[idx];
    match (&e.watch, &e.skip, e.removed) {
        (Some(w), None, false) => {
            Some(tokio::spawn(run(shared.clone(), idx, w.clone())).abort_handle())
        }
        _ => None,
    }
}

async fn run(shared: Arc<Shared>, idx: usize, w: Watch) {
    let name = shared.plan().entries[idx].name.clone();
    let state = shared.watch(idx).clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let ignores = Arc::new(
        w.paths
            .iter()
            .map(|p| Ignores::new(p, &w.ignore))
            .collect::<Vec<_>>(),
    );
    let (new_dirs, dirs_rx) = mpsc::unbounded_channel();
    tokio::spawn(source::rewalk(dirs_rx, ignores.clone(), tx.clone()));
    let (lost, lost_rx) = mpsc::unbounded_channel();
    let again = Again {
        name: name.clone(),
        w: w.clone(),
        state: state.clone(),
        sinks: Sinks {
            ignores,
            tx,
            new_dirs,
            lost,
        },
    };
    let watcher = match again.set_up().await {
        Ok(Ok((watcher, mode, note))) => {
            match &note {
                Some(n) => tracing::warn!("{name}: watching {}: {n}", mode.as_str()),
                None => tracing::info!(
                    "{name}: watching {} ({}, debounce {:?})",
                    paths_text(&w.paths),
                    mode.as_str(),
                    w.debounce
                ),
            }
            state.set_mode(mode, note);
            watcher
        }
        Ok(Err(e)) => {
            tracing::error!("{name}: cannot watch {}: {e}", paths_text(&w.paths));
            state.set_mode(WatcherMode::Error, Some(e));
            return;
        }
        Err(e) => {
            tracing::error!("{name}: watcher setup panicked: {e}");
            return;
        }
    };
    tokio::spawn(again.keep(watcher, lost_rx));
    let st = state.clone();
    let reloader = Reloader::new(shared);
    trains::drive(
        trains::Trains::new(w.debounce),
        rx,
        state.subscribe_paused(),
        move |files| {
            let r = reloader.clone();
            async move { r.train(idx, files).await }
        },
        move |t| {
            let mut i = st.info();
            i.pending = t.pending();
            i.reloading = t.is_running();
        },
    )
    .await;
}

/// What it takes to set an entry's watcher up, and again after a watched root was deleted.
struct Again {
    name: String,
    w: Watch,
    state: Arc<WatchState>,
    sinks: Sinks,
}

impl Again {
    /// Sets the watcher up in a blocking task: that walks the tree (inotify watches per
    /// directory, or the poller's first scan). Err: the setup panicked.
    async fn set_up(&self) -> Result<Result<Watching, String>, tokio::task::JoinError> {
        let (n, w, sinks) = (self.name.clone(), self.w.clone(), self.sinks.clone());
        tokio::task::spawn_blocking(move || source::setup(&n, &w, &sinks)).await
    }

    /// Owns the watcher: when a root is deleted, waits (on an inotify watch of its parent) for
    /// it to be recreated, then watches again and reports the new tree as a change. Status
    /// `watch.note` says what happened.
    async fn keep(self, watcher: Boxed, mut lost: mpsc::UnboundedReceiver<PathBuf>) {
        let mut watcher = Some(watcher);
        while let Some(root) = lost.recv().await {
            drop(watcher.take());
            let name = &self.name;
            let note = format!(
                "{} was deleted; watching resumes when it is recreated",
                root.display()
            );
            tracing::warn!("{name}: {note}");
            self.state.info().note = Some(note);
            if let Err(e) = source::wait_for_dir(&root).await {
                tracing::error!("{name}: {e}");
                self.state.set_mode(WatcherMode::Error, Some(e));
                return;
            }
            match self.set_up().await {
                Ok(Ok((wt, mode, _))) => {
                    watcher = Some(wt);
                    let note = format!(
                        "{} was deleted and recreated; watching again ({})",
                        root.display(),
                        mode.as_str()
                    );
                    tracing::info!("{name}: {note}");
                    self.state.set_mode(mode, Some(note));
                }
                Ok(Err(e)) => {
                    tracing::error!("{name}: cannot watch {} again: {e}", root.display());
                    self.state.set_mode(WatcherMode::Error, Some(e));
                    return;
                }
                Err(_) => return,
            }
            // Later notices of the same deletion are stale now.
            while lost.try_recv().is_ok() {}
            // The recreated tree is a change.
            let mut files = Vec::new();
            if let Some(i) = self.sinks.ignores.iter().find(|i| i.root == root) {
                i.walk(&root, &mut files, 10_000);
            }
            files.push(".".into());
            if self.sinks.tx.send(files).is_err() {
                return;
            }
        }
        drop(watcher);
    }
}

fn paths_text(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
