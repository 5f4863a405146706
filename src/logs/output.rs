//! `Output`: where formatted service output goes (the supervisor's stdout). While stdout keeps
//! up, capture formats each read (`name | ` prefixes or JSON) and writes it to a stdout pipe
//! itself, without waiting (`RWF_NOWAIT`); otherwise — a full pipe, a terminal, a file — it
//! queues a reference to the chunk (bounded by `OUTPUT_QUEUE`) for a writer thread of its own,
//! so a stdout nobody reads costs dropped, counted lines and never a blocked control loop or
//! shutdown. Owns the queue and the writer thread; knows chunks only through
//! `Chunk::format_lines`, and nothing of rings or followers.

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

/// A direct write's formatting buffer is kept for the next one up to this size (a pipe read
/// is at most 256 KiB, a little more with prefixes).
const DIRECT_BUF_KEPT: usize = 512 << 10;

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
    /// A pipe that takes non-blocking writes (`RWF_NOWAIT`): while the writer thread has
    /// nothing queued, capture writes there itself, on its own thread, and hands only what
    /// the pipe did not take to the writer thread. None: every chunk goes through the queue.
    direct: Option<std::os::fd::RawFd>,
    /// Cleared for good when the kernel refuses `RWF_NOWAIT` on `direct`.
    direct_ok: AtomicBool,
}

/// What waits for the writer thread: whole chunks, or the unwritten end of a direct write.
enum Item {
    /// A chunk's lines, in this colour.
    Chunk(Batch, u8),
    /// Formatted output that a direct write left over.
    Bytes(Vec<u8>),
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Item>,
    /// Formatted size of `chunks` (what `OUTPUT_QUEUE` bounds).
    bytes: usize,
    /// The writer thread holds chunks it took from `chunks`.
    writing: bool,
    /// The writer waits on `work`.
    idle: bool,
    /// Threads waiting on `drained`.
    flushers: usize,
    /// The formatting buffer of direct writes, kept between them.
    direct_buf: Vec<u8>,
}

