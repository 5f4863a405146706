//! What a watched change does (docs/CONFIG.md `watch.action`, `watch.on`): each changed file
//! takes the action of the first `on` rule whose globs match its path (relative to the watched
//! root; `*` crosses `/`), else the table's `action` (default `restart`). One train runs each
//! distinct action once, in this order: `run` (re-run a step; what depends on it reloads),
//! `exec`, then `restart` or `signal` (a restart makes a signal moot); `none` does nothing.
//! It also owns [`LoopGuard`], which tells a reload loop from a user's saves.
//!
//! The actions act on the entry's process directly (a signal, an `exec` as its user) or are
//! run by `reload.rs` through the control loop; nothing here writes lifecycle state or status.

use crate::plan::{Entry, Watch, WatchAction};
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::time::SystemTime;

/// The distinct actions of a train, in the order they run.
pub fn classify(w: &Watch, files: &[String]) -> Vec<WatchAction> {
    let rules: Vec<(GlobSet, &WatchAction)> =
        w.on.iter()
            .map(|r| {
                let mut b = GlobSetBuilder::new();
                // Validated at load time.
                for g in r.files.iter().filter_map(|g| Glob::new(g).ok()) {
                    b.add(g);
                }
                (b.build().unwrap_or_else(|_| GlobSet::empty()), &r.action)
            })
            .collect();
    let mut acts: Vec<WatchAction> = Vec::new();
    for f in files {
        let a = rules
            .iter()
            .find(|(g, _)| g.is_match(f))
            .map_or(&w.action, |r| r.1);
        if !acts.contains(a) {
            acts.push(a.clone());
        }
    }
    let rank = |a: &WatchAction| match a {
        WatchAction::Run(..) => 0,
        WatchAction::Exec(_) => 1,
        WatchAction::Restart | WatchAction::Signal(_) => 2,
        WatchAction::None => 3,
    };
    acts.sort_by_key(rank);
    let restarts = acts.contains(&WatchAction::Restart);
    let moot = |a: &WatchAction| {
        matches!(a, WatchAction::None) || (restarts && matches!(a, WatchAction::Signal(_)))
    };
    acts.retain(|a| !moot(a));
    acts
}

/// Short name of an action for status (`trains[].action`).
pub fn describe(a: &WatchAction) -> String {
    match a {
        WatchAction::Restart => "restart".into(),
        WatchAction::Signal(s) => format!("signal {}", s.as_str()),
        WatchAction::Exec(c) => format!("exec {}", c.join(" ")),
        WatchAction::Run(_, s) => format!("run {s}"),
        WatchAction::None => "none".into(),
    }
}

/// Sends `sig` to the entry's main process (the one the supervisor started).
pub fn signal(entry: &Entry, sig: nix::sys::signal::Signal) -> Result<(), String> {
    let pid = crate::process::leader(&crate::process::marker(&entry.name))
        .ok_or_else(|| format!("`{}` is not running; nothing to signal", entry.name))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .map_err(|e| format!("{} to `{}` (pid {pid}): {e}", sig.as_str(), entry.name))
}

