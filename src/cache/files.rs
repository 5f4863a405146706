//! The file primitives the cache is built on: safe path components, atomic (durable) writes,
//! and removal that treats "already gone" as done.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A name as one path component: anything but `[A-Za-z0-9-_.]` becomes `_`.
pub(super) fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A dot-named temporary path in `dir` (left out of every listing), unique to this write.
pub(super) fn tmp_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::logs::now_ms()
    ))
}

/// Writes `bytes` to `path` atomically and durably: temp file in the same dir, fsync,
/// rename, fsync of the directory. A crash leaves the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    swap_in(path, bytes, true)
}

/// Replaces `path` with `bytes` atomically but not durably: temp file, rename, no fsync. For
/// runtime files read within this boot (the shim's stop plan): a reader sees the old file or
/// the new one, and the control loop never waits for the disk (two fsyncs cost milliseconds,
/// more on overlayfs, at every start and exit of a process).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    swap_in(path, bytes, false)
}

/// Writes a temp file beside `path` and renames it over `path` (`durable`: with the file and
/// the directory fsynced); the temp file is removed on failure.
fn swap_in(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_path(dir);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `rm -rf`, where a missing path is not an error.
pub(super) fn remove_all(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
