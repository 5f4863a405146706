//! Config reload hooks of the control loop (a child module of `supervisor`); the diff itself
//! and why indices stay stable are in src/reload.rs.
//!
//! A reload runs in two phases, both driven from the loop (no timer, no polling: each pass
//! after an event looks at the pending reload):
//! 1. **Retire**: the removed and the changed entries are stopped, dependents first (by the
//!    running plan's dependencies); nothing else is touched, and no retiring entry starts.
//! 2. **Apply**, once none of them is active: the merged plan replaces the running one (the
//!    API's view too), added entries get a runner, log, watch state; changed entries get a new
//!    runner and watcher and go back to `waiting`; removed ones become tombstones; changed
//!    templates are written and their users signalled or restarted. The scheduler then starts
//!    what is waiting in dependency order, as at start-up. The reload settles (and its reply is
//!    sent) when every entry it started is ready/done, or failed.

use super::{Rt, Supervisor};
use crate::control::View;
use crate::plan::{Kind, Plan};
use crate::reload::{Diff, Loader, Outcome, Report, TemplateAction, Trigger};
use crate::state::{RestartHistory, State};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

type Reply = oneshot::Sender<Result<Report, Report>>;

pub struct ReloadCtl {
    loader: Option<Loader>,
    pending: Option<Pending>,
    last: Option<Report>,
    /// Per entry: its watcher task (src/watch/).
    watchers: Vec<Option<AbortHandle>>,
    /// `[supervisor] watch_config`.
    table_watcher: Option<AbortHandle>,
}

struct Pending {
    /// Phase 1: the plan to apply once the retiring entries are down.
    merged: Option<Plan>,
    diff: Diff,
    /// Rendered templates (destination, text), checked before anything changed.
    rendered: Vec<(std::path::PathBuf, String)>,
    /// Removed and changed entries (phase 1).
    retiring: Vec<usize>,
    /// The running plan's dependencies: the stop order of phase 1.
    old_deps: Vec<Vec<usize>>,
    /// Phase 2: what the reload started, restarted or signalled; it settles with them.
    touched: Vec<usize>,
    report: Report,
    replies: Vec<Reply>,
}

impl ReloadCtl {
    pub fn new(n: usize) -> ReloadCtl {
        ReloadCtl {
            loader: None,
            pending: None,
            last: None,
            watchers: (0..n).map(|_| None).collect(),
            table_watcher: None,
        }
    }

    /// Loads and checks the table again and renders its templates; Ok with the reload to
    /// run against `plan`, Err with the report when anything is invalid (nothing changed).
    fn prepare(&self, plan: &Plan, mut report: Report) -> Result<Pending, Box<Report>> {
        let loaded = (self.loader.as_ref().expect("checked"))();
        let rendered = loaded.as_ref().map_err(Clone::clone).and_then(render_all);
        let (loaded, rendered) = match (loaded, rendered) {
            (Ok(l), Ok(r)) => (l, r),
            (_, Err(errors)) => {
                tracing::error!(
                    "config reload: {} is invalid; nothing changed:\n{}",
                    plan.file.display(),
                    errors.join("\n")
                );
                report.outcome = Outcome::Invalid;
                report.errors = errors;
                report.finished_at = Some(crate::logs::now_ms());
                return Err(Box::new(report));
            }
            (Err(_), Ok(_)) => unreachable!("errors pass through"),
        };
        let not_applied = crate::reload::settings_not_applied(plan, &loaded.plan);
        if !not_applied.is_empty() {
            report.notes.push(format!(
                "[supervisor] {} changed: applied at the next start",
                not_applied.join(", ")
            ));
        }
        let (merged, diff) = crate::reload::merge(plan, loaded.plan);
        report.added = names(&merged, &diff.added);
        report.removed = names(&merged, &diff.removed);
        report.changed = names(&merged, &diff.changed);
        report.unchanged = names(&merged, &diff.unchanged);
        tracing::info!(
            "config reload: added [{}], removed [{}], changed [{}], {} unchanged",
            report.added.join(", "),
            report.removed.join(", "),
            report.changed.join(", "),
            report.unchanged.len()
        );
        let retiring = diff.removed.iter().chain(&diff.changed).copied().collect();
        let old_deps = plan
            .entries
            .iter()
            .map(|e| e.after.iter().map(|d| d.idx).collect())
            .collect();
        Ok(Pending {
            merged: Some(merged),
            diff,
            rendered,
            retiring,
            old_deps,
            touched: Vec::new(),
            report,
            replies: Vec::new(),
        })
    }
}