/// Runs `argv` as the entry's user, in its cwd, with its environment. Err carries its exit
/// and the last lines it printed.
pub async fn exec(entry: &Entry, argv: &[String]) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&entry.cwd)
        .env_clear()
        .envs(entry.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(u) = &entry.user {
        cmd.uid(u.uid).gid(u.gid);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("exec {}: {e}", argv[0]))?;
    if out.status.success() {
        return Ok(());
    }
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    Err(format!(
        "exec {} exited with {}: {}",
        argv.join(" "),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// Trains in a row, each caused by files written during the previous reload, that make a
/// reload loop.
pub const LOOP_TRAINS: u32 = 5;

/// Detects reloads caused by the reload itself: a file the entry (or anything it starts, or
/// the supervisor's own output) writes while it restarts changes during every reload. A file
/// saved after a reload ended (an editor, however fast) is no loop.
#[derive(Debug, Default)]
pub struct LoopGuard {
    /// Wall-clock start and end of the last train (file mtimes are wall-clock).
    last: Option<(SystemTime, SystemTime)>,
    started: Option<SystemTime>,
    streak: u32,
}

impl LoopGuard {
    /// When the last train ran.
    pub fn window(&self) -> Option<(SystemTime, SystemTime)> {
        self.last
    }

    /// A train starts; `written` are its files last modified during the previous train.
    /// Returns them when this train completes a loop.
    pub fn start(&mut self, written: Vec<String>, now: SystemTime) -> Option<Vec<String>> {
        self.started = Some(now);
        if written.is_empty() {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        (self.streak >= LOOP_TRAINS).then_some(written)
    }

    /// The train ended (its entry is ready again, or failed).
    pub fn end(&mut self, now: SystemTime) {
        self.last = self.started.take().map(|s| (s, now));
    }
}

/// How far a file's mtime may lag the moment it was written: the kernel stamps files with its
/// coarse clock, which advances once per tick (up to 10 ms at HZ=100; measured here: mtimes up
/// to 3 ms older than a precise clock read before the write). A train's files are stamped
/// within milliseconds of its start, so without this slack a loop would go unseen. A user's
/// save this shortly before a train belongs to that train, not to the next one's evidence.
const MTIME_GRANULARITY: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether `file` (relative to one of `roots`) was last modified within `window` (its start
/// moved back by `MTIME_GRANULARITY`).
pub fn modified_in(
    roots: &[std::path::PathBuf],
    file: &str,
    window: (SystemTime, SystemTime),
) -> bool {
    roots
        .iter()
        .find_map(|r| {
            std::fs::metadata(r.join(file))
                .and_then(|m| m.modified())
                .ok()
        })
        .is_some_and(|t| t + MTIME_GRANULARITY >= window.0 && t <= window.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{WatchMode, WatchRule};
    use std::time::Duration;

    fn watch(on: Vec<WatchRule>) -> Watch {
        Watch {
            paths: vec![],
            ignore: vec![],
            debounce: Duration::ZERO,
            mode: WatchMode::Auto,
            poll_interval: Duration::ZERO,
            action: WatchAction::Restart,
            on,
        }
    }

    #[test]
    fn first_matching_rule_wins_and_restart_makes_signal_moot() {
        let hup = WatchAction::Signal(nix::sys::signal::Signal::SIGHUP);
        let w = watch(vec![
            WatchRule {
                files: vec!["templates/**".into()],
                action: WatchAction::None,
            },
            WatchRule {
                files: vec!["*.conf".into()],
                action: hup.clone(),
            },
            WatchRule {
                files: vec!["*.css".into()],
                action: WatchAction::Exec(vec!["make".into()]),
            },
        ]);
        let f = |v: &[&str]| classify(&w, &v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(f(&["templates/a.html"]).is_empty());
        assert_eq!(f(&["conf/nginx.conf"]), vec![hup.clone()]);
        assert_eq!(
            f(&["static/a.css", "app.py", "x.conf"]),
            vec![WatchAction::Exec(vec!["make".into()]), WatchAction::Restart]
        );
    }
}

#[cfg(test)]
mod loop_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn files_written_during_each_reload_are_a_loop_a_save_after_it_is_not() {
        let f = vec!["state.json".to_string()];
        let mut g = LoopGuard::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        for i in 0..LOOP_TRAINS - 1 {
            assert_eq!(g.start(f.clone(), t), None, "train {i}");
            g.end(t);
        }
        assert_eq!(
            g.start(vec![], t),
            None,
            "a save after the reload breaks the streak"
        );
        g.end(t);
        for _ in 0..LOOP_TRAINS - 1 {
            assert_eq!(g.start(f.clone(), t), None);
            g.end(t);
        }
        assert_eq!(g.start(f.clone(), t), Some(f.clone()));
    }

    #[test]
    fn modified_in_reads_the_mtime() {
        let d = tempfile::tempdir().unwrap();
        let before = SystemTime::now() - Duration::from_secs(1);
        std::fs::write(d.path().join("a"), "x").unwrap();
        let after = SystemTime::now() + Duration::from_secs(1);
        let roots = vec![d.path().to_path_buf()];
        assert!(modified_in(&roots, "a", (before, after)));
        assert!(!modified_in(
            &roots,
            "a",
            (after, after + Duration::from_secs(1))
        ));
        assert!(!modified_in(&roots, "missing", (before, after)));
    }

    /// A file written just after a train started may carry an mtime from just before it (the
    /// kernel's coarse clock): it still counts; one from well before does not.
    #[test]
    fn an_mtime_a_tick_before_the_window_still_counts() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "x").unwrap();
        let m = std::fs::metadata(d.path().join("a"))
            .unwrap()
            .modified()
            .unwrap();
        let roots = vec![d.path().to_path_buf()];
        let end = m + Duration::from_secs(1);
        assert!(modified_in(
            &roots,
            "a",
            (m + Duration::from_millis(4), end)
        ));
        assert!(!modified_in(
            &roots,
            "a",
            (m + Duration::from_millis(30), end)
        ));
    }
}
