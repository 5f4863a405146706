//! Hot config reload (`dmp-contained reload`, SIGHUP, `[supervisor] watch_config`): the
//! pure part — loading, diffing the edited table against the running plan, re-rendering
//! templates — and the table watcher. The control loop applies the result
//! (src/supervisor/reload.rs).
//!
//! # Indices stay stable
//! Entries are addressed by index everywhere (runner tasks tag their events with it, logs,
//! watch states, the cache controller, watcher tasks and reload trains hold it). A reload
//! never moves an entry: the merged plan keeps every running entry at its index, appends the
//! added ones, and keeps a removed entry as a tombstone (`Entry::removed`: no dependencies, not
//! addressable by name, hidden from status, never started). A changed entry keeps its index
//! and gets a new runner (the old one is idle by then: it was stopped first). So an event in
//! flight from any runner always names the entry it was spawned for.
//!
//! # What counts as changed
//! An entry is changed when anything of its definition differs: command, cwd, full
//! environment (env files included), user, dependencies (by name and condition), probes,
//! restart, watch, cache, schedule, profiles… compared after mapping index references
//! (`after`, `restart_with`, watch `run`) to the merged indices. Only changed entries restart:
//! an entry whose own definition did not change keeps its process even when a dependency
//! restarts (like `restart NAME` of the dependency; `restart_with` is the way to ask for more).
//! `[supervisor]` settings (API address, socket, log sizes…) apply at the next start only,
//! except `watch_config`; the status says so when they differ.

use crate::export::rewrite::Rewriter;
use crate::plan::{Entry, Plan, Template, WatchAction};
pub use crate::status::{Outcome, Report, Trigger};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated edited table, ready to diff.
pub struct Loaded {
    pub plan: Plan,
    pub rewriter: Rewriter,
}

/// Loads the table again exactly like start-up did (same file, environment, profiles,
/// `--only`/`--without`); Err holds every error, one per line (`file:line:col: message`).
pub type Loader = Box<dyn Fn() -> Result<Loaded, Vec<String>> + Send>;

/// Entry indices of the merged plan, by what the reload does to them.
#[derive(Debug, Default, Clone)]
pub struct Diff {
    pub added: Vec<usize>,
    pub removed: Vec<usize>,
    pub changed: Vec<usize>,
    pub unchanged: Vec<usize>,
}

/// Merges `new` into the running plan `old` (see the module comment): the result keeps every
/// index of `old`, and its settings are `old`'s but for `watch_config`.
pub fn merge(old: &Plan, mut new: Plan) -> (Plan, Diff) {
    let mut merged_entries = old.entries.clone();
    let mut to_merged = Vec::with_capacity(new.entries.len());
    for e in &new.entries {
        match old.index(&e.name) {
            Some(i) => to_merged.push(i),
            None => {
                to_merged.push(merged_entries.len());
                merged_entries.push(e.clone());
            }
        }
    }
    let mut diff = Diff::default();
    for (n, mut e) in std::mem::take(&mut new.entries).into_iter().enumerate() {
        remap(&mut e, &to_merged);
        let i = to_merged[n];
        if i >= old.entries.len() {
            diff.added.push(i);
        } else if fingerprint(&old.entries[i]) != fingerprint(&e) {
            diff.changed.push(i);
        } else {
            diff.unchanged.push(i);
            continue;
        }
        merged_entries[i] = e;
    }
    for i in old.live() {
        if !to_merged.contains(&i) {
            diff.removed.push(i);
            let t = &mut merged_entries[i];
            t.removed = true;
            t.after.clear();
            t.restart_with.clear();
        }
    }
    let deps: Vec<Vec<usize>> = merged_entries
        .iter()
        .map(|e| e.after.iter().map(|d| d.idx).collect())
        .collect();
    let mut levels = crate::graph::levels(&deps).expect("the new table is a DAG");
    for l in &mut levels {
        l.retain(|&i| !merged_entries[i].removed);
    }
    levels.retain(|l| !l.is_empty());
    let mut settings = old.settings.clone();
    settings.watch_config = new.settings.watch_config;
    diff.unchanged.sort_unstable();
    diff.changed.sort_unstable();
    (
        Plan {
            file: old.file.clone(),
            settings,
            templates: new.templates,
            vars: new.vars,
            entries: merged_entries,
            levels,
        },
        diff,
    )
}