/// Every template of the loaded table rendered (destination, text), or every error.
fn render_all(l: &crate::reload::Loaded) -> Result<Vec<(std::path::PathBuf, String)>, Vec<String>> {
    let (ok, errs): (Vec<_>, Vec<_>) = l
        .plan
        .templates
        .iter()
        .map(|t| {
            crate::reload::render_template(t, &l.plan.vars, &l.rewriter)
                .map(|text| (t.dest.clone(), text))
                .map_err(|e| format!("template {e}"))
        })
        .partition(Result::is_ok);
    match errs.is_empty() {
        true => Ok(ok.into_iter().map(Result::unwrap).collect()),
        false => Err(errs.into_iter().map(|e| e.unwrap_err()).collect()),
    }
}

fn names(plan: &Plan, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| plan.entries[i].name.clone()).collect()
}

impl Supervisor {
    /// How `reload` loads the table again (src/app/up.rs: the same file, environment, profiles
    /// and selection as start-up). Without one, reloads are refused.
    pub fn set_loader(&mut self, loader: Loader) {
        self.reload.loader = Some(loader);
    }

    /// Watchers of every watched entry, and of the table itself with `watch_config`.
    pub(super) fn start_watchers(&mut self) {
        for i in self.live() {
            self.reload.watchers[i] = crate::watch::spawn(&self.shared, i);
        }
        self.watch_table();
    }

    fn watch_table(&mut self) {
        let on = self.plan.settings.watch_config;
        match (on, &self.reload.table_watcher) {
            (true, None) => {
                match crate::reload::watch_table(
                    self.plan.file.clone(),
                    self.shared.control.clone(),
                ) {
                    Ok(h) => self.reload.table_watcher = Some(h),
                    Err(e) => tracing::warn!("watch_config: {e}"),
                }
            }
            (false, Some(h)) => {
                h.abort();
                self.reload.table_watcher = None;
            }
            _ => {}
        }
    }

    pub(super) fn is_retiring(&self, i: usize) -> bool {
        self.reload
            .pending
            .as_ref()
            .is_some_and(|p| p.merged.is_some() && p.retiring.contains(&i))
    }

    pub(super) fn reload_pending(&self) -> bool {
        self.reload.pending.is_some()
    }

    /// `config_reload` of status: the reload in progress, else the last one (null: none yet).
    pub(super) fn reload_status(&self) -> Option<Report> {
        match (&self.reload.pending, &self.reload.last) {
            (Some(p), _) => Some(p.report.clone()),
            (None, last) => last.clone(),
        }
    }

    /// `reload` / SIGHUP / a save of the table: validate the table, then retire and apply.
    pub(super) fn config_reload(&mut self, trigger: Trigger, reply: Reply) {
        let mut report = Report::new(trigger);
        let refuse = if self.stopping.is_some() {
            Some("the supervisor is shutting down".to_string())
        } else if self.reload.pending.is_some() {
            Some("a config reload is in progress; try again when it settles".to_string())
        } else if self.reload.loader.is_none() {
            Some("this supervisor cannot reload its table".to_string())
        } else {
            None
        };
        if let Some(why) = refuse {
            tracing::warn!("config reload refused: {why}");
            report.outcome = Outcome::Refused;
            report.errors.push(why);
            report.finished_at = Some(crate::logs::now_ms());
            let _ = reply.send(Err(report.clone()));
            return;
        }
        match self.reload.prepare(&self.plan, report) {
            Ok(mut pending) => {
                pending.replies.push(reply);
                self.reload.pending = Some(pending);
            }
            Err(report) => {
                let _ = reply.send(Err(Report::clone(&report)));
                self.reload.last = Some(*report);
            }
        }
    }

