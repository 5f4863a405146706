//! The control loop: the one owner of lifecycle state. Events from runners and commands
//! from the API come in over channels; decisions go out as runner commands. No tick: it
//! wakes only on an event, a command, a signal or a named timer (backoff).

use crate::control::{Control, Refused, Shared, View};
use crate::logs::{EntryLog, Output};
use crate::plan::{Entry, Plan};
use crate::process::ExitInfo;
use crate::runner::{Event, RunnerCmd};
use crate::state::{RestartHistory, State};
use crate::status::Status;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod cache;
mod cron;
mod lifecycle;
mod progress;
mod publish;
mod reload;
mod requests;
mod schedule;
mod shutdown;

/// Runtime facts of one entry, owned by the loop.
#[derive(Default)]
struct Rt {
    state: Option<State>,
    pid: Option<u32>,
    started_at: Option<u64>,
    started: Option<Instant>,
    ready_at: Option<u64>,
    time_to_ready: Option<Duration>,
    restarts: u32,
    last_exit: Option<ExitInfo>,
    reason: Option<String>,
    last_probe: Option<crate::status::ProbeResult>,
    history: RestartHistory,
    /// Bumped on every start/stop so stale backoff timers are ignored.
    gen: u64,
    /// Stopped by the user's `stop`: stays down until a `start`/`restart`.
    user_stopped: bool,
    /// Held stopped while a data snapshot is copied (src/supervisor/cache/snapshot.rs).
    held: bool,
    /// An off entry (profiles) started by request.
    turned_on: bool,
    runs: u32,
    waiters: Vec<oneshot::Sender<Result<String, Refused>>>,
    /// Restart once the current stop completes.
    restart_after_stop: bool,
    /// Hot reloads waiting for this entry to be ready/done (or to fail).
    reload_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// Failed while this dependency was not satisfied: started afresh once it is again.
    failed_while_unready: Option<String>,
    /// Restarting after its own exit: its `restart_with` followers restart once it is ready.
    crashed: bool,
    /// Start-up span (seconds since the supervisor started): first left `waiting`, first ready.
    span: crate::progress::Span,
}

impl Rt {
    /// A new entry: waiting, with its start-up span named.
    fn waiting(e: &Entry) -> Rt {
        Rt {
            state: Some(State::Waiting),
            span: crate::progress::Span {
                name: e.name.clone(),
                after: e.after.iter().map(|d| d.idx).collect(),
                ..Default::default()
            },
            ..Rt::default()
        }
    }

    /// Not to be started by the scheduler: stopped by request or held for a snapshot.
    fn kept_down(&self) -> bool {
        self.user_stopped || self.held
    }
}

enum Internal {
    BackoffDone { idx: usize, gen: u64 },
    Cache(cache::Msg),
    Cron { idx: usize },
}

/// What the owners beside the core (the cache, cron) may read of it: never write.
pub(super) struct Facts<'a> {
    plan: &'a Arc<Plan>,
    rt: &'a [Rt],
    stopping: bool,
}

/// Borrows only the fields `Facts` reads, so an owner field can be borrowed mutably beside it.
macro_rules! facts {
    ($s:ident) => {
        $crate::supervisor::Facts {
            plan: &$s.plan,
            rt: &$s.rt,
            stopping: $s.stopping.is_some(),
        }
    };
}
use facts;

impl<'a> Facts<'a> {
    fn state(&self, i: usize) -> State {
        self.rt[i].state.unwrap_or(State::Waiting)
    }

    fn entry(&self, i: usize) -> &'a Entry {
        &self.plan.entries[i]
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        self.plan.live()
    }

    fn gen(&self, i: usize) -> u64 {
        self.rt[i].gen
    }

    /// A step running now that depends on one of `services`.
    fn step_running_against(&self, i: usize, services: &[usize]) -> bool {
        self.entry(i).kind == crate::plan::Kind::Oneshot
            && self.state(i) == State::Running
            && self
                .entry(i)
                .after
                .iter()
                .any(|d| services.contains(&d.idx))
    }
}

/// An owner beside the core at one of its gates: go on, or wait (with the status reason)
/// until the owner answers with effects.
pub(super) enum Gate {
    Open,
    Deferred(String),
}

/// What an owner beside the core asks it to do; the core applies them in order
/// (`Supervisor::apply`), so lifecycle state has one writer.
pub(super) enum Effect {
    /// Its process starts now (the entry is already `starting`/`running`).
    Launch(usize),
    /// The entry's status reason (None clears it).
    Reason(usize, Option<String>),
    /// A step found in the cache: `cached`, not run.
    Cached(usize),
    /// A step held `running` for its data snapshot is `done`.
    Done(usize),
    /// Held stopped while a snapshot is copied (the user's `stop` is separate).
    Hold(usize),
    /// The hold ends: it may start again.
    Release(usize),
    /// Stop it (a snapshot's reverse dependency order).
    Stop(usize),
    /// A scheduled run: the step runs again, uncached.
    Rerun(usize),
}

pub struct Supervisor {
    plan: Arc<Plan>,
    rt: Vec<Rt>,
    runners: Vec<mpsc::UnboundedSender<RunnerCmd>>,
    logs: Vec<Arc<EntryLog>>,
    out: Arc<Output>,
    events: mpsc::UnboundedReceiver<Event>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal: mpsc::UnboundedReceiver<Internal>,
    control: mpsc::Receiver<Control>,
    stopping: Option<tokio::time::Instant>,
    exit_code: Option<i32>,
    started: Instant,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    stop_requested_at: Option<Instant>,
    watch: Vec<Arc<crate::status::WatchState>>,
    cache: cache::CacheCtl,
    cron: cron::Cron,
    /// The init shim's stop plan file (`DMP_CONTAINED_STOP_PLAN`) and what it holds.
    stop_plan: Option<std::path::PathBuf>,
    stop_plan_written: String,
    progress: ProgressCtl,
    status: tokio::sync::watch::Sender<Arc<Status>>,
    /// Runners of entries a config reload adds or changes report here too.
    ev_tx: mpsc::UnboundedSender<Event>,
    /// The API's view, republished by a config reload.
    shared: Arc<Shared>,
    reload: reload::ReloadCtl,
}