/// Which `[supervisor]` settings differ and are not applied until the next start.
pub fn settings_not_applied(old: &Plan, new: &Plan) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) = (
        serde_json::to_value(&old.settings),
        serde_json::to_value(&new.settings),
    ) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(k, v)| *k != "watch_config" && b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

fn remap(e: &mut Entry, to: &[usize]) {
    for d in &mut e.after {
        d.idx = to[d.idx];
    }
    for r in &mut e.restart_with {
        *r = to[*r];
    }
    if let Some(w) = &mut e.watch {
        let fix = |a: &mut WatchAction| {
            if let WatchAction::Run(i, _) = a {
                *i = to[*i];
            }
        };
        fix(&mut w.action);
        w.on.iter_mut().for_each(|r| fix(&mut r.action));
    }
}

/// Everything that defines an entry (its serialized form plus the full environment, which
/// status does not show).
fn fingerprint(e: &Entry) -> (Value, &[(String, String)]) {
    (serde_json::to_value(e).unwrap_or_default(), &e.env)
}

/// Renders a template into memory (a reload checks every template before it changes anything).
pub fn render_template(
    t: &Template,
    vars: &std::collections::BTreeMap<String, String>,
    rewriter: &Rewriter,
) -> Result<String, String> {
    let src = std::fs::read_to_string(&t.src).map_err(|e| format!("{}: {e}", t.src.display()))?;
    let out = crate::interp::expand(&src, &|n| vars.get(n).cloned())
        .map_err(|e| format!("{}: {e}", t.src.display()))?;
    Ok(rewriter.apply(&out))
}

/// Writes a rendered template when its content differs; true when it did (atomically: a
/// service re-reading its config never sees half a file).
pub fn write_if_changed(dest: &Path, text: &str) -> Result<bool, String> {
    if std::fs::read(dest).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    crate::cache::write_atomic(dest, text.as_bytes())
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(true)
}

/// How an entry that uses a re-rendered file takes it in.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateAction {
    /// Its own watcher sees the file change and acts (nothing to do here).
    Watched,
    /// Its watch action for that file is a signal (nginx: SIGHUP re-reads the config).
    Signal(nix::sys::signal::Signal),
    Restart,
}

/// The entries that use the rendered file `dest`, and how each reloads it. An entry uses it
/// when the path appears in its command, its declared environment, or a watched path
/// contains it.
pub fn template_users(plan: &Plan, dest: &Path) -> Vec<(usize, TemplateAction)> {
    let d = dest.to_string_lossy();
    plan.live()
        .filter_map(|i| {
            let e = &plan.entries[i];
            let watched = e
                .watch
                .as_ref()
                .is_some_and(|w| w.paths.iter().any(|p| dest.starts_with(e.cwd.join(p))));
            let named = e.command.iter().any(|a| a.contains(d.as_ref()))
                || e.declared_env.iter().any(|(_, v)| v.contains(d.as_ref()));
            if watched && e.skip.is_none() {
                return Some((i, TemplateAction::Watched));
            }
            if !named {
                return None;
            }
            let signal = e.watch.as_ref().and_then(|w| {
                let file = dest.file_name()?.to_string_lossy().to_string();
                match crate::watch::actions::classify(w, &[file]).as_slice() {
                    [WatchAction::Signal(s)] => Some(*s),
                    _ => None,
                }
            });
            Some((
                i,
                signal.map_or(TemplateAction::Restart, TemplateAction::Signal),
            ))
        })
        .collect()
}

