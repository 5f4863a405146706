//! The init shim: a tiny synchronous process that runs the supervisor as its child,
//! forwards signals to it, reaps every zombie and passes its exit code through.
//!
//! As PID 1 it is the reaper of the namespace; elsewhere it registers as child subreaper so
//! orphans of services are still reaped here (the supervisor itself is not a subreaper, so
//! tokio's per-child waits never race with a `waitpid(-1)`). Its loop is a signal-hook
//! iterator: every catchable signal is forwarded to the supervisor except CHLD (reaping),
//! TSTP/TTIN/TTOU (job control means nothing to an init) and BUS (a fault signal: logged,
//! ignored); ILL, FPE and SEGV sent with kill(2) stay blocked.
//!
//! The supervisor dies with the shim (`PR_SET_PDEATHSIG`: SIGTERM, a graceful stop). When the
//! supervisor is gone, the shim stops what is left within the shutdown budget: first each
//! entry of the supervisor's stop plan (a file it keeps current, see `STOP_PLAN_ENV`) with its
//! own stop signal, in reverse dependency order; then every remaining descendant (TERM,
//! grace, KILL), and waits for them before exiting.
#![allow(unsafe_code)] // fork/exec of the supervisor, prctl, raw signals, setitimer; every site has a SAFETY comment
use nix::errno::Errno;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{FORBIDDEN, SIGBUS, SIGCHLD, SIGTSTP, SIGTTIN, SIGTTOU};
use signal_hook::iterator::Signals;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::ROLE_ENV;

/// Env var naming the supervisor's stop-plan file (see `StopPlan`).
pub const STOP_PLAN_ENV: &str = "DMP_CONTAINED_STOP_PLAN";

/// Grace between TERM and KILL in the final sweep (shortened to fit the budget).
const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// Signals the shim never forwards.
const NOT_FORWARDED: &[i32] = &[SIGCHLD, SIGTSTP, SIGTTIN, SIGTTOU, SIGBUS];
/// Fault signals: signal-hook cannot catch them; sent with kill(2) they stay blocked.
const BLOCKED: &[Signal] = &[Signal::SIGILL, Signal::SIGFPE, Signal::SIGSEGV];

/// Every catchable signal the shim handles (1–31 and the real-time ones).
fn shim_signals() -> Vec<i32> {
    (1..=libc::SIGRTMAX())
        .filter(|s| !FORBIDDEN.contains(s) && (*s < 32 || *s >= libc::SIGRTMIN()))
        .collect()
}

pub fn run_shim() -> ! {
    let me = std::process::id();
    if me != 1 {
        // SAFETY: plain prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let mut faults = SigSet::empty();
    BLOCKED.iter().for_each(|s| faults.add(*s));
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&faults), None);
    let mut signals = Signals::new(shim_signals()).expect("signal handlers");
    let plan_dir = stop_plan_dir();

    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ROLE_ENV, "supervisor")
        .process_group(0);
    if let Some(d) = &plan_dir {
        cmd.env(STOP_PLAN_ENV, d.join("stop-plan"));
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            crate::process::reset_signals();
            // If the shim is killed, the supervisor stops the stack instead of running headless.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            eprintln!("dmp-contained: cannot start the supervisor: {e}");
            std::process::exit(1);
        }
    };

    // From here on the shim runs a few small loops: it keeps no page of the big binary it
    // does not use (src/trim.rs).
    crate::trim::trim();
    let status = forward_until_exit(&mut signals, child);
    // A supervisor that exits normally leaves an empty plan; one that was killed (or
    // panicked) leaves what was running.
    let plan = plan_dir
        .as_ref()
        .and_then(|d| StopPlan::read(&d.join("stop-plan")));
    let deadline = plan.filter(|p| !p.entries.is_empty()).map(|plan| {
        eprintln!(
            "dmp-contained: init: the supervisor ended ({status:?}) with {} entries running: stopping them with their own stop signals",
            plan.entries.len()
        );
        plan.run(&mut signals)
    });
    sweep(&mut signals, deadline);
    if let Some(d) = &plan_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    std::process::exit(match status {
        Some(WaitStatus::Exited(_, c)) => c,
        Some(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 1,
    });
}

/// Forwards signals to the supervisor and reaps until it has exited; returns its status.
fn forward_until_exit(signals: &mut Signals, child: Pid) -> Option<WaitStatus> {
    let mut status: Option<WaitStatus> = None;
    while status.is_none() {
        for sig in signals.wait() {
            if sig == SIGCHLD {
                status = reap(Some(child)).or(status);
            } else if NOT_FORWARDED.contains(&sig) {
                if sig == SIGBUS {
                    eprintln!("dmp-contained: init: SIGBUS ignored");
                }
            } else if let Ok(s) = Signal::try_from(sig) {
                let _ = kill(child, s);
            } else {
                // Real-time signals: nix has no enum for them.
                // SAFETY: plain kill(2).
                unsafe { libc::kill(child.as_raw(), sig) };
            }
        }
    }
    status
}

