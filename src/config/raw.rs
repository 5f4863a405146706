//! The serde mirror of the table (`Raw*`), each type with its defaults beside it, and the
//! lenient deserialiser: a bad key is reported at its own position and left out, so the rest
//! of its table (an entry with other errors, names other entries refer to) still exists.

use super::errors::{backticked, Errors, KeyPath, Seg};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub supervisor: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub template: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub process: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub step: BTreeMap<String, Spanned<toml::Value>>,
    /// Defaults for `${…}` (the environment and env files win).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub env_file: Option<String>,
    #[serde(default)]
    pub env_file_optional: bool,
    pub api_listen: Option<String>,
    pub socket: Option<String>,
    pub token_env: Option<String>,
    pub cache_dir: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub log_lines: Option<usize>,
    pub log_dir: Option<String>,
    pub log_max_size: Option<RawSize>,
    pub log_max_files: Option<usize>,
    pub watch_config: Option<bool>,
}

/// `[supervisor]` defaults (docs/CONFIG.md is checked against them).
impl RawSettings {
    pub const API_LISTEN: &str = "127.0.0.1:8089";
    pub const SOCKET: &str = "/run/dmp-contained.sock";
    pub const TOKEN_ENV: &str = "DMP_CONTAINED_TOKEN";
    pub const CACHE_DIR: &str = "/var/cache/dmp-contained";
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(9);
    pub const LOG_LINES: usize = 1000;
    pub const LOG_MAX_SIZE: u64 = 10 << 20;
    pub const LOG_MAX_FILES: usize = 5;
    pub const WATCH_CONFIG: bool = false;
}

/// `log_max_size`: bytes, or a string with a unit (`"10M"`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    pub src: String,
    pub dest: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawCommand {
    Shell(String),
    Argv(Vec<String>),
}

/// A port: a number, or a string interpolated like every other value (`"${PG_PORT:-5432}"`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawPort {
    /// Range-checked after parsing, so an out-of-range number gets a message of its own
    /// (an untagged `u16` would only say "did not match any variant").
    Number(i64),
    Text(String),
}

/// An entry's `env_file`: one path, or a list where later files win; a path ending in `?`
/// may be missing.
#[derive(Deserialize, Default)]
#[serde(untagged)]
pub(super) enum RawEnvFiles {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl RawEnvFiles {
    pub fn paths(&self) -> &[String] {
        match self {
            RawEnvFiles::None => &[],
            RawEnvFiles::One(p) => std::slice::from_ref(p),
            RawEnvFiles::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntry {
    /// Required; checked by hand so that an entry whose `command` is bad still exists.
    pub command: Option<RawCommand>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub env_file: RawEnvFiles,
    pub user: Option<String>,
    pub group: Option<String>,
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub ports: Vec<RawPort>,
    #[serde(default)]
    pub listen: Vec<String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<String>,
    #[serde(default)]
    pub critical: bool,
    #[serde(default)]
    pub optional: bool,
    pub when_exists: Option<String>,
    pub skip_hint: Option<String>,
    #[serde(default)]
    pub restart_with: Vec<String>,
    pub ready: Option<RawProbe>,
    pub liveness: Option<RawProbe>,
    pub restart: Option<RawRestart>,
    pub watch: Option<RawWatch>,
    pub cache: Option<RawCache>,
    pub schedule: Option<String>,
    pub data_dir: Option<String>,
    /// Steps: killed and failed after this long.
    pub timeout: Option<String>,
    /// Steps: a "still running" note this often ("0s": never).
    pub progress: Option<String>,
    /// Off unless one of these profiles is active (`--profile`, DMP_CONTAINED_PROFILES).
    #[serde(default)]
    pub profiles: Vec<String>,
}

/// Entry defaults (restart defaults: `plan::Restart::default`).
impl RawEntry {
    pub const STOP_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGTERM;
    pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
    /// Steps: no timeout.
    pub const TIMEOUT: Duration = Duration::ZERO;
    pub const PROGRESS: Duration = Duration::from_secs(30);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub tcp: Option<String>,
    pub http: Option<String>,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub exec: Option<Vec<String>>,
    pub postgres: Option<String>,
    pub redis: Option<String>,
    pub log: Option<String>,
    pub notify: Option<bool>,
    pub watchdog: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub start_period: Option<String>,
}

impl RawProbe {
    pub const INTERVAL: Duration = Duration::from_secs(1);
    pub const TIMEOUT: Duration = Duration::from_secs(1);
    pub const RETRIES: u32 = 3;
    pub const START_PERIOD: Duration = Duration::from_secs(30);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestart {
    pub policy: Option<String>,
    pub backoff: Option<String>,
    pub backoff_max: Option<String>,
    pub max_restarts: Option<u32>,
    pub window: Option<String>,
    pub stable_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
    pub debounce: Option<String>,
    pub mode: Option<String>,
    pub poll_interval: Option<String>,
    pub action: Option<String>,
    pub signal: Option<String>,
    pub exec: Option<Vec<String>>,
    pub step: Option<String>,
    #[serde(default)]
    pub on: Vec<RawWatchRule>,
}

impl RawWatch {
    pub const DEBOUNCE: Duration = Duration::from_millis(200);
    pub const MODE: &str = "auto";
    pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
    pub const ACTION: &str = "restart";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatchRule {
    pub files: Vec<String>,
    pub action: Option<String>,
    pub signal: Option<String>,
    pub exec: Option<Vec<String>>,
    pub step: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub key_extra: Vec<String>,
    pub snapshot: Option<String>,
}

/// Deserialises `value` (the table at `at`), reporting every bad key at its own position as
/// `[label]: message` and leaving it out. `None` when the value cannot be read at all (it is
/// not a table, or a required key is missing). Also returns the paths (under `at`) left out.
pub(super) fn lenient<T: DeserializeOwned>(
    mut value: toml::Value,
    at: &[Seg],
    label: &str,
    errs: &mut Errors,
) -> (Option<T>, Vec<KeyPath>) {
    let mut removed: Vec<KeyPath> = Vec::new();
    // Each round removes one key; a table has few, this only bounds a pathological one.
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return (Some(t), removed),
            Err(e) => e,
        };
        let msg = e.inner().message().to_string();
        let mut path: KeyPath = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        if msg.starts_with("unknown field") {
            if let Some(k) = backticked(&msg).map(Seg::Key) {
                if path.last() != Some(&k) {
                    path.push(k);
                }
            }
        }
        // A required key whose value was bad (and left out) was reported as that: its table
        // is left out silently.
        let mut missing = path.clone();
        missing.extend(backticked(&msg).map(Seg::Key));
        if !(msg.starts_with("missing field") && removed.contains(&missing)) {
            let mut full = at.to_vec();
            full.extend(path.iter().cloned());
            errs.at_key(&full, format!("[{label}]: {msg}"));
        }
        let Some(cut) = path.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
            return (None, removed);
        };
        if !remove(&mut value, &path[..=cut]) {
            return (None, removed);
        }
        removed.push(path[..=cut].to_vec());
    }
    (None, removed)
}

/// Removes the key at the end of `path` from `value`.
fn remove(value: &mut toml::Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut v = value;
    for seg in parents {
        let next = match (seg, v) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    match (last, v) {
        (Seg::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        _ => false,
    }
}
