//! One task per entry owns its `Child`: spawns it on command, runs its probes, reports
//! events, and stops its process group completely. It makes no lifecycle decisions: those
//! belong to the supervisor (commands in, events out); it may not touch lifecycle state.
//! `checks` holds what is watched while a process runs (readiness, liveness, progress notes).

mod checks;

use checks::{liveness, ready, tick};

use crate::logs::{pump, EntryLog, Output, Stream};
use crate::plan::{Entry, Kind, ProbeKind};
use crate::process::{self, ExitInfo};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug)]
pub enum RunnerCmd {
    Start,
    /// Graceful stop of the current process group (no-op when idle).
    /// Answered by `StopDone` (after `Exited` when there was a process), on the same channel.
    Stop {
        deadline: Instant,
    },
    /// SIGKILL the group now (second SIGTERM, or shutdown budget exhausted).
    Kill,
    /// No process is coming (failed, or stopped by request): close the held `listen` sockets so
    /// a client is refused at once instead of waiting in a backlog nobody accepts from. The
    /// next `Start` binds them again.
    Release,
}

#[derive(Debug)]
pub enum EventKind {
    Spawned {
        pid: u32,
    },
    SpawnFailed(String),
    Probe(Result<(), String>),
    Ready,
    Exited {
        exit: ExitInfo,
        cause: Cause,
    },
    /// A requested stop has completed (the group is empty).
    StopDone,
    /// The runner task panicked: the entry's processes were killed, and a new runner
    /// listens on `cmds` (`spawn_supervised` below).
    Lost {
        reason: String,
        cmds: mpsc::UnboundedSender<RunnerCmd>,
    },
}

/// Why a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// It exited by itself.
    Own,
    /// We stopped it on request.
    Stopped,
    /// We killed it (readiness never came, liveness failed, a step's `timeout` expired), or
    /// a step exited 0 without producing its declared outputs.
    Probe(String),
}

#[derive(Debug)]
pub struct Event {
    pub idx: usize,
    pub kind: EventKind,
}

pub struct Runner {
    pub idx: usize,
    /// `DMP_CONTAINED_ENTRY` value of this entry's processes (src/process.rs).
    pub marker: String,
    pub entry: Arc<Entry>,
    pub log: Arc<EntryLog>,
    pub out: Arc<Output>,
    pub events: mpsc::UnboundedSender<Event>,
    pub cmds: mpsc::UnboundedReceiver<RunnerCmd>,
    /// The entry's `listen` sockets, held across restarts (and across a lost runner).
    pub held: Arc<crate::sockets::Held>,
}

