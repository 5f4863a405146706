//! Where changes come from: the native watcher (inotify through `notify`) or our own poller,
//! chosen per `watch.mode`; waiting for a deleted root to come back; walking new directories
//! again once their watches exist. Everything here sends relative paths on a channel.
//!
//! Owns the OS side of watching (notify, statfs, the poll thread and its snapshots). It may
//! not touch trains, status or the control loop: the watcher task (`mod.rs`) records what
//! happened.

use super::ignores::Ignores;
use crate::plan::{Watch, WatchMode};
use crate::status::WatcherMode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Test and diagnosis knob: pretend the native watcher cannot be set up.
pub const NO_NATIVE_ENV: &str = "DMP_CONTAINED_WATCH_NO_NATIVE";

/// Filesystems where inotify events may never arrive (changes made on another host).
fn remote_fs(path: &Path) -> Option<&'static str> {
    let t = nix::sys::statfs::statfs(path).ok()?.filesystem_type().0 as i64;
    Some(match t {
        0x6969 => "nfs",
        0xFF53_4D42 | 0xFE53_4D42 | 0x517B => "cifs/smb",
        0x6573_5546 => "fuse (Docker Desktop, sshfs, ...)",
        0x0102_1997 => "9p",
        0x7461_636f => "ocfs2",
        _ => return None,
    })
}

/// Whatever watches (the native watcher or the poller); watching stops when it is dropped.
pub(super) type Boxed = Box<dyn std::any::Any + Send>;

/// A watcher set up: what watches, in which mode, and why `auto` fell back to polling.
pub(super) type Watching = (Boxed, WatcherMode, Option<String>);

/// Where a watcher sends what it sees: the changed files (relative to their root), new
/// directories (to walk again once their watches exist) and deleted roots. Cloned by every
/// watcher an entry sets up, including after a root is recreated.
#[derive(Clone)]
pub(super) struct Sinks {
    pub ignores: Arc<Vec<Ignores>>,
    pub tx: mpsc::UnboundedSender<Vec<String>>,
    pub new_dirs: mpsc::UnboundedSender<PathBuf>,
    pub lost: mpsc::UnboundedSender<PathBuf>,
}

fn handler(
    Sinks {
        ignores,
        tx,
        new_dirs,
        lost,
    }: Sinks,
    name: String,
) -> impl notify::EventHandler {
    move |r: notify::Result<notify::Event>| match r {
        Ok(ev) => {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            // A deleted root takes its inotify watches with it: report it, to watch again
            // once it is recreated.
            if matches!(ev.kind, notify::EventKind::Remove(_)) {
                for p in &ev.paths {
                    if ignores.iter().any(|i| i.root == *p) && !p.exists() {
                        let _ = lost.send(p.clone());
                    }
                }
            }
            let mut files = Vec::new();
            for p in &ev.paths {
                let Some(ig) = ignores.iter().find(|i| p.starts_with(&i.root)) else {
                    continue;
                };
                let Some(rel) = ig.relevant(p) else {
                    continue;
                };
                files.push(rel);
                // Files created in a new directory before its watch is added (notify adds it
                // after this batch of events) raise no event of their own: count what is there
                // now, and again once the watch surely exists (`rewalk`).
                if matches!(ev.kind, notify::EventKind::Create(_)) && p.is_dir() {
                    ig.walk(p, &mut files, 10_000);
                    let _ = new_dirs.send(p.clone());
                }
            }
            if !files.is_empty() {
                let _ = tx.send(files);
            }
        }
        Err(e) => tracing::warn!("{name}: watch error: {e}"),
    }
}

fn start_native(w: &Watch, h: impl notify::EventHandler) -> Result<Boxed, String> {
    if std::env::var_os(NO_NATIVE_ENV).is_some() {
        return Err(format!("native watching disabled by {NO_NATIVE_ENV}"));
    }
    let mut n = <notify::RecommendedWatcher as notify::Watcher>::new(h, notify::Config::default())
        .map_err(|e| describe(&e))?;
    for p in &w.paths {
        notify::Watcher::watch(&mut n, p, notify::RecursiveMode::Recursive)
            .map_err(|e| format!("{}: {}", p.display(), describe(&e)))?;
    }
    Ok(Box::new(n))
}