/// The loop's side of src/progress/: the broadcast and whether the stack was ready yet.
struct ProgressCtl {
    tx: tokio::sync::broadcast::Sender<crate::progress::Event>,
    seq: u64,
    ready_announced: bool,
    url: String,
}

/// A second SIGTERM/SIGINT means "kill now" only when it comes after this window.
const SIGNAL_REPEAT_WINDOW: Duration = Duration::from_millis(500);

impl Supervisor {
    pub fn new(plan: Plan, out: Arc<Output>) -> (Supervisor, Arc<Shared>) {
        let plan = Arc::new(plan);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::channel(256);
        let logs: Vec<Arc<EntryLog>> = plan
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| EntryLog::new(&e.name, i, plan.settings.log_lines))
            .collect();
        crate::process::shim_pid();
        let runners = plan
            .entries
            .iter()
            .enumerate()
            .map(|(idx, e)| {
                let (entry, log) = (Arc::new(e.clone()), logs[idx].clone());
                crate::runner::spawn_supervised(idx, entry, log, out.clone(), ev_tx.clone())
            })
            .collect();
        let n = plan.entries.len();
        let started = Instant::now();
        let watch = crate::status::WatchState::for_plan(&plan);
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let (status_tx, status_rx) =
            tokio::sync::watch::channel(Arc::new(publish::first_status(&plan, started)));
        let view = View {
            plan: plan.clone(),
            logs: logs.clone(),
            watch: watch.clone(),
        };
        let shared = Arc::new(Shared::new(
            view,
            ctl_tx,
            events.clone(),
            status_rx,
            out.clone(),
        ));
        let rt = plan.entries.iter().map(Rt::waiting).collect();
        let cache = cache::CacheCtl::new(&plan, in_tx.clone());
        let sup = Supervisor {
            plan,
            rt,
            runners,
            logs,
            out,
            events: ev_rx,
            internal_tx: in_tx.clone(),
            internal: in_rx,
            control: ctl_rx,
            stopping: None,
            exit_code: None,
            started,
            shutdown_waiters: Vec::new(),
            stop_requested_at: None,
            watch,
            cache,
            cron: cron::Cron::new(in_tx.clone()),
            stop_plan: std::env::var_os(crate::pid1::STOP_PLAN_ENV).map(Into::into),
            stop_plan_written: String::new(),
            progress: ProgressCtl {
                tx: events,
                seq: 0,
                ready_announced: false,
                url: String::new(),
            },
            status: status_tx,
            ev_tx,
            shared: shared.clone(),
            reload: reload::ReloadCtl::new(n),
        };
        sup.publish();
        (sup, shared)
    }

    /// `--fresh`: ignore cache records and snapshots (they are still written after success).
    pub fn set_fresh(&mut self, fresh: bool) {
        self.cache.set_fresh(fresh);
    }

    fn state(&self, i: usize) -> State {
        facts!(self).state(i)
    }

    fn entry(&self, i: usize) -> &Entry {
        facts!(self).entry(i)
    }

    /// Every entry but the tombstones of removed ones (src/reload.rs).
    fn live(&self) -> Vec<usize> {
        self.plan.live().collect()
    }

    /// Runs until everything is stopped; returns the exit code.
    pub async fn run(mut self) -> i32 {
        let mut signals = shutdown::listen_signals();
        self.start_watchers();
        self.schedule();
        loop {
            if self.finished() {
                break;
            }
            tokio::select! {
                Some(ev) = self.events.recv() => self.on_event(ev),
                Some(i) = self.internal.recv() => self.on_internal(i),
                Some(c) = self.control.recv() => self.on_control(c),
                Some(sig) = signals.recv() => self.on_any_signal(sig),
            }
            self.schedule();
            self.reload_progress();
            self.write_stop_plan();
            self.publish();
        }
        for w in self.shutdown_waiters.drain(..) {
            let _ = w.send(());
        }
        // The shim removes its stop-plan directory, unless it was killed (PDEATHSIG got us here).
        if let Some(dir) = self.stop_plan.as_ref().and_then(|p| p.parent()) {
            if crate::process::shim_pid().is_none() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        let code = self.exit_code.unwrap_or_else(|| {
            // A requested stop (signal or `shutdown`) is a normal end, whatever failed before.
            if self.stopping.is_some() {
                return 0;
            }
            let failed = self
                .plan
                .entries
                .iter()
                .enumerate()
                .any(|(i, e)| !e.optional && self.state(i) == State::Failed);
            i32::from(failed)
        });
        tracing::info!("all entries stopped; exiting with code {code}");
        code
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::BackoffDone { idx, gen } => {
                if self.rt[idx].gen == gen
                    && self.state(idx) == State::Backoff
                    && self.stopping.is_none()
                    && !self.is_retiring(idx)
                {
                    self.rt[idx].restarts += 1;
                    self.start(idx);
                }
            }
            Internal::Cache(m) => {
                let fx = self.cache.on_msg(&facts!(self), m);
                self.apply(fx);
            }
            Internal::Cron { idx } => {
                if let Some(fx) = self.cron.fired(&facts!(self), idx) {
                    self.apply(vec![fx]);
                }
            }
        }
    }
}
