//! Data snapshot operations of the cache owner: after a cold chain (automatic) and by request
//! (`snapshot save|restore NAME`). The services and every active longrun that depends on them
//! are held stopped (`Effect::Hold`, not the user's stop) in reverse dependency order, copied,
//! and released; one copy at a time.

use super::jobs::{self, Job};
use super::{CacheCtl, Msg};
use crate::cache;
use crate::control::{Refused, SnapOp};
use crate::plan::Kind;
use crate::state::State;
use crate::supervisor::{Effect, Facts};
use std::collections::VecDeque;
use std::path::PathBuf;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<String, Refused>>;

#[derive(Default)]
pub(super) struct Snapshots {
    current: Option<Maint>,
    /// Operations waiting for the current one (one copy at a time).
    queued: VecDeque<Maint>,
    /// Completions due once the restarted services are ready again.
    when_ready: Vec<(AfterReady, Vec<usize>)>,
}

enum Op {
    /// After a cold run of the snapshot step `step`: save its service's data under `key`.
    Auto { step: usize, key: String },
    Named {
        op: SnapOp,
        name: String,
        reply: Reply,
    },
}

struct Maint {
    op: Op,
    services: Vec<usize>,
    /// Held stopped while the copy runs; empty until the hold begins.
    affected: Vec<usize>,
    held: bool,
    copying: bool,
}

enum AfterReady {
    /// The snapshot step becomes `done` (its dependents may use the service again).
    Step(usize),
    /// The reply to `snapshot save|restore`.
    Reply(Reply, Result<String, Refused>),
}

impl Snapshots {
    pub(super) fn begin_auto(&mut self, step: usize, key: String, svc: usize) {
        self.begin(Op::Auto { step, key }, vec![svc]);
    }

    fn begin(&mut self, op: Op, services: Vec<usize>) {
        let m = Maint {
            op,
            services,
            affected: Vec::new(),
            held: false,
            copying: false,
        };
        match self.current {
            Some(_) => self.queued.push_back(m),
            None => self.current = Some(m),
        }
    }
}

impl CacheCtl {
    /// `snapshot save|restore NAME` (Unix socket): refused at once, or queued; the reply
    /// comes once the services are back up.
    pub(in crate::supervisor) fn request(
        &mut self,
        f: &Facts,
        op: SnapOp,
        name: String,
        reply: Reply,
    ) {
        match self.refusal(f, op, &name) {
            Err(why) => {
                let _ = reply.send(Err(why));
            }
            Ok(services) => self.snap.begin(Op::Named { op, name, reply }, services),
        }
    }

