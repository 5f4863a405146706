//! The control loop: the one owner of lifecycle state. Events from runners and commands
//! from the API come in over channels; decisions go out as runner commands. No tick: it
//! wakes only on an event, a command, a signal or a named timer (backoff).

use crate::control::{Action, Control, Refused, Shared, View};
use crate::logs::{EntryLog, Output};
use crate::plan::{Entry, Kind, Plan};
use crate::process::ExitInfo;
use crate::runner::{Cause, Event, EventKind, RunnerCmd};
use crate::state::{state_name, Decision, RestartHistory, State};
use crate::status::{EntryStatus, Overall, Status};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

#[path = "supervisor_cache.rs"]
mod cache_hooks;
#[path = "supervisor_progress.rs"]
mod progress_hooks;
#[path = "supervisor_reload.rs"]
mod reload_hooks;

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
    user_stopped: bool,
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

enum Internal {
    BackoffDone { idx: usize, gen: u64 },
    Cache(cache_hooks::Msg),
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
    cache: cache_hooks::CacheCtl,
    /// The init shim's stop plan file (`DMP_CONTAINED_STOP_PLAN`) and what it holds.
    stop_plan: Option<std::path::PathBuf>,
    stop_plan_written: String,
    progress: ProgressCtl,
    status: tokio::sync::watch::Sender<Arc<Status>>,
    /// Runners of entries a config reload adds or changes report here too.
    ev_tx: mpsc::UnboundedSender<Event>,
    /// The API's view, republished by a config reload.
    shared: Arc<Shared>,
    reload: reload_hooks::ReloadCtl,
}

