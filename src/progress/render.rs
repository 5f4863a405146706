//! From events to text for one `Mode`: a TTY block, plain lines, JSON lines or nothing.
//! Pure: time comes in with the calls.

use super::events::{ready_line, secs, Event};
use crate::state::State;
use std::fmt::Write as _;

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
    pub(super) mode: Mode,
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
                let mut s = format!("[{ready}/{total}] {:>6} {name}: {}", secs(*t_s), to);
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
                    b.state,
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
                r.state.to_string(),
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
                    let _ = write!(line, "  ← {} ({})", b.name, b.state);
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

#[cfg(test)]
mod tests {
    use super::super::events::Link;
    use super::*;

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
}
