//! A `Chunk`: the lines of one pipe read, in one allocation, and the rules that cut a pipe's
//! bytes into lines (`\n` or `\r\n` ends a line; a line longer than `MAX_LINE` is cut at a
//! char boundary; invalid UTF-8 becomes U+FFFD). A busy pipe's read buffer becomes the chunk's
//! text as it is (no copy): each line is a span of it, and the line ends stay in between.
//! Owns no state beyond the chunk; knows nothing of rings, followers or stdout.

use super::{Format, Line, Stream};
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;

/// Lines longer than this are split.
pub const MAX_LINE: usize = 16 * 1024;

/// A read at least this big hands its buffer to the chunk instead of copying its lines out;
/// smaller ones are copied into a chunk of their own size (an idle service's one-line reads
/// must not each keep a whole read buffer in the ring).
const HAND_OVER: usize = 16 << 10;

/// Lines captured together (one pipe read), in order: one allocation for all their text,
/// not one per line.
#[derive(Debug)]
pub struct Chunk {
    pub entry: Arc<str>,
    pub stream: Stream,
    pub ts: u64,
    pub first_seq: u64,
    /// The lines' text; for a handed-over read buffer, with the line ends still in between.
    text: String,
    /// Each line's `start..end` in `text`.
    spans: Vec<(u32, u32)>,
}

pub type Batch = Arc<Chunk>;

impl Chunk {
    pub fn new(entry: Arc<str>, stream: Stream) -> Chunk {
        Chunk::with_capacity(entry, stream, 0)
    }

    /// A chunk for about `bytes` of text.
    fn with_capacity(entry: Arc<str>, stream: Stream, bytes: usize) -> Chunk {
        Chunk {
            entry,
            stream,
            ts: 0,
            first_seq: 0,
            text: String::with_capacity(bytes),
            spans: Vec::new(),
        }
    }

    /// Appends a line, replacing invalid UTF-8.
    pub fn push(&mut self, line: &[u8]) {
        self.push_str(&String::from_utf8_lossy(line));
    }

    pub fn push_str(&mut self, line: &str) {
        let start = self.text.len() as u32;
        self.text.push_str(line);
        self.spans.push((start, self.text.len() as u32));
    }

