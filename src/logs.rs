//! Log capture: pipe → lines → (stdout as `name | line` or JSON) + per-entry ring buffer +
//! live followers. Log volume never passes through the control loop.

use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

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

/// Where formatted service output goes (the supervisor's stdout).
pub struct Output {
    pub format: Format,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Output {
    pub fn stdout(format: Format) -> Arc<Output> {
        Arc::new(Output {
            format,
            sink: Mutex::new(Box::new(std::io::stdout())),
        })
    }

    fn write_batch(&self, buf: &[u8]) {
        let mut s = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let _ = s.write_all(buf);
        let _ = s.flush();
    }
}

/// One entry's log: a bounded ring of recent lines plus a broadcast for followers.
pub struct EntryLog {
    pub name: Arc<str>,
    color: u8,
    cap: usize,
    ring: Mutex<Ring>,
    /// One message per captured batch (one pipe read), so a burst of many short lines cannot
    /// overrun followers that keep up.
    tx: broadcast::Sender<Batch>,
}

/// Lines captured together, in order.
pub type Batch = Arc<Vec<Arc<Line>>>;

struct Ring {
    next_seq: u64,
    lines: VecDeque<Arc<Line>>,
    total: u64,
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
                lines: VecDeque::with_capacity(cap.min(1024)),
                total: 0,
            }),
            tx: broadcast::channel(4096).0,
        })
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<Arc<Line>> {
        let r = self.ring.lock().unwrap();
        r.lines
            .iter()
            .skip(r.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Tail and subscription taken atomically, so a follower misses nothing in between.
    pub fn follow(&self, n: usize) -> (Vec<Arc<Line>>, broadcast::Receiver<Batch>) {
        let r = self.ring.lock().unwrap();
        let rx = self.tx.subscribe();
        let tail = r
            .lines
            .iter()
            .skip(r.lines.len().saturating_sub(n))
            .cloned()
            .collect();
        (tail, rx)
    }

    pub fn total_lines(&self) -> u64 {
        self.ring.lock().unwrap().total
    }

    /// Records a batch of complete lines and writes them to `out` in one write.
    fn push(&self, out: &Output, stream: Stream, texts: Vec<String>) {
        if texts.is_empty() {
            return;
        }
        let ts = now_ms();
        let mut buf = Vec::with_capacity(texts.iter().map(|t| t.len() + 32).sum());
        let mut batch = Vec::with_capacity(texts.len());
        let mut r = self.ring.lock().unwrap();
        for text in texts {
            let line = Arc::new(Line {
                seq: r.next_seq,
                ts,
                entry: self.name.clone(),
                stream,
                text,
            });
            r.next_seq += 1;
            r.total += 1;
            format_line(&mut buf, out.format, self.color, &line);
            if r.lines.len() == self.cap {
                r.lines.pop_front();
            }
            batch.push(line.clone());
            r.lines.push_back(line);
        }
        // Sent under the ring lock so `follow` never sees a line twice or misses one.
        let _ = self.tx.send(Arc::new(batch));
        drop(r);
        out.write_batch(&buf);
    }

    /// Adds a supervisor-generated line (e.g. "exited with code 1") to this entry's log.
    pub fn note(&self, out: &Output, text: String) {
        self.push(out, Stream::Stderr, vec![text]);
    }
}

fn format_line(buf: &mut Vec<u8>, format: Format, color: u8, l: &Line) {
    match format {
        Format::Text { color: true } => {
            let _ = writeln!(buf, "\x1b[{color}m{} |\x1b[0m {}", l.entry, l.text);
        }
        Format::Text { color: false } => {
            let _ = writeln!(buf, "{} | {}", l.entry, l.text);
        }
        Format::Json => {
            let _ = serde_json::to_writer(&mut *buf, l);
            buf.push(b'\n');
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Splits `pending` into complete lines (and over-long chunks), leaving the partial tail.
pub fn split_lines(pending: &mut Vec<u8>, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        match memchr::memchr(b'\n', rest) {
            Some(i) if i <= max => {
                let mut l = &rest[..i];
                if l.last() == Some(&b'\r') {
                    l = &l[..l.len() - 1];
                }
                out.push(String::from_utf8_lossy(l).into_owned());
                start += i + 1;
            }
            _ if rest.len() > max => {
                // Split at a char boundary where possible.
                let mut cut = max;
                while cut > max - 4 && (rest[cut] & 0xC0) == 0x80 {
                    cut -= 1;
                }
                out.push(String::from_utf8_lossy(&rest[..cut]).into_owned());
                start += cut;
            }
            _ => break,
        }
    }
    pending.drain(..start);
    out
}

/// Reads a pipe until EOF, feeding lines to the entry log. The last partial line is flushed.
pub async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    log: Arc<EntryLog>,
    out: Arc<Output>,
    stream: Stream,
) {
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                let lines = split_lines(&mut pending, MAX_LINE);
                log.push(&out, stream, lines);
            }
        }
    }
    if !pending.is_empty() {
        let text = String::from_utf8_lossy(&pending).into_owned();
        log.push(&out, stream, vec![text]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_long_lines() {
        let mut p = b"a\nbb\r\ncc".to_vec();
        assert_eq!(split_lines(&mut p, 10), vec!["a", "bb"]);
        assert_eq!(p, b"cc");
        let mut p = vec![b'x'; 25];
        let l = split_lines(&mut p, 10);
        assert_eq!(l.len(), 2);
        assert_eq!(p.len(), 5);
        let mut p = b"0123456789\n".to_vec();
        assert_eq!(split_lines(&mut p, 10), vec!["0123456789"]);
    }

    #[test]
    fn ring_is_bounded_and_follow_sees_new_lines() {
        let out = Arc::new(Output {
            format: Format::Json,
            sink: Mutex::new(Box::new(std::io::sink())),
        });
        let log = EntryLog::new("x", 0, 3);
        let (_, mut rx) = log.follow(10);
        log.push(
            &out,
            Stream::Stdout,
            (0..5).map(|i| i.to_string()).collect(),
        );
        let tail: Vec<String> = log.tail(10).iter().map(|l| l.text.clone()).collect();
        assert_eq!(tail, vec!["2", "3", "4"]);
        assert_eq!(rx.try_recv().unwrap()[0].text, "0");
        assert_eq!(log.total_lines(), 5);
    }
}
