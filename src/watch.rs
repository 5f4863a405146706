//! Hot reload: one watcher task per watched entry.
//!
//! A file watcher (inotify through `notify`, or `notify`'s `PollWatcher`) feeds changed paths,
//! filtered by the ignore rules, into a *train*: changes collect until a quiet period (the
//! entry's `debounce`) passes, then one reload runs; changes that arrive during a reload wait
//! and form the next train. The train logic ([`Trains`] and [`drive`]) is pure and tested with
//! paused time; the reload itself is a request to the control loop (`Control::Reload`), which
//! owns lifecycle state and replies once the entry is ready again (or why not).
//! See docs/WATCH.md.

use crate::control::{Control, Shared};
use crate::plan::{Entry, Kind, Watch, WatchMode};
use crate::status::{CascadeRecord, TrainRecord, WatchState};
use globset::{Glob, GlobSet, GlobSetBuilder};

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Ignored everywhere, in addition to the entry's `ignore` and the root's `.gitignore`.
pub const DEFAULT_IGNORES: &[&str] = &[
    ".git",
    "__pycache__",
    "*.pyc",
    "*.swp",
    "*~",
    ".#*",
    "node_modules",
    "venv",
    ".venv",
    ".pytest_cache",
    ".mypy_cache",
    ".tox",
    "*.log",
];

/// Files named per train in status.
const KEEP_FILES: usize = 10;
/// Log lines attached to a failed train.
const TAIL_LINES: usize = 15;
/// Test and diagnosis knob: pretend the native watcher cannot be set up.
pub const NO_NATIVE_ENV: &str = "DMP_CONTAINED_WATCH_NO_NATIVE";

// ---------------------------------------------------------------------------------------------
// Trains: the pure core.

/// The train logic of one entry, driven by events and time (no I/O, no clock of its own).
///
/// Invariants: at most one train runs at a time (`take` refuses while one runs); a burst
/// yields one train (changes only extend the quiet period); nothing leaves while paused.
#[derive(Debug)]
pub struct Trains {
    debounce: Duration,
    /// A stream that never goes quiet still leaves after this long.
    max_wait: Duration,
    files: Vec<String>,
    seen: HashSet<String>,
    first: Option<Instant>,
    last: Option<Instant>,
    running: bool,
    paused: bool,
    /// Leave without waiting for quiet (after `resume`).
    forced: bool,
}

impl Trains {
    pub fn new(debounce: Duration) -> Trains {
        Trains {
            debounce,
            max_wait: (debounce * 10).max(Duration::from_secs(3)),
            files: Vec::new(),
            seen: HashSet::new(),
            first: None,
            last: None,
            running: false,
            paused: false,
            forced: false,
        }
    }

    /// Changed files seen at `now` (duplicates collapse).
    pub fn change(&mut self, files: impl IntoIterator<Item = String>, now: Instant) {
        let mut any = false;
        for f in files {
            any = true;
            if self.seen.insert(f.clone()) {
                self.files.push(f);
            }
        }
        if any {
            self.first.get_or_insert(now);
            self.last = Some(now);
        }
    }

    /// When the waiting train leaves (None: nothing waits, a train runs, or paused).
    pub fn due(&self) -> Option<Instant> {
        if self.running || self.paused || self.files.is_empty() {
            return None;
        }
        let first = self.first?;
        if self.forced {
            return Some(first);
        }
        let quiet = self.last? + self.debounce;
        Some(quiet.min(first + self.max_wait))
    }

    /// The files of the train leaving at `now`, if one is due; it then runs until `finished`.
    pub fn take(&mut self, now: Instant) -> Option<Vec<String>> {
        if self.due()? > now {
            return None;
        }
        self.running = true;
        self.forced = false;
        self.first = None;
        self.last = None;
        self.seen.clear();
        Some(std::mem::take(&mut self.files))
    }