/// Spawns the runner of an entry under a watcher task: a panic in the runner (a bug) becomes
/// a `Lost` event instead of an entry that can never stop. Returns the command channel.
pub fn spawn_supervised(
    idx: usize,
    entry: Arc<Entry>,
    log: Arc<EntryLog>,
    out: Arc<Output>,
    events: mpsc::UnboundedSender<Event>,
) -> mpsc::UnboundedSender<RunnerCmd> {
    let (tx, mut cmds) = mpsc::unbounded_channel();
    let marker = process::marker(&entry.name);
    let held = Arc::new(crate::sockets::Held::default());
    tokio::spawn(async move {
        loop {
            let runner = Runner {
                idx,
                marker: marker.clone(),
                entry: entry.clone(),
                log: log.clone(),
                out: out.clone(),
                events: events.clone(),
                cmds,
                held: held.clone(),
            };
            let err = match tokio::spawn(runner.run()).await {
                Err(e) if e.is_panic() => e,
                _ => return,
            };
            let reason = panic_message(err.into_panic());
            process::kill_members(&marker, None);
            let (tx, rx) = mpsc::unbounded_channel();
            cmds = rx;
            let kind = EventKind::Lost {
                reason: format!("internal error (runner panicked: {reason})"),
                cmds: tx,
            };
            if events.send(Event { idx, kind }).is_err() {
                return;
            }
        }
    });
    tx
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Runner {
    fn send(&self, kind: EventKind) {
        let _ = self.events.send(Event {
            idx: self.idx,
            kind,
        });
    }

    pub async fn run(mut self) {
        while let Some(cmd) = self.cmds.recv().await {
            match cmd {
                RunnerCmd::Start => self.run_once().await,
                RunnerCmd::Stop { .. } => self.send(EventKind::StopDone),
                RunnerCmd::Kill => {}
                RunnerCmd::Release => self.held.release(),
            }
        }
    }

    /// One run of the entry: spawn it, watch it until it ends, report its exit.
    async fn run_once(&mut self) {
        let Some(mut run) = self.spawn().await else {
            return;
        };
        let (exit, cause, stop_requested) = self.watch(&mut run).await;
        self.finish(run, exit, cause, stop_requested).await;
    }

    /// Ports free, held sockets, a notify socket for `ready = notify`, then the process.
    /// `None` when something failed (`SpawnFailed` has been sent).
    async fn spawn(&mut self) -> Option<Run> {
        let fail = |r: &Self, e: String| {
            r.send(EventKind::SpawnFailed(e));
            None
        };
        if let Err(e) = process::check_ports(&self.entry) {
            return fail(self, e);
        }
        let listen = match self.held.fds(&self.entry) {
            Ok(fds) => fds,
            Err(e) => return fail(self, e),
        };
        let kind = self.entry.ready.as_ref().map(|p| &p.kind);
        let notify = match kind {
            Some(ProbeKind::Notify(_)) => match crate::notify::Notify::bind(&self.entry) {
                Ok(n) => Some(n),
                Err(e) => return fail(self, e),
            },
            _ => None,
        };
        let log_rx =
            matches!(kind, Some(ProbeKind::Log(_))).then(|| crate::notify::subscribe(&self.log));
        let watchdog = match kind {
            Some(ProbeKind::Notify(Some(d))) => Some(*d),
            _ => None,
        };
        let mut extra: Vec<_> = notify.iter().map(|n| n.env()).collect();
        if let Some(d) = watchdog {
            extra.push(("WATCHDOG_USEC".into(), d.as_micros().to_string()));
        }
        let mut child = match process::spawn(&self.entry, listen, &extra) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start `{}`: {e}", self.entry.command.join(" "));
                return fail(self, msg);
            }
        };
        let pid = child.id().unwrap_or(0);
        let pumps =
            [
                child.stdout.take().map(|o| {
                    tokio::spawn(pump(o, self.log.clone(), self.out.clone(), Stream::Stdout))
                }),
                child.stderr.take().map(|e| {
                    tokio::spawn(pump(e, self.log.clone(), self.out.clone(), Stream::Stderr))
                }),
            ];
        self.send(EventKind::Spawned { pid });
        Some(Run {
            child,
            pid,
            pumps,
            notify,
            log_rx,
            watchdog,
        })
    }

    /// Until the process ends or is stopped: readiness, liveness, a step's `timeout` and
    /// progress notes, and commands. Returns its exit, why, and whether a stop was requested.
    async fn watch(&mut self, run: &mut Run) -> (ExitInfo, Cause, bool) {
        let (entry, log, out) = (self.entry.clone(), self.log.clone(), self.out.clone());
        let (child, pid) = (&mut run.child, run.pid);
        let ready = ready(
            &entry,
            run.log_rx.take(),
            &run.notify,
            &log,
            &out,
            self.reporter(),
        );
        let liveness = liveness(&entry, run.watchdog, &run.notify, self.reporter());
        let started = Instant::now();
        let is_step = entry.kind == Kind::Oneshot;
        let timeout = async {
            match entry.timeout {
                Some(t) if is_step => tokio::time::sleep(t).await,
                _ => std::future::pending().await,
            }
        };
        let mut progress = entry
            .progress
            .filter(|_| is_step)
            .map(|p| tokio::time::interval_at(started + p, p));
        tokio::pin!(ready, liveness, timeout);
        let mut is_ready = false;
        let soon = || Instant::now() + entry.stop_timeout;
        loop {
            tokio::select! {
                st = child.wait() => {
                    return (st.map(ExitInfo::from_status).unwrap_or_else(|_| unknown_exit()), Cause::Own, false);
                }
                r = &mut ready, if !is_ready => {
                    is_ready = true;
                    match r {
                        Ok(()) => self.send(EventKind::Ready),
                        Err(e) => {
                            let reason = format!("readiness probe failed: {e}");
                            return (self.stop(child, pid, soon()).await, Cause::Probe(reason), false);
                        }
                    }
                }
                e = &mut liveness, if is_ready => {
                    let reason = format!("liveness probe failed: {e}");
                    return (self.stop(child, pid, soon()).await, Cause::Probe(reason), false);
                }
                _ = &mut timeout => {
                    let t = entry.timeout.unwrap_or_default().as_secs_f64();
                    let reason = format!("timed out after {t} s (the step's `timeout`); killed");
                    return (self.stop(child, pid, soon()).await, Cause::Probe(reason), false);
                }
                _ = tick(progress.as_mut()) => self.note_progress(started),
                cmd = self.cmds.recv() => match cmd {
                    Some(RunnerCmd::Stop { deadline }) => {
                        return (self.stop(child, pid, deadline).await, Cause::Stopped, true);
                    }
                    Some(RunnerCmd::Kill) => process::signal_group(pid, Signal::SIGKILL),
                    Some(RunnerCmd::Start | RunnerCmd::Release) => {}
                    None => return (self.stop(child, pid, soon()).await, Cause::Stopped, false),
                },
            }
        }
    }

    /// Probe results go to the loop as `Probe` events.
    fn reporter(&self) -> impl Fn(&Result<(), String>) + Clone {
        let (events, idx) = (self.events.clone(), self.idx);
        move |r: &Result<(), String>| {
            let _ = events.send(Event {
                idx,
                kind: EventKind::Probe(r.clone()),
            });
        }
    }

    /// After the leader's exit: the rest of its processes killed, the output flushed, a
    /// step's declared outputs checked, then `Exited` (and `StopDone` for a requested stop).
    async fn finish(&mut self, run: Run, exit: ExitInfo, cause: Cause, stop_requested: bool) {
        let entry = self.entry.clone();
        // Nothing the entry started may outlive its leader (nginx workers, forked helpers,
        // daemons that left the group, Postgres children keeping its shared memory): all
        // gone before `Exited` is reported, so before any restart.
        let n = process::stop_members(
            &self.marker,
            Some(run.pid),
            process::shim_pid(),
            Signal::SIGKILL,
            Instant::now(),
        )
        .await;
        if n > 0 {
            tracing::info!("{}: killed {n} leftover process(es)", entry.name);
        }
        // Let the pumps flush the last lines, bounded: a leaked pipe must not block us.
        for p in run.pumps.into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
        }
        let is_step = entry.kind == Kind::Oneshot;
        let cause = match (&cause, &entry.cache) {
            (Cause::Own, Some(c)) if is_step && exit.success() => {
                let problems: Vec<String> = c
                    .outputs
                    .iter()
                    .filter_map(|o| crate::cache::output_problem(o))
                    .collect();
                if problems.is_empty() {
                    cause
                } else {
                    Cause::Probe(format!("exited 0 but {}", problems.join("; ")))
                }
            }
            _ => cause,
        };
        self.send(EventKind::Exited { exit, cause });
        if stop_requested {
            self.send(EventKind::StopDone);
        }
    }

    /// Stop signal to the group, wait for the leader until `deadline`, then SIGKILL; a
    /// `Kill` command escalates at once. Returns the leader's exit.
    async fn stop(
        &mut self,
        child: &mut tokio::process::Child,
        pgid: u32,
        deadline: Instant,
    ) -> ExitInfo {
        let sig = self.entry.stop_signal;
        process::signal_group(pgid, sig);
        // Daemons that left the group get the stop request too.
        process::signal_each(&process::escaped(&self.marker, pgid), sig);
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        let mut killed = false;
        loop {
            tokio::select! {
                st = child.wait() => {
                    let exit = st.map(ExitInfo::from_status).unwrap_or_else(|_| unknown_exit());
                    let kill_at = if killed { Instant::now() } else { deadline };
                    process::stop_members(&self.marker, Some(pgid), process::shim_pid(), sig, kill_at).await;
                    return exit;
                }
                _ = &mut sleep, if !killed => {
                    tracing::warn!("{}: did not stop within its timeout after {}; sending SIGKILL to its process group", self.entry.name, sig.as_str());
                    process::signal_group(pgid, Signal::SIGKILL);
                    killed = true;
                }
                cmd = self.cmds.recv(), if !killed => {
                    if let Some(RunnerCmd::Kill) | None = cmd {
                        process::signal_group(pgid, Signal::SIGKILL);
                        killed = true;
                    }
                }
            }
        }
    }
}

