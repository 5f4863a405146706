//! The contract between the control loop and everything that talks to it: the requests
//! (`Control`), why one is refused (`Refused`), and the read side the API, the watchers and the
//! config reload share (`Shared`). It owns no state; the loop (src/supervisor/) answers every
//! request, and only the loop publishes on `Shared`.

mod shared;
pub use shared::{Shared, View};

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Run,
    /// Hot reload: hold changes until `Resume` (src/watch/).
    Pause,
    Resume,
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "start" => Action::Start,
            "stop" => Action::Stop,
            "restart" => Action::Restart,
            "run" => Action::Run,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            _ => {
                return Err(format!(
                    "unknown action `{s}` (start, stop, restart, run, pause, resume)"
                ))
            }
        })
    }
}

/// Why a mutation did not succeed (src/api/ maps each variant to its HTTP status).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("unknown entry `{name}` (known: {known})")]
    UnknownEntry { name: String, known: String },
    /// A oneshot run by request failed; `exit_code` is its own code (for `run`'s exit status).
    #[error("{message}")]
    Failed {
        message: String,
        exit_code: Option<i32>,
    },
    /// Not possible in the entry's or the supervisor's present state.
    #[error("{0}")]
    Conflict(String),
    /// A snapshot name that cannot name a directory.
    #[error("bad snapshot name {0:?}")]
    BadName(String),
    /// `snapshot restore NAME` of a snapshot some services lack.
    #[error("snapshot `{name}` not found for {services} (see `dmp-contained snapshot ls`)")]
    NoSnapshot { name: String, services: String },
    /// The copy itself failed (the disk, permissions).
    #[error("{0}")]
    CopyFailed(String),
}

impl From<String> for Refused {
    fn from(message: String) -> Refused {
        Refused::Conflict(message)
    }
}

impl From<&str> for Refused {
    fn from(message: &str) -> Refused {
        Refused::Conflict(message.into())
    }
}

/// Requests to the control loop (from the API / CLI).
pub enum Control {
    Act {
        action: Action,
        name: String,
        reply: oneshot::Sender<Result<String, Refused>>,
    },
    Shutdown(oneshot::Sender<()>),
    /// Hot reload (src/watch/): restart the entry (re-run a oneshot) because `files` files
    /// changed; reply once it is ready/done, or with why not (backoff, failed, refused).
    Reload {
        idx: usize,
        files: usize,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Reply once entry `idx` is ready/done (Ok) or has settled elsewhere (Err with why); at
    /// once when it is not on its way to ready (src/api/unavailable.rs holds requests with it).
    AwaitSettled {
        idx: usize,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Config reload (src/reload.rs): Ok with the report once applied and settled; Err with
    /// the report when the table is invalid (nothing changed) or an entry it started failed.
    ConfigReload {
        trigger: crate::status::Trigger,
        reply: oneshot::Sender<Result<crate::status::Report, crate::status::Report>>,
    },
    /// `snapshot save|restore NAME`.
    Snapshot {
        op: SnapOp,
        name: String,
        reply: oneshot::Sender<Result<String, Refused>>,
    },
}

/// `dmp-contained snapshot save|restore NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapOp {
    Save,
    Restore,
}