/// Named timer: quiet time after the last write to the table before it is reloaded (an
/// editor's save is several writes, a rename or two).
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// `[supervisor] watch_config`: watches the table's directory (editors save by renaming) and
/// sends `ConfigReload` once writes to the table have been quiet for `WATCH_DEBOUNCE`.
pub fn watch_table(
    file: PathBuf,
    control: tokio::sync::mpsc::Sender<crate::control::Control>,
) -> Result<tokio::task::AbortHandle, String> {
    use notify::Watcher;
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = file.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let ours = ev.is_ok_and(|ev| {
            !ev.kind.is_access() && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
        });
        if ours {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let task = tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            // Debounce: wait until the writes stop.
            while let Ok(Some(())) = tokio::time::timeout(WATCH_DEBOUNCE, rx.recv()).await {}
            tracing::info!("{}: saved; reloading", file.display());
            let (reply, answer) = tokio::sync::oneshot::channel();
            let trigger = Trigger::Watch;
            let msg = crate::control::Control::ConfigReload { trigger, reply };
            if control.send(msg).await.is_err() {
                return;
            }
            let _ = answer.await;
        }
    });
    Ok(task.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(src: &str) -> Plan {
        let environ = [("PATH".to_string(), "/usr/bin:/bin".to_string())].into();
        crate::config::parse(Path::new("/tmp/supervisor.toml"), src, &environ).unwrap()
    }

    const OLD: &str = r#"
[process.db]
command = ["sleep", "1"]
[process.app]
command = ["sleep", "1"]
after = ["db"]
[process.gone]
command = ["sleep", "1"]
[process.web]
command = ["sleep", "1"]
after = ["app"]
"#;

    /// An entry added before the others in table order, one removed, one changed: indices of
    /// the running entries stay, references are remapped, untouched entries compare equal.
    #[test]
    fn merge_keeps_indices_and_finds_the_difference() {
        let old = plan(OLD);
        let new = plan(
            r#"
[process.aaa]
command = ["sleep", "1"]
after = ["web"]
[process.db]
command = ["sleep", "1"]
[process.app]
command = ["sleep", "2"]
after = ["db"]
[process.web]
command = ["sleep", "1"]
after = ["app"]
"#,
        );
        let (m, d) = merge(&old, new);
        let idx = |n: &str| old.index(n).unwrap();
        for n in ["db", "app", "web"] {
            assert_eq!(m.index(n), Some(idx(n)), "{n} keeps its index");
        }
        assert_eq!(m.index("gone"), None);
        assert!(m.entries[idx("gone")].removed);
        assert!(m.entries[idx("gone")].after.is_empty());
        assert_eq!(d.removed, [idx("gone")]);
        assert_eq!(d.changed, [idx("app")]);
        let mut unchanged = vec![idx("db"), idx("web")];
        unchanged.sort_unstable();
        assert_eq!(d.unchanged, unchanged);
        let aaa = m.index("aaa").unwrap();
        assert_eq!(aaa, old.entries.len(), "added entries are appended");
        assert_eq!(d.added, [aaa]);
        assert_eq!(m.entries[aaa].after[0].idx, idx("web"));
        assert_eq!(m.entries[idx("web")].after[0].idx, idx("app"));
        let in_levels: Vec<usize> = m.levels.iter().flatten().copied().collect();
        assert!(!in_levels.contains(&idx("gone")));
        assert_eq!(in_levels.len(), 4);
    }

    /// The environment is part of the definition (env files included), and so are the
    /// dependencies' conditions.
    #[test]
    fn env_and_dependency_conditions_count_as_changes() {
        let old = plan(OLD);
        let edited = OLD.replace(
            "[process.web]\ncommand = [\"sleep\", \"1\"]\nafter = [\"app\"]",
            "[process.web]\ncommand = [\"sleep\", \"1\"]\nafter = [\"app:started\"]",
        );
        let edited = edited.replace(
            "[process.db]\ncommand = [\"sleep\", \"1\"]",
            "[process.db]\ncommand = [\"sleep\", \"1\"]\nenv = { X = \"1\" }",
        );
        let (_, d) = merge(&old, plan(&edited));
        let mut want = vec![old.index("db").unwrap(), old.index("web").unwrap()];
        want.sort_unstable();
        assert_eq!(d.changed, want);
        assert_eq!(
            d.unchanged,
            [old.index("app").unwrap(), old.index("gone").unwrap()]
        );
    }

    /// Merging the same table changes nothing.
    #[test]
    fn the_same_table_is_all_unchanged() {
        let old = plan(OLD);
        let (m, d) = merge(&old, plan(OLD));
        assert!(d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty());
        assert_eq!(d.unchanged.len(), 4);
        assert_eq!(m.levels, old.levels);
    }
}