/// Polling, for trees whose change events never arrive. Our own scanner rather than
/// `notify::PollWatcher`: that one compares modification times in whole seconds, so a second
/// save within the same second as the first goes unseen (and it hashes every file to do
/// better). This compares (mtime in ns, size, inode) and skips ignored subtrees entirely.
struct Poller {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What identifies one version of a file.
type Stamp = (i64, i64, u64, u64);
type Snapshot = std::collections::HashMap<String, Stamp>;

fn scan(ignores: &[Ignores]) -> Snapshot {
    fn visit(ig: &Ignores, k: usize, path: &Path, out: &mut Snapshot) {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::symlink_metadata(path) else {
            return;
        };
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(path) {
                for e in rd.flatten() {
                    let p = e.path();
                    if ig.relevant(&p).is_some() {
                        visit(ig, k, &p, out);
                    }
                }
            }
        } else if let Some(rel) = ig.relevant(path) {
            out.insert(
                format!("{k}\0{rel}"),
                (m.mtime(), m.mtime_nsec(), m.size(), m.ino()),
            );
        }
    }
    let mut out = Snapshot::new();
    for (k, ig) in ignores.iter().enumerate() {
        visit(ig, k, &ig.root, &mut out);
    }
    out
}

/// Changed files between two snapshots (created, modified, removed).
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let rel = |k: &String| {
        k.split_once('\0')
            .map(|x| x.1.to_string())
            .unwrap_or_default()
    };
    let mut out: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, _)| rel(k))
        .collect();
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).map(rel));
    out.sort();
    out
}

fn start_poll(
    w: &Watch,
    ignores: Arc<Vec<Ignores>>,
    tx: mpsc::UnboundedSender<Vec<String>>,
) -> Result<Poller, String> {
    if let Some(p) = w.paths.iter().find(|p| !p.exists()) {
        return Err(format!("{}: no such file or directory", p.display()));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut snap = scan(&ignores);
    let (interval, stop2) = (w.poll_interval, stop.clone());
    std::thread::Builder::new()
        .name("watch-poll".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if stop2.load(std::sync::atomic::Ordering::Relaxed) || tx.is_closed() {
                return;
            }
            let new = scan(&ignores);
            let changed = diff(&snap, &new);
            snap = new;
            if !changed.is_empty() && tx.send(changed).is_err() {
                return;
            }
        })
        .map_err(|e| format!("cannot start the poller: {e}"))?;
    Ok(Poller { stop })
}

fn describe(e: &notify::Error) -> String {
    match e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "inotify watch limit reached (raise fs.inotify.max_user_watches, or ignore more)".into()
        }
        _ => e.to_string(),
    }
}

/// Sets up the watcher for `mode`: native first; `auto` falls back to polling when native
/// cannot be set up or the tree is on a filesystem whose events may not arrive.
pub(super) fn setup(name: &str, w: &Watch, sinks: &Sinks) -> Result<Watching, String> {
    let h = || handler(sinks.clone(), name.to_string());
    let poll = || -> Result<Boxed, String> {
        Ok(Box::new(start_poll(
            w,
            sinks.ignores.clone(),
            sinks.tx.clone(),
        )?))
    };
    match w.mode {
        WatchMode::Poll => Ok((poll()?, WatcherMode::Poll, None)),
        WatchMode::Native => Ok((start_native(w, h())?, WatcherMode::Native, None)),
        WatchMode::Auto => {
            if let Some((p, fs)) = w.paths.iter().find_map(|p| remote_fs(p).map(|f| (p, f))) {
                let why = format!(
                    "{} is on {fs}, where change events may not arrive; polling every {:?}",
                    p.display(),
                    w.poll_interval
                );
                return Ok((poll()?, WatcherMode::Poll, Some(why)));
            }
            match start_native(w, h()) {
                Ok(n) => Ok((n, WatcherMode::Native, None)),
                Err(e) => {
                    let why = format!(
                        "native watcher unavailable ({e}); polling every {:?}",
                        w.poll_interval
                    );
                    Ok((poll()?, WatcherMode::Poll, Some(why)))
                }
            }
        }
    }
}

