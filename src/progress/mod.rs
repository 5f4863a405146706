//! Start-up progress: the typed events the control loop broadcasts and the critical path of
//! a start (`events`), a pure renderer from events to a TTY block, plain lines, JSON lines or
//! nothing (`render`), and the I/O around it: the terminal shared with service output and the
//! progress thread's loop (`term`).
//!
//! Owns no lifecycle state: it only reads the events the loop sends, and may not reach into
//! the loop, the runners or the API (the API streams events with `pump_events`).

mod events;
mod render;
mod term;

pub use events::*;
pub use render::*;
pub use term::*;
