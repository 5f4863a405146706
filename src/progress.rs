//! Start-up progress (pure core): the typed events the control loop broadcasts, the critical
//! path of a start, and a renderer from events to a TTY block, plain lines, JSON lines or
//! nothing. The I/O around it (the broadcast, stderr, the TTY sink) lives in `run_renderer`
//! and `TtySink`.
#![allow(unsafe_code)] // TIOCGWINSZ ioctl (terminal width); every site has a SAFETY comment

use crate::state::State;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// One thing the control loop reports (`GET /_supervisor/events`, one JSON object a line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An entry changed state; `t_s` is seconds since the supervisor started.
    State {
        seq: u64,
        t_s: f64,
        name: String,
        from: State,
        to: State,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// For a failed entry: the last line it logged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_line: Option<String>,
    },
    /// Every required entry is ready/done for the first time.
    Ready {
        seq: u64,
        t_s: f64,
        critical_path: Vec<Link>,
        cached: usize,
        url: String,
    },
}

impl Event {
    pub fn seq(&self) -> u64 {
        match self {
            Event::State { seq, .. } | Event::Ready { seq, .. } => *seq,
        }
    }
}

/// One entry's start-up span, seconds since the supervisor started.
#[derive(Debug, Clone, Default)]
pub struct Span {
    pub name: String,
    /// Left `waiting` (spawned, or found cached).
    pub start_s: Option<f64>,
    /// First ready / done / cached.
    pub end_s: Option<f64>,
    /// Indexes of its dependencies.
    pub after: Vec<usize>,
}

/// One link of the critical path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    /// From leaving `waiting` to ready/done.
    pub duration_s: f64,
    /// From the supervisor's start to leaving `waiting`.
    pub waited_s: f64,
}

