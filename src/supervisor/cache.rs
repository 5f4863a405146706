//! Cache, snapshot and schedule hooks of the control loop. A child module of `supervisor`
//! (it reads the loop's state), kept apart so the loop itself only carries small hooks.
//! All file work (keys, records, copies) runs in spawned blocking tasks that report back
//! with `Internal::Cache(Msg)`; the loop never blocks on the disk.

use super::{state_name, Internal, Supervisor};
use crate::cache;
use crate::control::SnapOp;
use crate::plan::Kind;
use crate::state::State;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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
    /// A cron timer fired.
    Cron { idx: usize },
}

enum Op {
    /// After a cold run of the snapshot step `step`: save its service's data under `key`.
    Auto { step: usize, key: String },
    Named {
        op: SnapOp,
        name: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

struct Maint {
    op: Op,
    services: Vec<usize>,
    /// Longruns held stopped (`user_stopped`) while the copy runs.
    affected: Vec<usize>,
    copying: bool,
}

#[derive(Default)]
pub struct CacheCtl {
    dir: PathBuf,
    fresh: bool,
    keys: Vec<Option<String>>,
    force: Vec<bool>,
    /// service -> its snapshot step
    snap_step: Vec<Option<usize>>,
    /// step -> the service whose snapshot chain contains it
    in_chain: Vec<Option<usize>>,
    /// service -> chain key its live data holds in this run
    live: Vec<Option<String>>,
    resolved: Vec<bool>,
    /// service -> its chain ran (or is running) cold in this run: snapshot after it
    cold: Vec<bool>,
    chain_keys: HashMap<usize, String>,
    maint: Option<Maint>,
    /// Snapshot operations waiting for the current one (one copy at a time).
    queued: std::collections::VecDeque<Maint>,
    crons_armed: bool,
    /// Completions due once the restarted services are ready again.
    when_ready: Vec<(AfterReady, Vec<usize>)>,
}

enum AfterReady {
    /// The snapshot step becomes `done` (its dependents may use the service again).
    Step(usize),
    /// The reply to `snapshot save|restore`.
    Reply(
        oneshot::Sender<Result<String, String>>,
        Result<String, String>,
    ),
}

impl CacheCtl {
    pub fn new(plan: &crate::plan::Plan) -> CacheCtl {
        let n = plan.entries.len();
        let mut c = CacheCtl {
            dir: plan.settings.cache_dir.clone(),
            keys: vec![None; n],
            force: vec![false; n],
            snap_step: vec![None; n],
            in_chain: vec![None; n],
            live: vec![None; n],
            resolved: vec![false; n],
            cold: vec![false; n],
            ..CacheCtl::default()
        };
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
            if plan.entries[svc].data_dir.is_none() || c.snap_step[svc].is_some() {
                continue;
            }
            c.snap_step[svc] = Some(s);
            for i in cache::chain(plan, s, svc) {
                c.in_chain[i] = Some(svc);
            }
        }
        c
    }

    /// After a config reload (src/reload.rs): the chain structure of the merged plan; what is
    /// known of entries that did not change is kept, changed and added ones start unknown.
    pub fn reindex(&mut self, plan: &crate::plan::Plan, changed: &[usize]) {
        let mut fresh = CacheCtl::new(plan);
        for i in (0..self.keys.len()).filter(|i| !changed.contains(i)) {
            fresh.keys[i] = self.keys[i].take();
            fresh.force[i] = self.force[i];
            fresh.live[i] = self.live[i].take();
            fresh.resolved[i] = self.resolved[i];
            fresh.cold[i] = self.cold[i];
        }
        self.keys = fresh.keys;
        self.force = fresh.force;
        self.snap_step = fresh.snap_step;
        self.in_chain = fresh.in_chain;
        self.live = fresh.live;
        self.resolved = fresh.resolved;
        self.cold = fresh.cold;
    }

    pub fn crons_armed(&self) -> bool {
        self.crons_armed
    }
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

fn short(k: &str) -> &str {
    &k[..k.len().min(12)]
}

impl Supervisor {
    /// `--fresh`: ignore cache records and snapshots (they are still written after success).
    pub fn set_fresh(&mut self, fresh: bool) {
        self.cache.fresh = fresh;
    }

    fn send_cache(&self) -> impl Fn(Msg) + Send + 'static {
        let tx = self.internal_tx.clone();
        move |m| {
            let _ = tx.send(Internal::Cache(m));
        }
    }

    /// Hook in `start()`: true when the start is deferred until a key or the data snapshot
    /// is resolved off the loop (the entry is already `running`/`starting`).
    pub(super) fn cache_intercept_start(&mut self, i: usize) -> bool {
        let gen = self.rt[i].gen;
        let plan = self.plan.clone();
        let dir = self.cache.dir.clone();
        let fresh = self.cache.fresh;
        let send = self.send_cache();
        match self.entry(i).kind {
            Kind::Longrun => {
                let Some(s) = self.cache.snap_step[i] else {
                    return false;
                };
                if std::mem::replace(&mut self.cache.resolved[i], true) {
                    return false;
                }
                self.rt[i].reason = Some("checking for a data snapshot".into());
                tokio::task::spawn_blocking(move || {
                    let (live, keys, note) = resolve_data(&plan, &dir, i, s, fresh);
                    send(Msg::Data {
                        idx: i,
                        gen,
                        live,
                        keys,
                        note,
                    });
                });
                true
            }
            Kind::Oneshot => {
                let chain_svc = self.cache.in_chain[i];
                if self.entry(i).cache.is_none() && chain_svc.is_none() {
                    return false;
                }
                let forced = std::mem::take(&mut self.cache.force[i]);
                let lookup = !fresh && !forced;
                // A chain step is a hit only when its service's live data holds the chain.
                let expect = chain_svc.map(|svc| {
                    self.cache.live[svc]
                        .as_ref()
                        .and_then(|_| self.cache.chain_keys.get(&i).cloned())
                });
                let svc_data = chain_svc.and_then(|s| self.entry(s).data_dir.clone());
                self.rt[i].reason = Some("computing cache key".into());
                tokio::task::spawn_blocking(move || {
                    let e = &plan.entries[i];
                    let key = match cache::step_key(&plan, i, &mut HashMap::new()) {
                        Ok(k) => Some(k),
                        Err(err) => {
                            tracing::warn!(
                                "{}: cache key not computable ({err}); running the step uncached",
                                e.name
                            );
                            None
                        }
                    };
                    let outputs_ok = e.cache.as_ref().is_none_or(|c| {
                        c.outputs.iter().all(|o| cache::output_problem(o).is_none())
                    });
                    let hit = lookup
                        && outputs_ok
                        && key.as_ref().is_some_and(|k| match &expect {
                            Some(exp) => exp.as_deref() == Some(k.as_str()),
                            None => cache::has_record(&dir, &e.name, k),
                        });
                    if !hit {
                        if let Some(data) = &svc_data {
                            // The service's data is about to diverge from any snapshot.
                            if let Err(err) = cache::clear_live(data) {
                                tracing::warn!("chain marker in {}: {err}", data.display());
                            }
                        }
                    }
                    send(Msg::Key {
                        idx: i,
                        gen,
                        key,
                        hit,
                        forced,
                    });
                });
                true
            }
        }
    }

    /// Hook in `after_exit()` for a successful oneshot: records the key; true when the step
    /// stays `running` until its data snapshot is taken (it becomes `done` after that).
    pub(super) fn cache_after_success(&mut self, i: usize) -> bool {
        let Some(key) = self.cache.keys[i].clone() else {
            return false;
        };
        let dir = self.cache.dir.clone();
        let rec = cache::Record {
            step: self.entry(i).name.clone(),
            key: key.clone(),
            at_ms: crate::logs::now_ms(),
            duration_s: self.rt[i]
                .started
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(0.0),
        };
        tokio::task::spawn_blocking(move || {
            if let Err(e) = cache::write_record(&dir, &rec) {
                tracing::warn!(
                    "{}: cannot write cache record in {} ({e}); it will run again next time",
                    rec.step,
                    dir.display()
                );
            }
        });
        let svc = self.cache.snap_step.iter().position(|s| *s == Some(i));
        match svc {
            Some(svc) if self.cache.cold[svc] => {
                self.rt[i].reason = Some(format!("snapshotting {}", self.entry(svc).name));
                self.begin_maint(Maint {
                    op: Op::Auto { step: i, key },
                    services: vec![svc],
                    affected: Vec::new(),
                    copying: false,
                });
                true
            }
            _ => false,
        }
    }

    /// A user's `stop` during a snapshot hold: the entry is no longer held, so the end of the
    /// copy does not start it again.
    pub(super) fn release_from_hold(&mut self, i: usize) {
        if let Some(m) = &mut self.cache.maint {
            m.affected.retain(|&a| a != i);
        }
    }

    fn begin_maint(&mut self, m: Maint) {
        if self.cache.maint.is_some() {
            self.cache.queued.push_back(m);
        } else {
            self.cache.maint = Some(m);
            self.hold_affected();
        }
    }

    /// The snapshot services and every active longrun that depends on them are held
    /// stopped (`user_stopped`) for the duration of the copy.
    fn hold_affected(&mut self) {
        let Some(m) = &self.cache.maint else { return };
        let mut affected = m.services.clone();
        let mut k = 0;
        while k < affected.len() {
            let a = affected[k];
            for d in self.plan.dependents(a).collect::<Vec<_>>() {
                if self.entry(d).kind == Kind::Longrun
                    && self.state(d).is_active()
                    && !affected.contains(&d)
                {
                    affected.push(d);
                }
            }
            k += 1;
        }
        for &a in &affected {
            self.rt[a].user_stopped = true;
        }
        if let Some(m) = &mut self.cache.maint {
            m.affected = affected;
        }
    }

    /// Called on every pass of `schedule()`: advances a snapshot operation (stop in reverse
    /// dependency order, then copy) and arms the cron timers once the stack is up.
    pub(super) fn cache_progress(&mut self) {
        if !self.cache.crons_armed
            && self
                .live()
                .into_iter()
                .all(|i| self.state(i).is_healthy() || self.entry(i).optional)
        {
            self.cache.crons_armed = true;
            for i in self.live() {
                self.arm_cron(i);
            }
        }
        let pending = std::mem::take(&mut self.cache.when_ready);
        for (what, services) in pending {
            let settled = services.iter().all(|&s| {
                !matches!(
                    self.state(s),
                    State::Waiting | State::Starting | State::Stopping
                )
            });
            if !settled {
                self.cache.when_ready.push((what, services));
                continue;
            }
            match what {
                AfterReady::Step(step) if self.state(step) == State::Running => {
                    self.rt[step].reason = None;
                    self.set(step, State::Done);
                    let name = self.entry(step).name.clone();
                    self.resolve_waiters(step, Ok(format!("{name} done")));
                }
                AfterReady::Step(_) => {}
                AfterReady::Reply(tx, r) => {
                    let _ = tx.send(r);
                }
            }
        }
        let Some(m) = &self.cache.maint else { return };
        if m.copying {
            return;
        }
        // Steps (other than the snapshot step itself) still using the services finish first.
        let auto_step = match &m.op {
            Op::Auto { step, .. } => Some(*step),
            Op::Named { .. } => None,
        };
        let busy = self.live().into_iter().any(|i| {
            Some(i) != auto_step
                && self.entry(i).kind == Kind::Oneshot
                && self.state(i) == State::Running
                && m.services
                    .iter()
                    .any(|&s| self.entry(i).after.iter().any(|d| d.idx == s))
        });
        if busy {
            return;
        }
        let affected = m.affected.clone();
        let mut all_down = true;
        for &a in &affected {
            let s = self.state(a);
            if !s.is_active() {
                continue;
            }
            all_down = false;
            let dependents_up = self
                .plan
                .dependents(a)
                .any(|d| affected.contains(&d) && self.state(d).is_active());
            if s != State::Stopping && !dependents_up {
                self.stop_entry(a, far());
            }
        }
        if !all_down {
            return;
        }
        let m = self.cache.maint.as_mut().unwrap();
        m.copying = true;
        let dir = self.cache.dir.clone();
        let svcs: Vec<(String, PathBuf)> = m
            .services
            .iter()
            .map(|&s| {
                let e = &self.plan.entries[s];
                (e.name.clone(), e.data_dir.clone().unwrap_or_default())
            })
            .collect();
        let job = match &m.op {
            Op::Auto { step, key } => Job::Auto {
                step: self.plan.entries[*step].name.clone(),
                key: key.clone(),
            },
            Op::Named { op, name, .. } => Job::Named {
                save: matches!(op, SnapOp::Save),
                name: name.clone(),
            },
        };
        let send = self.send_cache();
        tokio::task::spawn_blocking(move || send(Msg::CopyDone(copy_job(&dir, &svcs, job))));
    }

    pub(super) fn arm_cron(&self, i: usize) {
        let Some(expr) = self.entry(i).schedule.clone() else {
            return;
        };
        let Ok(cron) = croner::Cron::new(&expr).parse() else {
            return;
        };
        let now = chrono::Local::now();
        let Ok(next) = cron.find_next_occurrence(&now, false) else {
            return;
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        let send = self.send_cache();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            send(Msg::Cron { idx: i });
        });
    }

