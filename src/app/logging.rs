//! The supervisor's own messages on stderr: through a thread of their own (lossy when stderr
//! is stuck, like service output), redacted; the guard flushes them at exit.
//! `DMP_CONTAINED_LOG` = error | warn | info | debug | trace.

use crate::progress::{Terminal, TtySink};
use std::sync::Arc;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;

/// How `up` prints its own messages (and service output): text or JSON lines.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines of the supervisor's own messages that may wait for stderr (then they are dropped).
/// Every slot is allocated and touched up front, so the queue is kept small.
const STDERR_QUEUE: usize = 512;

/// `DMP_CONTAINED_LOG`, or `default` when unset or unreadable.
fn level(default: LevelFilter) -> LevelFilter {
    std::env::var("DMP_CONTAINED_LOG")
        .ok()
        .and_then(|l| l.trim().parse::<LevelFilter>().ok())
        .unwrap_or(default)
}

/// A redacting writer to `w` on the `stderr` thread.
fn writer(w: impl std::io::Write + Send + 'static) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(STDERR_QUEUE)
        .thread_name("stderr")
        .finish(crate::redact::Writer(w))
}

/// To stderr, `info` by default; colour on a TTY in text format.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = writer(std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_max_level(level(LevelFilter::INFO))
        .with_writer(writer)
        .with_target(false);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.with_ansi(nix::unistd::isatty(2).unwrap_or(false)).init(),
    }
    guard
}

/// TTY progress: the supervisor's own lines go above the block; only warnings by default
/// (the block shows what `info` would), unless `DMP_CONTAINED_LOG` asks for more.
pub fn init_tty(term: Arc<Terminal>) -> WorkerGuard {
    let (writer, guard) = writer(TtySink(term));
    tracing_subscriber::fmt()
        .with_max_level(level(LevelFilter::WARN))
        .with_writer(writer)
        .with_target(false)
        .with_ansi(true)
        .init();
    guard
}