/// The loop's side of src/progress.rs: the broadcast and whether the stack was ready yet.
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
        let (status_tx, status_rx) = tokio::sync::watch::channel(Arc::new(Status {
            event_seq: 0,
            critical_path: Vec::new(),
            supervisor: crate::status::SupervisorStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                uptime_s: 0.0,
                state: Overall::Starting,
                config: plan.file.clone(),
                output: Default::default(),
                started: Some(started),
            },
            entries: Vec::new(),
            config_reload: None,
        }));
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
        let rt = plan
            .entries
            .iter()
            .map(|e| Rt {
                state: Some(State::Waiting),
                span: crate::progress::Span {
                    name: e.name.clone(),
                    after: e.after.iter().map(|d| d.idx).collect(),
                    ..Default::default()
                },
                ..Rt::default()
            })
            .collect();
        let cache = cache_hooks::CacheCtl::new(&plan);
        let sup = Supervisor {
            plan,
            rt,
            runners,
            logs,
            out,
            events: ev_rx,
            internal_tx: in_tx,
            internal: in_rx,
            control: ctl_rx,
            stopping: None,
            exit_code: None,
            started,
            shutdown_waiters: Vec::new(),
            stop_requested_at: None,
            watch,
            cache,
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
            reload: reload_hooks::ReloadCtl::new(n),
        };
        sup.publish();
        (sup, shared)
    }

    fn state(&self, i: usize) -> State {
        self.rt[i].state.unwrap_or(State::Waiting)
    }

    fn entry(&self, i: usize) -> &Entry {
        &self.plan.entries[i]
    }

    /// Every entry but the tombstones of removed ones (src/reload.rs).
    fn live(&self) -> Vec<usize> {
        self.plan.live().collect()
    }

    fn set(&mut self, i: usize, to: State) {
        let from = self.state(i);
        if from == to {
            return;
        }
        debug_assert!(
            crate::state::allowed(from, to),
            "{}: {from:?} -> {to:?}",
            self.entry(i).name
        );
        if !crate::state::allowed(from, to) {
            tracing::error!(
                "{}: unexpected transition {from:?} -> {to:?}",
                self.entry(i).name
            );
        }
        self.rt[i].state = Some(to);
        // Held sockets close when no process is coming (a reload passes through Stopped with
        // a restart due: its backlog must survive).
        let no_process_coming =
            to == State::Failed || (to == State::Stopped && !self.rt[i].restart_after_stop);
        if no_process_coming && !self.entry(i).listen.is_empty() {
            let _ = self.runners[i].send(RunnerCmd::Release);
        }
        self.resolve_reloads(i, to);
        self.on_transition(i, from, to);
        if to == State::Ready && std::mem::take(&mut self.rt[i].crashed) {
            self.restart_followers(i);
        }
    }

    /// `restart_with` applies to every restart: after `i` restarted by itself (a crash), the
    /// entries naming it restart too, as after a reload of it.
    fn restart_followers(&mut self, i: usize) {
        for t in self.plan.cascade_targets(i) {
            tracing::info!(
                "{}: restarting with `{}` (it restarted after exiting)",
                self.entry(t).name,
                self.entry(i).name
            );
            let (reply, _) = oneshot::channel();
            self.reload(t, 0, reply);
        }
    }

    /// Runs until everything is stopped; returns the exit code.
    pub async fn run(mut self) -> i32 {
        let mut signals = listen_signals();
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

    /// Every catchable signal has a deliberate effect (README "Signals").
    fn on_any_signal(&mut self, sig: i32) {
        let name = signal_name(sig);
        match sig {
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => self.on_signal(&name),
            libc::SIGHUP => {
                tracing::info!("SIGHUP: reloading the process table");
                let (reply, _) = oneshot::channel();
                self.config_reload(crate::reload::Trigger::Sighup, reply);
            }
            libc::SIGUSR1 => {
                tracing::info!("SIGUSR1: nothing to reopen (service output goes to stdout and the in-memory log ring)")
            }
            libc::SIGUSR2 => eprint!("{}", self.status_text()),
            libc::SIGWINCH | libc::SIGURG | libc::SIGCONT => {
                tracing::debug!("{name} ignored")
            }
            _ => tracing::warn!("{name} ignored"),
        }
    }

    /// One line per entry (SIGUSR2).
    fn status_text(&self) -> String {
        let mut s = format!(
            "dmp-contained status (SIGUSR2): {}\n",
            self.overall().as_str()
        );
        for i in self.live() {
            let pid = self.rt[i].pid.map(|p| p.to_string()).unwrap_or("-".into());
            s += &format!(
                "  {:<24} {:<9} pid {:<8} restarts {}\n",
                self.entry(i).name,
                state_name(self.state(i)),
                pid,
                self.rt[i].restarts
            );
        }
        s
    }

    /// Keeps the init shim's stop plan current (src/pid1.rs `StopPlan`): what to stop, with
    /// which signal, in which order, should this process be killed.
    fn write_stop_plan(&mut self) {
        let Some(path) = &self.stop_plan else {
            return;
        };
        let entries = self
            .stop_order()
            .into_iter()
            .filter_map(|i| {
                let e = self.entry(i);
                Some(crate::pid1::PlannedStop {
                    signal: e.stop_signal,
                    timeout: e.stop_timeout,
                    pgid: self.rt[i].pid?,
                    marker: crate::process::marker(&e.name),
                })
            })
            .collect();
        let text = crate::pid1::StopPlan {
            budget: self.plan.settings.shutdown_timeout,
            entries,
        }
        .render();
        if text != self.stop_plan_written {
            if let Err(e) = crate::cache::write_atomic(path, text.as_bytes()) {
                tracing::warn!("cannot write the stop plan {}: {e}", path.display());
            }
            self.stop_plan_written = text;
        }
    }

    /// Dependents before their dependencies (the reverse of a topological order).
    fn stop_order(&self) -> Vec<usize> {
        fn visit(p: &Plan, i: usize, seen: &mut Vec<bool>, out: &mut Vec<usize>) {
            if std::mem::replace(&mut seen[i], true) {
                return;
            }
            for d in &p.entries[i].after {
                visit(p, d.idx, seen, out);
            }
            out.push(i);
        }
        let mut seen = vec![false; self.rt.len()];
        let mut out = Vec::new();
        for i in self.live() {
            visit(&self.plan, i, &mut seen, &mut out);
        }
        out.reverse();
        out
    }

    fn on_signal(&mut self, name: &str) {
        if let Some(at) = self.stop_requested_at {
            // One keypress or `docker stop` can arrive twice (directly and through the init
            // shim, or via a process-group kill): repeats within the window are the same request.
            if at.elapsed() < SIGNAL_REPEAT_WINDOW {
                tracing::info!("{name} repeated within {SIGNAL_REPEAT_WINDOW:?}: already stopping");
                return;
            }
        }
        self.stop_requested_at.get_or_insert_with(Instant::now);
        if self.stopping.is_some() {
            tracing::warn!("second {name}: killing every process group now");
            for r in &self.runners {
                let _ = r.send(RunnerCmd::Kill);
            }
        } else {
            tracing::info!("{name} received: stopping in reverse dependency order");
            self.begin_shutdown(None);
        }
    }

    fn begin_shutdown(&mut self, code: Option<i32>) {
        if self.stopping.is_none() {
            // Everything is killed a little before the budget ends, so that draining, exiting
            // and the init shim's sweep still fit in it (`docker stop` allows 10 s).
            let budget = self.plan.settings.shutdown_timeout;
            let reserve = (budget / 5).min(Duration::from_secs(1));
            let deadline = tokio::time::Instant::now() + budget - reserve;
            self.stopping = Some(deadline);
            if code.is_some() {
                self.exit_code = code;
            }
            // The budget is a named timer: when it runs out, everything is killed.
            let runners = self.runners.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                for r in &runners {
                    let _ = r.send(RunnerCmd::Kill);
                }
            });
        }
    }

    /// Done when nothing runs and nothing more can start (or we are stopping).
    fn finished(&self) -> bool {
        let any_active = self.live().into_iter().any(|i| self.state(i).is_active());
        if any_active {
            return false;
        }
        if self.stopping.is_some() {
            return true;
        }
        if self.rt.iter().any(|r| r.user_stopped) || self.reload_pending() {
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
    fn blocked(&self, i: usize) -> Option<String> {
        self.entry(i).after.iter().find_map(|d| {
            let s = self.state(d.idx);
            matches!(s, State::Failed | State::Stopped)
                .then(|| format!("blocked: dependency `{}` is {}", d.name, state_name(s)))
        })
    }

    /// Starts every waiting entry whose dependencies are satisfied; during shutdown, stops
    /// every active entry none of whose dependents is still active.
    fn schedule(&mut self) {
        if let Some(deadline) = self.stopping {
            for i in self.live() {
                let s = self.state(i);
                if !s.is_active() || s == State::Stopping {
                    continue;
                }
                let dependents_active = self
                    .transitive_dependents(i)
                    .any(|d| self.state(d).is_active());
                if !dependents_active {
                    self.stop_entry(i, deadline);
                }
            }
            return;
        }
        self.cache_progress();
        self.retry_failed_for_dependencies();
        loop {
            let mut progressed = false;
            for i in self.live() {
                if self.state(i) != State::Waiting || self.rt[i].user_stopped || self.is_retiring(i)
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
    fn retry_failed_for_dependencies(&mut self) {
        for i in self.live() {
            if self.state(i) != State::Failed || self.rt[i].user_stopped {
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
    fn transitive_dependents(&self, i: usize) -> impl Iterator<Item = usize> {
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
    fn off_reason(&self, i: usize) -> Option<String> {
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
    fn turn_on(&mut self, i: usize) -> String {
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

    fn start(&mut self, i: usize) {
        let rt = &mut self.rt[i];
        rt.gen += 1;
        rt.reason = None;
        rt.pid = None;
        rt.started = Some(Instant::now());
        rt.started_at = Some(crate::logs::now_ms());
        rt.ready_at = None;
        rt.time_to_ready = None;
        rt.runs += 1;
        let to = match self.entry(i).kind {
            Kind::Longrun => State::Starting,
            Kind::Oneshot => State::Running,
        };
        self.set(i, to);
        if self.cache_intercept_start(i) {
            return;
        }
        let _ = self.runners[i].send(RunnerCmd::Start);
    }

    fn stop_entry(&mut self, i: usize, deadline: tokio::time::Instant) {
        let s = self.state(i);
        self.rt[i].gen += 1;
        if s == State::Backoff {
            self.set(i, State::Stopped);
            return;
        }
        self.set(i, State::Stopping);
        let e = self.entry(i);
        let own = tokio::time::Instant::now() + e.stop_timeout;
        let _ = self.runners[i].send(RunnerCmd::Stop {
            deadline: own.min(deadline),
        });
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
            Internal::Cache(m) => self.on_cache(m),
        }
    }

    fn on_event(&mut self, ev: Event) {
        let i = ev.idx;
        let name = self.entry(i).name.clone();
        match ev.kind {
            EventKind::Spawned { pid } => {
                self.rt[i].pid = Some(pid);
                tracing::info!("{name}: started (pid {pid})");
            }
            EventKind::Probe(r) => {
                self.rt[i].last_probe = Some(crate::status::ProbeResult {
                    ok: r.is_ok(),
                    error: r.err(),
                    at: crate::logs::now_ms(),
                });
            }
            EventKind::Ready => {
                if self.state(i) == State::Starting {
                    let t = self.rt[i].started.map(|s| s.elapsed()).unwrap_or_default();
                    self.rt[i].time_to_ready = Some(t);
                    self.rt[i].ready_at = Some(crate::logs::now_ms());
                    self.set(i, State::Ready);
                    tracing::info!("{name}: ready after {:.3}s", t.as_secs_f64());
                }
            }
            EventKind::SpawnFailed(msg) => {
                tracing::error!("{name}: {msg}");
                self.logs[i].note(&self.out, format!("[dmp-contained] {msg}"));
                self.rt[i].reason = Some(msg.clone());
                let exit = ExitInfo {
                    code: Some(127),
                    signal: None,
                    at: crate::logs::now_ms(),
                };
                self.after_exit(i, exit, Some(msg));
            }
            EventKind::Lost { reason, cmds } => {
                self.runners[i] = cmds;
                self.rt[i].pid = None;
                tracing::error!("{name}: {reason}; its processes were killed");
                self.logs[i].note(&self.out, format!("[dmp-contained] {reason}"));
                match self.state(i) {
                    State::Stopping => self.on_event(Event {
                        idx: i,
                        kind: EventKind::StopDone,
                    }),
                    State::Starting | State::Ready | State::Running => {
                        let exit = ExitInfo {
                            code: None,
                            signal: None,
                            at: crate::logs::now_ms(),
                        };
                        self.after_exit(i, exit, Some(reason));
                    }
                    _ => {}
                }
            }
            EventKind::StopDone => {
                if self.state(i) == State::Stopping {
                    self.set(i, State::Stopped);
                    self.rt[i].pid = None;
                }
                if std::mem::take(&mut self.rt[i].restart_after_stop) && self.stopping.is_none() {
                    self.rt[i].user_stopped = false;
                    self.rt[i].restarts += 1;
                    self.set(i, State::Waiting);
                }
            }
            EventKind::Exited { exit, cause } => {
                self.rt[i].pid = None;
                let what = exit.describe();
                match &cause {
                    Cause::Stopped => {
                        tracing::info!("{name}: stopped ({what})");
                        self.rt[i].last_exit = Some(exit);
                        // StopDone (next on the same channel) completes the transition.
                    }
                    Cause::Own => {
                        if self.entry(i).kind == Kind::Longrun || !exit.success() {
                            tracing::warn!("{name}: exited with {what}");
                        } else {
                            tracing::info!("{name}: done");
                        }
                        self.after_exit(i, exit, None);
                    }
                    Cause::Probe(reason) => {
                        tracing::warn!("{name}: {reason}; process stopped ({what})");
                        self.logs[i].note(&self.out, format!("[dmp-contained] {reason}"));
                        self.after_exit(i, exit, Some(reason.clone()));
                    }
                }
            }
        }
    }

    /// An entry's process ended on its own (or never started): decide what comes next.
    fn after_exit(&mut self, i: usize, exit: ExitInfo, reason: Option<String>) {
        let kind = self.entry(i).kind;
        let success = exit.success() && reason.is_none();
        let code = exit.as_code();
        self.rt[i].last_exit = Some(exit.clone());
        if self.stopping.is_some() || self.state(i) == State::Stopping {
            self.set(i, State::Stopped);
            return;
        }
        if kind == Kind::Oneshot {
            if success {
                if self.cache_after_success(i) {
                    return;
                }
                self.set(i, State::Done);
                self.resolve_waiters(i, Ok(format!("{} done", self.entry(i).name)));
            } else {
                let why = reason.unwrap_or_else(|| format!("failed with {}", exit.describe()));
                self.fail(i, why, code);
            }
            return;
        }
        let uptime = self.rt[i].started.map(|s| s.elapsed()).unwrap_or_default();
        let policy = self.entry(i).restart.clone();
        match self.rt[i]
            .history
            .decide(&policy, success, uptime, Instant::now())
        {
            Decision::RestartAfter(d) => {
                self.rt[i].crashed = true;
                self.rt[i].reason = Some(match &reason {
                    Some(r) => format!("{r}; restarting in {d:?}"),
                    None => format!("exited with {}; restarting in {d:?}", exit.describe()),
                });
                self.set(i, State::Backoff);
                let gen = self.rt[i].gen;
                if d.is_zero() {
                    self.on_internal(Internal::BackoffDone { idx: i, gen });
                } else {
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = tx.send(Internal::BackoffDone { idx: i, gen });
                    });
                }
            }
            Decision::Stay => {
                self.rt[i].reason = Some(format!("exited with {}", exit.describe()));
                self.set(i, State::Stopped);
            }
            Decision::Fail(why) => {
                let why = match reason {
                    Some(r) => format!("{why}; last: {r}"),
                    None => format!("{why}; last: {}", exit.describe()),
                };
                self.fail(i, why, code);
            }
        }
    }

    fn fail(&mut self, i: usize, why: String, code: i32) {
        let name = self.entry(i).name.clone();
        tracing::error!("{name}: failed: {why}");
        self.rt[i].failed_while_unready = self
            .entry(i)
            .after
            .iter()
            .find(|d| !d.satisfied_by(self.state(d.idx)))
            .map(|d| d.name.clone());
        self.rt[i].reason = Some(why.clone());
        self.set(i, State::Failed);
        let exit_code = self.rt[i].last_exit.as_ref().and_then(|x| x.code);
        self.resolve_waiters(
            i,
            Err(Refused::Failed {
                message: why,
                exit_code,
            }),
        );
        if self.entry(i).critical {
            tracing::error!("{name} is critical: shutting down with exit code {code}");
            self.begin_shutdown(Some(if code == 0 { 1 } else { code }));
        }
    }

    fn resolve_waiters(&mut self, i: usize, r: Result<String, Refused>) {
        for w in self.rt[i].waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Shutdown(reply) => {
                self.shutdown_waiters.push(reply);
                self.begin_shutdown(None);
            }
            Control::Reload { idx, files, reply } => self.reload(idx, files, reply),
            Control::AwaitSettled { idx, reply } => match self.state(idx) {
                State::Ready | State::Done | State::Cached => {
                    let _ = reply.send(Ok(()));
                }
                State::Starting | State::Stopping | State::Waiting | State::Running
                    if self.stopping.is_none() =>
                {
                    self.rt[idx].reload_waiters.push(reply)
                }
                s => {
                    let why = self.rt[idx].reason.clone();
                    let _ = reply.send(Err(why.unwrap_or_else(|| state_name(s))));
                }
            },
            Control::Snapshot { op, name, reply } => self.cache_snapshot(op, name, reply),
            Control::ConfigReload { trigger, reply } => self.config_reload(trigger, reply),
            Control::Act {
                action,
                name,
                reply,
            } => {
                let r = self.act(action, &name);
                match r {
                    Ok(Some(msg)) => {
                        let _ = reply.send(Ok(msg));
                    }
                    Ok(None) => self.rt[self.plan.index(&name).unwrap()].waiters.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// Applies a mutation. `Ok(None)` means: reply when the oneshot finishes.
    fn act(&mut self, action: Action, name: &str) -> Result<Option<String>, Refused> {
        if self.stopping.is_some() {
            return Err("the supervisor is shutting down".into());
        }
        let i = self.plan.index(name).ok_or_else(|| Refused::UnknownEntry {
            name: name.into(),
            known: self.plan.names(),
        })?;
        let s = self.state(i);
        let kind = self.entry(i).kind;
        if self.is_retiring(i) {
            return Err(Refused::Conflict(format!(
                "`{name}` is being replaced by a config reload; try again when it settles"
            )));
        }
        if s == State::Skipped {
            return Err(Refused::Conflict(format!(
                "`{name}` is skipped: {}",
                self.rt[i].reason.clone().unwrap_or_default()
            )));
        }
        if s == State::Off && matches!(action, Action::Start | Action::Run | Action::Restart) {
            return Ok(Some(self.turn_on(i)));
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        match action {
            Action::Pause | Action::Resume => self.watch[i]
                .set_paused(action == Action::Pause, name)
                .map(Some)
                .map_err(Refused::Conflict),
            Action::Stop => {
                self.rt[i].user_stopped = true;
                // Held for a snapshot copy: the user's stop outlasts the hold.
                self.release_from_hold(i);
                if s.is_active() && s != State::Stopping {
                    self.stop_entry(i, far);
                    Ok(Some(format!("stopping {name}")))
                } else {
                    Ok(Some(format!("{name} is not running ({})", state_name(s))))
                }
            }
            Action::Start | Action::Run | Action::Restart => {
                if action == Action::Run && kind != Kind::Oneshot {
                    return Err(Refused::Conflict(format!(
                        "`{name}` is a longrun; `run` is for [step] entries (use restart)"
                    )));
                }
                if action == Action::Start && s.is_active() && s != State::Backoff {
                    return Ok(Some(format!("{name} is already {}", state_name(s))));
                }
                // A step never runs twice at once: `run` joins the current run's result.
                if kind == Kind::Oneshot && s == State::Running {
                    if action == Action::Run {
                        return Ok(None);
                    }
                    return Err(Refused::Conflict(format!(
                        "`{name}` is running; a step never runs concurrently with itself (`run {name}` waits for this run's result)"
                    )));
                }
                let deps_ok = self
                    .entry(i)
                    .after
                    .iter()
                    .all(|d| d.satisfied_by(self.state(d.idx)));
                if !deps_ok {
                    return Err(Refused::Conflict(format!(
                        "`{name}` cannot start yet: its dependencies are not satisfied"
                    )));
                }
                self.rt[i].user_stopped = false;
                self.rt[i].history = RestartHistory::default();
                if s.is_active() && s != State::Backoff {
                    self.rt[i].restart_after_stop = true;
                    if s != State::Stopping {
                        self.stop_entry(i, far);
                    }
                } else {
                    // From backoff: cancel the pending timer and start now.
                    self.rt[i].gen += 1;
                    if s != State::Waiting {
                        self.set(i, State::Waiting);
                    }
                    if action != Action::Start && kind == Kind::Oneshot {
                        self.cache_force(i);
                    }
                    if action != Action::Start {
                        self.rt[i].restarts +=
                            u32::from(self.rt[i].runs > 0 && kind == Kind::Longrun);
                    }
                }
                if kind == Kind::Oneshot && action == Action::Run {
                    return Ok(None);
                }
                Ok(Some(format!(
                    "{} {name}",
                    match action {
                        Action::Start => "starting",
                        _ => "restarting",
                    }
                )))
            }
        }
    }

    /// The stack as a whole (removed entries do not count).
    fn overall(&self) -> Overall {
        let live = self.live();
        if self.stopping.is_some() {
            Overall::Stopping
        } else if live
            .iter()
            .any(|&i| self.state(i) == State::Failed && !self.entry(i).optional)
        {
            Overall::Degraded
        } else if live
            .iter()
            .all(|&i| self.state(i).is_healthy() || self.entry(i).optional)
        {
            Overall::Running
        } else {
            Overall::Starting
        }
    }

    /// Publishes the status of this moment (readers fill in the live fields).
    fn publish(&self) {
        let mut st = Status::clone(&self.status.borrow());
        st.event_seq = self.progress.seq;
        st.critical_path = self.critical_path_status();
        st.supervisor.state = self.overall();
        st.entries = self
            .live()
            .into_iter()
            .map(|i| self.entry_status(i))
            .collect();
        st.config_reload = self.reload_status();
        self.status.send_replace(Arc::new(st));
    }

    fn entry_status(&self, i: usize) -> EntryStatus {
        let e = self.entry(i);
        let r = &self.rt[i];
        let s = self.state(i);
        let env = e
            .declared_env
            .iter()
            .map(|(k, v)| {
                let shown = if crate::interp::is_secret(k) {
                    "<redacted>".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect();
        let (waited_s, duration_s) = self.span_status(i);
        EntryStatus {
            idx: i,
            name: e.name.clone(),
            waited_s,
            duration_s,
            kind: e.kind,
            state: s,
            pid: r.pid,
            ready: s.satisfies(crate::plan::Cond::Ready) || s.satisfies(crate::plan::Cond::Done),
            required: !e.optional,
            critical: e.critical,
            started_at: r.started_at,
            ready_at: r.ready_at,
            uptime_s: None,
            time_to_ready_s: r.time_to_ready.map(|d| d.as_secs_f64()),
            restarts: r.restarts,
            runs: r.runs,
            last_exit: r.last_exit.clone(),
            last_probe: r.last_probe.clone(),
            reason: r.reason.clone().or_else(|| self.waiting_for(i)),
            after: e.after.iter().map(|d| d.label()).collect(),
            command: e.command.clone(),
            env,
            log_lines: 0,
            watch: None,
            cache_key: self.cache_key(i),
            log_tail: (s == State::Failed).then(|| {
                self.logs[i]
                    .tail(20)
                    .iter()
                    .map(|l| l.text.clone())
                    .collect()
            }),
            started: r.started,
        }
    }

    /// For a waiting entry: which dependencies it still waits for, and where they are.
    fn waiting_for(&self, i: usize) -> Option<String> {
        if self.state(i) != State::Waiting {
            return None;
        }
        let missing: Vec<String> = self
            .entry(i)
            .after
            .iter()
            .filter(|d| !d.satisfied_by(self.state(d.idx)))
            .map(|d| {
                let now = state_name(self.state(d.idx));
                format!("{} (now {now})", d.label())
            })
            .collect();
        (!missing.is_empty()).then(|| format!("waiting for {}", missing.join(", ")))
    }

    /// Hot reload of entry `i` (see `Control::Reload`). Like a restart, but it also brings
    /// back an entry in backoff or failed: the save that fixes the code recovers it.
    fn reload(&mut self, i: usize, files: usize, reply: oneshot::Sender<Result<(), String>>) {
        let name = self.entry(i).name.clone();
        let s = self.state(i);
        let refuse = if self.stopping.is_some() {
            Some("the supervisor is shutting down".to_string())
        } else if self.entry(i).removed || self.is_retiring(i) {
            Some(format!("{name} is being replaced by a config reload"))
        } else if self.rt[i].user_stopped {
            Some(format!(
                "{name} was stopped by request; start it to run the new code"
            ))
        } else if let Some(d) = self
            .entry(i)
            .after
            .iter()
            .find(|d| !d.satisfied_by(self.state(d.idx)))
        {
            Some(format!(
                "dependency `{}` is {}",
                d.name,
                state_name(self.state(d.idx))
            ))
        } else if s == State::Skipped {
            Some(format!("{name} is skipped"))
        } else {
            None
        };
        if let Some(why) = refuse {
            let _ = reply.send(Err(why));
            return;
        }
        tracing::info!("{name}: reloading ({files} changed files)");
        self.rt[i].reload_waiters.push(reply);
        self.rt[i].history = RestartHistory::default();
        match s {
            State::Starting | State::Ready | State::Running => {
                self.rt[i].restart_after_stop = true;
                self.stop_entry(i, tokio::time::Instant::now() + Duration::from_secs(3600));
            }
            State::Stopping => self.rt[i].restart_after_stop = true,
            // Its dependencies are satisfied: the next schedule starts it.
            State::Waiting => {}
            _ => {
                // Backoff, failed, stopped, done, cached: start again (a pending backoff
                // timer is stale once `gen` moves).
                self.rt[i].gen += 1;
                self.rt[i].restarts += u32::from(self.entry(i).kind == Kind::Longrun);
                self.set(i, State::Waiting);
            }
        }
    }

    /// Answers hot reloads of `i` once it lands somewhere that settles them.
    fn resolve_reloads(&mut self, i: usize, to: State) {
        if self.rt[i].reload_waiters.is_empty() {
            return;
        }
        let r = match to {
            State::Ready | State::Done | State::Cached => Ok(()),
            State::Backoff | State::Failed => {
                Err(self.rt[i].reason.clone().unwrap_or_else(|| state_name(to)))
            }
            State::Stopped if !self.rt[i].restart_after_stop => Err(self.rt[i]
                .reason
                .clone()
                .unwrap_or_else(|| "stopped".into())),
            _ => return,
        };
        for w in self.rt[i].reload_waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }
}

/// Every catchable signal but CHLD (tokio's reaping), PIPE (ignored: writes fail with
/// EPIPE instead) and the fault signals ILL, FPE, SEGV, BUS (a handler would loop on a real
/// fault), as one stream of signal numbers.
fn listen_signals() -> mpsc::UnboundedReceiver<i32> {
    let (tx, rx) = mpsc::unbounded_channel();
    let skip = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGCHLD,
        libc::SIGPIPE,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGSEGV,
        libc::SIGBUS,
    ];
    let sigs = (1..32).chain(libc::SIGRTMIN()..=libc::SIGRTMAX());
    for sig in sigs.filter(|s| !skip.contains(s)) {
        match signal(SignalKind::from_raw(sig)) {
            Ok(mut stream) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() && tx.send(sig).is_ok() {}
                });
            }
            Err(e) => tracing::warn!("cannot handle {}: {e}", signal_name(sig)),
        }
    }
    rx
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("SIGRTMIN+{}", sig - libc::SIGRTMIN()),
    }
}
