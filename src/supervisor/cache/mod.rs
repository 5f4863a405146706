//! The step cache and the data snapshots: an owner beside the lifecycle core. It keeps what
//! it knows (keys, chains, which chain a service's live data holds, snapshot operations) and
//! never writes an entry's lifecycle state. The core asks it at two gates, before a start
//! (`gate_start`) and before a step counts as done (`gate_done`), and applies the `Effect`s it
//! answers with. All file work runs in blocking tasks (src/supervisor/cache/jobs.rs) that
//! report back as `Internal::Cache(Msg)`; the loop never blocks on the disk.

mod jobs;
mod snapshot;

use super::{Effect, Facts, Gate, Internal};
use crate::cache;
use crate::plan::{Kind, Plan};
use crate::state::State;
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::sync::mpsc;

pub enum Msg {
    /// A step's key was computed: `hit` means cached (record/snapshot and outputs present).
    Key {
        idx: usize,
        gen: u64,
        key: Option<String>,
        hit: bool,
        /// `run`/`schedule`: a miss by request, not a cold chain (no snapshot after it).
        forced: bool,
    },
    /// A snapshot service's data was resolved before its start: `live` is the chain key its
    /// data dir now holds (restored or kept), `keys` the chain's step keys.
    Data {
        idx: usize,
        gen: u64,
        live: Option<String>,
        keys: HashMap<usize, String>,
        note: Option<String>,
    },
    /// A snapshot copy finished.
    CopyDone(Result<String, String>),
}

/// What the controller knows of each entry, indexed like the plan.
#[derive(Default, Clone)]
struct Known {
    key: Option<String>,
    /// `run`/`restart`/`schedule`: the next run is real (no lookup).
    force: bool,
    /// A service: its snapshot step.
    snap_step: Option<usize>,
    /// A step: the service whose snapshot chain contains it.
    in_chain: Option<usize>,
    /// A service: the chain key its live data holds in this run.
    live: Option<String>,
    /// A service: its data was resolved before its first start.
    resolved: bool,
    /// A service: its chain ran (or is running) cold in this run: snapshot after it.
    cold: bool,
}

pub struct CacheCtl {
    dir: PathBuf,
    fresh: bool,
    known: Vec<Known>,
    chain_keys: HashMap<usize, String>,
    snap: snapshot::Snapshots,
    tx: mpsc::UnboundedSender<Internal>,
}

impl CacheCtl {
    pub(super) fn new(plan: &Plan, tx: mpsc::UnboundedSender<Internal>) -> CacheCtl {
        CacheCtl {
            dir: plan.settings.cache_dir.clone(),
            fresh: false,
            known: chains(plan),
            chain_keys: HashMap::new(),
            snap: snapshot::Snapshots::default(),
            tx,
        }
    }

    /// After a config reload (src/reload.rs): the chain structure of the merged plan; what is
    /// known of entries that did not change is kept, changed and added ones start unknown.
    pub(super) fn reindex(&mut self, plan: &Plan, changed: &[usize]) {
        let mut fresh = chains(plan);
        for (i, k) in fresh.iter_mut().enumerate() {
            if let Some(old) = self.known.get(i).filter(|_| !changed.contains(&i)) {
                let (snap_step, in_chain) = (k.snap_step, k.in_chain);
                *k = Known {
                    snap_step,
                    in_chain,
                    ..old.clone()
                };
            }
        }
        self.known = fresh;
    }

    /// `--fresh`: ignore cache records and snapshots (they are still written after success).
    pub(super) fn set_fresh(&mut self, fresh: bool) {
        self.fresh = fresh;
    }

    /// `run`/`restart`/a schedule of a step: its next run is real (no cache lookup).
    pub(super) fn force(&mut self, i: usize) {
        self.known[i].force = true;
    }

    /// Status `cache_key`.
    pub(super) fn key(&self, i: usize) -> Option<String> {
        self.known[i].key.clone()
    }

