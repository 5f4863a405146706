//! The terminal: the progress block redrawn below service output, and the thread's loop
//! that writes the progress of a start to it (or to stderr).
#![allow(unsafe_code)] // TIOCGWINSZ ioctl (terminal width); every site has a SAFETY comment

use super::events::Event;
use super::render::{Mode, Renderer};
use std::io::Write as _;
use std::sync::{Arc, Mutex};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_colour_codes() {
        assert_eq!(clip("\x1b[31mabcdef\x1b[0m", 4), "\x1b[31mabc\x1b[0m");
    }
}
