//! The streaming routes: `GET /logs/NAME` (a tail, or a follow that stays open) and
//! `GET /events` (state changes as NDJSON), and the pump that moves a follower's lines from the
//! log broadcast to its response body without letting a slow client cost memory or time.
//!
//! It reads logs through `Shared` (`EntryLog::tail`/`follow`) and the event broadcast; it never
//! writes to a log ring or talks to the loop.

use super::resp::{error, full, parse_query, stream_response, Resp};
use super::serve::Count;
use super::Api;
use crate::redact::scrub;
use bytes::Bytes;
use hyper::StatusCode;
use std::sync::atomic::AtomicUsize;
use tokio::sync::{broadcast, mpsc};

/// Bytes a follower may have formatted but not yet written to its socket; beyond this its
/// newest lines are dropped (with a marker line) instead of growing memory or slowing anyone.
const FOLLOW_MAX_PENDING: usize = 256 << 10;

/// Log followers streaming now (`dmp_api_log_followers`).
pub(super) static FOLLOWERS: AtomicUsize = AtomicUsize::new(0);

impl Api {
    /// `GET /_supervisor/logs/NAME?tail=N&format=json&follow=1`.
    pub(super) fn logs(&self, name: &str, query: &str) -> Resp {
        let Some(log) = self.shared.log(name) else {
            return error(StatusCode::NOT_FOUND, format!("unknown entry `{name}`"));
        };
        let q = parse_query(query);
        let tail = match q.get("tail").map(|t| t.parse::<usize>()) {
            None => 100,
            Some(Ok(n)) => n,
            Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "tail must be a number"),
        };
        let json_fmt = q.get("format").map(|f| f == "json").unwrap_or(false);
        let follow = matches!(q.get("follow").map(String::as_str), Some("1" | "true"));
        let fmt = move |l: &crate::logs::Line, buf: &mut Vec<u8>| {
            if json_fmt {
                let _ = serde_json::to_writer(&mut *buf, l);
            } else {
                buf.extend_from_slice(l.text.as_bytes());
            }
            buf.push(b'\n');
        };
        let ctype = if json_fmt {
            "application/x-ndjson"
        } else {
            "text/plain; charset=utf-8"
        };
        if !follow {
            let mut buf = Vec::new();
            for l in log.tail(tail) {
                fmt(&l, &mut buf);
            }
            return full(StatusCode::OK, ctype, buf);
        }
        let (lines, rx) = log.follow(tail);
        let mut first = Vec::new();
        for l in lines {
            fmt(&l, &mut first);
        }
        let (tx, body_rx) = mpsc::channel::<Bytes>(2);
        tokio::spawn(pump_follower(rx, tx, first, fmt));
        stream_response(ctype, body_rx)
    }

    /// `GET /_supervisor/events`: state changes as NDJSON, from now on (src/progress/).
    pub(super) fn events(&self) -> Resp {
        let rx = self.shared.events.subscribe();
        let (tx, body_rx) = mpsc::channel::<Bytes>(64);
        let secrets = self.secrets();
        tokio::spawn(crate::progress::pump_events(rx, tx, move |name, text| {
            let s = secrets.get(name);
            let s: Vec<&str> = s.into_iter().flatten().map(String::as_str).collect();
            scrub(text, &s)
        }));
        stream_response("application/x-ndjson", body_rx)
    }
}

/// Moves one follower's lines from the log broadcast to its response body. It drains the
/// broadcast continuously (so a fast burst never overruns it) and buffers up to
/// `FOLLOW_MAX_PENDING` bytes while the client is slow; a client that does not read at all
/// costs a bounded amount of memory and never blocks the service or other followers.
async fn pump_follower(
    mut rx: broadcast::Receiver<crate::logs::Batch>,
    tx: mpsc::Sender<Bytes>,
    mut buf: Vec<u8>,
    fmt: impl Fn(&crate::logs::Line, &mut Vec<u8>),
) {
    use tokio::sync::broadcast::error::RecvError;
    let _count = Count::new(&FOLLOWERS);
    let mut skipped: u64 = 0;
    let mut lagged: u64 = 0;
    let mut open = true;
    loop {
        let pending = !buf.is_empty() || skipped > 0 || lagged > 0;
        if !open && !pending {
            return;
        }
        tokio::select! {
            r = rx.recv(), if open => match r {
                Ok(batch) => {
                    // Full: hand what is pending to the body first if the client has room for
                    // it (a burst arrives as a few big batches); skip only when it has not.
                    if buf.len() >= FOLLOW_MAX_PENDING {
                        if let Ok(permit) = tx.try_reserve() {
                            send_pending(permit, &mut buf, &mut skipped, &mut lagged);
                        }
                    }
                    if buf.len() >= FOLLOW_MAX_PENDING {
                        skipped += batch.len() as u64;
                    } else {
                        for l in batch.iter() {
                            fmt(&l, &mut buf);
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => lagged += n,
                Err(RecvError::Closed) => open = false,
            },
            permit = tx.reserve(), if pending => {
                let Ok(permit) = permit else { return };
                send_pending(permit, &mut buf, &mut skipped, &mut lagged);
            }
            _ = tx.closed(), if !pending => return,
        }
    }
}

/// Sends a follower's pending bytes, with a marker line for what it skipped.
fn send_pending(
    permit: mpsc::Permit<'_, Bytes>,
    buf: &mut Vec<u8>,
    skipped: &mut u64,
    lagged: &mut u64,
) {
    if *skipped > 0 {
        let note = format!("[dmp-contained: follower too slow, {skipped} lines skipped]\n");
        buf.extend_from_slice(note.as_bytes());
    } else if *lagged > 0 {
        let note =
            format!("[dmp-contained: follower too slow, {lagged} batches of lines skipped]\n");
        buf.extend_from_slice(note.as_bytes());
    }
    *skipped = 0;
    *lagged = 0;
    permit.send(Bytes::from(std::mem::take(buf)));
}
