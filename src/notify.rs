//! Readiness told by the service itself, instead of probed from outside:
//! - `ready = { notify = true }`: the systemd notification protocol (sd_notify(3)). Each start
//!   gets a fresh datagram socket whose path is in `NOTIFY_SOCKET`; a datagram holding the
//!   line `READY=1` makes the entry ready (`STATUS=…` lines go to its log).
//! - `ready = { log = "regex" }`: the first line of the entry's output (stdout or stderr)
//!   matching the regex, from this start on.
//!
//! Both wait at most the probe's `start_period` (default 30 s), then fail like a probe that
//! gave up: the entry is stopped and its restart policy applies.

use crate::logs::{Batch, EntryLog, Output};
use crate::plan::Entry;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixDatagram;
use tokio::sync::broadcast;

/// The notification socket of one start of an entry (removed when dropped).
pub struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    /// Binds a fresh socket, writable by the entry's user.
    pub fn bind(entry: &Entry) -> Result<Notify, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!(
            "dmp-contained-notify-{}-{}.sock",
            std::process::id(),
            entry.name
        ));
        let _ = std::fs::remove_file(&path);
        let err = |e: std::io::Error| {
            format!(
                "cannot create the notification socket {} of `{}`: {e}",
                path.display(),
                entry.name
            )
        };
        let sock = UnixDatagram::bind(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
        Ok(Notify { sock, path })
    }

    /// `NOTIFY_SOCKET` for the entry's environment.
    pub fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    /// Waits for `READY=1`, at most `limit`.
    pub async fn ready(&self, limit: Duration, log: &EntryLog, out: &Output) -> Result<(), String> {
        let wait = async {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = self
                    .sock
                    .recv(&mut buf)
                    .await
                    .map_err(|e| format!("notify socket: {e}"))?;
                let msg = String::from_utf8_lossy(&buf[..n]);
                for line in msg.lines() {
                    if let Some(s) = line.strip_prefix("STATUS=") {
                        log.note(out, format!("[dmp-contained] status: {s}"));
                    }
                }
                if msg.lines().any(|l| l == "READY=1") {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
            Err(format!(
                "no READY=1 on NOTIFY_SOCKET within {} s (the probe's start_period)",
                limit.as_secs_f64()
            ))
        })
    }
}

impl Notify {
    /// After readiness: returns an error once no `WATCHDOG=1` came for `every`.
    pub async fn watchdog(&self, every: Duration) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let pet = async {
                loop {
                    match self.sock.recv(&mut buf).await {
                        Ok(n)
                            if String::from_utf8_lossy(&buf[..n])
                                .lines()
                                .any(|l| l == "WATCHDOG=1") =>
                        {
                            return
                        }
                        Ok(_) => {}
                        Err(_) => std::future::pending::<()>().await,
                    }
                }
            };
            if tokio::time::timeout(every, pet).await.is_err() {
                return format!(
                    "no WATCHDOG=1 on NOTIFY_SOCKET for {} s (WATCHDOG_USEC)",
                    every.as_secs_f64()
                );
            }
        }
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for a line matching `pattern` on `rx` (subscribed before the process started), at
/// most `limit`.
pub async fn wait_log(mut rx: LogRx, pattern: &str, limit: Duration) -> Result<(), String> {
    let re = regex::Regex::new(pattern).map_err(|e| format!("log pattern: {e}"))?;
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(batch) => {
                    if (0..batch.len()).any(|i| re.is_match(batch.text(i))) {
                        return Ok(());
                    }
                }
                // Lines were dropped while we lagged: keep reading the newer ones.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Err("the log closed".to_string());
                }
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
        Err(format!(
            "no output line matched {pattern:?} within {} s (the probe's start_period)",
            limit.as_secs_f64()
        ))
    })
}

/// An entry's output, as `ready = { log = … }` reads it.
pub type LogRx = broadcast::Receiver<Batch>;

/// The subscription a `log` readiness needs, taken before the process starts.
pub fn subscribe(log: &Arc<EntryLog>) -> LogRx {
    log.follow(0).1
}