    /// Each pass of the loop: advances the pending reload (see the module comment).
    pub(super) fn reload_progress(&mut self) {
        let Some(p) = &self.reload.pending else {
            return;
        };
        if p.merged.is_some() {
            let (retiring, old_deps) = (p.retiring.clone(), p.old_deps.clone());
            for &i in &retiring {
                let s = self.state(i);
                if !s.is_active() || s == State::Stopping {
                    continue;
                }
                let dependent_up = retiring
                    .iter()
                    .any(|&j| j != i && old_deps[j].contains(&i) && self.state(j).is_active());
                if !dependent_up {
                    self.rt[i].restart_after_stop = false;
                    self.stop_entry(i);
                }
            }
            if retiring.iter().any(|&i| self.state(i).is_active()) {
                return;
            }
            self.reload_apply();
            self.schedule();
        }
        self.reload_settle();
    }

    /// Phase 2: the merged plan becomes the running one.
    fn reload_apply(&mut self) {
        let mut p = self.reload.pending.take().expect("pending");
        let plan = Arc::new(p.merged.take().expect("phase 1"));
        self.plan = plan.clone();
        for &i in &p.diff.added {
            self.add_entry(&plan, i, &mut p.report.errors);
        }
        for &i in &p.diff.changed {
            self.renew_changed(&plan, i);
        }
        for &i in p.diff.added.iter().chain(&p.diff.changed) {
            let e = &plan.entries[i];
            self.rt[i].span = crate::progress::Span {
                name: e.name.clone(),
                after: e.after.iter().map(|d| d.idx).collect(),
                ..Default::default()
            };
        }
        for &i in &p.diff.removed {
            self.tombstone(i);
        }
        self.cache.reindex(&plan, &p.diff.changed);
        crate::redact::reinstall(&plan);
        self.swap_watchers(&plan, &p.diff);
        self.cron.added(&plan, &p.diff.added);
        p.touched = p
            .diff
            .added
            .iter()
            .chain(&p.diff.changed)
            .copied()
            .collect();
        self.apply_templates(&mut p);
        self.reload.pending = Some(p);
    }

    /// An added entry: its log (and log file), runner, runtime facts and watcher slot.
    fn add_entry(&mut self, plan: &Arc<Plan>, i: usize, errors: &mut Vec<String>) {
        debug_assert_eq!(i, self.rt.len());
        let e = &plan.entries[i];
        let log = crate::logs::EntryLog::new(&e.name, i, plan.settings.log_lines);
        if let Some(dir) = &plan.settings.log_dir {
            let s = &plan.settings;
            match crate::logfile::LogFile::open(dir, &e.name, s.log_max_size, s.log_max_files) {
                Ok(f) => {
                    let _ = log.file.set(f);
                }
                Err(err) => errors.push(format!("log_dir {}: {err}", dir.display())),
            }
        }
        self.logs.push(log.clone());
        self.runners.push(crate::runner::spawn_supervised(
            i,
            Arc::new(e.clone()),
            log,
            self.out.clone(),
            self.ev_tx.clone(),
        ));
        self.rt.push(Rt::waiting(e));
        self.reload.watchers.push(None);
    }

    /// A changed entry (stopped by phase 1): a new runner, a fresh restart budget, waiting.
    fn renew_changed(&mut self, plan: &Arc<Plan>, i: usize) {
        // The old runner is idle (the entry was stopped): dropping its channel ends it.
        self.runners[i] = crate::runner::spawn_supervised(
            i,
            Arc::new(plan.entries[i].clone()),
            self.logs[i].clone(),
            self.out.clone(),
            self.ev_tx.clone(),
        );
        let longrun = plan.entries[i].kind == Kind::Longrun;
        let rt = &mut self.rt[i];
        rt.history = RestartHistory::default();
        rt.reason = None;
        rt.failed_while_unready = None;
        rt.crashed = false;
        rt.restart_after_stop = false;
        rt.restarts += u32::from(longrun && rt.runs > 0);
        rt.gen += 1;
        if !rt.kept_down() && self.state(i) != State::Waiting {
            self.set(i, State::Waiting);
        }
    }

    /// A removed entry: not a lifecycle transition (no event), just never looked at again.
    fn tombstone(&mut self, i: usize) {
        let rt = &mut self.rt[i];
        rt.state = Some(State::Stopped);
        rt.user_stopped = false;
        rt.held = false;
        rt.reason = Some("removed by a config reload".into());
        for w in rt.waiters.drain(..) {
            let _ = w.send(Err("removed by a config reload".to_string().into()));
        }
        for w in rt.reload_waiters.drain(..) {
            let _ = w.send(Err("removed by a config reload".into()));
        }
    }