    pub(super) fn on_cache(&mut self, msg: Msg) {
        match msg {
            Msg::Key {
                idx,
                gen,
                key,
                hit,
                forced,
            } => {
                self.cache.keys[idx] = key.clone();
                if self.rt[idx].gen != gen || self.state(idx) != State::Running {
                    return;
                }
                self.rt[idx].reason = None;
                let name = self.entry(idx).name.clone();
                if hit {
                    let k = key.unwrap_or_default();
                    tracing::info!("{name}: cached (key {}); not run", short(&k));
                    self.rt[idx].started_at = None;
                    self.set(idx, State::Cached);
                    self.resolve_waiters(idx, Ok(format!("{name} cached")));
                } else {
                    if let Some(svc) = self.cache.in_chain[idx] {
                        self.cache.live[svc] = None;
                        // A forced re-run changes data that is no longer a pure chain result:
                        // it is not snapshotted (the next start restores the chain's one).
                        self.cache.cold[svc] = !forced;
                    }
                    let _ = self.runners[idx].send(crate::runner::RunnerCmd::Start);
                }
            }
            Msg::Data {
                idx,
                gen,
                live,
                keys,
                note,
            } => {
                let name = self.entry(idx).name.clone();
                // The supervisor's own note: its log, not the service's output.
                if let Some(n) = note {
                    tracing::info!("{name}: {n}");
                }
                self.cache.cold[idx] = live.is_none();
                self.cache.live[idx] = live;
                self.cache.chain_keys.extend(keys);
                if self.rt[idx].gen == gen && self.state(idx) == State::Starting {
                    self.rt[idx].reason = None;
                    let _ = self.runners[idx].send(crate::runner::RunnerCmd::Start);
                }
            }
            Msg::CopyDone(result) => {
                let Some(m) = self.cache.maint.take() else {
                    return;
                };
                for &a in &m.affected {
                    self.rt[a].user_stopped = false;
                    if self.stopping.is_none() && self.state(a) == State::Stopped {
                        self.set(a, State::Waiting);
                    }
                }
                match (&result, &m.op) {
                    (Ok(msg), _) => tracing::info!("{msg}"),
                    (Err(e), _) => tracing::warn!("snapshot: {e}"),
                }
                match m.op {
                    Op::Auto { step, key } => {
                        for &s in &m.services {
                            self.cache.cold[s] = false;
                            if result.is_ok() {
                                self.cache.live[s] = Some(key.clone());
                            }
                        }
                        // Dependents start only once the services are back up.
                        if self.stopping.is_none() && self.state(step) == State::Running {
                            let names: Vec<String> = m
                                .services
                                .iter()
                                .map(|&s| self.entry(s).name.clone())
                                .collect();
                            self.rt[step].reason = Some(format!(
                                "waiting for {} to be ready again",
                                names.join(", ")
                            ));
                            self.cache
                                .when_ready
                                .push((AfterReady::Step(step), m.services.clone()));
                        }
                    }
                    Op::Named { op, reply, .. } => {
                        if matches!(op, SnapOp::Restore) && result.is_ok() {
                            for &s in &m.services {
                                self.cache.live[s] = None;
                            }
                        }
                        if self.stopping.is_some() || result.is_err() {
                            let _ = reply.send(result);
                        } else {
                            self.cache
                                .when_ready
                                .push((AfterReady::Reply(reply, result), m.services.clone()));
                        }
                    }
                }
                if let Some(next) = self.cache.queued.pop_front() {
                    self.begin_maint(next);
                }
            }
            Msg::Cron { idx } => {
                if self.stopping.is_some() {
                    return;
                }
                self.arm_cron(idx);
                let name = self.entry(idx).name.clone();
                let s = self.state(idx);
                let deps_ok = self
                    .entry(idx)
                    .after
                    .iter()
                    .all(|d| d.satisfied_by(self.state(d.idx)));
                if s.is_active() || s == State::Waiting || !deps_ok || self.rt[idx].user_stopped {
                    tracing::info!(
                        "{name}: schedule fired but the step is {} (or its dependencies are not ready); skipped this time",
                        state_name(s)
                    );
                    return;
                }
                tracing::info!("{name}: scheduled run");
                self.cache.force[idx] = true;
                self.set(idx, State::Waiting);
            }
        }
    }