/// A spawned process and what its probes need.
struct Run {
    child: tokio::process::Child,
    pid: u32,
    pumps: [Option<tokio::task::JoinHandle<()>>; 2],
    notify: Option<crate::notify::Notify>,
    log_rx: Option<crate::notify::LogRx>,
    watchdog: Option<Duration>,
}

fn unknown_exit() -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        at: crate::logs::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Format;

    fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    }

    /// A bug in a runner (here: an exec probe with no command, which `check` now rejects)
    /// panics its task: the entry's process is killed, a `Lost` event carries a fresh runner,
    /// and that runner obeys commands (so the supervisor can still stop everything).
    #[tokio::test]
    async fn a_panicking_runner_is_an_event_and_its_processes_are_killed() {
        let env = std::env::vars().collect();
        let src = "[process.a]\ncommand = [\"sleep\", \"1000\"]\nready = { exec = [\"true\"] }\n";
        let mut plan = crate::config::parse(std::path::Path::new("/tmp/t.toml"), src, &env)
            .map_err(|e| e.to_string())
            .unwrap();
        let mut entry = plan.entries.remove(0);
        entry.ready.as_mut().unwrap().kind = ProbeKind::Exec(vec![]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let log = EntryLog::new("a", 0, 100);
        let out = Output::stdout(Format::Json);
        let cmds = spawn_supervised(0, Arc::new(entry), log, out, tx);
        cmds.send(RunnerCmd::Start).unwrap();
        let mut pid = None;
        let fresh = loop {
            match rx.recv().await.unwrap().kind {
                EventKind::Spawned { pid: p } => pid = Some(p),
                EventKind::Lost { reason, cmds } => {
                    assert!(reason.contains("panicked"), "{reason}");
                    break cmds;
                }
                _ => {}
            }
        };
        let pid = pid.expect("spawned before the panic");
        let start = Instant::now();
        while !gone(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "pid {pid} still alive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        fresh.send(RunnerCmd::Stop { deadline }).unwrap();
        assert!(matches!(rx.recv().await.unwrap().kind, EventKind::StopDone));
    }
}
