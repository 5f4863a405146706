//! Giving memory back when there is nothing to do. Both processes run one big binary, but an
//! idle init shim or supervisor needs almost none of it: `trim` returns the heap's free
//! memory to the kernel (`malloc_trim`) and drops this process's mappings of clean file pages
//! (the code and read-only data of the binary and its libraries). Dropped pages stay in the
//! page cache and are mapped again, a minor fault each, when code runs — as the kernel itself
//! would do under memory pressure. Pages a process has written (relocated data, `.data`,
//! anything copied-on-write) are never dropped.
//!
//! The shim trims once it has started the supervisor; the supervisor trims when its event
//! stream has been quiet for `IDLE_AFTER` (once per quiet period: no timer runs while idle).
#![allow(unsafe_code)] // madvise and malloc_trim have no safe wrapper; every site has a SAFETY comment

use std::time::Duration;
use tokio::sync::broadcast;

/// Named timer: how long the supervisor's event stream stays quiet before it trims.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// One mapping of /proc/self/smaps, as far as trimming cares.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Private, read-only, backed by a file (not `[vdso]` and the like).
    clean_file: bool,
    /// Pages copied on write (relocations): the mapping is left alone.
    anonymous_kb: u64,
    locked_kb: u64,
    rss_kb: u64,
}

impl Mapping {
    fn droppable(&self) -> bool {
        self.clean_file && self.anonymous_kb == 0 && self.locked_kb == 0 && self.rss_kb > 0
    }
}

/// The mappings listed in an smaps text.
fn parse(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            let perms = f.next().unwrap_or("");
            let inode = f.nth(2).unwrap_or("0");
            let path = f.next().unwrap_or("");
            let p = perms.as_bytes();
            out.push(Mapping {
                start,
                end,
                clean_file: p.len() == 4
                    && p[1] != b'w'
                    && p[3] == b'p'
                    && inode != "0"
                    && path.starts_with('/'),
                anonymous_kb: 0,
                locked_kb: 0,
                rss_kb: 0,
            });
            continue;
        }
        let (Some(m), Some(kb)) = (out.last_mut(), f.next().and_then(|v| v.parse().ok())) else {
            continue;
        };
        match first {
            "Rss:" => m.rss_kb = kb,
            "Anonymous:" => m.anonymous_kb = kb,
            "Locked:" => m.locked_kb = kb,
            _ => {}
        }
    }
    out
}

/// Returns free heap to the kernel and drops the mappings of clean file pages. Returns the
/// kB of file pages dropped.
pub fn trim() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/smaps")
        .map(|s| parse(&s))
        .unwrap_or_default();
    let mut dropped = 0;
    for m in maps.iter().filter(|m| m.droppable()) {
        // SAFETY: a private, read-only, file-backed mapping without copied-on-write pages:
        // after MADV_DONTNEED its pages are read from the file again on the next access, with
        // the same contents.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            dropped += m.rss_kb;
        }
    }
    drop(maps);
    // SAFETY: plain glibc call.
    unsafe { libc::malloc_trim(0) };
    dropped
}

/// Heap settings for the supervisor: blocks up to `MMAP_ABOVE` (a pipe read's chunk) come from
/// the heap, and up to `KEEP_FREE` of free heap top is kept between bursts, so a busy log
/// stream reuses its memory instead of mapping fresh pages (a page fault each 4 KiB) for every
/// chunk. `trim` returns that free memory once things are quiet.
pub fn tune_malloc() {
    const MMAP_ABOVE: libc::c_int = 4 << 20;
    const KEEP_FREE: libc::c_int = 8 << 20;
    // SAFETY: plain glibc calls, before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE);
    }
}

/// Trims each time the event stream has been quiet for `IDLE_AFTER`, then waits (without a
/// timer) for the next event.
pub async fn when_idle<T: Clone>(mut events: broadcast::Receiver<T>) {
    loop {
        match tokio::time::timeout(IDLE_AFTER, events.recv()).await {
            Ok(Err(broadcast::error::RecvError::Closed)) => return,
            Ok(_) => continue,
            Err(_) => {
                let kb = trim();
                tracing::debug!("idle: dropped {kb} kB of mapped file pages, trimmed the heap");
                if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_private_file_mappings_are_droppable() {
        let smaps = "\
55d0a0000000-55d0a0100000 r-xp 00001000 fe:01 1234                       /usr/bin/x
Rss:                 400 kB
Anonymous:             0 kB
Locked:                0 kB
55d0a0100000-55d0a0150000 r--p 00101000 fe:01 1234                       /usr/bin/x
Rss:                 320 kB
Anonymous:           320 kB
Locked:                0 kB
55d0a0150000-55d0a0160000 rw-p 00151000 fe:01 1234                       /usr/bin/x
Rss:                  64 kB
Anonymous:            12 kB
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                 668 kB
Anonymous:           668 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7f0000000000-7f0000010000 r--s 00000000 00:05 99                         /dev/shm/x
Rss:                  64 kB
Anonymous:             0 kB
";
        let maps = parse(smaps);
        assert_eq!(maps.len(), 6);
        let droppable: Vec<usize> = maps
            .iter()
            .filter(|m| m.droppable())
            .map(|m| m.start)
            .collect();
        assert_eq!(droppable, vec![0x55d0a0000000]);
    }

    #[test]
    fn trimming_keeps_this_process_working() {
        let before: Vec<u64> = (0..1000).collect();
        let kb = trim();
        assert!(kb > 0, "the test binary's code was mapped");
        // Code and read-only data come back from the file; written data was left alone.
        assert_eq!(before.iter().sum::<u64>(), 499_500);
        assert_eq!(format!("{:?}", parse("")), "[]");
    }
}
