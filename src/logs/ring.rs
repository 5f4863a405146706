//! `EntryLog`: one entry's log — a bounded ring of its recent chunks, its line counter, its
//! live followers (a broadcast of whole chunks, made by the first follower) and its optional
//! rotated file. Recording a chunk redacts it, stamps it, numbers its lines and hands it on;
//! the ring lock is held only for that bookkeeping, never for formatting or writing.
//! Knows `Output` only to queue chunks on it.

use super::{now_ms, Batch, Chunk, Line, Output, Stream};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Capacity of each entry's follower broadcast, in batches (pipe reads).
const FOLLOW_BATCHES: usize = 256;

/// One entry's log: a bounded ring of recent lines plus a broadcast for followers.
pub struct EntryLog {
    pub name: Arc<str>,
    pub(super) color: u8,
    cap: usize,
    ring: Mutex<Ring>,
    /// One message per captured batch (one pipe read), so a burst of many short lines cannot
    /// overrun followers that keep up. Made by the first follower (its slots are allocated
    /// up front).
    tx: std::sync::OnceLock<broadcast::Sender<Batch>>,
    /// `log_dir`: the entry's rotated log file (src/logfile.rs), set once at start.
    pub file: std::sync::OnceLock<crate::logfile::LogFile>,
}

struct Ring {
    next_seq: u64,
    chunks: VecDeque<Batch>,
    /// Lines held in `chunks` (between `cap` and `cap` + one chunk).
    held: usize,
    total: u64,
}

impl Ring {
    fn tail(&self, n: usize) -> Vec<Arc<Line>> {
        let mut out = Vec::new();
        for c in self.chunks.iter().rev() {
            for i in (0..c.len()).rev() {
                if out.len() == n {
                    break;
                }
                out.push(Arc::new(c.line(i)));
            }
        }
        out.reverse();
        out
    }
}

impl EntryLog {
    pub fn new(name: &str, idx: usize, cap: usize) -> Arc<EntryLog> {
        const COLORS: [u8; 6] = [36, 33, 32, 35, 34, 31];
        Arc::new(EntryLog {
            name: name.into(),
            color: COLORS[idx % COLORS.len()],
            cap,
            ring: Mutex::new(Ring {
                next_seq: 0,
                chunks: VecDeque::new(),
                held: 0,
                total: 0,
            }),
            tx: std::sync::OnceLock::new(),
            file: std::sync::OnceLock::new(),
        })
    }

    /// The last `n` lines (at most the ring's capacity).
    pub fn tail(&self, n: usize) -> Vec<Arc<Line>> {
        self.ring.lock().unwrap().tail(n.min(self.cap))
    }

    /// Tail and subscription taken atomically, so a follower misses nothing in between.
    pub fn follow(&self, n: usize) -> (Vec<Arc<Line>>, broadcast::Receiver<Batch>) {
        let r = self.ring.lock().unwrap();
        // Batches, not lines; followers drain it continuously into their own buffers.
        let tx = self.tx.get_or_init(|| broadcast::channel(FOLLOW_BATCHES).0);
        let rx = tx.subscribe();
        (r.tail(n.min(self.cap)), rx)
    }

    pub fn total_lines(&self) -> u64 {
        self.ring.lock().unwrap().total
    }

    /// Records a chunk of complete lines and queues them for `out` (dropped if it is full).
    pub(super) fn push(&self, out: &Output, chunk: Chunk) {
        if let Some(c) = self.record(chunk) {
            out.write_chunk(&c, self.color);
        }
    }

    /// Records a chunk of complete lines: ring, followers.
    pub(super) fn record(&self, chunk: Chunk) -> Option<Batch> {
        if chunk.is_empty() {
            return None;
        }
        let mut chunk = chunk.redacted(&crate::redact::global());
        chunk.ts = now_ms();
        let mut r = self.ring.lock().unwrap();
        chunk.first_seq = r.next_seq;
        r.next_seq += chunk.len() as u64;
        r.total += chunk.len() as u64;
        r.held += chunk.len();
        let chunk = Arc::new(chunk);
        r.chunks.push_back(chunk.clone());
        while let Some(front) = r.chunks.front() {
            if r.held - front.len() < self.cap {
                break;
            }
            r.held -= front.len();
            r.chunks.pop_front();
        }
        // Sent under the ring lock so `follow` never sees a line twice or misses one.
        if let Some(tx) = self.tx.get().filter(|tx| tx.receiver_count() > 0) {
            let _ = tx.send(chunk.clone());
        }
        drop(r);
        if let Some(f) = self.file.get() {
            f.append(chunk.ts, (0..chunk.len()).map(|i| chunk.text(i)));
        }
        Some(chunk)
    }

    /// Adds a supervisor-generated line (e.g. "exited with code 1") to this entry's log.
    pub fn note(&self, out: &Output, text: String) {
        let mut c = Chunk::new(self.name.clone(), Stream::Stderr);
        c.push(text.as_bytes());
        self.push(out, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> Arc<Output> {
        Output::spawn(super::super::Format::Json, Box::new(std::io::sink()))
    }

    fn push_lines(log: &EntryLog, out: &Output, lines: &[&str]) {
        let mut c = Chunk::new(log.name.clone(), Stream::Stdout);
        for l in lines {
            c.push(l.as_bytes());
        }
        log.push(out, c);
    }

    #[test]
    fn ring_is_bounded_and_follow_sees_new_lines() {
        let out = sink();
        let log = EntryLog::new("x", 0, 3);
        let (_, mut rx) = log.follow(10);
        push_lines(&log, &out, &["0", "1"]);
        push_lines(&log, &out, &["2", "3", "4"]);
        let tail: Vec<String> = log.tail(10).iter().map(|l| l.text.clone()).collect();
        assert_eq!(tail, vec!["2", "3", "4"]);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.line(0).text, "0");
        assert_eq!(first.line(1).seq, 1);
        assert_eq!(rx.try_recv().unwrap().line(2).seq, 4);
        assert_eq!(log.total_lines(), 5);
        let tail2: Vec<u64> = log.tail(2).iter().map(|l| l.seq).collect();
        assert_eq!(tail2, vec![3, 4]);
    }

    #[test]
    fn a_chunk_longer_than_the_ring_still_tails_the_ring_size() {
        let out = sink();
        let log = EntryLog::new("x", 0, 3);
        let (_, mut rx) = log.follow(0);
        push_lines(&log, &out, &["0", "1", "2", "3", "4"]);
        push_lines(&log, &out, &["5"]);
        let tail: Vec<(u64, String)> = log
            .tail(10)
            .iter()
            .map(|l| (l.seq, l.text.clone()))
            .collect();
        assert_eq!(
            tail,
            vec![(3, "3".into()), (4, "4".into()), (5, "5".into())]
        );
        // Followers get the whole chunk.
        assert_eq!(rx.try_recv().unwrap().len(), 5);
    }
}
