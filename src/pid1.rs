//! The init shim: a tiny synchronous process that runs the supervisor as its child,
//! forwards signals to it, reaps every zombie and passes its exit code through.
//!
//! As PID 1 it is the reaper of the namespace; elsewhere it registers as child subreaper so
//! orphans of services are still reaped here (the supervisor itself is not a subreaper, so
//! tokio's per-child waits never race with a `waitpid(-1)`). When the supervisor is gone it
//! sweeps every remaining descendant (TERM, grace, KILL) and waits for them before exiting.

use nix::errno::Errno;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Env var marking the child as the supervisor proper.
pub const ROLE_ENV: &str = "DMP_CONTAINED_ROLE";

/// Grace between TERM and KILL in the final sweep.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

pub fn run_shim() -> ! {
    let me = std::process::id();
    if me != 1 {
        // SAFETY: plain prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let all = SigSet::all();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None).expect("block signals");

    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ROLE_ENV, "supervisor")
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            reset_signals();
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

    let mut code: Option<i32> = None;
    while code.is_none() {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        match sig {
            Signal::SIGCHLD => code = reap(Some(child)),
            // Job-control stops make no sense for an init; ignore them.
            Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => {}
            other => {
                let _ = kill(child, other);
            }
        }
    }
    sweep(&all);
    std::process::exit(code.unwrap_or(1));
}

/// Reaps every exited child; returns the supervisor's exit code if it was among them.
fn reap(child: Option<Pid>) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if Some(pid) == child => code = Some(c),
            Ok(WaitStatus::Signaled(pid, s, _)) if Some(pid) == child => {
                code = Some(128 + s as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}

/// After the supervisor exited: TERM every remaining child of ours, wait up to the grace,
/// KILL what is left, and reap until no child remains.
fn sweep(all: &SigSet) {
    let me = std::process::id() as i32;
    let term_sent = Instant::now();
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
        if term_sent.elapsed() >= SWEEP_GRACE {
            // Repeated: grandchildren are reparented to us as their parents die.
            for pid in children_of(me) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            killed = true;
        }
        let left = if killed {
            Duration::from_millis(100)
        } else {
            SWEEP_GRACE.saturating_sub(term_sent.elapsed())
        };
        let _ = timed_wait(all, left);
    }
}

/// sigtimedwait: waits for a pending signal (SIGCHLD) or the timeout.
fn timed_wait(set: &SigSet, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid pointers to a sigset and a timespec.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
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

/// Default dispositions and an empty mask: called between fork and exec of every child,
/// since ignored signals and the blocked mask survive exec.
pub fn reset_signals() {
    // SAFETY: async-signal-safe libc calls only.
    unsafe {
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}
