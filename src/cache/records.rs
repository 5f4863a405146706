//! Cache records: `steps/<step>/<key>.json`, one per step that succeeded with that key.

use super::files::{remove_all, safe, write_atomic};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub step: String,
    pub key: String,
    pub at_ms: u64,
    #[serde(default)]
    pub duration_s: f64,
}

pub fn record_path(dir: &Path, step: &str, key: &str) -> PathBuf {
    dir.join("steps")
        .join(safe(step))
        .join(format!("{key}.json"))
}

/// A hit only for a readable record of this step and key: a corrupt one (garbage, truncated,
/// empty, another schema) is a miss with a warning, so the step runs and rewrites it.
pub fn has_record(dir: &Path, step: &str, key: &str) -> bool {
    match read_record(&record_path(dir, step, key)) {
        Ok(Some(r)) if r.step == step && r.key == key => true,
        Ok(Some(r)) => {
            tracing::warn!(
                "cache record for `{step}` names step `{}` key `{}`; treating it as a miss",
                r.step,
                r.key
            );
            false
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!("{e}; treating it as a miss (the step runs and rewrites it)");
            false
        }
    }
}

/// Reads a record file: `Ok(None)` when there is none, `Err` when it is unreadable.
pub fn read_record(path: &Path) -> Result<Option<Record>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cache record {}: {e}", path.display())),
    };
    serde_json::from_slice::<Record>(&bytes)
        .map(Some)
        .map_err(|e| format!("corrupt cache record {}: {e}", path.display()))
}

/// Record files that cannot be read as records, with the reason (for `cache ls`).
pub fn list_corrupt(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<_> = record_files(dir)
        .filter_map(|f| read_record(&f).err().map(|e| (f, e)))
        .collect();
    out.sort();
    out
}

/// Every record file below `<dir>/steps/<step>/` (dot files, the atomic writes in flight, left out).
fn record_files(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir.join("steps"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
        .map(|f| f.path())
}

pub fn write_record(dir: &Path, r: &Record) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(r).map_err(io::Error::other)?;
    write_atomic(&record_path(dir, &r.step, &r.key), &bytes)
}

pub fn list_records(dir: &Path) -> Vec<Record> {
    let mut out: Vec<Record> = record_files(dir)
        .filter_map(|f| std::fs::read(f).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| (&a.step, a.at_ms).cmp(&(&b.step, b.at_ms)));
    out
}

/// Removes the records of `step` (all when None) and, for all, every chain snapshot.
/// Returns how many records were removed.
pub fn clear(dir: &Path, step: Option<&str>) -> io::Result<usize> {
    let n = list_records(dir)
        .iter()
        .filter(|r| step.is_none_or(|s| s == r.step))
        .count();
    match step {
        Some(s) => remove_all(&dir.join("steps").join(safe(s)))?,
        None => {
            remove_all(&dir.join("steps"))?;
            remove_all(&dir.join("snapshots"))?;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_atomic_and_clearable() {
        let d = tempfile::tempdir().unwrap();
        let r = Record {
            step: "seed".into(),
            key: "k1".into(),
            at_ms: 1,
            duration_s: 0.5,
        };
        write_record(d.path(), &r).unwrap();
        assert!(has_record(d.path(), "seed", "k1"));
        assert!(!has_record(d.path(), "seed", "k2"));
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(d.path().join("steps/seed"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(list_records(d.path()).len(), 1);
        assert_eq!(clear(d.path(), Some("other")).unwrap(), 0);
        assert_eq!(clear(d.path(), Some("seed")).unwrap(), 1);
        assert!(list_records(d.path()).is_empty());
        // An unwritable cache dir is an error, not a panic.
        assert!(write_record(Path::new("/proc/nope"), &r).is_err());
    }

    #[test]
    fn corrupt_records_are_misses_and_listed() {
        let d = tempfile::tempdir().unwrap();
        let good = Record {
            step: "seed".into(),
            key: "k1".into(),
            at_ms: 1,
            duration_s: 0.5,
        };
        let full = serde_json::to_vec(&good).unwrap();
        let other = serde_json::to_vec(&Record {
            key: "other".into(),
            ..good.clone()
        })
        .unwrap();
        let cases: [&[u8]; 5] = [
            b"\x00\xffgarbage",
            &full[..full.len() / 2],
            b"",
            br#"{"version": 2, "entries": []}"#,
            &other,
        ];
        for bytes in cases {
            let p = record_path(d.path(), "seed", "k1");
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            assert!(!has_record(d.path(), "seed", "k1"), "{bytes:?}");
        }
        // The last case is a readable record under the wrong name: not listed as corrupt.
        std::fs::write(record_path(d.path(), "seed", "k1"), b"{").unwrap();
        let bad = list_corrupt(d.path());
        assert_eq!(bad.len(), 1);
        assert!(bad[0].1.starts_with("corrupt cache record"), "{}", bad[0].1);
        write_record(d.path(), &good).unwrap();
        assert!(has_record(d.path(), "seed", "k1"));
        assert!(list_corrupt(d.path()).is_empty());
    }
}