/// One `write` that never waits (`RWF_NOWAIT`): a pipe without room answers `EAGAIN`, a file
/// that cannot take it `EOPNOTSUPP`.
#[allow(unsafe_code)]
fn write_nowait(fd: std::os::fd::RawFd, buf: &[u8]) -> std::io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `iov` points at `buf`, alive and unaliased for the call; the kernel only reads
    // it. Offset -1 writes at the file's position (a pipe has none).
    let n = unsafe { libc::pwritev2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
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
        let direct = fcntl(fd, FcntlArg::F_GETPIPE_SZ).is_ok().then_some(fd);
        Output::start(format, Box::new(std::io::stdout()), direct)
    }

    /// Output to `sink`, through a writer thread.
    pub fn spawn(format: Format, sink: Box<dyn Write + Send>) -> Arc<Output> {
        Output::start(format, sink, None)
    }

    fn start(
        format: Format,
        sink: Box<dyn Write + Send>,
        direct: Option<std::os::fd::RawFd>,
    ) -> Arc<Output> {
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
            direct,
            direct_ok: AtomicBool::new(direct.is_some()),
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
            for item in taken.drain(..) {
                let (chunk, color) = match item {
                    Item::Chunk(c, color) => (c, color),
                    Item::Bytes(b) => {
                        buf.extend_from_slice(&b);
                        continue;
                    }
                };
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
        if !self.try_direct(chunk, color) && !self.try_queue(chunk, color) {
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
        q.chunks.push_back(Item::Chunk(chunk.clone(), color));
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
        if self.try_direct(chunk, color) {
            return;
        }
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

    /// With nothing queued, formats the chunk here and writes it to the `direct` pipe without
    /// waiting (one `write` for the whole read, its bytes still in this thread's cache, no
    /// hand-off); what the pipe does not take is queued for the writer thread, under the
    /// same lock, so order holds. False: the chunk still has to be queued.
    fn try_direct(&self, chunk: &Batch, color: u8) -> bool {
        let Some(fd) = self
            .direct
            .filter(|_| self.direct_ok.load(Ordering::Relaxed))
        else {
            return false;
        };
        let mut q = self.lock();
        if !q.chunks.is_empty() || q.writing {
            return false;
        }
        let mut buf = std::mem::take(&mut q.direct_buf);
        buf.clear();
        chunk.format_lines(&mut buf, 0, usize::MAX, self.format, color);
        let mut done = 0;
        while done < buf.len() {
            match write_nowait(fd, &buf[done..]) {
                Ok(n) => done += n,
                Err(e) => {
                    // EAGAIN: the pipe is full. EOPNOTSUPP: this kernel cannot write to it
                    // without waiting; from now on the writer thread does it all.
                    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        self.direct_ok.store(false, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        self.written_bytes.fetch_add(done as u64, Ordering::Relaxed);
        if done < buf.len() {
            q.bytes += buf.len() - done;
            q.chunks.push_back(Item::Bytes(buf[done..].to_vec()));
            if q.idle {
                q.idle = false;
                self.work.notify_one();
            }
        }
        if buf.capacity() <= DIRECT_BUF_KEPT {
            q.direct_buf = buf;
        }
        true
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

    /// A stdout pipe: its write end as the writer thread's sink (counting what passes there)
    /// and as the direct fd; the read end for the test.
    fn pipe_output(passed: Arc<AtomicU64>) -> (Arc<Output>, std::fs::File) {
        struct Counted(std::fs::File, Arc<AtomicU64>);
        impl Write for Counted {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = self.0.write(b)?;
                self.1.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        use std::os::fd::AsRawFd;
        let (r, w) = nix::unistd::pipe().unwrap();
        let w = std::fs::File::from(w);
        let fd = w.as_raw_fd();
        let out = Output::start(
            Format::Text { color: false },
            Box::new(Counted(w, passed)),
            Some(fd),
        );
        // The sink owns the write end for the life of the writer thread (never closed).
        (out, std::fs::File::from(r))
    }

    /// A slow reader on a small pipe: every line arrives once and in order while chunks go
    /// both ways — written directly while the pipe has room, queued for the writer thread
    /// when it is full (and directly again once the queue has drained).
    #[tokio::test]
    async fn direct_and_queued_writes_keep_every_line_in_order() {
        let passed = Arc::new(AtomicU64::new(0));
        let (out, mut r) = pipe_output(passed.clone());
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut b = vec![0; 16 << 10];
            loop {
                use std::io::Read;
                let n = r.read(&mut b).unwrap();
                all.extend_from_slice(&b[..n]);
                if all.ends_with(b"x | end\n") {
                    return all;
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        let log = EntryLog::new("x", 0, 10);
        let mut n = 0;
        for _ in 0..400 {
            let mut c = Chunk::new(log.name.clone(), Stream::Stdout);
            for _ in 0..100 {
                c.push(format!("line {n:06} {}", "y".repeat(80)).as_bytes());
                n += 1;
            }
            let c = log.record(c).unwrap();
            out.send(&c, 0).await;
        }
        push_lines(&log, &out, &["end"]);
        let all = String::from_utf8(reader.join().unwrap()).unwrap();
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), n + 1);
        for (i, l) in lines[..n].iter().enumerate() {
            assert!(l.starts_with(&format!("x | line {i:06} ")), "{i}: {l}");
        }
        let st = out.stats();
        assert_eq!(st.dropped_lines, 0);
        let via_thread = passed.load(Ordering::Relaxed);
        assert!(via_thread > 0, "the pipe never filled: nothing was queued");
        assert!(
            via_thread < all.len() as u64,
            "nothing was written directly"
        );
    }

    /// Once output waits for the writer thread, later chunks wait behind it even when the pipe
    /// has room again: a direct write would overtake it.
    #[tokio::test]
    async fn nothing_is_written_directly_past_output_that_waits() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (release, rx) = std::sync::mpsc::channel();
        let (r, w) = nix::unistd::pipe().unwrap();
        let out = Output::start(
            Format::Text { color: false },
            Box::new(Stuck(rx)),
            Some(w.as_raw_fd()),
        );
        let mut r = std::fs::File::from(r);
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let log = EntryLog::new("x", 0, 10);
        // A: more than the pipe holds; its rest goes to the writer thread, which blocks.
        push_lines(&log, &out, &[&"a".repeat(200 << 10)]);
        assert!(out.stats().queued_bytes > 0 || out.lock().writing);
        let mut drained = Vec::new();
        let mut b = vec![0; 1 << 20];
        while let Ok(n) = r.read(&mut b) {
            drained.extend_from_slice(&b[..n]);
        }
        assert!(
            drained.starts_with(b"x | aaa"),
            "A was not written directly"
        );
        // B: the pipe is empty now, but A's rest is not written yet.
        push_lines(&log, &out, &["b"]);
        assert!(r.read(&mut b).is_err(), "B overtook A");
        drop(release);
        assert!(out.flush(std::time::Duration::from_secs(5)));
        drop(w);
    }

    /// A stdout pipe nobody reads: sending returns (after `STALL` once), lines are dropped and
    /// counted, and the direct path never blocks.
    #[tokio::test]
    async fn an_unread_stdout_pipe_never_blocks_sending() {
        let (out, _r) = pipe_output(Arc::new(AtomicU64::new(0)));
        let log = EntryLog::new("x", 0, 10);
        let line = "y".repeat(1000);
        let start = std::time::Instant::now();
        for _ in 0..20_000 {
            let mut c = Chunk::new(log.name.clone(), Stream::Stdout);
            c.push(line.as_bytes());
            let c = log.record(c).unwrap();
            out.send(&c, 0).await;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        let st = out.stats();
        assert!(st.dropped_lines > 5_000, "{st:?}");
        assert!(st.queued_bytes <= (OUTPUT_QUEUE + 2000) as u64);
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
