//! `Output`: where formatted service output goes (the supervisor's stdout). Capture queues a
//! reference to each chunk (bounded by `OUTPUT_QUEUE`); a writer thread of its own formats
//! (`name | ` prefixes or JSON) and writes, so a stdout nobody reads costs dropped, counted
//! lines and never a blocked control loop or shutdown. Owns the queue and the writer thread;
//! knows chunks only through `Chunk::format_line`, and nothing of rings or followers.

use super::{Batch, Format};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// What a pipe on our stdout is grown to (the children's pipes have the same size).
const STDOUT_PIPE: libc::c_int = 1 << 20;

/// Bytes of formatted output that may wait for a slow stdout reader; beyond this, new output
/// is dropped and counted (the ring and followers still get every line). The queue holds the
/// captured chunks themselves (shared with the ring), so nothing is allocated for it up front.
pub const OUTPUT_QUEUE: usize = 8 << 20;

/// The writer formats queued chunks into one buffer and writes it once it holds this much:
/// one `write` per batch, and a buffer that stays this small however much is queued.
const WRITE_BATCH: usize = 128 << 10;

/// Named timer: a full queue whose writer made no progress for this long means stdout is
/// stuck (nobody reads it); until it moves again, output is dropped rather than waited for.
const STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where formatted service output goes (the supervisor's stdout), written by a thread of its
/// own: a stdout nobody reads (a paused terminal, `up | less`, a stalled log driver) fills a
/// bounded queue and then costs dropped, counted lines — never a blocked control loop.
/// Capture only queues a reference to each chunk; the writer thread adds the `name | `
/// prefixes, off the control loop's thread.
pub struct Output {
    pub format: Format,
    queue: Mutex<Queue>,
    /// The writer waits here for chunks (signalled only when it is waiting).
    work: Condvar,
    /// `flush` waits here for the queue to drain (signalled only when someone flushes).
    drained: Condvar,
    written_bytes: AtomicU64,
    /// Notified by the writer after each write: capture waits on it while the queue is full.
    room: tokio::sync::Notify,
    /// The writer made no progress for `STALL` while the queue was full: drop instead of
    /// waiting, until it writes again.
    stuck: AtomicBool,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<(Batch, u8)>,
    /// Formatted size of `chunks` (what `OUTPUT_QUEUE` bounds).
    bytes: usize,
    /// The writer thread holds chunks it took from `chunks`.
    writing: bool,
    /// The writer waits on `work`.
    idle: bool,
    /// Threads waiting on `drained`.
    flushers: usize,
}

impl Output {
    /// Output to the process's stdout, through a writer thread. A pipe there (a container's
    /// log driver, `up | less`) is grown to `STDOUT_PIPE` where it is smaller: its reader
    /// and our writer then take turns once per `WRITE_BATCH`, not once per 64 KiB.
    pub fn stdout(format: Format) -> Arc<Output> {
        use nix::fcntl::{fcntl, FcntlArg};
        let fd = libc::STDOUT_FILENO;
        if fcntl(fd, FcntlArg::F_GETPIPE_SZ).is_ok_and(|n| n < STDOUT_PIPE) {
            // Best effort: past the user's pipe quota the pipe stays as it is.
            let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(STDOUT_PIPE));
        }
        Output::spawn(format, Box::new(std::io::stdout()))
    }

    /// Output to `sink`, through a writer thread.
    pub fn spawn(format: Format, sink: Box<dyn Write + Send>) -> Arc<Output> {
        let out = Arc::new(Output {
            format,
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            drained: Condvar::new(),
            written_bytes: AtomicU64::new(0),
            room: tokio::sync::Notify::new(),
            stuck: AtomicBool::new(false),
            dropped_lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        });
        let w = out.clone();
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || w.writer(sink))
            .expect("spawn the output thread");
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: takes every queued chunk, formats and writes them in batches of
    /// `WRITE_BATCH`, repeats; after a stall it says how many lines were dropped.
    fn writer(&self, mut sink: Box<dyn Write + Send>) {
        let mut buf = Vec::new();
        let mut reported = 0;
        let mut taken = VecDeque::new();
        loop {
            {
                let mut q = self.lock();
                q.writing = false;
                if q.flushers > 0 {
                    self.drained.notify_all();
                }
                while q.chunks.is_empty() {
                    q.idle = true;
                    q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                q.idle = false;
                std::mem::swap(&mut q.chunks, &mut taken);
                q.bytes = 0;
                q.writing = true;
            }
            let dropped = self.dropped_lines.load(Ordering::Relaxed);
            if dropped > reported {
                let _ = writeln!(
                    buf,
                    "dmp-contained | [output] {} lines dropped while stdout was not being read ({dropped} in all)",
                    dropped - reported
                );
                reported = dropped;
            }
            for (chunk, color) in taken.drain(..) {
                let mut i = 0;
                while i < chunk.len() {
                    i = chunk.format_lines(&mut buf, i, WRITE_BATCH, self.format, color);
                    if buf.len() >= WRITE_BATCH {
                        self.write(&mut *sink, &mut buf);
                    }
                }
            }
            if !buf.is_empty() {
                self.write(&mut *sink, &mut buf);
            }
            if buf.capacity() > 2 * WRITE_BATCH {
                buf = Vec::new();
            }
            if taken.capacity() > 64 {
                taken = VecDeque::new();
            }
        }
    }

    /// Writes `buf` to the sink (blocking: this is the writer thread) and empties it.
    fn write(&self, sink: &mut dyn Write, buf: &mut Vec<u8>) {
        if sink.write_all(buf).and_then(|_| sink.flush()).is_ok() {
            self.written_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        buf.clear();
        self.stuck.store(false, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Queues a chunk's lines; drops (and counts) them when the queue is full.
    pub(super) fn write_chunk(&self, chunk: &Batch, color: u8) {
        if !self.try_queue(chunk, color) {
            self.count_drop(chunk.len(), chunk.text_bytes());
        }
    }

    /// Queues a chunk unless the queue is full.
    fn try_queue(&self, chunk: &Batch, color: u8) -> bool {
        let mut q = self.lock();
        if q.bytes >= OUTPUT_QUEUE {
            return false;
        }
        q.bytes += chunk.formatted_len(self.format);
        q.chunks.push_back((chunk.clone(), color));
        if q.idle {
            q.idle = false;
            self.work.notify_one();
        }
        true
    }

    /// Queues a chunk, waiting (asynchronously: the service's pipe fills and slows it, as a
    /// plain pipe would) while a slow reader catches up; once the writer has made no progress
    /// for `STALL`, stdout counts as stuck and lines are dropped and counted instead.
    pub(super) async fn send(&self, chunk: &Batch, color: u8) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.try_queue(chunk, color) {
                return;
            }
            if self.stuck.load(Ordering::Relaxed) {
                break;
            }
            if tokio::time::timeout(STALL, room).await.is_err() {
                self.stuck.store(true, Ordering::Relaxed);
            }
        }
        self.count_drop(chunk.len(), chunk.text_bytes());
    }

    fn count_drop(&self, lines: usize, bytes: usize) {
        self.dropped_lines
            .fetch_add(lines as u64, Ordering::Relaxed);
        self.dropped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Waits up to `timeout` for everything queued to be written (at exit).
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut q = self.lock();
        q.flushers += 1;
        let done = loop {
            if q.chunks.is_empty() && !q.writing {
                break true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break false;
            }
            q = self
                .drained
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        q.flushers -= 1;
        done
    }

    /// For status `supervisor.output` and the metrics.
    pub fn stats(&self) -> OutputStats {
        OutputStats {
            queued_bytes: self.lock().bytes as u64,
            queue_limit_bytes: OUTPUT_QUEUE as u64,
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            dropped_lines: self.dropped_lines.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The supervisor's own stdout queue (status `supervisor.output`, metrics).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct OutputStats {
    pub queued_bytes: u64,
    pub queue_limit_bytes: u64,
    pub written_bytes: u64,
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::super::{Chunk, EntryLog, Stream};
    use super::*;

    fn push_lines(log: &EntryLog, out: &Output, lines: &[&str]) {
        let mut c = Chunk::new(log.name.clone(), Stream::Stdout);
        for l in lines {
            c.push(l.as_bytes());
        }
        log.push(out, c);
    }

    /// A sink that blocks until the test lets it go, like a stdout nobody reads.
    struct Stuck(std::sync::mpsc::Receiver<()>);
    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocked_sink_never_blocks_the_producer_and_drops_are_counted() {
        let (release, rx) = std::sync::mpsc::channel();
        let out = Output::spawn(Format::Text { color: false }, Box::new(Stuck(rx)));
        let log = EntryLog::new("x", 0, 10);
        let line = "y".repeat(1000);
        let start = std::time::Instant::now();
        for _ in 0..20_000 {
            push_lines(&log, &out, &[&line]);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        let st = out.stats();
        assert!(st.dropped_lines > 5_000, "{st:?}");
        assert!(st.queued_bytes <= (OUTPUT_QUEUE + 2000) as u64);
        assert_eq!(log.total_lines(), 20_000);
        assert!(!out.flush(std::time::Duration::from_millis(50)));
        drop(release);
        assert!(out.flush(std::time::Duration::from_secs(5)));
    }
}
