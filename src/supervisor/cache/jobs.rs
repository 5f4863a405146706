//! The file work of the step cache and the data snapshots: computing keys, resolving a
//! service's data before it starts, copying snapshots. Each runs in a blocking task and
//! reports back as a `Msg`; none of them reads or writes the loop's state.

use super::Msg;
use crate::cache;
use crate::plan::Plan;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub(super) fn short(k: &str) -> &str {
    &k[..k.len().min(12)]
}

/// What a step's key lookup needs, taken from the controller before the job leaves the loop.
pub(super) struct KeyJob {
    pub plan: Arc<Plan>,
    pub dir: PathBuf,
    pub idx: usize,
    pub gen: u64,
    /// Look the key up (not `--fresh`, not forced).
    pub lookup: bool,
    pub forced: bool,
    /// A chain step: the key its service's live data holds for it (a hit only when equal).
    pub expect: Option<Option<String>>,
    /// A chain step's service data dir (its chain marker is cleared on a miss).
    pub svc_data: Option<PathBuf>,
}

pub(super) fn step_key(j: KeyJob) -> Msg {
    let e = &j.plan.entries[j.idx];
    let key = match cache::step_key(&j.plan, j.idx, &mut HashMap::new()) {
        Ok(k) => Some(k),
        Err(err) => {
            tracing::warn!(
                "{}: cache key not computable ({err}); running the step uncached",
                e.name
            );
            None
        }
    };
    let outputs_ok = e
        .cache
        .as_ref()
        .is_none_or(|c| c.outputs.iter().all(|o| cache::output_problem(o).is_none()));
    let hit = j.lookup
        && outputs_ok
        && key.as_ref().is_some_and(|k| match &j.expect {
            Some(exp) => exp.as_deref() == Some(k.as_str()),
            None => cache::has_record(&j.dir, &e.name, k),
        });
    if !hit {
        if let Some(data) = &j.svc_data {
            // The service's data is about to diverge from any snapshot.
            if let Err(err) = cache::clear_live(data) {
                tracing::warn!("chain marker in {}: {err}", data.display());
            }
        }
    }
    Msg::Key {
        idx: j.idx,
        gen: j.gen,
        key,
        hit,
        forced: j.forced,
    }
}

pub(super) fn write_record(dir: &Path, rec: &cache::Record) {
    if let Err(e) = cache::write_record(dir, rec) {
        tracing::warn!(
            "{}: cannot write cache record in {} ({e}); it will run again next time",
            rec.step,
            dir.display()
        );
    }
}

/// What a snapshot copy does.
pub(super) enum Job {
    Auto { step: String, key: String },
    Named { save: bool, name: String },
}

pub(super) fn copy(dir: &Path, svcs: &[(String, PathBuf)], job: Job) -> Result<String, String> {
    let t = Instant::now();
    let mut bytes = 0;
    for (svc, data) in svcs {
        bytes += copy_one(dir, svc, data, &job)?;
    }
    let what = match &job {
        Job::Auto { key, .. } => format!("data snapshot {} saved", short(key)),
        Job::Named { save: true, name } => format!("snapshot `{name}` saved"),
        Job::Named { save: false, name } => format!("snapshot `{name}` restored"),
    };
    let names: Vec<&str> = svcs.iter().map(|(n, _)| n.as_str()).collect();
    Ok(format!(
        "{what} ({}; {:.1} MB) in {:.2}s",
        names.join(", "),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ))
}

fn copy_one(dir: &Path, svc: &str, data: &Path, job: &Job) -> Result<u64, String> {
    match job {
        Job::Auto { step, key } => {
            let meta = serde_json::json!({"service": svc, "step": step, "key": key, "data_dir": data, "at_ms": crate::logs::now_ms()});
            // The marker is written first, so the snapshot carries it too.
            cache::set_live(svc, key, data)
                .map_err(|e| format!("cannot mark {} with its chain: {e}", data.display()))?;
            cache::save_tree(data, &cache::snapshot_dir(dir, svc, key), &meta).map_err(|e| {
                format!(
                    "cannot snapshot {svc} into {}: {e}; it will be re-seeded next time",
                    dir.display()
                )
            })
        }
        Job::Named { save: true, name } => {
            let meta = serde_json::json!({"service": svc, "name": name, "data_dir": data, "at_ms": crate::logs::now_ms()});
            cache::save_tree(data, &cache::named_dir(dir, name).join(svc), &meta)
                .map_err(|e| format!("cannot save snapshot `{name}` of {svc}: {e}"))
        }
        Job::Named { save: false, name } => {
            cache::restore_tree(&cache::named_dir(dir, name).join(svc), data)
                .map_err(|e| format!("cannot restore snapshot `{name}` of {svc}: {e}"))?;
            let _ = cache::clear_live(data);
            Ok(0)
        }
    }
}

/// What `resolve_data` found: the chain key the live data holds (restored or kept), the
/// chain's step keys, and a note for the supervisor's log.
pub(super) type Resolved = (Option<String>, HashMap<usize, String>, Option<String>);

/// Before a snapshot service starts: keep its data when it already holds the chain,
/// restore the chain's snapshot when one exists, else leave it for a cold run.
pub(super) fn resolve_data(
    plan: &Plan,
    dir: &Path,
    svc: usize,
    step: usize,
    fresh: bool,
) -> Resolved {
    let e = &plan.entries[svc];
    let data = e.data_dir.clone().unwrap_or_default();
    let mut memo = HashMap::new();
    let mut keys = HashMap::new();
    for c in cache::chain(plan, step, svc) {
        match cache::step_key(plan, c, &mut memo) {
            Ok(k) => {
                keys.insert(c, k);
            }
            Err(err) => {
                let n = format!(
                    "no snapshot lookup: key of `{}`: {err}",
                    plan.entries[c].name
                );
                return (None, keys, Some(n));
            }
        }
    }
    let key = keys[&step].clone();
    if fresh {
        let _ = cache::clear_live(&data);
        return (None, keys, Some("--fresh: data snapshot ignored".into()));
    }
    if cache::live_matches(&e.name, &key, &data) {
        let n = format!("data dir already holds chain {}; kept", short(&key));
        return (Some(key), keys, Some(n));
    }
    let snap = cache::snapshot_dir(dir, &e.name, &key);
    if !snap.join("data").is_dir() {
        let n = format!("no data snapshot for chain {}; cold run", short(&key));
        return (None, keys, Some(n));
    }
    let t = Instant::now();
    match cache::restore_tree(&snap, &data).and_then(|_| cache::set_live(&e.name, &key, &data)) {
        Ok(()) => {
            let n = format!(
                "restored data snapshot {} into {} in {:.2}s",
                short(&key),
                data.display(),
                t.elapsed().as_secs_f64()
            );
            (Some(key), keys, Some(n))
        }
        Err(err) => {
            let _ = cache::clear_live(&data);
            let n = format!("cannot restore data snapshot ({err}); cold run");
            (None, keys, Some(n))
        }
    }
}