/// Waits until `dir` exists again, on an inotify watch of its parent (no polling).
pub(super) async fn wait_for_dir(dir: &Path) -> Result<(), String> {
    let parent = dir
        .parent()
        .ok_or_else(|| format!("{} has no parent to watch", dir.display()))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let want = dir.to_path_buf();
    let mut n = <notify::RecommendedWatcher as notify::Watcher>::new(
        move |r: notify::Result<notify::Event>| {
            if r.is_ok_and(|ev| ev.paths.contains(&want)) {
                let _ = tx.send(());
            }
        },
        notify::Config::default(),
    )
    .map_err(|e| describe(&e))?;
    notify::Watcher::watch(&mut n, parent, notify::RecursiveMode::NonRecursive).map_err(|e| {
        format!(
            "{} was deleted and its parent cannot be watched ({}); watching stopped",
            dir.display(),
            describe(&e)
        )
    })?;
    while !dir.is_dir() {
        if rx.recv().await.is_none() {
            return Err(format!("{}: watcher closed", dir.display()));
        }
    }
    Ok(())
}

/// Named timer: how long after a new directory is reported it is walked again (its inotify
/// watch exists by then), well under any sensible debounce.
const REWALK_DELAY: Duration = Duration::from_millis(20);

/// Walks new directories again a moment after their creation, when their watches exist.
pub(super) async fn rewalk(
    mut dirs: mpsc::UnboundedReceiver<PathBuf>,
    ignores: Arc<Vec<Ignores>>,
    tx: mpsc::UnboundedSender<Vec<String>>,
) {
    while let Some(first) = dirs.recv().await {
        // notify adds the watch right after the batch that reported the directory; staying
        // well under any sensible debounce keeps these files in the train they belong to.
        tokio::time::sleep(REWALK_DELAY).await;
        let mut batch = vec![first];
        while let Ok(d) = dirs.try_recv() {
            batch.push(d);
        }
        let ig = ignores.clone();
        let files = tokio::task::spawn_blocking(move || {
            batch.sort();
            batch.dedup();
            let mut files = Vec::new();
            for (k, d) in batch.iter().enumerate() {
                // A directory inside one already walked in this batch adds nothing.
                if batch[..k].iter().any(|p| d.starts_with(p)) {
                    continue;
                }
                if let Some(i) = ig.iter().find(|i| d.starts_with(&i.root)) {
                    i.walk(d, &mut files, 10_000);
                }
            }
            files
        })
        .await
        .unwrap_or_default();
        if !files.is_empty() && tx.send(files).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_scan_sees_a_second_save_within_the_same_second() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/x")).unwrap();
        std::fs::write(dir.path().join("node_modules/x/i.js"), "a").unwrap();
        std::fs::write(dir.path().join("app.py"), "v = 1\n").unwrap();
        let ig = vec![Ignores::new(dir.path(), &[])];
        let s0 = scan(&ig);
        assert_eq!(s0.len(), 1, "ignored subtrees are not scanned: {s0:?}");
        std::fs::write(dir.path().join("app.py"), "v = 2\n").unwrap();
        std::fs::write(dir.path().join("new.py"), "").unwrap();
        std::fs::write(dir.path().join("x.pyc"), "").unwrap();
        let s1 = scan(&ig);
        assert_eq!(diff(&s0, &s1), vec!["app.py", "new.py"]);
        std::fs::remove_file(dir.path().join("new.py")).unwrap();
        assert_eq!(diff(&s1, &scan(&ig)), vec!["new.py"]);
    }
}
