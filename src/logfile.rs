//! Per-entry log files with size-based rotation (`log_dir`, `log_max_size`, `log_max_files`):
//! `NAME.log` is written until the next chunk would pass `log_max_size`, then it becomes
//! `NAME.log.1` (older ones shift up to `.N`, the oldest is removed) and a new `NAME.log` starts.
//! History outlives the in-memory ring and `docker logs`' mix.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct LogFile {
    path: PathBuf,
    max_size: u64,
    max_files: usize,
    file: Mutex<Option<(File, u64)>>,
}

impl LogFile {
    /// Opens (appending to) `dir/NAME.log`, creating `dir`.
    pub fn open(
        dir: &Path,
        name: &str,
        max_size: u64,
        max_files: usize,
    ) -> std::io::Result<LogFile> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.log"));
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = f.metadata()?.len();
        Ok(LogFile {
            path,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            file: Mutex::new(Some((f, size))),
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// `NAME.log` → `.1` → … → `.(max_files - 1)`; the file beyond is removed.
    fn rotate(&self) -> std::io::Result<File> {
        let keep = self.max_files - 1;
        if keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(self.rotated(keep));
            for n in (1..keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
    }

    /// Appends one chunk's lines (`RFC3339-ms TEXT` each), rotating before a line that would
    /// pass the size limit. A write error is reported once and the file is dropped: the
    /// service and the ring go on.
    pub fn append<'a>(&self, ts_ms: u64, lines: impl Iterator<Item = &'a str>) {
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        for text in lines {
            let Some((f, size)) = g.as_mut() else {
                return;
            };
            buf.clear();
            format_line(&mut buf, ts_ms, text);
            if *size > 0 && *size + buf.len() as u64 > self.max_size {
                match self.rotate() {
                    Ok(nf) => {
                        *f = nf;
                        *size = 0;
                    }
                    Err(e) => {
                        tracing::error!("log file {}: cannot rotate: {e}", self.path.display());
                        *g = None;
                        return;
                    }
                }
            }
            if let Err(e) = f.write_all(&buf) {
                tracing::error!("log file {}: {e}; no longer written", self.path.display());
                *g = None;
                return;
            }
            *size += buf.len() as u64;
        }
    }
}

/// `log_max_size`: bytes as a number, or with a unit: `512K`, `10M`, `1G` (also `KB`/`MiB`…,
/// all powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a size like 10M, got {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} in {s:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size {s:?} must be above 0 and fit in 64 bits"))
}

/// One captured line as the file holds it: `RFC3339-ms TEXT`.
pub fn format_line(buf: &mut Vec<u8>, ts_ms: u64, text: &str) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms);
    let _ = writeln!(buf, "{} {text}", humantime::format_rfc3339_millis(t));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5T").unwrap_err().contains("unit"));
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let d = tempfile::tempdir().unwrap();
        let f = LogFile::open(d.path(), "api", 100, 3).unwrap();
        // 25 bytes of timestamp and space + 14 + newline = 40 bytes a line.
        let text = "x".repeat(14);
        f.append(0, std::iter::repeat_n(text.as_str(), 12));
        let size = |n: &str| std::fs::metadata(d.path().join(n)).map(|m| m.len()).ok();
        // 2 lines (80 bytes) fit in 100: 12 lines = 6 files, of which 3 are kept.
        assert_eq!(size("api.log"), Some(80));
        assert_eq!(size("api.log.1"), Some(80));
        assert_eq!(size("api.log.2"), Some(80));
        assert_eq!(size("api.log.3"), None);
        // Reopening appends.
        drop(f);
        let f = LogFile::open(d.path(), "api", 1000, 3).unwrap();
        f.append(0, ["more"].into_iter());
        assert_eq!(size("api.log"), Some(80 + 30));
        assert!(std::fs::read_to_string(d.path().join("api.log"))
            .unwrap()
            .ends_with("1970-01-01T00:00:00.000Z more\n"));
    }
}