/// A private directory for the stop plan (0700, created by us; none if that fails).
fn stop_plan_dir() -> Option<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "dmp-contained-init.{}.{}",
        std::process::id(),
        crate::logs::now_ms()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .ok()
        .map(|_| dir)
}

/// What the shim does if the supervisor dies with entries running. The supervisor rewrites it
/// (atomically) whenever an entry's process starts or ends:
/// `budget_ms N` then one line per running entry, in stop order (reverse dependency order):
/// `SIGNAL TIMEOUT_MS PGID MARKER`.
#[derive(Debug, Default, PartialEq)]
pub struct StopPlan {
    pub budget: Duration,
    pub entries: Vec<PlannedStop>,
}

#[derive(Debug, PartialEq)]
pub struct PlannedStop {
    pub signal: Signal,
    pub timeout: Duration,
    pub pgid: u32,
    pub marker: String,
}

impl StopPlan {
    pub fn render(&self) -> String {
        let mut s = format!("budget_ms {}\n", self.budget.as_millis());
        for e in &self.entries {
            s += &format!(
                "{} {} {} {}\n",
                e.signal.as_str(),
                e.timeout.as_millis(),
                e.pgid,
                e.marker
            );
        }
        s
    }

    pub fn parse(text: &str) -> Option<StopPlan> {
        let mut lines = text.lines();
        let budget = lines.next()?.strip_prefix("budget_ms ")?.parse().ok()?;
        let entries = lines
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                Some(PlannedStop {
                    signal: f.next()?.parse().ok()?,
                    timeout: Duration::from_millis(f.next()?.parse().ok()?),
                    pgid: f.next()?.parse().ok().filter(|p| *p > 1)?,
                    marker: f.next()?.to_string(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(StopPlan {
            budget: Duration::from_millis(budget),
            entries,
        })
    }

    /// Only a plain file of our own user (never follow a planted symlink).
    fn read(path: &std::path::Path) -> Option<StopPlan> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(path).ok()?;
        if !md.is_file() || md.uid() != nix::unistd::geteuid().as_raw() {
            return None;
        }
        StopPlan::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Stops each entry in order, each within its timeout and all within the budget (minus a
    /// reserve for the final sweep). Returns the budget's deadline.
    fn run(&self, signals: &mut Signals) -> Instant {
        let start = Instant::now();
        let deadline = start + self.budget;
        let reserve = (self.budget / 10).min(Duration::from_secs(1));
        for e in &self.entries {
            let _ = kill(Pid::from_raw(-(e.pgid as i32)), e.signal);
            let _ = kill(Pid::from_raw(-(e.pgid as i32)), Signal::SIGCONT);
            let escaped = crate::process::escaped(&e.marker, e.pgid);
            crate::process::signal_each(&escaped, e.signal);
            let until = (Instant::now() + e.timeout).min(deadline - reserve);
            while !crate::process::members(&e.marker, Some(e.pgid), None).is_empty() {
                if Instant::now() >= until {
                    let left = crate::process::members(&e.marker, Some(e.pgid), None);
                    crate::process::signal_each(&left, Signal::SIGKILL);
                    break;
                }
                wait_for(signals, until.saturating_duration_since(Instant::now()));
            }
        }
        deadline
    }
}

/// Reaps every exited child; returns the supervisor's status if it was among them.
fn reap(child: Option<Pid>) -> Option<WaitStatus> {
    let mut status = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(st @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if Some(pid) == child =>
            {
                status = Some(st)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return status,
            Ok(_) => {}
        }
    }
}

/// After the supervisor exited: TERM every remaining child of ours, wait up to the grace
/// (ending before `deadline` when the stop plan used the budget), KILL what is left, and reap
/// until no child remains.
fn sweep(signals: &mut Signals, deadline: Option<Instant>) {
    let me = std::process::id() as i32;
    let term_sent = Instant::now();
    let grace = deadline
        .map(|d| d.saturating_duration_since(term_sent).min(SWEEP_GRACE))
        .unwrap_or(SWEEP_GRACE);
    let mut killed = false;
    for pid in children_of(me) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    }
    loop {
        reap(None);
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => {}
            _ => continue,
        }
        if term_sent.elapsed() >= grace {
            // Repeated: grandchildren are reparented to us as their parents die.
            for pid in children_of(me) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            killed = true;
        }
        let left = if killed {
            Duration::from_millis(100)
        } else {
            grace.saturating_sub(term_sent.elapsed())
        };
        wait_for(signals, left);
    }
}

/// Waits for the next signal (SIGCHLD: something exited), at most `timeout`: a one-shot
/// SIGALRM timer (setitimer) wakes the signal-hook iterator. Reaps what exited.
fn wait_for(signals: &mut Signals, timeout: Duration) {
    let timeout = timeout.max(Duration::from_millis(1));
    let t = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        },
    };
    // SAFETY: valid pointer to an itimerval.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
    for _ in signals.wait() {}
    reap(None);
}

/// Processes whose parent is `ppid` (from /proc).
pub fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<i32>().ok()
                })
                == Some(ppid)
        })
        .collect()
}
