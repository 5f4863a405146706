//! Listening sockets the supervisor binds once for an entry (`listen = ["127.0.0.1:5002"]`)
//! and holds across every restart and reload, so a connection that arrives while the
//! process is replaced waits in the kernel's backlog and is served by the next process.
//!
//! Each process gets them by the systemd socket-activation protocol (sd_listen_fds(3)): the
//! sockets as fds 3, 4, …, `LISTEN_FDS` = their count, `LISTEN_PID` = the pid of the exec'd
//! process itself, `LISTEN_FDNAMES` = one name per fd, `:`-separated (here the entry's name,
//! as systemd names the fds of `app.socket` "app"). Werkzeug's development server (Flask's
//! `flask run`, `app.run()`) does not speak that protocol but reuses an inherited socket
//! through `WERKZEUG_SERVER_FD`: Werkzeug 1.x honours it unconditionally, 2.x and 3.x only in
//! the reloader's child (`WERKZEUG_RUN_MAIN=true`), so both are set, naming fd 3.
//!
//! `LISTEN_PID` must be the pid of the process after `fork`, unknown when the environment is
//! built; so for an entry with sockets the child builds nothing after `fork` (only
//! async-signal-safe work): the argv/envp arrays are prepared before, with a placeholder that
//! the child fills with its pid, and the child calls `execve` itself.
#![allow(unsafe_code)] // fd setup and execve in the forked child (async-signal-safe only); every site has a SAFETY comment

use crate::plan::Entry;
use std::ffi::CString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

/// First fd of the systemd protocol (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The sockets held for one entry: bound at its first start, then kept across its restarts and
/// reloads until it fails or is stopped by request (a failed bind is retried at the next start).
#[derive(Default)]
pub struct Held {
    sockets: Mutex<Vec<TcpListener>>,
}

impl Held {
    /// The held sockets' fds, binding them first if needed. A bind error names the address.
    pub fn fds(&self, entry: &Entry) -> Result<Vec<RawFd>, String> {
        let mut held = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_empty() {
            *held = bind_all(&entry.name, &entry.listen)?;
        }
        Ok(held.iter().map(|l| l.as_raw_fd()).collect())
    }

    /// Closes the sockets (the entry failed or was stopped); the next start binds them again.
    pub fn release(&self) {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

fn bind_all(name: &str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, String> {
    addrs
        .iter()
        .map(|a| {
            TcpListener::bind(a).map_err(|e| {
                format!("cannot listen on {a} for `{name}` (its `listen`): {e}; stop whatever listens on it or change the address")
            })
        })
        .collect()
}

/// The variables that describe the passed sockets, except `LISTEN_PID` (set in the child).
pub fn env(entry: &Entry, n: usize) -> Vec<(String, String)> {
    let names = vec![entry.name.as_str(); n].join(":");
    vec![
        ("LISTEN_FDS".into(), n.to_string()),
        ("LISTEN_FDNAMES".into(), names),
        ("WERKZEUG_SERVER_FD".into(), FIRST_FD.to_string()),
        ("WERKZEUG_RUN_MAIN".into(), "true".into()),
    ]
}

/// Everything the child needs to `execve` with the sockets as fds 3…, prepared before `fork`.
pub struct Exec {
    path: CString,
    _args: Vec<CString>,
    _envs: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// "LISTEN_PID=" followed by room for the digits and the NUL, filled in the child.
    pid_var: Box<[u8; 32]>,
    fds: Vec<RawFd>,
}

// SAFETY: the raw pointers point into the CStrings and the box owned by the same value;
// they are only dereferenced by `execve` in the forked child.
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

const PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl Exec {
    /// `path`: the resolved executable; `argv` and `env` as the entry starts with.
    pub fn new(
        path: &std::path::Path,
        argv: &[String],
        env: &[(String, String)],
        fds: Vec<RawFd>,
    ) -> Result<Exec, String> {
        use std::os::unix::ffi::OsStrExt;
        let c = |s: &[u8]| {
            CString::new(s).map_err(|_| "a NUL byte in the command or environment".to_string())
        };
        let path = c(path.as_os_str().as_bytes())?;
        let args = argv
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let envs = env
            .iter()
            .filter(|(k, _)| k != "LISTEN_PID")
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pid_var = Box::new([0u8; 32]);
        pid_var[..PID_PREFIX.len()].copy_from_slice(PID_PREFIX);
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
        envp.push(pid_var.as_ptr().cast());
        envp.push(std::ptr::null());
        Ok(Exec {
            path,
            _args: args,
            _envs: envs,
            argv,
            envp,
            pid_var,
            fds,
        })
    }

    /// In the forked child (async-signal-safe only): moves the sockets to fds 3…, writes
    /// `LISTEN_PID`, and replaces the process. Returns only on error.
    pub fn exec_in_child(&mut self) -> std::io::Error {
        let n = self.fds.len() as RawFd;
        // First out of the way (above 3 + n), then into place: a socket may already sit in
        // the target range. dup2's copy has FD_CLOEXEC cleared, so it survives the exec.
        for i in 0..self.fds.len() {
            // SAFETY: plain fd syscalls.
            let tmp = unsafe { libc::fcntl(self.fds[i], libc::F_DUPFD_CLOEXEC, FIRST_FD + n) };
            if tmp < 0 {
                return std::io::Error::last_os_error();
            }
            self.fds[i] = tmp;
        }
        for (i, &fd) in self.fds.iter().enumerate() {
            // SAFETY: as above.
            if unsafe { libc::dup2(fd, FIRST_FD + i as RawFd) } < 0 {
                return std::io::Error::last_os_error();
            }
        }
        // SAFETY: getpid is async-signal-safe.
        let pid = unsafe { libc::getpid() };
        write_digits(&mut self.pid_var[PID_PREFIX.len()..], pid as u32);
        // SAFETY: NUL-terminated strings and null-terminated arrays, prepared before fork.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        std::io::Error::last_os_error()
    }
}

/// Decimal digits of `n` then a NUL, into `buf` (no allocation: runs after `fork`).
fn write_digits(buf: &mut [u8], mut n: u32) {
    let mut tmp = [0u8; 10];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    buf[len] = 0;
}

/// Whether `addr` (a `tcp` probe's "host:port") is one of the entry's held sockets: such a
/// probe would pass as soon as the supervisor binds, whether or not the app runs.
pub fn probes_held(listen: &[SocketAddr], addr: &str) -> bool {
    let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    port.is_some_and(|p| listen.iter().any(|l| l.port() == p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits() {
        let mut b = [1u8; 12];
        write_digits(&mut b, 0);
        assert_eq!(&b[..2], b"0\0");
        write_digits(&mut b, 4294967295);
        assert_eq!(&b[..11], b"4294967295\0");
    }

    #[test]
    fn held_probe() {
        let l = vec!["127.0.0.1:5002".parse().unwrap()];
        assert!(probes_held(&l, "localhost:5002"));
        assert!(!probes_held(&l, "127.0.0.1:5003"));
    }
}