    /// This chunk with every known secret replaced (see `redact`); itself when none occurs.
    pub fn redacted(self, r: &crate::redact::Redactor) -> Chunk {
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
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The size of the lines' text (without line ends).
    pub fn text_bytes(&self) -> usize {
        self.spans.iter().map(|(s, e)| (e - s) as usize).sum()
    }

    pub fn text(&self, i: usize) -> &str {
        let (start, end) = self.spans[i];
        &self.text[start as usize..end as usize]
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

    /// Appends lines from `i` on as output until `buf` holds `limit` bytes or the chunk ends;
    /// returns the next line's index (the writer thread's hot loop).
    pub fn format_lines(
        &self,
        buf: &mut Vec<u8>,
        mut i: usize,
        limit: usize,
        format: Format,
        color: u8,
    ) -> usize {
        while i < self.len() && buf.len() < limit {
            self.format_line(buf, i, format, color);
            i += 1;
        }
        i
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
    pub fn formatted_len(&self, format: Format) -> usize {
        let per_line = match format {
            Format::Text { color: false } => self.entry.len() + 4,
            Format::Text { color: true } => self.entry.len() + 14,
            Format::Json => self.entry.len() + 80,
        };
        self.text.len() + self.len() * per_line
    }

    #[cfg(test)]
    pub fn format(&self, buf: &mut Vec<u8>, format: Format, color: u8) {
        self.format_lines(buf, 0, usize::MAX, format, color);
    }

    /// The complete lines of a pipe's bytes (`buf`: the previous read's partial line, then
    /// this read), and what is left for the next read: the partial last line, in a buffer
    /// with `room` to spare. A big read's buffer becomes the chunk's text as it is.
    pub fn from_read(
        entry: Arc<str>,
        stream: Stream,
        mut buf: Vec<u8>,
        max: usize,
        room: usize,
    ) -> (Chunk, Vec<u8>) {
        let mut spans = Vec::new();
        let taken = line_spans(&buf, max, &mut spans);
        let mut chunk = Chunk::new(entry, stream);
        if taken < HAND_OVER {
            // Small: copy the lines (as read, their ends in between) and keep the buffer for
            // the next read.
            match std::str::from_utf8(&buf[..taken]) {
                Ok(text) => {
                    chunk.text = text.to_owned();
                    chunk.spans = spans;
                }
                Err(_) => chunk.add_spans(&buf, &spans),
            }
            buf.drain(..taken);
            return (chunk, buf);
        }
        let mut rest = Vec::with_capacity(buf.len() - taken + room);
        rest.extend_from_slice(&buf[taken..]);
        buf.truncate(taken);
        match String::from_utf8(buf) {
            Ok(mut text) => {
                text.shrink_to_fit();
                chunk.text = text;
                chunk.spans = spans;
            }
            // Invalid UTF-8 somewhere: each line on its own, the invalid ones replaced.
            Err(e) => chunk.add_spans(e.as_bytes(), &spans),
        }
        (chunk, rest)
    }

    /// Appends the lines `spans` of `bytes`, each invalid one with U+FFFD replacements.
    fn add_spans(&mut self, bytes: &[u8], spans: &[(u32, u32)]) {
        for &(start, end) in spans {
            let line = &bytes[start as usize..end as usize];
            match std::str::from_utf8(line) {
                Ok(s) => self.push_str(s),
                Err(_) => self.push(line),
            }
        }
    }
}

/// Finds the complete lines of `buf` (and the pieces of over-long ones) as spans without their
/// line ends, and returns how many bytes they take; the rest is a partial line.
fn line_spans(buf: &[u8], max: usize, spans: &mut Vec<(u32, u32)>) -> usize {
    let mut start = 0;
    // A piece of `max` bytes, cut back to a char boundary where possible.
    let cut = |start: usize| {
        let mut cut = start + max;
        while cut > start + max - 4 && (buf[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        cut
    };
    for nl in memchr::memchr_iter(b'\n', buf) {
        while nl - start > max {
            let c = cut(start);
            spans.push((start as u32, c as u32));
            start = c;
        }
        let end = if nl > start && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        spans.push((start as u32, end as u32));
        start = nl + 1;
    }
    while buf.len() - start > max {
        let c = cut(start);
        spans.push((start as u32, c as u32));
        start = c;
    }
    start
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `p` as a pipe read would, leaving the partial line in `p`.
    fn split(p: &mut Vec<u8>, max: usize) -> Vec<String> {
        let (c, rest) = Chunk::from_read("t".into(), Stream::Stdout, std::mem::take(p), max, 0);
        *p = rest;
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

    /// A read big enough to be handed over whole splits exactly like a small one: line ends,
    /// `\r\n`, over-long lines cut at char boundaries, invalid UTF-8 replaced, the partial
    /// line kept.
    #[test]
    fn a_handed_over_read_splits_like_a_copied_one() {
        let mut all = Vec::new();
        for i in 0..3000 {
            match i % 5 {
                0 => writeln!(all, "plain {i}").unwrap(),
                1 => write!(all, "crlf {i}\r\n").unwrap(),
                2 => writeln!(all, "{}", "é".repeat(20)).unwrap(),
                3 => all.extend_from_slice(b"bad \xff\xfe\n"),
                _ => all.extend_from_slice(b"\n"),
            }
        }
        all.extend_from_slice("€".repeat(20).as_bytes());
        all.extend_from_slice(b"\nparti");
        assert!(all.len() > HAND_OVER);
        let mut big = all.clone();
        let whole = split(&mut big, 50);
        // The same bytes a few at a time (each read copied).
        let mut small = Vec::new();
        let mut pieces = Vec::new();
        for b in all.chunks(700) {
            small.extend_from_slice(b);
            pieces.extend(split(&mut small, 50));
        }
        assert_eq!(whole, pieces);
        assert_eq!(big, small);
        assert_eq!(big, b"parti");
        assert_eq!(whole[1], "crlf 1");
        assert_eq!(whole[3], "bad \u{fffd}\u{fffd}");
        assert_eq!(whole[4], "");
        assert!(whole.iter().all(|l| l.len() <= 50));
        assert_eq!(whole[whole.len() - 2].chars().count(), 16);
    }

    #[test]
    fn text_and_json_formats() {
        let mut c = Chunk::new("api".into(), Stream::Stderr);
        c.push(b"hello");
        c.push(b"");
        let mut buf = Vec::new();
        c.format(&mut buf, Format::Text { color: false }, 36);
        assert_eq!(buf, b"api | hello\napi | \n");
        // A name too long for the fast path's prefix buffer.
        let long = "n".repeat(70);
        let mut l = Chunk::new(long.as_str().into(), Stream::Stdout);
        l.push(b"x");
        let mut lbuf = Vec::new();
        l.format(&mut lbuf, Format::Text { color: false }, 36);
        assert_eq!(lbuf, format!("{long} | x\n").into_bytes());
        buf.clear();
        c.format(&mut buf, Format::Json, 36);
        let first: serde_json::Value =
            serde_json::from_slice(buf.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["entry"], "api");
        assert_eq!(first["stream"], "stderr");
        assert_eq!(first["text"], "hello");
    }
}