    /// The services a named snapshot covers, or why it cannot run now.
    fn refusal(&self, f: &Facts, op: SnapOp, name: &str) -> Result<Vec<usize>, Refused> {
        if f.stopping {
            return Err("the supervisor is shutting down".into());
        }
        if self.snap.current.is_some() {
            return Err("another snapshot operation is in progress; try again in a moment".into());
        }
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(Refused::BadName(name.into()));
        }
        let services: Vec<usize> = f
            .live()
            .filter(|&i| f.entry(i).data_dir.is_some() && f.state(i) != State::Skipped)
            .collect();
        if services.is_empty() {
            return Err(Refused::Conflict(
                "no [process] entry declares a `data_dir`".into(),
            ));
        }
        if let Some(i) = f.live().find(|&i| f.step_running_against(i, &services)) {
            return Err(Refused::Conflict(format!(
                "step `{}` is running against a service; try again when it has finished",
                f.entry(i).name
            )));
        }
        if matches!(op, SnapOp::Restore) {
            let dir = cache::named_dir(&self.dir, name);
            let missing: Vec<String> = services
                .iter()
                .map(|&s| f.entry(s).name.clone())
                .filter(|n| !dir.join(n).join("data").is_dir())
                .collect();
            if !missing.is_empty() {
                return Err(Refused::NoSnapshot {
                    name: name.into(),
                    services: missing.join(", "),
                });
            }
        }
        Ok(services)
    }

    /// Every pass of the loop: completions whose services are ready again, then the current
    /// operation (hold, stop in reverse dependency order, copy).
    pub(in crate::supervisor) fn progress(&mut self, f: &Facts) -> Vec<Effect> {
        let mut fx = self.completions(f);
        let Some(m) = &mut self.snap.current else {
            return fx;
        };
        if !m.held {
            m.held = true;
            m.affected = affected(f, &m.services);
            fx.extend(m.affected.iter().map(|&a| Effect::Hold(a)));
        }
        if m.copying {
            return fx;
        }
        // Steps (other than the snapshot step itself) still using the services finish first.
        let auto_step = match &m.op {
            Op::Auto { step, .. } => Some(*step),
            Op::Named { .. } => None,
        };
        let busy = f
            .live()
            .any(|i| Some(i) != auto_step && f.step_running_against(i, &m.services));
        if busy {
            return fx;
        }
        let mut all_down = true;
        for &a in &m.affected {
            let s = f.state(a);
            if !s.is_active() {
                continue;
            }
            all_down = false;
            let dependents_up = f
                .plan
                .dependents(a)
                .any(|d| m.affected.contains(&d) && f.state(d).is_active());
            if s != State::Stopping && !dependents_up {
                fx.push(Effect::Stop(a));
            }
        }
        if all_down {
            m.copying = true;
            self.start_copy(f);
        }
        fx
    }

    fn start_copy(&self, f: &Facts) {
        let Some(m) = &self.snap.current else { return };
        let svcs: Vec<(String, PathBuf)> = m
            .services
            .iter()
            .map(|&s| {
                let e = f.entry(s);
                (e.name.clone(), e.data_dir.clone().unwrap_or_default())
            })
            .collect();
        let job = match &m.op {
            Op::Auto { step, key } => Job::Auto {
                step: f.entry(*step).name.clone(),
                key: key.clone(),
            },
            Op::Named { op, name, .. } => Job::Named {
                save: matches!(op, SnapOp::Save),
                name: name.clone(),
            },
        };
        let (dir, send) = (self.dir.clone(), self.send());
        tokio::task::spawn_blocking(move || send(Msg::CopyDone(jobs::copy(&dir, &svcs, job))));
    }

    /// What waits for the services to be up again and now may go.
    fn completions(&mut self, f: &Facts) -> Vec<Effect> {
        let mut fx = Vec::new();
        let pending = std::mem::take(&mut self.snap.when_ready);
        for (what, services) in pending {
            let settled = services.iter().all(|&s| {
                !matches!(
                    f.state(s),
                    State::Waiting | State::Starting | State::Stopping
                )
            });
            if !settled {
                self.snap.when_ready.push((what, services));
                continue;
            }
            match what {
                AfterReady::Step(step) if f.state(step) == State::Running => {
                    fx.push(Effect::Reason(step, None));
                    fx.push(Effect::Done(step));
                }
                AfterReady::Step(_) => {}
                AfterReady::Reply(tx, r) => {
                    let _ = tx.send(r);
                }
            }
        }
        fx
    }

    /// The copy finished: the hold ends, and what waited for it follows once the services
    /// are ready again.
    pub(super) fn copy_done(&mut self, f: &Facts, result: Result<String, String>) -> Vec<Effect> {
        let Some(m) = self.snap.current.take() else {
            return Vec::new();
        };
        let mut fx: Vec<Effect> = m.affected.iter().map(|&a| Effect::Release(a)).collect();
        match &result {
            Ok(msg) => tracing::info!("{msg}"),
            Err(e) => tracing::warn!("snapshot: {e}"),
        }
        match m.op {
            Op::Auto { step, key } => {
                for &s in &m.services {
                    self.known[s].cold = false;
                    if result.is_ok() {
                        self.known[s].live = Some(key.clone());
                    }
                }
                // Dependents start only once the services are back up.
                if !f.stopping && f.state(step) == State::Running {
                    let names: Vec<&str> = m
                        .services
                        .iter()
                        .map(|&s| f.entry(s).name.as_str())
                        .collect();
                    let why = format!("waiting for {} to be ready again", names.join(", "));
                    fx.push(Effect::Reason(step, Some(why)));
                    let after = (AfterReady::Step(step), m.services.clone());
                    self.snap.when_ready.push(after);
                }
            }
            Op::Named { op, reply, .. } => {
                if matches!(op, SnapOp::Restore) && result.is_ok() {
                    for &s in &m.services {
                        self.known[s].live = None;
                    }
                }
                let result = result.map_err(Refused::CopyFailed);
                if f.stopping || result.is_err() {
                    let _ = reply.send(result);
                } else {
                    let after = (AfterReady::Reply(reply, result), m.services.clone());
                    self.snap.when_ready.push(after);
                }
            }
        }
        if let Some(next) = self.snap.queued.pop_front() {
            self.snap.current = Some(next);
        }
        fx
    }
}

