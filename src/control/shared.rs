//! The read side of the loop: the plan and per-entry objects (swapped as a whole by a config
//! reload) and the latest published `Status`. Readers never wait on the loop.

use super::Control;
use crate::logs::{EntryLog, Output};
use crate::plan::Plan;
use crate::status::{Status, WatchState};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the API may read without going through the loop.
pub struct Shared {
    /// Swapped as a whole by a config reload (src/reload.rs); readers take a snapshot.
    view: std::sync::RwLock<Arc<View>>,
    pub control: mpsc::Sender<Control>,
    /// State changes as they happen (src/progress/; `GET /_supervisor/events`).
    pub events: tokio::sync::broadcast::Sender<crate::progress::Event>,
    /// The latest status, published by the loop after every step (src/status/).
    pub status: tokio::sync::watch::Receiver<Arc<Status>>,
    /// The supervisor's stdout queue (its counters are read into status).
    pub out: Arc<Output>,
}

/// The plan and the per-entry objects indexed like its entries (indices never change: a
/// reload appends entries and tombstones removed ones, src/reload.rs).
pub struct View {
    pub plan: Arc<Plan>,
    pub logs: Vec<Arc<EntryLog>>,
    /// Per-entry hot-reload status and pause switch (src/watch/).
    pub watch: Vec<Arc<WatchState>>,
}

impl Shared {
    pub fn new(
        view: View,
        control: mpsc::Sender<Control>,
        events: tokio::sync::broadcast::Sender<crate::progress::Event>,
        status: tokio::sync::watch::Receiver<Arc<Status>>,
        out: Arc<Output>,
    ) -> Shared {
        Shared {
            view: std::sync::RwLock::new(Arc::new(view)),
            control,
            events,
            status,
            out,
        }
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn plan(&self) -> Arc<Plan> {
        self.view().plan.clone()
    }

    pub fn log(&self, name: &str) -> Option<Arc<EntryLog>> {
        let v = self.view();
        v.plan.index(name).map(|i| v.logs[i].clone())
    }

    pub fn entry_log(&self, i: usize) -> Arc<EntryLog> {
        self.view().logs[i].clone()
    }

    pub fn watch(&self, i: usize) -> Arc<WatchState> {
        self.view().watch[i].clone()
    }

    /// A config reload's new view (only the loop calls this).
    pub fn replace_view(&self, v: View) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
    }

    /// The latest status with its live fields filled in (not yet scrubbed of secrets).
    pub fn status(&self) -> Status {
        let mut st = Status::clone(&self.status.borrow());
        let view = self.view();
        st.refresh(
            &view.logs,
            |i| view.watch.get(i).and_then(|w| w.status()),
            self.out.stats(),
        );
        st
    }
}
