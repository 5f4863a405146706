//! Log capture: a service's pipe → lines (`chunk`) → its entry's ring, followers and log file
//! (`ring`) → the supervisor's stdout as `name | line` or JSON (`output`, a writer thread of
//! its own). Log volume never passes through the control loop, and nothing here may wait on
//! it. This module owns the pump (one task per pipe) and the types the API reads (`Line`,
//! `Stream`, `Format`); it may not touch lifecycle state or the loop's channels.

mod chunk;
mod output;
mod ring;

pub use chunk::{Batch, Chunk, MAX_LINE};
pub use output::{Output, OutputStats};
pub use ring::EntryLog;

use serde::Serialize;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub ts: u64,
    pub entry: Arc<str>,
    pub stream: Stream,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text { color: bool },
    Json,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A pipe read starts with room for this much; a read that fills the room doubles it, up to
/// `READ_MAX` (a chatty service is read in big chunks: one wake-up, one chunk, one queue
/// entry per read), and a small read shrinks it back (an idle service holds little). A read is
/// one chunk, and the ring and each follower hold whole chunks, so `READ_MAX` also bounds
/// what they keep beyond their line limits.
const READ_MIN: usize = 64 << 10;
const READ_MAX: usize = 256 << 10;
const READ_SMALL: usize = 4 << 10;

/// Reads a pipe until EOF, feeding lines to the entry log. The last partial line is flushed.
/// A big read's buffer becomes its chunk (`Chunk::from_read`): the bytes are copied once, by
/// the kernel, on their way to the ring, and once more by the writer thread, with prefixes.
pub async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    log: Arc<EntryLog>,
    out: Arc<Output>,
    stream: Stream,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut room = READ_MIN;
    loop {
        if pending.capacity() - pending.len() < room {
            pending.reserve_exact(room);
        }
        let spare = pending.capacity() - pending.len();
        match r.read_buf(&mut pending).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if n == spare {
                    room = (room * 2).min(READ_MAX);
                } else if n < READ_SMALL && room > READ_MIN {
                    room = READ_MIN;
                    pending.shrink_to(READ_MIN);
                }
                let read = std::mem::take(&mut pending);
                let (chunk, rest) =
                    Chunk::from_read(log.name.clone(), stream, read, MAX_LINE, room);
                pending = rest;
                if let Some(c) = log.record(chunk) {
                    out.send(&c, log.color).await;
                }
            }
        }
    }
    if !pending.is_empty() {
        let mut chunk = Chunk::new(log.name.clone(), stream);
        chunk.push(&pending);
        log.push(&out, chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// A sink that keeps what it is given.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);
    impl Write for Kept {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// One big read (many write batches of the writer thread): every line reaches the output
    /// once, in order, prefixed; the ring keeps only its last `cap` lines.
    #[tokio::test]
    async fn a_big_read_is_written_whole_and_in_order_and_the_ring_keeps_its_tail() {
        let kept = Kept::default();
        let out = Output::spawn(Format::Text { color: false }, Box::new(kept.clone()));
        let log = EntryLog::new("api", 0, 10);
        let (mut w, r) = tokio::io::duplex(64 << 10);
        let pump = tokio::spawn(pump(r, log.clone(), out.clone(), Stream::Stdout));
        let mut all = Vec::new();
        for i in 0..50_000 {
            writeln!(all, "line {i}").unwrap();
        }
        all.extend_from_slice(b"no newline");
        tokio::io::AsyncWriteExt::write_all(&mut w, &all)
            .await
            .unwrap();
        drop(w);
        pump.await.unwrap();
        assert!(out.flush(std::time::Duration::from_secs(5)));
        let text = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 50_001);
        for (i, l) in lines[..50_000].iter().enumerate() {
            assert_eq!(*l, format!("api | line {i}"));
        }
        assert_eq!(lines[50_000], "api | no newline");
        let tail: Vec<u64> = log.tail(100).iter().map(|l| l.seq).collect();
        assert_eq!(tail, (49_991..50_001).collect::<Vec<u64>>());
        assert_eq!(log.total_lines(), 50_001);
        assert_eq!(out.stats().dropped_lines, 0);
    }
}
