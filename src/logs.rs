//! Log capture: pipe → lines → (stdout as `name | line` or JSON) + per-entry ring buffer +
//! live followers. Log volume never passes through the control loop.
#![allow(unsafe_code)] // one from_utf8_unchecked on a prefix already validated; every site has a SAFETY comment

use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// Capacity of each entry's follower broadcast, in batches (pipe reads).
const FOLLOW_BATCHES: usize = 256;

/// Lines longer than this are split.
pub const MAX_LINE: usize = 16 * 1024;

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
    /// Output to the process's stdout, through a writer thread.
    pub fn stdout(format: Format) -> Arc<Output> {
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
                for i in 0..chunk.len() {
                    chunk.format_line(&mut buf, i, self.format, color);
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
    fn write_chunk(&self, chunk: &Batch, color: u8) {
        if !self.try_queue(chunk, color) {
            self.count_drop(chunk.len(), chunk.text.len());
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
    async fn send(&self, chunk: &Batch, color: u8) {
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
        self.count_drop(chunk.len(), chunk.text.len());
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

/// One entry's log: a bounded ring of recent lines plus a broadcast for followers.
pub struct EntryLog {
    pub name: Arc<str>,
    color: u8,
    cap: usize,
    ring: Mutex<Ring>,
    /// One message per captured batch (one pipe read), so a burst of many short lines cannot
    /// overrun followers that keep up. Made by the first follower (its slots are allocated
    /// up front).
    tx: std::sync::OnceLock<broadcast::Sender<Batch>>,
    /// `log_dir`: the entry's rotated log file (src/logfile.rs), set once at start.
    pub file: std::sync::OnceLock<crate::logfile::LogFile>,
}

/// Lines captured together (one pipe read), in order: one allocation for all their text,
/// not one per line, so capture costs a copy and a scan.
#[derive(Debug)]
pub struct Chunk {
    pub entry: Arc<str>,
    pub stream: Stream,
    pub ts: u64,
    pub first_seq: u64,
    text: String,
    ends: Vec<u32>,
}

pub type Batch = Arc<Chunk>;

impl Chunk {
    fn new(entry: Arc<str>, stream: Stream) -> Chunk {
        Chunk::with_capacity(entry, stream, 0)
    }

    /// A chunk for about `bytes` of text (one allocation for a whole pipe read).
    fn with_capacity(entry: Arc<str>, stream: Stream, bytes: usize) -> Chunk {
        Chunk {
            entry,
            stream,
            ts: 0,
            first_seq: 0,
            text: String::with_capacity(bytes),
            ends: Vec::new(),
        }
    }

    fn push(&mut self, line: &[u8]) {
        self.text.push_str(&String::from_utf8_lossy(line));
        self.ends.push(self.text.len() as u32);
    }

    fn push_str(&mut self, line: &str) {
        self.text.push_str(line);
        self.ends.push(self.text.len() as u32);
    }

    /// This chunk with every known secret replaced (see `redact`); itself when none occurs.
    fn redacted(self, r: &crate::redact::Redactor) -> Chunk {
        if !r.found(&self.text) {
            return self;
        }
        let mut out = Chunk::new(self.entry.clone(), self.stream);
        for i in 0..self.len() {
            out.push_str(&r.apply(self.text(i)));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn text(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    pub fn line(&self, i: usize) -> Line {
        Line {
            seq: self.first_seq + i as u64,
            ts: self.ts,
            entry: self.entry.clone(),
            stream: self.stream,
            text: self.text(i).to_string(),
        }
    }

    /// Materialised lines (for the API; capture itself never builds them).
    pub fn iter(&self) -> impl Iterator<Item = Line> + '_ {
        (0..self.len()).map(|i| self.line(i))
    }

    /// Appends line `i` as output: `name | text` (coloured) or a JSON object, and a newline.
    fn format_line(&self, buf: &mut Vec<u8>, i: usize, format: Format, color: u8) {
        let text = self.text(i);
        match format {
            Format::Text { color: true } => {
                let _ = write!(buf, "\x1b[{color}m{} |\x1b[0m ", self.entry);
                buf.extend_from_slice(text.as_bytes());
            }
            Format::Text { color: false } => {
                buf.extend_from_slice(self.entry.as_bytes());
                buf.extend_from_slice(b" | ");
                buf.extend_from_slice(text.as_bytes());
            }
            Format::Json => {
                let line = LineRef {
                    seq: self.first_seq + i as u64,
                    ts: self.ts,
                    entry: &self.entry,
                    stream: self.stream,
                    text,
                };
                let _ = serde_json::to_writer(&mut *buf, &line);
            }
        }
        buf.push(b'\n');
    }

    /// About how many bytes `format_line` makes of the whole chunk (the queue's measure).
    fn formatted_len(&self, format: Format) -> usize {
        let per_line = match format {
            Format::Text { color: false } => self.entry.len() + 4,
            Format::Text { color: true } => self.entry.len() + 14,
            Format::Json => self.entry.len() + 80,
        };
        self.text.len() + self.len() * per_line
    }

    #[cfg(test)]
    fn format(&self, buf: &mut Vec<u8>, format: Format, color: u8) {
        for i in 0..self.len() {
            self.format_line(buf, i, format, color);
        }
    }
}

/// The JSON shape of a line, borrowed (same fields as `Line`).
#[derive(Serialize)]
struct LineRef<'a> {
    seq: u64,
    ts: u64,
    entry: &'a str,
    stream: Stream,
    text: &'a str,
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
    fn push(&self, out: &Output, chunk: Chunk) {
        if let Some(c) = self.record(chunk) {
            out.write_chunk(&c, self.color);
        }
    }

    /// Records a chunk of complete lines: ring, followers.
    fn record(&self, chunk: Chunk) -> Option<Batch> {
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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Moves the complete lines of `pending` (and over-long pieces) into `chunk`, leaving the
/// partial tail in `pending`.
pub fn split_into(pending: &mut Vec<u8>, max: usize, chunk: &mut Chunk) {
    // Validate UTF-8 once for the whole buffer (fast); only invalid stretches take the
    // per-line lossy path.
    let valid_up_to = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(e) => e.valid_up_to(),
    };
    let add = |chunk: &mut Chunk, from: usize, to: usize, bytes: &[u8]| {
        if to <= valid_up_to {
            // SAFETY: `from..to` lies within the validated prefix and both ends are char
            // boundaries (a newline, a `\r` before it, or a cut moved back to a boundary).
            chunk.push_str(unsafe { std::str::from_utf8_unchecked(&bytes[from..to]) });
        } else {
            chunk.push(&bytes[from..to]);
        }
    };
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        match memchr::memchr(b'\n', rest) {
            Some(i) if i <= max => {
                let end = if i > 0 && rest[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                add(chunk, start, start + end, pending);
                start += i + 1;
            }
            _ if rest.len() > max => {
                // Split at a char boundary where possible.
                let mut cut = max;
                while cut > max - 4 && (rest[cut] & 0xC0) == 0x80 {
                    cut -= 1;
                }
                add(chunk, start, start + cut, pending);
                start += cut;
            }
            _ => break,
        }
    }
    pending.drain(..start);
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
                let mut chunk = Chunk::with_capacity(log.name.clone(), stream, pending.len());
                split_into(&mut pending, MAX_LINE, &mut chunk);
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

    fn split(p: &mut Vec<u8>, max: usize) -> Vec<String> {
        let mut c = Chunk::new("t".into(), Stream::Stdout);
        split_into(p, max, &mut c);
        c.iter().map(|l| l.text).collect()
    }

    #[test]
    fn splits_lines_and_long_lines() {
        let mut p = b"a\nbb\r\ncc".to_vec();
        assert_eq!(split(&mut p, 10), vec!["a", "bb"]);
        assert_eq!(p, b"cc");
        let mut p = vec![b'x'; 25];
        let l = split(&mut p, 10);
        assert_eq!(l.len(), 2);
        assert_eq!(p.len(), 5);
        let mut p = b"0123456789\n".to_vec();
        assert_eq!(split(&mut p, 10), vec!["0123456789"]);
        let mut p = b"caf\xc3\xa9 \xff\n".to_vec();
        assert_eq!(split(&mut p, 100), vec!["caf\u{e9} \u{fffd}"]);
    }

    fn sink() -> Arc<Output> {
        Output::spawn(Format::Json, Box::new(std::io::sink()))
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
    fn text_and_json_formats() {
        let mut c = Chunk::new("api".into(), Stream::Stderr);
        c.push(b"hello");
        c.push(b"");
        let mut buf = Vec::new();
        c.format(&mut buf, Format::Text { color: false }, 36);
        assert_eq!(buf, b"api | hello\napi | \n");
        buf.clear();
        c.format(&mut buf, Format::Json, 36);
        let first: serde_json::Value =
            serde_json::from_slice(buf.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["entry"], "api");
        assert_eq!(first["stream"], "stderr");
        assert_eq!(first["text"], "hello");
    }

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