    /// `run`/`restart` of a step forces a real run (no cache lookup).
    pub(super) fn cache_force(&mut self, i: usize) {
        self.cache.force[i] = true;
    }

    pub(super) fn cache_key(&self, i: usize) -> Option<String> {
        self.cache.keys[i].clone()
    }

    /// `snapshot save|restore NAME` (Unix socket): every service with a `data_dir` is
    /// stopped with its dependents in reverse order, copied, and started again.
    pub(super) fn cache_snapshot(
        &mut self,
        op: SnapOp,
        name: String,
        reply: oneshot::Sender<Result<String, String>>,
    ) {
        if self.stopping.is_some() {
            let _ = reply.send(Err("the supervisor is shutting down".into()));
            return;
        }
        if self.cache.maint.is_some() {
            let _ = reply.send(Err(
                "another snapshot operation is in progress; try again in a moment".into(),
            ));
            return;
        }
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            let _ = reply.send(Err(format!("bad snapshot name {name:?}")));
            return;
        }
        let services: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| self.entry(i).data_dir.is_some() && self.state(i) != State::Skipped)
            .collect();
        if services.is_empty() {
            let _ = reply.send(Err("no [process] entry declares a `data_dir`".into()));
            return;
        }
        if let Some(i) = self.live().into_iter().find(|&i| {
            self.entry(i).kind == Kind::Oneshot
                && self.state(i) == State::Running
                && self
                    .entry(i)
                    .after
                    .iter()
                    .any(|d| services.contains(&d.idx))
        }) {
            let _ = reply.send(Err(format!(
                "step `{}` is running against a service; try again when it has finished",
                self.entry(i).name
            )));
            return;
        }
        if matches!(op, SnapOp::Restore) {
            let dir = cache::named_dir(&self.cache.dir, &name);
            let missing: Vec<String> = services
                .iter()
                .map(|&s| self.entry(s).name.clone())
                .filter(|n| !dir.join(n).join("data").is_dir())
                .collect();
            if !missing.is_empty() {
                let _ = reply.send(Err(format!(
                    "snapshot `{name}` not found for {} (see `dmp-contained snapshot ls`)",
                    missing.join(", ")
                )));
                return;
            }
        }
        self.begin_maint(Maint {
            op: Op::Named { op, name, reply },
            services,
            affected: Vec::new(),
            copying: false,
        });
    }
}

