//! `cache` and `snapshot ls|rm`: the oneshot cache and the named snapshots, read and
//! cleared on the table's `cache_dir` directly (no running supervisor needed).

use crate::cache;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum CacheOp {
    /// List cache records and chain snapshots.
    Ls,
    /// Remove the records of STEP (or every record and chain snapshot).
    Clear { step: Option<String> },
}

#[derive(clap::Subcommand)]
pub enum SnapshotOp {
    /// Stop the services with a `data_dir` (and their dependents), copy, start again.
    Save { name: String },
    /// Stop them, replace their data with snapshot NAME, start again.
    Restore { name: String },
    /// List named snapshots (works on `cache_dir` directly).
    Ls,
    /// Remove a named snapshot (works on `cache_dir` directly).
    Rm { name: String },
}

fn cache_dir(config: &Path) -> Result<PathBuf, i32> {
    super::load(config).map(|p| p.settings.cache_dir)
}

/// `cache ls` / `cache clear [STEP]`, on the table's `cache_dir`.
pub fn cache(config: &Path, op: CacheOp) -> i32 {
    let dir = match cache_dir(config) {
        Ok(d) => d,
        Err(c) => return c,
    };
    match op {
        CacheOp::Ls => {
            let recs = cache::list_records(&dir);
            println!("cache dir {}", dir.display());
            println!("{:<28} {:<16} {:>9}  recorded", "STEP", "KEY", "TOOK(s)");
            for r in &recs {
                println!(
                    "{:<28} {:<16} {:>9.2}  {}",
                    r.step,
                    &r.key[..r.key.len().min(16)],
                    r.duration_s,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.at_ms)
                    )
                );
            }
            for (path, why) in cache::list_corrupt(&dir) {
                println!(
                    "corrupt {} (a miss: the step runs again): {why}",
                    path.display()
                );
            }
            for (svc, key, bytes) in cache::list_chain_snapshots(&dir) {
                println!(
                    "snapshot {svc:<19} {:<16} {:>9.1} MB",
                    &key[..key.len().min(16)],
                    bytes as f64 / 1e6
                );
            }
            0
        }
        CacheOp::Clear { step } => match cache::clear(&dir, step.as_deref()) {
            Ok(n) => {
                println!(
                    "removed {n} record(s){}",
                    if step.is_none() {
                        " and every chain snapshot"
                    } else {
                        ""
                    }
                );
                0
            }
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                1
            }
        },
    }
}

/// `snapshot ls` / `snapshot rm NAME`, on the table's `cache_dir` (save and restore ask the
/// running supervisor).
pub fn snapshot(config: &Path, op: SnapshotOp) -> i32 {
    let dir = match cache_dir(config) {
        Ok(d) => d,
        Err(c) => return c,
    };
    match op {
        SnapshotOp::Rm { name } => match cache::remove_named(&dir, &name) {
            Ok(true) => {
                println!("removed snapshot `{name}`");
                0
            }
            Ok(false) => {
                eprintln!("error: no snapshot `{name}`");
                crate::cli::EXIT_UNKNOWN
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        _ => {
            println!("{:<24} {:>10}  services", "NAME", "SIZE(MB)");
            for (n, svcs, bytes) in cache::list_named(&dir) {
                println!("{n:<24} {:>10.1}  {}", bytes as f64 / 1e6, svcs.join(", "));
            }
            0
        }
    }
}