/// The chain that decided when `spans` were all up: the entry that finished last, then
/// (backwards) the dependency of each link that finished last. First link first.
pub fn critical_path(spans: &[Span]) -> Vec<Link> {
    let end = |i: usize| spans[i].end_s;
    let last = (0..spans.len())
        .filter(|&i| end(i).is_some())
        .max_by(|&a, &b| {
            end(a)
                .partial_cmp(&end(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    let mut path = Vec::new();
    let mut cur = last;
    while let Some(i) = cur {
        let s = &spans[i];
        let start = s.start_s.unwrap_or(0.0);
        path.push(Link {
            name: s.name.clone(),
            duration_s: (s.end_s.unwrap_or(start) - start).max(0.0),
            waited_s: start,
        });
        cur = s
            .after
            .iter()
            .copied()
            .filter(|&d| {
                d != i && end(d).is_some() && !path.iter().any(|l| l.name == spans[d].name)
            })
            .max_by(|&a, &b| {
                end(a)
                    .partial_cmp(&end(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
    }
    path.reverse();
    path
}

/// `pg-init 0.02 s → postgres 0.17 s → api 2.9 s`
pub fn path_text(path: &[Link]) -> String {
    path.iter()
        .map(|l| format!("{} {}", l.name, secs(l.duration_s)))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The line printed once when the stack is first ready.
pub fn ready_line(t_s: f64, path: &[Link], cached: usize, url: &str) -> String {
    let mut s = format!("stack ready in {}", secs(t_s));
    if !path.is_empty() {
        let _ = write!(s, "; critical path: {}", path_text(path));
    }
    let _ = write!(
        s,
        "; {cached} step{} cached; open {url}",
        if cached == 1 { "" } else { "s" }
    );
    s
}

fn secs(t: f64) -> String {
    if t < 0.1 {
        format!("{t:.2} s")
    } else if t < 10.0 {
        format!("{t:.1} s")
    } else {
        format!("{t:.0} s")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `tty` on a terminal, else `plain`.
    Auto,
    Tty,
    Plain,
    Json,
    Quiet,
}

/// A wait is reported off a TTY when it passes this, then every `WAIT_REPEAT_S`.
pub const WAIT_NOTICE_S: f64 = 10.0;
pub const WAIT_REPEAT_S: f64 = 30.0;

#[derive(Debug, Clone)]
struct Row {
    name: String,
    state: State,
    since_s: f64,
    reason: Option<String>,
    last_line: Option<String>,
    required: bool,
    after: Vec<usize>,
    /// How long the last state before a settled one lasted (ready/done: how long it took).
    took_s: Option<f64>,
    /// Plain mode: when the last "waiting:" line was printed for the current wait.
    noticed_s: Option<f64>,
}

/// Turns events into text for one `Mode` (not `Auto`). Pure: time comes in with the calls.
pub struct Renderer {
    mode: Mode,
    rows: Vec<Row>,
    ready: Option<String>,
}

impl Renderer {
    /// `entries`: name, required, dependency indexes.
    pub fn new(mode: Mode, entries: Vec<(String, bool, Vec<usize>)>) -> Renderer {
        let rows = entries
            .into_iter()
            .map(|(name, required, after)| Row {
                name,
                state: State::Waiting,
                since_s: 0.0,
                reason: None,
                last_line: None,
                required,
                after,
                took_s: None,
                noticed_s: None,
            })
            .collect();
        Renderer {
            mode,
            rows,
            ready: None,
        }
    }

    /// Seeds an entry's state from a status snapshot (no output).
    pub fn seed(&mut self, name: &str, state: State, reason: Option<String>, since_s: f64) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.name == name) {
            r.state = state;
            r.reason = reason;
            r.since_s = since_s;
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.is_some()
    }

    /// `(ready, counted)`: required entries that are ready/done, of those that will run.
    pub fn counts(&self) -> (usize, usize) {
        let counted = self
            .rows
            .iter()
            .filter(|r| r.required && r.state != State::Skipped);
        let total = counted.clone().count();
        let ready = counted.filter(|r| r.state.is_healthy()).count();
        (ready, total)
    }

    /// Applies one event; returns the text to write (may be empty).
    pub fn apply(&mut self, ev: &Event) -> String {
        match ev {
            Event::State {
                t_s,
                name,
                to,
                reason,
                last_line,
                ..
            } => {
                let Some(r) = self.rows.iter_mut().find(|r| &r.name == name) else {
                    return String::new();
                };
                r.took_s = Some(*t_s - r.since_s);
                r.state = *to;
                r.since_s = *t_s;
                r.reason = reason.clone();
                r.last_line = last_line.clone();
                r.noticed_s = None;
            }
            Event::Ready {
                t_s,
                critical_path,
                cached,
                url,
                ..
            } => {
                self.ready = Some(ready_line(*t_s, critical_path, *cached, url));
            }
        }
        match self.mode {
            Mode::Quiet | Mode::Auto => String::new(),
            Mode::Json => serde_json::to_string(ev)
                .map(|s| s + "\n")
                .unwrap_or_default(),
            Mode::Plain => self.plain_line(ev),
            Mode::Tty => String::new(),
        }
    }

    fn plain_line(&self, ev: &Event) -> String {
        match ev {
            Event::State {
                t_s,
                name,
                to,
                reason,
                last_line,
                ..
            } => {
                let (ready, total) = self.counts();
                let mut s = format!(
                    "[{ready}/{total}] {:>6} {name}: {}",
                    secs(*t_s),
                    crate::state::state_name(*to)
                );
                if let Some(r) = reason {
                    let _ = write!(s, " ({r})");
                }
                if let Some(l) = last_line {
                    let _ = write!(s, "; last log line: {l}");
                }
                s + "\n"
            }
            Event::Ready { .. } => format!("{}\n", self.ready.as_deref().unwrap_or("")),
        }
    }

    /// The dependency entry `i` waits for (the first one not yet satisfied), with its state.
    fn blocker(&self, i: usize) -> Option<&Row> {
        self.rows[i]
            .after
            .iter()
            .map(|&d| &self.rows[d])
            .find(|d| !d.state.is_healthy())
    }

    /// Time passes: plain mode reports waits past `WAIT_NOTICE_S`; TTY mode returns the
    /// redrawn block (see `block`).
    pub fn tick(&mut self, now_s: f64) -> String {
        if self.mode != Mode::Plain {
            return String::new();
        }
        let mut out = String::new();
        for i in 0..self.rows.len() {
            let r = &self.rows[i];
            let waited = now_s - r.since_s;
            let due = match r.noticed_s {
                None => waited >= WAIT_NOTICE_S,
                Some(n) => now_s - n >= WAIT_REPEAT_S,
            };
            if r.state != State::Waiting || !due {
                continue;
            }
            let line = match self.blocker(i) {
                Some(b) => format!(
                    "waiting: {} ← {} ({}, {})",
                    r.name,
                    b.name,
                    crate::state::state_name(b.state),
                    secs(waited)
                ),
                None => format!("waiting: {} ({})", r.name, secs(waited)),
            };
            let _ = writeln!(out, "{line}");
            self.rows[i].noticed_s = Some(now_s);
        }
        out
    }

    /// The TTY block: an `[N/M ready]` header and one line per entry, failures in red.
    pub fn block(&self, now_s: f64) -> String {
        let (ready, total) = self.counts();
        let mut s = format!("[{ready}/{total} ready] {}\n", secs(now_s));
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for r in &self.rows {
            let (mark, red) = match r.state {
                State::Ready | State::Done => ("✔", false),
                State::Cached => ("✔", false),
                State::Skipped | State::Stopped => ("-", false),
                State::Failed => ("✘", true),
                State::Waiting => ("…", false),
                _ => ("⠿", false),
            };
            let mut line = format!(
                " {mark} {:<width$}  {:<8} {:>6}",
                r.name,
                crate::state::state_name(r.state),
                secs(if r.state.is_active() || r.state == State::Waiting {
                    (now_s - r.since_s).max(0.0)
                } else {
                    r.took_s.unwrap_or(0.0).max(0.0)
                })
            );
            if r.state == State::Waiting {
                if let Some(b) =
                    self.blocker(self.rows.iter().position(|x| x.name == r.name).unwrap_or(0))
                {
                    let _ = write!(
                        line,
                        "  ← {} ({})",
                        b.name,
                        crate::state::state_name(b.state)
                    );
                }
            } else if let Some(reason) = &r.reason {
                let _ = write!(line, "  {reason}");
            }
            if let Some(l) = &r.last_line {
                let _ = write!(line, "; last log line: {l}");
            }
            if red {
                line = format!("\x1b[31m{line}\x1b[0m");
            }
            s.push_str(&line);
            s.push('\n');
        }
        if let Some(r) = &self.ready {
            s.push_str(r);
            s.push('\n');
        }
        s
    }
}

impl Renderer {
    /// After the first ready line the TTY block is frozen; later changes come as plain lines.
    pub fn freeze(&mut self) {
        if self.mode == Mode::Tty {
            self.mode = Mode::Plain;
        }
    }

    /// When `tick` next has something to say (plain mode), in seconds since the start.
    pub fn next_due(&self) -> Option<f64> {
        if self.mode != Mode::Plain {
            return None;
        }
        self.rows
            .iter()
            .filter(|r| r.state == State::Waiting)
            .map(|r| match r.noticed_s {
                None => r.since_s + WAIT_NOTICE_S,
                Some(n) => n + WAIT_REPEAT_S,
            })
            .min_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
    }
}

/// The terminal shared by service output and the progress block: service lines are written
/// above the block, which is redrawn below them after every batch.
pub struct Terminal {
    inner: Mutex<Term>,
}

struct Term {
    out: Box<dyn std::io::Write + Send>,
    block: String,
    /// Lines of the block currently on screen (0 while erased).
    drawn: usize,
}

impl Term {
    fn erase(&mut self) {
        if self.drawn > 0 {
            let _ = write!(self.out, "\x1b[{}A\r\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    fn draw(&mut self) {
        let width = terminal_width();
        for line in self.block.lines() {
            let _ = writeln!(self.out, "{}", clip(line, width));
        }
        self.drawn = self.block.lines().count();
        let _ = self.out.flush();
    }
}

use std::io::Write as _;

impl Terminal {
    pub fn new(out: Box<dyn std::io::Write + Send>) -> Arc<Terminal> {
        Arc::new(Terminal {
            inner: Mutex::new(Term {
                out,
                block: String::new(),
                drawn: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Term> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the block on screen.
    pub fn set_block(&self, block: String) {
        let mut t = self.lock();
        t.erase();
        t.block = block;
        t.draw();
    }

    /// Leaves the block on screen as it is; service output continues below it.
    pub fn release(&self) {
        let mut t = self.lock();
        t.block.clear();
        t.drawn = 0;
    }
}

/// A writer for service output that keeps the progress block below it.
pub struct TtySink(pub Arc<Terminal>);

impl std::io::Write for TtySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut t = self.0.lock();
        t.erase();
        t.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut t = self.0.lock();
        if t.drawn == 0 && !t.block.is_empty() {
            t.draw();
        }
        t.out.flush()
    }
}

/// Cuts a block line to the terminal width (counting the ANSI colour codes as zero wide), so
/// the number of lines to erase stays right.
fn clip(line: &str, width: usize) -> String {
    let mut out = String::new();
    let (mut shown, mut in_esc) = (0, false);
    for c in line.chars() {
        if c == '\x1b' {
            in_esc = true;
        }
        if !in_esc {
            if shown + 1 >= width {
                continue;
            }
            shown += 1;
        }
        if in_esc && c == 'm' {
            in_esc = false;
        }
        out.push(c);
    }
    out
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        120
    }
}

/// Writes the progress of `rx` for `up` until the loop ends: to `term` (TTY mode) or stderr.
pub async fn run(
    mut r: Renderer,
    mut rx: tokio::sync::broadcast::Receiver<Event>,
    start: std::time::Instant,
    term: Option<Arc<Terminal>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let now = || start.elapsed().as_secs_f64();
    let emit = |s: String| {
        if !s.is_empty() {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(s.as_bytes());
        }
    };
    let mut tty = term.filter(|_| r.mode == Mode::Tty);
    loop {
        // TTY: the elapsed times move every second; plain: the next wait notice.
        let wake = if tty.is_some() {
            Some(now() + 1.0)
        } else {
            r.next_due()
        };
        let sleep = async {
            match wake {
                Some(w) => {
                    tokio::time::sleep(std::time::Duration::from_secs_f64((w - now()).max(0.0)))
                        .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => emit(r.apply(&ev)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
            _ = sleep => emit(r.tick(now())),
        }
        if let Some(t) = &tty {
            t.set_block(r.block(now()));
            if r.is_ready() {
                t.release();
                r.freeze();
                tty = None;
            }
        }
    }
}

/// Moves events from the broadcast to one `/events` response as JSON lines, scrubbing
/// reasons and log lines with `scrub(entry, text)`. A subscriber that falls behind gets a
/// `{"type":"lagged","missed":N}` line (and should re-read `/status`).
pub async fn pump_events(
    mut rx: tokio::sync::broadcast::Receiver<Event>,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    scrub: impl Fn(&str, &str) -> String,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let line = tokio::select! {
            r = rx.recv() => match r {
                Ok(mut ev) => {
                    if let Event::State { name, reason, last_line, .. } = &mut ev {
                        for t in [reason, last_line].into_iter().flatten() {
                            *t = scrub(name, t);
                        }
                    }
                    serde_json::to_string(&ev).unwrap_or_default()
                }
                Err(RecvError::Lagged(n)) => format!("{{\"type\":\"lagged\",\"missed\":{n}}}"),
                Err(RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
        };
        if tx.send(bytes::Bytes::from(line + "\n")).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, start: f64, end: f64, after: &[usize]) -> Span {
        Span {
            name: name.into(),
            start_s: Some(start),
            end_s: Some(end),
            after: after.to_vec(),
        }
    }

    #[test]
    fn critical_path_follows_the_latest_dependency() {
        let spans = vec![
            span("pg-init", 0.0, 0.02, &[]),
            span("postgres", 0.02, 0.19, &[0]),
            span("redis", 0.0, 0.1, &[]),
            span("db-create", 0.19, 1.19, &[1, 2]),
            span("api", 1.19, 4.1, &[3, 2]),
            span("docs", 0.0, 0.5, &[]),
        ];
        let p = critical_path(&spans);
        let names: Vec<&str> = p.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["pg-init", "postgres", "db-create", "api"]);
        assert!((p[3].duration_s - 2.91).abs() < 1e-9);
        assert!((p[3].waited_s - 1.19).abs() < 1e-9);
        assert_eq!(
            path_text(&p),
            "pg-init 0.02 s → postgres 0.2 s → db-create 1.0 s → api 2.9 s"
        );
        assert!(critical_path(&[]).is_empty());
    }

    fn ev(seq: u64, t_s: f64, name: &str, from: State, to: State, reason: Option<&str>) -> Event {
        Event::State {
            seq,
            t_s,
            name: name.into(),
            from,
            to,
            reason: reason.map(Into::into),
            last_line: None,
        }
    }

    fn table(mode: Mode) -> Renderer {
        Renderer::new(
            mode,
            vec![
                ("db".into(), true, vec![]),
                ("api".into(), true, vec![0]),
                ("extra".into(), false, vec![]),
            ],
        )
    }

    #[test]
    fn plain_lines_golden() {
        let mut r = table(Mode::Plain);
        let mut out = String::new();
        out += &r.apply(&ev(1, 0.01, "db", State::Waiting, State::Starting, None));
        out += &r.tick(10.5);
        out += &r.tick(11.0);
        out += &r.apply(&ev(2, 12.0, "db", State::Starting, State::Ready, None));
        out += &r.apply(&ev(3, 12.0, "api", State::Waiting, State::Starting, None));
        out += &r.apply(&ev(4, 13.0, "api", State::Starting, State::Ready, None));
        out += &r.apply(&Event::Ready {
            seq: 5,
            t_s: 13.0,
            critical_path: vec![
                Link {
                    name: "db".into(),
                    duration_s: 12.0,
                    waited_s: 0.0,
                },
                Link {
                    name: "api".into(),
                    duration_s: 1.0,
                    waited_s: 12.0,
                },
            ],
            cached: 1,
            url: "http://127.0.0.1:1/_supervisor/".into(),
        });
        assert_eq!(
            out,
            "[0/2] 0.01 s db: starting\n\
             waiting: api ← db (starting, 10 s)\n\
             waiting: extra (10 s)\n\
             [1/2]   12 s db: ready\n\
             [1/2]   12 s api: starting\n\
             [2/2]   13 s api: ready\n\
             stack ready in 13 s; critical path: db 12 s → api 1.0 s; 1 step cached; open http://127.0.0.1:1/_supervisor/\n"
        );
        assert!(r.is_ready());
    }

    #[test]
    fn tty_block_and_json() {
        let mut r = table(Mode::Tty);
        assert_eq!(
            r.apply(&ev(1, 0.0, "db", State::Waiting, State::Starting, None)),
            ""
        );
        r.apply(&Event::State {
            seq: 2,
            t_s: 1.0,
            name: "db".into(),
            from: State::Starting,
            to: State::Failed,
            reason: Some("exited with code 1".into()),
            last_line: Some("FATAL: no space".into()),
        });
        let b = r.block(2.0);
        assert!(b.starts_with("[0/2 ready] 2.0 s\n"), "{b}");
        assert!(b.contains("\x1b[31m ✘ db     failed"), "{b}");
        assert!(
            b.contains("exited with code 1; last log line: FATAL: no space"),
            "{b}"
        );
        assert!(
            b.contains(" … api    waiting   2.0 s  ← db (failed)"),
            "{b}"
        );
        let mut j = table(Mode::Json);
        let e = ev(1, 0.5, "db", State::Waiting, State::Starting, None);
        let line = j.apply(&e);
        let back: Event = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, e);
        assert!(table(Mode::Quiet).apply(&e).is_empty());
    }

    #[test]
    fn clip_keeps_colour_codes() {
        assert_eq!(clip("\x1b[31mabcdef\x1b[0m", 4), "\x1b[31mabc\x1b[0m");
    }
}
