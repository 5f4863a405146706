//! Spawning an entry in its own process group, and stopping every process it started.
//!
//! A process group misses whatever called `setsid()` (every Postgres child, double-forking
//! daemons). So every entry's processes also carry a marker in their environment,
//! `DMP_CONTAINED_ENTRY=<name>:<supervisor instance>`, inherited by all descendants, and an
//! entry's members are found in one /proc scan: its group, every process bearing its marker,
//! and every descendant of those (Postgres children overwrite their environment with their
//! process title, but stay children of the marked postmaster). When a marked leader died,
//! its unmarked orphans (children of the init shim with no marker left) are members too.
#![allow(unsafe_code)] // pre_exec hooks between fork and exec; every site has a SAFETY comment

use crate::plan::Entry;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How a process ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    /// Shown by name (`SIGKILL`).
    #[serde(with = "signal_name")]
    pub signal: Option<Signal>,
    /// Unix ms.
    pub at: u64,
}

impl ExitInfo {
    pub fn from_status(st: std::process::ExitStatus) -> ExitInfo {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: st.code(),
            signal: st.signal().and_then(|s| Signal::try_from(s).ok()),
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
            (None, Some(s)) => 128 + *s as i32,
            _ => 1,
        }
    }

    pub fn describe(&self) -> String {
        match (&self.code, &self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {}", s.as_str()),
            _ => "unknown status".into(),
        }
    }
}

/// `ExitInfo::signal` as its name in JSON (`"SIGTERM"`), parsed back by clients.
mod signal_name {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Option<Signal>, ser: S) -> Result<S::Ok, S::Error> {
        match s {
            Some(s) => ser.serialize_some(s.as_str()),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Signal>, D::Error> {
        Option::<String>::deserialize(de)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Checks that every declared port is free (on all addresses and on loopback).
/// A port the entry holds through `listen` (src/sockets.rs) is its own: not checked.
pub fn check_ports(entry: &Entry) -> Result<(), String> {
    let held = |p: u16| entry.listen.iter().any(|a| a.port() == p);
    for &port in entry.ports.iter().filter(|&&p| !held(p)) {
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
/// from /dev/null, stdout/stderr piped, privileges dropped if `user` is set; `listen` holds
/// the entry's held sockets, passed as fds 3… by the systemd protocol (src/sockets.rs).
/// `extra`: variables of this start only (`NOTIFY_SOCKET`).
pub fn spawn(
    entry: &Entry,
    listen: Vec<std::os::fd::RawFd>,
    extra: &[(String, String)],
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&entry.command[0]);
    cmd.args(&entry.command[1..])
        .current_dir(&entry.cwd)
        .env_clear()
        .envs(entry.env.iter().map(|(k, v)| (k, v)))
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .env(MARKER_ENV, marker(&entry.name))
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
                reset_signals();
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
                reset_signals();
                Ok(())
            });
        }
    }
    if !listen.is_empty() {
        let mut exec = socket_exec(entry, listen, extra)?;
        // SAFETY: `exec_in_child` is async-signal-safe (fd syscalls, getpid, execve).
        unsafe {
            cmd.pre_exec(move || Err(exec.exec_in_child()));
        }
    }
    let child = cmd.spawn()?;
    use std::os::fd::AsRawFd;
    let pipes = [
        child.stdout.as_ref().map(|p| p.as_raw_fd()),
        child.stderr.as_ref().map(|p| p.as_raw_fd()),
    ];
    for fd in pipes.into_iter().flatten() {
        // Best effort (an unprivileged user past its pipe quota keeps the default 64 KiB):
        // a service writing in bursts runs on instead of waiting for each 64 KiB to be read.
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE));
    }
    Ok(child)
}

/// Capacity of the pipes that carry an entry's stdout and stderr. The kernel allocates a
/// pipe's pages as data arrives, so an idle pipe costs nothing more.
const OUTPUT_PIPE: libc::c_int = 1 << 20;

/// The `execve` of an entry with held sockets, prepared before `fork`.
fn socket_exec(
    entry: &Entry,
    fds: Vec<std::os::fd::RawFd>,
    extra: &[(String, String)],
) -> std::io::Result<crate::sockets::Exec> {
    let path_var = entry
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
    let path = find_executable(&entry.command[0], &entry.cwd, path_var).ok_or_else(not_found)?;
    let mut ours = crate::sockets::env(entry, fds.len());
    ours.extend(extra.iter().cloned());
    let mut env: Vec<(String, String)> = entry
        .env
        .iter()
        .filter(|(k, _)| k != MARKER_ENV && !ours.iter().any(|(o, _)| o == k))
        .cloned()
        .collect();
    env.push((MARKER_ENV.into(), marker(&entry.name)));
    env.extend(ours);
    crate::sockets::Exec::new(&path, &entry.command, &env, fds)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// Signals the whole group (and SIGCONT so a stopped group can act on it).
pub fn signal_group(pgid: u32, sig: Signal) {
    let pg = Pid::from_raw(-(pgid as i32));
    let _ = kill(pg, sig);
    if sig != Signal::SIGKILL && sig != Signal::SIGCONT {
        let _ = kill(pg, Signal::SIGCONT);
    }
}

/// Named timer of the member drain: no event says an entry's processes are all gone (its
/// leftover members are reaped by the init shim, not by us), so emptiness is checked with a
/// /proc scan at 1, 2, 4 … ms, capped at 50 ms, only while a stop is in progress and never
/// longer than the stop's deadline + 1 s.
const DRAIN_FIRST_CHECK: Duration = Duration::from_millis(1);
const DRAIN_MAX_CHECK: Duration = Duration::from_millis(50);

/// Environment variable inherited by every process an entry starts.
pub const MARKER_ENV: &str = "DMP_CONTAINED_ENTRY";

/// This supervisor instance: its pid and start time, so markers of another supervisor
/// (another pid namespace, an earlier run) never match ours.
fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| format!("{}-{}", std::process::id(), crate::logs::now_ms()))
}