    /// The running train finished; what came meanwhile waits for its own quiet period.
    pub fn finished(&mut self) {
        self.running = false;
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Unpauses; everything collected meanwhile leaves as one train at once.
    pub fn resume(&mut self) {
        self.paused = false;
        if !self.files.is_empty() {
            self.forced = true;
        }
    }

    pub fn pending(&self) -> usize {
        self.files.len()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }
}

/// Runs trains: collects `changes`, follows `paused`, and calls `reload` with each train's
/// files, never two at once. `observe` sees the state after every step (for status).
/// Returns when `changes` closes.
pub async fn drive<F, Fut>(
    mut trains: Trains,
    mut changes: mpsc::UnboundedReceiver<Vec<String>>,
    mut paused: watch::Receiver<bool>,
    mut reload: F,
    mut observe: impl FnMut(&Trains),
) where
    F: FnMut(Vec<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut running: Option<std::pin::Pin<Box<Fut>>> = None;
    let mut paused_open = true;
    if *paused.borrow_and_update() {
        trains.pause();
    }
    loop {
        observe(&trains);
        let due = trains.due();
        tokio::select! {
            c = changes.recv() => match c {
                Some(files) => trains.change(files, Instant::now()),
                None => return,
            },
            _ = sleep_until_opt(due) => {
                if let Some(files) = trains.take(Instant::now()) {
                    running = Some(Box::pin(reload(files)));
                }
            }
            _ = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                running = None;
                trains.finished();
            }
            r = paused.changed(), if paused_open => {
                if r.is_err() {
                    paused_open = false;
                    continue;
                }
                if *paused.borrow_and_update() {
                    trains.pause();
                } else {
                    trains.resume();
                }
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Ignore rules.

/// Decides which changed paths matter for one watched root.
pub struct Ignores {
    root: PathBuf,
    globs: GlobSet,
    gitignore: Option<ignore::gitignore::Gitignore>,
}

impl Ignores {
    /// Defaults + `extra` globs + the root's `.gitignore` (if any).
    pub fn new(root: &Path, extra: &[String]) -> Ignores {
        let mut b = GlobSetBuilder::new();
        for g in DEFAULT_IGNORES
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            // Validated at load time; a bad glob here is skipped rather than fatal.
            if let Ok(g) = Glob::new(g) {
                b.add(g);
            }
            // `dir/**` ignores the directory itself too (its creation is no change).
            if let Some(Ok(g)) = g.strip_suffix("/**").map(Glob::new) {
                b.add(g);
            }
        }
        let globs = b.build().unwrap_or_else(|_| GlobSet::empty());
        let gi = root.join(".gitignore");
        let gitignore = gi.is_file().then(|| {
            let (g, err) = ignore::gitignore::Gitignore::new(&gi);
            if let Some(e) = err {
                tracing::warn!("{}: {e}", gi.display());
            }
            g
        });
        Ignores {
            root: root.to_path_buf(),
            globs,
            gitignore,
        }
    }

    /// The path relative to the root, or None when it is ignored. A glob matches the relative
    /// path or any single component of it (`*.pyc`, `node_modules`, `build/**`).
    pub fn relevant(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        if self.globs.is_match(rel) || rel.components().any(|c| self.globs.is_match(c.as_os_str()))
        {
            return None;
        }
        if let Some(g) = &self.gitignore {
            if path.starts_with(&self.root)
                && g.matched_path_or_any_parents(path, path.is_dir())
                    .is_ignore()
            {
                return None;
            }
        }
        let s = rel.to_string_lossy().into_owned();
        Some(if s.is_empty() { ".".into() } else { s })
    }

    /// Adds the relevant files under `dir` to `out` (at most `limit`), skipping ignored subtrees.
    fn walk(&self, dir: &Path, out: &mut Vec<String>, limit: usize) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if out.len() >= limit {
                return;
            }
            let p = e.path();
            if let Some(rel) = self.relevant(&p) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.walk(&p, out, limit);
                } else {
                    out.push(rel);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The watcher tasks.

/// Spawns the watcher task of entry `idx` when it is watched (not when skipped); the handle
/// ends it (a config reload replaces the watchers of changed and removed entries).
pub fn spawn(shared: &Arc<Shared>, idx: usize) -> Option<tokio::task::AbortHandle> {
    let plan = shared.plan();
    let e = &plan.entries[idx];
    match (&e.watch, &e.skip, e.removed) {
        (Some(w), None, false) => {
            Some(tokio::spawn(run(shared.clone(), idx, w.clone())).abort_handle())
        }
        _ => None,
    }
}

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
type Boxed = Box<dyn std::any::Any + Send>;

fn handler(
    ignores: Arc<Vec<Ignores>>,
    tx: mpsc::UnboundedSender<Vec<String>>,
    new_dirs: mpsc::UnboundedSender<PathBuf>,
    lost: mpsc::UnboundedSender<PathBuf>,
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
fn setup(
    name: &str,
    w: &Watch,
    ignores: Arc<Vec<Ignores>>,
    tx: mpsc::UnboundedSender<Vec<String>>,
    new_dirs: mpsc::UnboundedSender<PathBuf>,
    lost: mpsc::UnboundedSender<PathBuf>,
) -> Result<(Boxed, &'static str, Option<String>), String> {
    let h = || {
        handler(
            ignores.clone(),
            tx.clone(),
            new_dirs.clone(),
            lost.clone(),
            name.to_string(),
        )
    };
    let poll =
        || -> Result<Boxed, String> { Ok(Box::new(start_poll(w, ignores.clone(), tx.clone())?)) };
    match w.mode {
        WatchMode::Poll => Ok((poll()?, "poll", None)),
        WatchMode::Native => Ok((start_native(w, h())?, "native", None)),
        WatchMode::Auto => {
            if let Some((p, fs)) = w.paths.iter().find_map(|p| remote_fs(p).map(|f| (p, f))) {
                let why = format!(
                    "{} is on {fs}, where change events may not arrive; polling every {:?}",
                    p.display(),
                    w.poll_interval
                );
                return Ok((poll()?, "poll", Some(why)));
            }
            match start_native(w, h()) {
                Ok(n) => Ok((n, "native", None)),
                Err(e) => {
                    let why = format!(
                        "native watcher unavailable ({e}); polling every {:?}",
                        w.poll_interval
                    );
                    Ok((poll()?, "poll", Some(why)))
                }
            }
        }
    }
}

async fn run(shared: Arc<Shared>, idx: usize, w: Watch) {
    let entry = shared.plan().entries[idx].clone();
    let name = entry.name.clone();
    let state = shared.watch(idx).clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let ignores = Arc::new(
        w.paths
            .iter()
            .map(|p| Ignores::new(p, &w.ignore))
            .collect::<Vec<_>>(),
    );
    let w2 = w.clone();
    let n2 = name.clone();
    let (dirs_tx, dirs_rx) = mpsc::unbounded_channel();
    tokio::spawn(rewalk(dirs_rx, ignores.clone(), tx.clone()));
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let again = Again {
        name: name.clone(),
        w: w.clone(),
        state: state.clone(),
        ignores: ignores.clone(),
        tx: tx.clone(),
        dirs: dirs_tx.clone(),
        lost: lost_tx.clone(),
    };
    // Setting up walks the tree (inotify watches per directory, or the poller's first scan).
    let set =
        tokio::task::spawn_blocking(move || setup(&n2, &w2, ignores, tx, dirs_tx, lost_tx)).await;
    let watcher = match set {
        Ok(Ok((watcher, mode, note))) => {
            match &note {
                Some(n) => tracing::warn!("{name}: watching {mode}: {n}"),
                None => tracing::info!(
                    "{name}: watching {} ({mode}, debounce {:?})",
                    paths_text(&w.paths),
                    w.debounce
                ),
            }
            let mut i = state.info();
            i.mode = Some(mode);
            i.note = note;
            watcher
        }
        Ok(Err(e)) => {
            tracing::error!("{name}: cannot watch {}: {e}", paths_text(&w.paths));
            let mut i = state.info();
            i.mode = Some("error");
            i.note = Some(e);
            return;
        }
        Err(e) => {
            tracing::error!("{name}: watcher setup panicked: {e}");
            return;
        }
    };
    tokio::spawn(again.keep(watcher, lost_rx));
    let st = state.clone();
    let sh = shared.clone();
    drive(
        Trains::new(w.debounce),
        rx,
        state.subscribe_paused(),
        move |files| reload_train(sh.clone(), idx, files),
        move |t| {
            let mut i = st.info();
            i.pending = t.pending();
            i.reloading = t.is_running();
        },
    )
    .await;
}

/// What it takes to set an entry's watcher up again after a watched root was deleted.
struct Again {
    name: String,
    w: Watch,
    state: Arc<WatchState>,
    ignores: Arc<Vec<Ignores>>,
    tx: mpsc::UnboundedSender<Vec<String>>,
    dirs: mpsc::UnboundedSender<PathBuf>,
    lost: mpsc::UnboundedSender<PathBuf>,
}

impl Again {
    /// Owns the watcher: when a root is deleted, waits (on an inotify watch of its parent) for
    /// it to be recreated, then watches again and reports the new tree as a change. Status
    /// `watch.note` says what happened.
    async fn keep(self, watcher: Boxed, mut lost: mpsc::UnboundedReceiver<PathBuf>) {
        let mut watcher = Some(watcher);
        while let Some(root) = lost.recv().await {
            drop(watcher.take());
            let name = &self.name;
            let note = format!(
                "{} was deleted; watching resumes when it is recreated",
                root.display()
            );
            tracing::warn!("{name}: {note}");
            self.state.info().note = Some(note);
            if let Err(e) = wait_for_dir(&root).await {
                tracing::error!("{name}: {e}");
                let mut i = self.state.info();
                i.mode = Some("error");
                i.note = Some(e);
                return;
            }
            let (n, w, ig, tx, dirs, l) = (
                name.clone(),
                self.w.clone(),
                self.ignores.clone(),
                self.tx.clone(),
                self.dirs.clone(),
                self.lost.clone(),
            );
            let set = tokio::task::spawn_blocking(move || setup(&n, &w, ig, tx, dirs, l)).await;
            match set {
                Ok(Ok((wt, mode, _))) => {
                    watcher = Some(wt);
                    let note = format!(
                        "{} was deleted and recreated; watching again ({mode})",
                        root.display()
                    );
                    tracing::info!("{name}: {note}");
                    let mut i = self.state.info();
                    i.mode = Some(mode);
                    i.note = Some(note);
                }
                Ok(Err(e)) => {
                    tracing::error!("{name}: cannot watch {} again: {e}", root.display());
                    let mut i = self.state.info();
                    i.mode = Some("error");
                    i.note = Some(e);
                    return;
                }
                Err(_) => return,
            }
            // Later notices of the same deletion are stale now.
            while lost.try_recv().is_ok() {}
            // The recreated tree is a change.
            let mut files = Vec::new();
            if let Some(i) = self.ignores.iter().find(|i| i.root == root) {
                i.walk(&root, &mut files, 10_000);
            }
            files.push(".".into());
            if self.tx.send(files).is_err() {
                return;
            }
        }
        drop(watcher);
    }
}

/// Waits until `dir` exists again, on an inotify watch of its parent (no polling).
async fn wait_for_dir(dir: &Path) -> Result<(), String> {
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
async fn rewalk(
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

fn paths_text(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asks the control loop to reload `idx`; resolves when it is ready/done, or with why not.
async fn request(shared: &Shared, idx: usize, files: usize) -> Result<(), String> {
    let (reply, rx) = oneshot::channel();
    shared
        .control
        .send(Control::Reload { idx, files, reply })
        .await
        .map_err(|_| "the supervisor is stopping".to_string())?;
    rx.await
        .unwrap_or_else(|_| Err("the supervisor is stopping".into()))
}

/// One train of `idx`: reload it, then its cascade; record everything in status.
async fn reload_train(shared: Arc<Shared>, idx: usize, files: Vec<String>) {
    let plan = shared.plan();
    let e = &plan.entries[idx];
    let count = files.len();
    tracing::info!(
        "{}: {count} changed ({}{}); reloading",
        e.name,
        files.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
        if count > 3 { ", ..." } else { "" }
    );
    let shown: Vec<String> = files.iter().take(KEEP_FILES).cloned().collect();
    if let Some(rec) = reload_loop(&shared, idx, &files) {
        shared.watch(idx).record(rec);
        return;
    }
    if let Some(rec) = Box::pin(other_actions(&shared, idx, &files)).await {
        shared.watch(idx).record(rec);
        shared.watch(idx).guard().end(std::time::SystemTime::now());
        return;
    }
    let mut rec = reload_one(&shared, idx, shown.clone(), count, None).await;
    let targets = shared.plan().cascade_targets(idx);
    if rec.outcome == "failed" {
        let why = format!(
            "not reloaded: `{}` failed ({}); still running the previous code",
            e.name,
            rec.error.clone().unwrap_or_default()
        );
        for t in targets {
            tracing::warn!("{}: {why}", shared.plan().entries[t].name);
            shared.watch(t).info().held = Some(why.clone());
        }
    } else if !targets.is_empty() {
        let mut set = tokio::task::JoinSet::new();
        for t in targets {
            let sh = shared.clone();
            let (f, via) = (shown.clone(), e.name.clone());
            set.spawn(async move { (t, reload_one(&sh, t, f, count, Some(via)).await) });
        }
        while let Some(Ok((t, r))) = set.join_next().await {
            rec.cascade.push(CascadeRecord {
                name: shared.plan().entries[t].name.clone(),
                outcome: r.outcome,
                error: r.error,
            });
        }
    }
    shared.watch(idx).record(rec);
    shared.watch(idx).guard().end(std::time::SystemTime::now());
}

/// A train caused by the previous reloads themselves (src/watch_actions.rs `LoopGuard`):
/// watching is paused and the record names the file.
fn reload_loop(shared: &Shared, idx: usize, files: &[String]) -> Option<TrainRecord> {
    let plan = shared.plan();
    let e = &plan.entries[idx];
    let roots = e
        .watch
        .as_ref()
        .map(|w| w.paths.as_slice())
        .unwrap_or_default();
    let state = &shared.watch(idx);
    let written = match state.guard().window() {
        Some(w) => files
            .iter()
            .filter(|f| crate::watch_actions::modified_in(roots, f, w))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let looping = state.guard().start(written, std::time::SystemTime::now())?;
    let file = looping.join("`, `");
    let why = format!(
        "reload loop: `{file}` changed during each of the last {} reloads (written by `{}` itself, by what it starts, or the supervisor's own output?); \
         watching is paused: add it to the watch `ignore`, or resume with `dmp-contained resume {}`",
        crate::watch_actions::LOOP_TRAINS,
        e.name,
        e.name
    );
    tracing::error!("{}: {why}", e.name);
    state.pause();
    *state.guard() = Default::default();
    Some(TrainRecord {
        at: crate::logs::now_ms(),
        files: files.iter().take(KEEP_FILES).cloned().collect(),
        count: files.len(),
        via: None,
        duration_s: 0.0,
        outcome: "failed".into(),
        error: Some(why),
        log_tail: vec![],
        cascade: vec![],
        action: Some("none".into()),
    })
}

/// Runs the train's actions other than `restart` (src/watch_actions.rs). Returns their record
/// when no restart follows, None when the entry restarts as before.
async fn other_actions(shared: &Arc<Shared>, idx: usize, files: &[String]) -> Option<TrainRecord> {
    use crate::plan::WatchAction;
    let plan = shared.plan();
    let e = &plan.entries[idx];
    let acts = e
        .watch
        .as_ref()
        .map(|w| crate::watch_actions::classify(w, files))
        .unwrap_or_else(|| vec![WatchAction::Restart]);
    if acts == [WatchAction::Restart] {
        return None;
    }
    let (at, t0) = (crate::logs::now_ms(), Instant::now());
    let mut errors = Vec::new();
    let mut restart = false;
    for a in &acts {
        tracing::info!(
            "{}: watch action {}",
            e.name,
            crate::watch_actions::describe(a)
        );
        let r = match a {
            WatchAction::Run(step, _) => {
                // The step's train reloads what depends on it (this entry too, if it does).
                Box::pin(reload_train(shared.clone(), *step, files.to_vec())).await;
                let held = shared
                    .watch(*step)
                    .info()
                    .trains
                    .back()
                    .and_then(|t| t.error.clone());
                held.map_or(Ok(()), Err)
            }
            WatchAction::Exec(argv) => crate::watch_actions::exec(e, argv).await,
            WatchAction::Signal(sig) => crate::watch_actions::signal(e, *sig),
            WatchAction::Restart => {
                restart = !acts.iter().any(|a| matches!(a, WatchAction::Run(s, _) if shared.plan().cascade_targets(*s).contains(&idx)));
                Ok(())
            }
            WatchAction::None => Ok(()),
        };
        if let Err(err) = r {
            tracing::warn!("{}: watch action failed: {err}", e.name);
            errors.push(err);
        }
    }
    if restart && errors.is_empty() {
        return None;
    }
    Some(TrainRecord {
        at,
        files: files.iter().take(KEEP_FILES).cloned().collect(),
        count: files.len(),
        via: None,
        duration_s: t0.elapsed().as_secs_f64(),
        outcome: if errors.is_empty() { "done" } else { "failed" }.into(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        log_tail: vec![],
        cascade: vec![],
        action: Some(if acts.is_empty() {
            "none".into()
        } else {
            acts.iter()
                .map(crate::watch_actions::describe)
                .collect::<Vec<_>>()
                .join(", ")
        }),
    })
}

/// Reloads one entry and returns its record (also stored when it came `via` a cascade).
async fn reload_one(
    shared: &Shared,
    idx: usize,
    files: Vec<String>,
    count: usize,
    via: Option<String>,
) -> TrainRecord {
    let plan = shared.plan();
    let e: &Entry = &plan.entries[idx];
    let state = &shared.watch(idx);
    let at = crate::logs::now_ms();
    let t0 = Instant::now();
    if via.is_some() {
        state.info().reloading = true;
    }
    let r = request(shared, idx, count).await;
    let duration = t0.elapsed();
    let (outcome, error, log_tail) = match r {
        Ok(()) => {
            let o = if e.kind == Kind::Oneshot {
                "done"
            } else {
                "ready"
            };
            tracing::info!(
                "{}: reloaded, {o} after {:.3}s",
                e.name,
                duration.as_secs_f64()
            );
            (o.to_string(), None, vec![])
        }
        Err(err) => {
            tracing::warn!("{}: reload failed: {err}", e.name);
            let tail = shared
                .entry_log(idx)
                .tail(TAIL_LINES)
                .iter()
                .map(|l| l.text.clone())
                .collect();
            ("failed".to_string(), Some(err), tail)
        }
    };
    let rec = TrainRecord {
        at,
        files,
        count,
        via: via.clone(),
        duration_s: duration.as_secs_f64(),
        outcome,
        error,
        log_tail,
        cascade: vec![],
        action: None,
    };
    if via.is_some() {
        state.info().reloading = false;
        state.record(rec.clone());
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    const D: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_one_train_after_quiet() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        for k in 0..200u64 {
            t.change([format!("f{k}")], t0 + ms(k));
        }
        // Still changing at 199 ms: due 200 ms after the last change, not before.
        assert_eq!(t.due(), Some(t0 + ms(399)));
        assert!(t.take(t0 + ms(398)).is_none());
        let files = t.take(t0 + ms(399)).unwrap();
        assert_eq!(files.len(), 200);
        assert!(t.is_running());
        assert_eq!(t.due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_collapse_and_keep_order() {
        let mut t = Trains::new(D);
        let now = Instant::now();
        t.change(["b".to_string(), "a".to_string(), "b".to_string()], now);
        t.change(["a".to_string()], now);
        assert_eq!(t.take(now + D).unwrap(), vec!["b", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_during_a_reload_wait_for_the_next_train() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        t.change(["a".into()], t0);
        assert!(t.take(t0 + D).is_some());
        t.change(["b".into()], t0 + ms(300));
        t.change(["c".into()], t0 + ms(400));
        // Never a second train while one runs, however long it takes.
        assert_eq!(t.due(), None);
        assert!(t.take(t0 + ms(5000)).is_none());
        t.finished();
        assert_eq!(t.due(), Some(t0 + ms(600)));
        assert_eq!(t.take(t0 + ms(5000)).unwrap(), vec!["b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn endless_stream_still_leaves_after_max_wait() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        for k in 0..100u64 {
            t.change([format!("log{k}")], t0 + ms(k * 100));
        }
        assert_eq!(t.due(), Some(t0 + Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_accumulates_and_resume_leaves_at_once() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        t.pause();
        t.change(["a".into()], t0);
        t.change(["b".into()], t0 + ms(10_000));
        assert_eq!(t.due(), None);
        assert!(t.take(t0 + ms(60_000)).is_none());
        assert_eq!(t.pending(), 2);
        t.resume();
        assert_eq!(t.take(t0 + ms(10_001)).unwrap(), vec!["a", "b"]);
        t.finished();
        assert_eq!(t.due(), None);
    }

    type Calls = Arc<StdMutex<Vec<(Duration, Vec<String>)>>>;

    /// The driver with a fake reload that takes 1 s, under paused time.
    struct Harness {
        tx: mpsc::UnboundedSender<Vec<String>>,
        pause: watch::Sender<bool>,
        calls: Calls,
        active: Arc<StdMutex<u32>>,
        t0: Instant,
    }

    fn harness() -> Harness {
        let (tx, rx) = mpsc::unbounded_channel();
        let pause = watch::channel(false).0;
        let calls: Calls = Default::default();
        let active: Arc<StdMutex<u32>> = Default::default();
        let t0 = Instant::now();
        let (c, a, prx) = (calls.clone(), active.clone(), pause.subscribe());
        tokio::spawn(drive(
            Trains::new(D),
            rx,
            prx,
            move |files| {
                let (c, a) = (c.clone(), a.clone());
                async move {
                    {
                        let mut n = a.lock().unwrap();
                        *n += 1;
                        assert_eq!(*n, 1, "two reloads of one entry at once");
                    }
                    c.lock().unwrap().push((t0.elapsed(), files));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    *a.lock().unwrap() -= 1;
                }
            },
            |_| {},
        ));
        Harness {
            tx,
            pause,
            calls,
            active,
            t0,
        }
    }

    async fn at(h: &Harness, t: u64) {
        tokio::time::sleep_until(h.t0 + ms(t)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn driver_burst_then_changes_during_reload() {
        let h = harness();
        for k in 0..50 {
            h.tx.send(vec![format!("f{k}")]).unwrap();
        }
        at(&h, 100).await;
        assert!(h.calls.lock().unwrap().is_empty(), "fired before quiet");
        at(&h, 250).await;
        assert_eq!(h.calls.lock().unwrap().len(), 1);
        assert_eq!(h.calls.lock().unwrap()[0].1.len(), 50);
        // During the 1 s reload: two more changes, well apart.
        at(&h, 400).await;
        h.tx.send(vec!["g".into()]).unwrap();
        at(&h, 900).await;
        h.tx.send(vec!["h".into()]).unwrap();
        at(&h, 1150).await;
        assert_eq!(
            h.calls.lock().unwrap().len(),
            1,
            "second train while one runs"
        );
        at(&h, 1300).await;
        let calls = h.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].1, vec!["g", "h"]);
        // Left right after the first finished (quiet period already over).
        assert!(
            calls[1].0 >= ms(1200) && calls[1].0 < ms(1250),
            "{:?}",
            calls[1].0
        );
        assert_eq!(*h.active.lock().unwrap(), 1);
        at(&h, 5000).await;
        assert_eq!(h.calls.lock().unwrap().len(), 2);
        assert_eq!(*h.active.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn driver_pause_resume() {
        let h = harness();
        h.pause.send_replace(true);
        at(&h, 10).await;
        h.tx.send(vec!["a".into()]).unwrap();
        at(&h, 3000).await;
        h.tx.send(vec!["b".into()]).unwrap();
        at(&h, 20_000).await;
        assert!(h.calls.lock().unwrap().is_empty(), "reloaded while paused");
        h.pause.send_replace(false);
        at(&h, 20_001).await;
        let calls = h.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, vec!["a", "b"]);
    }

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

    #[test]
    fn ignores() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".gitignore"), "build/\n*.tmp\n").unwrap();
        std::fs::create_dir(dir.path().join("build")).unwrap();
        let ig = Ignores::new(dir.path(), &["*.log".to_string(), "data/**".to_string()]);
        let r = |p: &str| ig.relevant(&dir.path().join(p));
        assert_eq!(r("app.py").as_deref(), Some("app.py"));
        assert_eq!(r("pkg/views.py").as_deref(), Some("pkg/views.py"));
        for ignored in [
            "app.pyc",
            "pkg/__pycache__/views.cpython-311.pyc",
            "__pycache__",
            ".git/index",
            ".git",
            "web/node_modules/x/index.js",
            ".app.py.swp",
            "app.py~",
            ".#app.py",
            "server.log",
            "data/x/y.csv",
            "build/out.js",
            "x.tmp",
        ] {
            assert_eq!(r(ignored), None, "{ignored} should be ignored");
        }
    }
}