    fn send(&self) -> impl Fn(Msg) + Send + 'static {
        let tx = self.tx.clone();
        move |m| {
            let _ = tx.send(Internal::Cache(m));
        }
    }

    /// Before entry `i` (already `starting`/`running`) launches: deferred while its key or
    /// its service's data snapshot is resolved off the loop (`Effect::Launch` follows).
    pub(super) fn gate_start(&mut self, f: &Facts, i: usize) -> Gate {
        let send = self.send();
        let (plan, dir, fresh, gen) = (f.plan.clone(), self.dir.clone(), self.fresh, f.gen(i));
        let k = &mut self.known[i];
        match f.entry(i).kind {
            Kind::Longrun => {
                let Some(s) = k.snap_step else {
                    return Gate::Open;
                };
                if std::mem::replace(&mut k.resolved, true) {
                    return Gate::Open;
                }
                tokio::task::spawn_blocking(move || {
                    let (live, keys, note) = jobs::resolve_data(&plan, &dir, i, s, fresh);
                    let (idx, gen) = (i, gen);
                    send(Msg::Data {
                        idx,
                        gen,
                        live,
                        keys,
                        note,
                    });
                });
                Gate::Deferred("checking for a data snapshot".into())
            }
            Kind::Oneshot => {
                let chain_svc = k.in_chain;
                if f.entry(i).cache.is_none() && chain_svc.is_none() {
                    return Gate::Open;
                }
                let forced = std::mem::take(&mut k.force);
                let job = jobs::KeyJob {
                    lookup: !fresh && !forced,
                    forced,
                    // A chain step is a hit only when its service's live data holds the chain.
                    expect: chain_svc.map(|svc| {
                        let live = self.known[svc].live.as_ref();
                        live.and_then(|_| self.chain_keys.get(&i).cloned())
                    }),
                    svc_data: chain_svc.and_then(|s| f.entry(s).data_dir.clone()),
                    plan,
                    dir,
                    idx: i,
                    gen,
                };
                tokio::task::spawn_blocking(move || send(jobs::step_key(job)));
                Gate::Deferred("computing cache key".into())
            }
        }
    }

    /// A step `i` succeeded: its key is recorded; it stays `running` (deferred) while the
    /// data snapshot after a cold chain is taken, and becomes done with `Effect::Done`.
    pub(super) fn gate_done(&mut self, f: &Facts, i: usize) -> Gate {
        let Some(key) = self.known[i].key.clone() else {
            return Gate::Open;
        };
        let dir = self.dir.clone();
        let rec = cache::Record {
            step: f.entry(i).name.clone(),
            key: key.clone(),
            at_ms: crate::logs::now_ms(),
            duration_s: f.rt[i]
                .started
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(0.0),
        };
        tokio::task::spawn_blocking(move || jobs::write_record(&dir, &rec));
        let svc = self.known.iter().position(|k| k.snap_step == Some(i));
        match svc {
            Some(svc) if self.known[svc].cold => {
                self.snap.begin_auto(i, key, svc);
                Gate::Deferred(format!("snapshotting {}", f.entry(svc).name))
            }
            _ => Gate::Open,
        }
    }

    /// A job's answer.
    pub(super) fn on_msg(&mut self, f: &Facts, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::Key {
                idx,
                gen,
                key,
                hit,
                forced,
            } => self.on_key(f, idx, gen, key, hit, forced),
            Msg::Data {
                idx,
                gen,
                live,
                keys,
                note,
            } => {
                // The supervisor's own note: its log, not the service's output.
                if let Some(n) = note {
                    tracing::info!("{}: {n}", f.entry(idx).name);
                }
                self.known[idx].cold = live.is_none();
                self.known[idx].live = live;
                self.chain_keys.extend(keys);
                if f.gen(idx) == gen && f.state(idx) == State::Starting {
                    vec![Effect::Reason(idx, None), Effect::Launch(idx)]
                } else {
                    Vec::new()
                }
            }
            Msg::CopyDone(result) => self.copy_done(f, result),
        }
    }

    fn on_key(
        &mut self,
        f: &Facts,
        idx: usize,
        gen: u64,
        key: Option<String>,
        hit: bool,
        forced: bool,
    ) -> Vec<Effect> {
        self.known[idx].key = key.clone();
        if f.gen(idx) != gen || f.state(idx) != State::Running {
            return Vec::new();
        }
        if hit {
            let k = key.unwrap_or_default();
            tracing::info!(
                "{}: cached (key {}); not run",
                f.entry(idx).name,
                jobs::short(&k)
            );
            return vec![Effect::Reason(idx, None), Effect::Cached(idx)];
        }
        if let Some(svc) = self.known[idx].in_chain {
            self.known[svc].live = None;
            // A forced re-run changes data that is no longer a pure chain result: it is not
            // snapshotted (the next start restores the chain's one).
            self.known[svc].cold = !forced;
        }
        vec![Effect::Reason(idx, None), Effect::Launch(idx)]
    }
}

/// Which service's snapshot chain each step belongs to (at most one snapshot step per
/// service), for a plan.
fn chains(plan: &Plan) -> Vec<Known> {
    let mut known = vec![Known::default(); plan.entries.len()];
    for (s, e) in plan.entries.iter().enumerate() {
        if e.removed {
            continue;
        }
        let Some(svc) = e
            .cache
            .as_ref()
            .and_then(|c| c.snapshot.as_ref())
            .and_then(|n| plan.index(n))
        else {
            continue;
        };
        if plan.entries[svc].data_dir.is_none() || known[svc].snap_step.is_some() {
            continue;
        }
        known[svc].snap_step = Some(s);
        for i in cache::chain(plan, s, svc) {
            known[i].in_chain = Some(svc);
        }
    }
    known
}
