//! Data snapshots: the chain snapshots (`snapshots/<service>/<key>/`), the named ones
//! (`named/<NAME>/`), the chain marker inside a data dir, and the tree copies behind them.

use super::files::{remove_all, safe, sync_dir, tmp_path, write_atomic};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

pub fn snapshot_dir(dir: &Path, service: &str, key: &str) -> PathBuf {
    dir.join("snapshots").join(safe(service)).join(key)
}

pub fn named_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("named").join(safe(name))
}

/// The chain marker, kept INSIDE the data dir: whether a data dir holds a chain is decided
/// from the data dir itself, so a new container (or a wiped data dir) with the same cache
/// never takes an empty or foreign data dir for a seeded one.
pub const CHAIN_MARKER: &str = ".dmp-contained-chain.json";

fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CHAIN_MARKER)
}

#[derive(Debug, Serialize, Deserialize)]
struct Live {
    service: String,
    key: String,
}

/// Does `data_dir` hold exactly the data of `service`'s chain `key` (restored or snapshotted
/// from it, not touched by a step since)? Read from the marker inside `data_dir`.
pub fn live_matches(service: &str, key: &str, data_dir: &Path) -> bool {
    let Ok(b) = std::fs::read(marker_path(data_dir)) else {
        return false;
    };
    let Ok(l) = serde_json::from_slice::<Live>(&b) else {
        return false;
    };
    l.key == key && l.service == service
}

/// Marks `data_dir` as holding chain `key` (owned like the data dir, so e.g. Postgres' own
/// user can still manage everything in its directory).
pub fn set_live(service: &str, key: &str, data_dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let l = Live {
        service: service.into(),
        key: key.into(),
    };
    let p = marker_path(data_dir);
    write_atomic(&p, &serde_json::to_vec(&l).map_err(io::Error::other)?)?;
    if let Ok(md) = std::fs::metadata(data_dir) {
        let _ = std::os::unix::fs::chown(&p, Some(md.uid()), Some(md.gid()));
    }
    Ok(())
}

/// The data dir is about to diverge from any chain snapshot: drop its marker.
pub fn clear_live(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(marker_path(data_dir)) {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(())
        }
        r => r,
    }
}

/// `cp -a` (owners, modes, times, hard links kept; reflinks where the filesystem can).
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(src)
        .arg(dst)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "cp -a {} {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn syncfs(p: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from)
}

/// Copies `data_dir` to `<dest>/data` atomically: into a temp dir next to `dest`, flushed,
/// then renamed. An interrupted save leaves no `dest`. Returns the size in bytes.
pub fn save_tree(data_dir: &Path, dest: &Path, meta: &serde_json::Value) -> io::Result<u64> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tmp_path(parent);
    let r = (|| {
        std::fs::create_dir_all(&tmp)?;
        copy_tree(data_dir, &tmp.join("data"))?;
        std::fs::write(
            tmp.join("meta.json"),
            serde_json::to_vec_pretty(meta).map_err(io::Error::other)?,
        )?;
        syncfs(&tmp)?;
        remove_all(dest)?;
        std::fs::rename(&tmp, dest)?;
        sync_dir(parent)?;
        Ok(du(&dest.join("data")))
    })();
    if r.is_err() {
        let _ = remove_all(&tmp);
    }
    r
}

/// Replaces `data_dir` with `<src>/data`: copied next to it first, then swapped by rename.
pub fn restore_tree(src: &Path, data_dir: &Path) -> io::Result<()> {
    let data = src.join("data");
    if !data.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no snapshot data at {}", data.display()),
        ));
    }
    let parent = data_dir.parent().unwrap_or(Path::new("."));
    let base = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let tmp = parent.join(format!(".{base}.restore-tmp"));
    let old = parent.join(format!(".{base}.old"));
    remove_all(&tmp)?;
    remove_all(&old)?;
    copy_tree(&data, &tmp)?;
    syncfs(&tmp)?;
    if data_dir.exists() {
        std::fs::rename(data_dir, &old)?;
    }
    std::fs::rename(&tmp, data_dir)?;
    sync_dir(parent)?;
    remove_all(&old)
}

/// Apparent size of a tree in bytes.
pub fn du(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| du(&e.path()))
        .sum()
}

/// `(name, services, bytes)` of the named snapshots.
pub fn list_named(dir: &Path) -> Vec<(String, Vec<String>, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("named"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') {
            continue;
        }
        let mut svcs: Vec<String> = std::fs::read_dir(e.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|s| s.file_name().to_string_lossy().into_owned())
            .collect();
        svcs.sort();
        out.push((n, svcs, du(&e.path())));
    }
    out.sort();
    out
}

pub fn remove_named(dir: &Path, name: &str) -> io::Result<bool> {
    let p = named_dir(dir, name);
    if !p.exists() {
        return Ok(false);
    }
    remove_all(&p).map(|_| true)
}

/// `(service, key, bytes)` of the chain snapshots.
pub fn list_chain_snapshots(dir: &Path) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for s in std::fs::read_dir(dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for k in std::fs::read_dir(s.path()).into_iter().flatten().flatten() {
            let key = k.file_name().to_string_lossy().into_owned();
            if k.path().is_dir() && !key.starts_with('.') {
                out.push((
                    s.file_name().to_string_lossy().into_owned(),
                    key,
                    du(&k.path()),
                ));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_restore_tree_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("pg/data");
        std::fs::create_dir_all(data.join("base")).unwrap();
        std::fs::write(data.join("base/1"), "one").unwrap();
        let snap = d.path().join("cache/snapshots/pg/k");
        let n = save_tree(&data, &snap, &serde_json::json!({})).unwrap();
        assert_eq!(n, 3);
        std::fs::write(data.join("base/1"), "changed").unwrap();
        std::fs::write(data.join("extra"), "x").unwrap();
        restore_tree(&snap, &data).unwrap();
        assert_eq!(std::fs::read_to_string(data.join("base/1")).unwrap(), "one");
        assert!(!data.join("extra").exists());
        assert!(!d.path().join("pg/.data.old").exists());
        set_live("pg", "k", &data).unwrap();
        assert!(live_matches("pg", "k", &data));
        assert!(!live_matches("pg", "k2", &data));
        assert!(!live_matches("other", "k", &data));
        // The marker lives in the data dir: a replaced data dir (new container, wiped
        // PGDATA) does not match, whatever the cache holds.
        let fresh = d.path().join("pg/fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::write(fresh.join("PG_VERSION"), "15").unwrap();
        assert!(!live_matches("pg", "k", &fresh));
        clear_live(&data).unwrap();
        assert!(!live_matches("pg", "k", &data));
        clear_live(&data).unwrap();
    }
}