    /// New watch states for added, changed and removed entries, the API's new view, and
    /// new watcher tasks (the table's own watcher follows `watch_config`).
    fn swap_watchers(&mut self, plan: &Arc<Plan>, diff: &Diff) {
        let fresh = crate::status::WatchState::for_plan(plan);
        for (i, w) in fresh.into_iter().enumerate() {
            if i >= self.watch.len() {
                self.watch.push(w);
            } else if diff.changed.contains(&i) || diff.removed.contains(&i) {
                self.watch[i] = w;
            }
        }
        self.shared.replace_view(View {
            plan: plan.clone(),
            logs: self.logs.clone(),
            watch: self.watch.clone(),
        });
        for &i in diff.changed.iter().chain(&diff.removed) {
            if let Some(h) = self.reload.watchers[i].take() {
                h.abort();
            }
        }
        for &i in diff.changed.iter().chain(&diff.added) {
            self.reload.watchers[i] = crate::watch::spawn(&self.shared, i);
        }
        self.watch_table();
    }

    /// Writes the re-rendered templates that changed; their users that the reload does not
    /// start anyway take them in by their own means (src/reload.rs `template_users`).
    fn apply_templates(&mut self, p: &mut Pending) {
        let rendered = std::mem::take(&mut p.rendered);
        for (dest, text) in rendered {
            match crate::reload::write_if_changed(&dest, &text) {
                Ok(false) => continue,
                Ok(true) => p.report.templates.push(dest.display().to_string()),
                Err(e) => {
                    p.report.errors.push(format!("template {e}"));
                    continue;
                }
            }
            for (u, act) in crate::reload::template_users(&self.plan, &dest) {
                if p.touched.contains(&u) {
                    continue;
                }
                let name = self.entry(u).name.clone();
                let running = matches!(self.state(u), State::Ready | State::Starting);
                let what = match act {
                    TemplateAction::Watched => format!("{name}: its watcher"),
                    TemplateAction::Signal(sig) if running => {
                        match crate::watch::actions::signal(self.entry(u), sig) {
                            Ok(()) => format!("{name}: signal {}", sig.as_str()),
                            Err(e) => {
                                p.report.errors.push(e.clone());
                                format!("{name}: {e}")
                            }
                        }
                    }
                    TemplateAction::Signal(_) | TemplateAction::Restart => {
                        let (reply, _) = oneshot::channel();
                        self.reload(u, 1, reply);
                        p.touched.push(u);
                        format!("{name}: restart")
                    }
                };
                tracing::info!("config reload: {} changed; {what}", dest.display());
                p.report.template_actions.push(what);
            }
        }
    }

    /// Has this entry landed where the reload stops waiting for it?
    fn settled(&self, i: usize) -> bool {
        match self.state(i) {
            State::Waiting => self.blocked(i).is_some() || self.rt[i].kept_down(),
            State::Starting | State::Running | State::Stopping | State::Backoff => false,
            _ => true,
        }
    }

    fn reload_settle(&mut self) {
        let Some(p) = &self.reload.pending else {
            return;
        };
        if p.merged.is_some() || !p.touched.iter().all(|&i| self.settled(i)) {
            return;
        }
        let mut p = self.reload.pending.take().expect("pending");
        for &i in &p.touched {
            if self.state(i) == State::Failed {
                let why = self.rt[i].reason.clone().unwrap_or_default();
                p.report
                    .errors
                    .push(format!("{}: {why}", self.entry(i).name));
            }
        }
        p.report.outcome = if p.report.errors.is_empty() {
            Outcome::Applied
        } else {
            Outcome::Failed
        };
        p.report.finished_at = Some(crate::logs::now_ms());
        tracing::info!(
            "config reload {} in {:.2}s{}",
            p.report.outcome.as_str(),
            (p.report.finished_at.unwrap_or(0) - p.report.at) as f64 / 1000.0,
            if p.report.errors.is_empty() {
                String::new()
            } else {
                format!(": {}", p.report.errors.join("; "))
            }
        );
        let v = p.report.clone();
        for r in p.replies.drain(..) {
            let _ = r.send(if p.report.errors.is_empty() {
                Ok(v.clone())
            } else {
                Err(v.clone())
            });
        }
        self.reload.last = Some(p.report);
    }
}
