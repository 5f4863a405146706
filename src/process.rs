//! Spawning an entry in its own process group, and stopping that group completely.

use crate::plan::Entry;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How a process ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<String>,
    /// Unix ms.
    pub at: u64,
}

impl ExitInfo {
    pub fn from_status(st: std::process::ExitStatus) -> ExitInfo {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: st.code(),
            signal: st
                .signal()
                .and_then(|s| Signal::try_from(s).ok())
                .map(|s| s.as_str().to_string()),
            at: crate::logs::now_ms(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Shell convention: the code, or 128 + signal number.
    pub fn as_code(&self) -> i32 {
        match (&self.code, &self.signal) {
            (Some(c), _) => *c,
            (None, Some(s)) => 128 + s.parse::<Signal>().map(|s| s as i32).unwrap_or(0),
            _ => 1,
        }
    }

    pub fn describe(&self) -> String {
        match (&self.code, &self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "unknown status".into(),
        }
    }
}

/// Checks that every declared port is free (on all addresses and on loopback).
pub fn check_ports(entry: &Entry) -> Result<(), String> {
    for &port in &entry.ports {
        for addr in ["0.0.0.0", "127.0.0.1"] {
            if let Err(e) = std::net::TcpListener::bind((addr, port)) {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    return Err(format!(
                        "port {port} is already in use on this machine (needed by `{}`): stop whatever listens on it or change the port",
                        entry.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Spawns the entry: own process group, default signal dispositions, empty mask, stdin
/// from /dev/null, stdout/stderr piped, privileges dropped if `user` is set.
pub fn spawn(entry: &Entry) -> std::io::Result<Child> {
    let mut cmd = Command::new(&entry.command[0]);
    cmd.args(&entry.command[1..])
        .current_dir(&entry.cwd)
        .env_clear()
        .envs(entry.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(u) = &entry.user {
        let (uid, gid) = (u.uid, u.gid);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                crate::pid1::reset_signals();
                if libc::setgroups(1, &gid) != 0 && libc::getuid() == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.uid(uid).gid(gid);
    } else {
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(|| {
                crate::pid1::reset_signals();
                Ok(())
            });
        }
    }
    cmd.spawn()
}

/// Signals the whole group (and SIGCONT so a stopped group can act on it).
pub fn signal_group(pgid: u32, sig: Signal) {
    let pg = Pid::from_raw(-(pgid as i32));
    let _ = kill(pg, sig);
    if sig != Signal::SIGKILL && sig != Signal::SIGCONT {
        let _ = kill(pg, Signal::SIGCONT);
    }
}

pub fn group_alive(pgid: u32) -> bool {
    !matches!(kill(Pid::from_raw(-(pgid as i32)), None), Err(Errno::ESRCH))
}

/// Named timer of the group drain: no event says a process group became empty (its leftover
/// members are reaped by the init shim, not by us), so emptiness is checked with `kill(-pgid, 0)`
/// at 1, 2, 4 … ms, capped at 50 ms, only while a stop is in progress and never longer than the
/// stop's budget + 2 s.
const DRAIN_FIRST_CHECK: Duration = Duration::from_millis(1);
const DRAIN_MAX_CHECK: Duration = Duration::from_millis(50);

/// Waits until the group has no member (leftovers are reaped by the init shim), sending
/// SIGKILL once `kill_after` has passed. Bounded: gives up after `kill_after` + 2 s.
pub async fn drain_group(pgid: u32, kill_after: Duration) {
    let start = tokio::time::Instant::now();
    let mut killed = false;
    let mut step = DRAIN_FIRST_CHECK;
    while group_alive(pgid) {
        let elapsed = start.elapsed();
        if !killed && elapsed >= kill_after {
            signal_group(pgid, Signal::SIGKILL);
            killed = true;
        }
        if elapsed >= kill_after + Duration::from_secs(2) {
            tracing::warn!("process group {pgid} still has members after SIGKILL");
            return;
        }
        tokio::time::sleep(step).await;
        step = (step * 2).min(DRAIN_MAX_CHECK);
    }
}