enum Job {
    Auto { step: String, key: String },
    Named { save: bool, name: String },
}

fn copy_job(dir: &std::path::Path, svcs: &[(String, PathBuf)], job: Job) -> Result<String, String> {
    let t = Instant::now();
    let mut bytes = 0;
    for (svc, data) in svcs {
        match &job {
            Job::Auto { step, key } => {
                let meta = serde_json::json!({"service": svc, "step": step, "key": key, "data_dir": data, "at_ms": crate::logs::now_ms()});
                // The marker is written first, so the snapshot carries it too.
                cache::set_live(svc, key, data)
                    .map_err(|e| format!("cannot mark {} with its chain: {e}", data.display()))?;
                bytes += cache::save_tree(data, &cache::snapshot_dir(dir, svc, key), &meta)
                    .map_err(|e| {
                        format!(
                            "cannot snapshot {svc} into {}: {e}; it will be re-seeded next time",
                            dir.display()
                        )
                    })?;
            }
            Job::Named { save: true, name } => {
                let meta = serde_json::json!({"service": svc, "name": name, "data_dir": data, "at_ms": crate::logs::now_ms()});
                bytes += cache::save_tree(data, &cache::named_dir(dir, name).join(svc), &meta)
                    .map_err(|e| format!("cannot save snapshot `{name}` of {svc}: {e}"))?;
            }
            Job::Named { save: false, name } => {
                cache::restore_tree(&cache::named_dir(dir, name).join(svc), data)
                    .map_err(|e| format!("cannot restore snapshot `{name}` of {svc}: {e}"))?;
                let _ = cache::clear_live(data);
            }
        }
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

/// Before a snapshot service starts: keep its data when it already holds the chain,
/// restore the chain's snapshot when one exists, else leave it for a cold run.
fn resolve_data(
    plan: &crate::plan::Plan,
    dir: &std::path::Path,
    svc: usize,
    step: usize,
    fresh: bool,
) -> (Option<String>, HashMap<usize, String>, Option<String>) {
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
                return (
                    None,
                    keys,
                    Some(format!(
                        "no snapshot lookup: key of `{}`: {err}",
                        plan.entries[c].name
                    )),
                )
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
            (
                None,
                keys,
                Some(format!("cannot restore data snapshot ({err}); cold run")),
            )
        }
    }
}
