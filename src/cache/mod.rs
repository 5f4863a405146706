//! Oneshot cache: step keys, cache records and data snapshots (see docs/CACHE.md).
//!
//! Owns the layout of `cache_dir` and the chain marker inside a service's data dir:
//! `keys` (what a step key depends on), `records` (`steps/`), `snapshots` (`snapshots/`,
//! `named/`, the marker) on top of `files` (atomic writes). It may not touch lifecycle state
//! or the control loop: deciding when to look up, record or snapshot belongs to `CacheCtl`
//! (src/supervisor_cache.rs), which calls these from blocking tasks.
//!
//! Everything here is plain blocking file work, called from spawned tasks (never from the
//! control loop) and from the `cache` / `snapshot` CLI, which works on the cache dir directly.
//!
//! Layout of `cache_dir`:
//! ```text
//! steps/<step>/<key>.json              record: the step succeeded with this key
//! snapshots/<service>/<key>/data/      copy of the service's data_dir after the chain <key>
//! snapshots/<service>/<key>/meta.json
//! named/<NAME>/<service>/data/         named snapshots (`snapshot save NAME`)
//! <data_dir>/.dmp-contained-chain.json  which chain key that data dir holds (inside it)
//! ```

mod files;
mod keys;
mod records;
mod snapshots;

pub use files::{replace, write_atomic};
pub use keys::*;
pub use records::*;
pub use snapshots::*;