/// The marker value of entry `name` in this supervisor instance.
pub fn marker(name: &str) -> String {
    format!("{name}:{}", instance())
}

/// One process as seen in /proc.
struct ProcInfo {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    /// The `DMP_CONTAINED_ENTRY` value, if its environment (still) has one.
    marker: Option<String>,
}

fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 2..].split(' ');
    let state = rest.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let prefix = format!("{MARKER_ENV}=");
    let marker = environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    Some(ProcInfo {
        pid,
        ppid,
        pgrp,
        marker,
    })
}

fn all_procs() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_info)
        .collect()
}

/// Every live (non-zombie) process of the entry marked `marker` whose group is `pgid`:
/// the group, the marked processes, their descendants, and, when `orphans_of` is given
/// (the reaper orphans are reparented to: the init shim), that reaper's unmarked children.
pub fn members(marker: &str, pgid: Option<u32>, orphans_of: Option<i32>) -> Vec<i32> {
    let procs = all_procs();
    let me = std::process::id() as i32;
    let mut set: std::collections::BTreeSet<i32> = procs
        .iter()
        .filter(|p| {
            p.pid != me
                && (p.marker.as_deref() == Some(marker)
                    || pgid.is_some_and(|g| p.pgrp == g as i32)
                    || (orphans_of == Some(p.ppid) && p.marker.is_none()))
        })
        .map(|p| p.pid)
        .collect();
    // Descendants, to a fixed point (a child may be listed before its parent).
    loop {
        let before = set.len();
        for p in &procs {
            if p.pid != me && set.contains(&p.ppid) {
                set.insert(p.pid);
            }
        }
        if set.len() == before {
            return set.into_iter().collect();
        }
    }
}

/// Sends `sig` to each process (and SIGCONT so a stopped one can act on it).
pub fn signal_each(pids: &[i32], sig: Signal) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), sig);
        if sig != Signal::SIGKILL && sig != Signal::SIGCONT {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
}

/// The stop of the entry's escaped processes (those outside its group): `sig` now, SIGKILL
/// at `kill_at`, then waits (same named timer as the group drain) until none is left, bounded
/// by `kill_at` + 1 s. Returns how many were found.
pub async fn stop_members(
    marker: &str,
    pgid: Option<u32>,
    orphans_of: Option<i32>,
    sig: Signal,
    kill_at: tokio::time::Instant,
) -> usize {
    let found = members(marker, pgid, orphans_of);
    if found.is_empty() {
        return 0;
    }
    signal_each(&found, sig);
    let mut killed = sig == Signal::SIGKILL;
    let mut step = DRAIN_FIRST_CHECK;
    loop {
        let left = members(marker, pgid, orphans_of);
        if left.is_empty() {
            return found.len();
        }
        let now = tokio::time::Instant::now();
        if !killed && now >= kill_at {
            tracing::warn!(
                "{} process(es) of `{}` still running at the stop deadline: SIGKILL",
                left.len(),
                marker.split(':').next().unwrap_or(marker)
            );
            signal_each(&left, Signal::SIGKILL);
            killed = true;
            step = DRAIN_FIRST_CHECK;
        }
        if now >= kill_at + Duration::from_secs(1) {
            tracing::warn!("{} process(es) still present after SIGKILL", left.len());
            return found.len();
        }
        let wake = if killed {
            now + step
        } else {
            (now + step).min(kill_at)
        };
        tokio::time::sleep_until(wake).await;
        step = (step * 2).min(DRAIN_MAX_CHECK);
    }
}

/// Synchronous SIGKILL of every member (used when a runner task is lost).
pub fn kill_members(marker: &str, pgid: Option<u32>) {
    signal_each(&members(marker, pgid, None), Signal::SIGKILL);
}

/// The init shim that orphans are reparented to, while it is still our parent (never the
/// host's init: its unmarked children are not ours).
pub fn shim_pid() -> Option<i32> {
    static SHIM: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    let shim =
        *SHIM.get_or_init(|| std::env::var_os(ROLE_ENV).map(|_| nix::unistd::getppid().as_raw()));
    shim.filter(|&p| p == nix::unistd::getppid().as_raw() && p != 0)
}

/// The entry's main process: the marked child of this supervisor.
pub fn leader(marker: &str) -> Option<i32> {
    let me = std::process::id() as i32;
    all_procs()
        .into_iter()
        .find(|p| p.ppid == me && p.marker.as_deref() == Some(marker))
        .map(|p| p.pid)
}

/// Marked processes of the entry outside its process group (escaped with `setsid()`).
pub fn escaped(marker: &str, pgid: u32) -> Vec<i32> {
    all_procs()
        .into_iter()
        .filter(|p| p.marker.as_deref() == Some(marker) && p.pgrp != pgid as i32)
        .map(|p| p.pid)
        .collect()
}

/// Env var that marks the supervisor as started by the init shim (its role).
pub const ROLE_ENV: &str = "DMP_CONTAINED_ROLE";

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

/// `cmd` as the child would find it: a path (relative to `cwd`) or a name on `path_var`.
pub fn find_executable(cmd: &str, cwd: &Path, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = cwd.join(cmd);
        return is_exec(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| is_exec(p))
}