/// The services and every active longrun that depends on them (transitively).
fn affected(f: &Facts, services: &[usize]) -> Vec<usize> {
    let mut affected = services.to_vec();
    let mut k = 0;
    while k < affected.len() {
        let a = affected[k];
        for d in f.plan.dependents(a) {
            if f.entry(d).kind == Kind::Longrun && f.state(d).is_active() && !affected.contains(&d)
            {
                affected.push(d);
            }
        }
        k += 1;
    }
    affected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::supervisor::{Internal, Rt};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// db (data_dir) ← api ← web, and a step `seed` after db.
    fn plan(dir: &std::path::Path) -> Arc<Plan> {
        let src = format!(
            "[supervisor]\ncache_dir = \"{d}/cache\"\n\
             [process.db]\ncommand = \"sleep 1\"\ndata_dir = \"{d}/data\"\n\
             [process.api]\ncommand = \"sleep 1\"\nafter = [\"db\"]\n\
             [process.web]\ncommand = \"sleep 1\"\nafter = [\"api\"]\n\
             [step.seed]\ncommand = \"true\"\nafter = [\"db\"]\n",
            d = dir.display()
        );
        let env = std::env::vars().collect();
        let p = crate::config::parse(&dir.join("t.toml"), &src, &env);
        Arc::new(p.map_err(|e| e.to_string()).unwrap())
    }

    fn rts(states: &[State]) -> Vec<Rt> {
        let rt = |s: &State| Rt {
            state: Some(*s),
            ..Rt::default()
        };
        states.iter().map(rt).collect()
    }

    fn facts<'a>(plan: &'a Arc<Plan>, rt: &'a [Rt]) -> Facts<'a> {
        Facts {
            plan,
            rt,
            stopping: false,
        }
    }

    fn effects(fx: &[Effect]) -> Vec<String> {
        let name = |e: &Effect| match e {
            Effect::Hold(i) => format!("hold {i}"),
            Effect::Stop(i) => format!("stop {i}"),
            Effect::Release(i) => format!("release {i}"),
            Effect::Done(i) => format!("done {i}"),
            Effect::Reason(i, r) => format!("reason {i} {r:?}"),
            _ => "other".into(),
        };
        fx.iter().map(name).collect()
    }

    #[tokio::test]
    async fn a_hold_covers_active_dependents_and_stops_them_in_reverse_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let p = plan(dir.path());
        let ix = |n: &str| p.index(n).unwrap();
        let (db, api, web, seed) = (ix("db"), ix("api"), ix("web"), ix("seed"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut c = CacheCtl::new(&p, tx);
        use State::{Done, Ready, Stopped};
        let mut rt = rts(&[Ready; 4]);
        rt[seed].state = Some(Done);
        let (reply, answer) = oneshot::channel();
        c.request(&facts(&p, &rt), SnapOp::Save, "s1".into(), reply);
        // The hold: the service and every active longrun after it; only web may stop yet.
        let fx = c.progress(&facts(&p, &rt));
        let want = [
            format!("hold {db}"),
            format!("hold {api}"),
            format!("hold {web}"),
            format!("stop {web}"),
        ];
        assert_eq!(effects(&fx), want);
        // Nothing new while web is still stopping.
        rt[web].state = Some(State::Stopping);
        assert!(c.progress(&facts(&p, &rt)).is_empty());
        rt[web].state = Some(Stopped);
        assert_eq!(
            effects(&c.progress(&facts(&p, &rt))),
            [format!("stop {api}")]
        );
        rt[api].state = Some(Stopped);
        assert_eq!(
            effects(&c.progress(&facts(&p, &rt))),
            [format!("stop {db}")]
        );
        rt[db].state = Some(Stopped);
        // All down: the copy runs off the loop and answers as a message.
        assert!(c.progress(&facts(&p, &rt)).is_empty());
        let Some(Internal::Cache(Msg::CopyDone(result))) = rx.recv().await else {
            panic!("no copy result");
        };
        assert!(result
            .as_ref()
            .is_ok_and(|m| m.contains("snapshot `s1` saved")));
        let fx = c.on_msg(&facts(&p, &rt), Msg::CopyDone(result));
        let want = [db, api, web].map(|i| format!("release {i}"));
        assert_eq!(effects(&fx), want);
        // The reply waits until the services are back.
        rt[db].state = Some(State::Starting);
        assert!(c.progress(&facts(&p, &rt)).is_empty());
        rt[db].state = Some(Ready);
        assert!(c.progress(&facts(&p, &rt)).is_empty());
        let msg = answer.await.unwrap().unwrap();
        assert!(msg.contains("snapshot `s1` saved"), "{msg}");
    }

    #[tokio::test]
    async fn refusals_are_variants() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut c = CacheCtl::new(&p, tx);
        use State::{Done, Ready, Running};
        let seed = p.index("seed").unwrap();
        let mut rt = rts(&[Ready; 4]);
        rt[seed].state = Some(Done);
        let ask = |c: &mut CacheCtl, rt: &[Rt], op, name: &str| {
            let (reply, mut answer) = oneshot::channel();
            c.request(&facts(&p, rt), op, name.into(), reply);
            answer.try_recv()
        };
        let bad = ask(&mut c, &rt, SnapOp::Save, ".x");
        assert!(matches!(bad, Ok(Err(Refused::BadName(_)))), "{bad:?}");
        let missing = ask(&mut c, &rt, SnapOp::Restore, "nope");
        assert!(
            matches!(&missing, Ok(Err(Refused::NoSnapshot { services, .. })) if services == "db"),
            "{missing:?}"
        );
        let mut busy = rts(&[Ready; 4]);
        busy[seed].state = Some(Running);
        let seeding = ask(&mut c, &busy, SnapOp::Save, "s1");
        assert!(
            matches!(&seeding, Ok(Err(Refused::Conflict(m))) if m.contains("step `seed`")),
            "{seeding:?}"
        );
        // Accepted: no answer yet; a second one is refused while it runs.
        assert!(ask(&mut c, &rt, SnapOp::Save, "s1").is_err());
        let second = ask(&mut c, &rt, SnapOp::Save, "s2");
        assert!(
            matches!(second, Ok(Err(Refused::Conflict(_)))),
            "{second:?}"
        );
    }
}
