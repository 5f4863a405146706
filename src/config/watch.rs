//! An entry's `watch` (with its `on` rules and actions) and `cache` sections. Relative paths
//! stay relative here; the `os` stage anchors them at the entry's working directory.

use super::entry::{EntryCx, Names};
use super::errors::Seg;
use super::raw::{RawCache, RawWatch, RawWatchRule};
use crate::plan::*;
use std::path::PathBuf;

pub(super) fn watch(w: &RawWatch, names: &Names, e: &mut EntryCx) -> Watch {
    let mode = match w.mode.as_deref().unwrap_or(RawWatch::MODE) {
        "auto" => WatchMode::Auto,
        "native" => WatchMode::Native,
        "poll" => WatchMode::Poll,
        m => {
            let msg = format!("{}: unknown watch mode `{m}` (auto, native, poll)", e.ctx);
            e.err(&["watch", "mode"], msg);
            WatchMode::Auto
        }
    };
    // Empty: the working directory (filled in by the `os` stage).
    let paths = w
        .paths
        .iter()
        .map(|p| PathBuf::from(e.expand(&["watch", "paths"], p)))
        .collect();
    for g in &w.ignore {
        if let Err(err) = globset::Glob::new(g) {
            let msg = format!("{}: bad ignore glob {g:?}: {err}", e.ctx);
            e.err(&["watch", "ignore"], msg);
        }
    }
    let here = [Seg::Key("watch".into())];
    let action = action(e, &here, (&w.action, &w.signal, &w.exec, &w.step), names);
    let on =
        w.on.iter()
            .enumerate()
            .map(|(i, rule)| watch_rule(e, i, rule, names))
            .collect();
    Watch {
        paths,
        ignore: w.ignore.clone(),
        debounce: e.duration(&["watch", "debounce"], &w.debounce, RawWatch::DEBOUNCE),
        mode,
        poll_interval: e.duration(
            &["watch", "poll_interval"],
            &w.poll_interval,
            RawWatch::POLL_INTERVAL,
        ),
        action,
        on,
    }
}

fn watch_rule(e: &mut EntryCx, i: usize, rule: &RawWatchRule, names: &Names) -> WatchRule {
    let here = [
        Seg::Key("watch".into()),
        Seg::Key("on".into()),
        Seg::Index(i),
    ];
    for g in &rule.files {
        if let Err(err) = globset::Glob::new(g) {
            let msg = format!("{}: bad watch glob {g:?}: {err}", e.ctx);
            e.err_in(&here, "files", msg);
        }
    }
    let a = (&rule.action, &rule.signal, &rule.exec, &rule.step);
    WatchRule {
        files: rule.files.clone(),
        action: action(e, &here, a, names),
    }
}

/// `action` and its argument (`signal`, `exec` or `step`) of a watch table or rule.
type RawAction<'a> = (
    &'a Option<String>,
    &'a Option<String>,
    &'a Option<Vec<String>>,
    &'a Option<String>,
);

/// A watch action from its raw form (at `here`); every mistake is an error naming the fix.
fn action(e: &mut EntryCx, here: &[Seg], a: RawAction, names: &Names) -> WatchAction {
    let (action, signal, exec, step) = a;
    let name = action.as_deref().unwrap_or(RawWatch::ACTION);
    let ctx = e.ctx.clone();
    use WatchAction as A;
    let act: Result<WatchAction, (&str, String)> = match name {
        "restart" => Ok(A::Restart),
        "none" => Ok(A::None),
        "signal" => match signal {
            Some(s) => super::entry::parse_signal(s)
                .map(A::Signal)
                .ok_or(("signal", format!("{ctx}: unknown signal `{s}` in watch"))),
            None => Err(("action", format!("{ctx}: watch action \"signal\" needs `signal = \"SIGHUP\"` (or another signal)"))),
        },
        "exec" => match exec {
            Some(c) if !c.is_empty() && !c[0].is_empty() => Ok(A::Exec(c.clone())),
            _ => Err(("action", format!("{ctx}: watch action \"exec\" needs `exec = [\"command\", \"arg\"]`"))),
        },
        "run" => match step.as_deref().map(|s| (s, names.index(s))) {
            Some((s, Some(i))) if names.decls[i].kind == Kind::Oneshot => Ok(A::Run(i, s.to_string())),
            Some((s, Some(_))) => Err(("step", format!("{ctx}: watch `step = \"{s}\"` is a [process]; `run` re-runs a [step]"))),
            Some((s, None)) => Err(("step", format!("{ctx}: watch `step = \"{s}\"`: no such step"))),
            None => Err(("action", format!("{ctx}: watch action \"run\" needs `step = \"name\"`"))),
        },
        other => Err(("action", format!("{ctx}: unknown watch action `{other}` (restart, signal, exec, run, none)"))),
    };
    let act = act.unwrap_or_else(|(key, msg)| {
        e.err_in(here, key, msg);
        A::None
    });
    let present = [
        ("signal", signal.is_some()),
        ("exec", exec.is_some()),
        ("step", step.is_some()),
    ];
    for (key, present) in present {
        if present && key != name && !(key == "step" && name == "run") {
            let msg = format!("{ctx}: watch `{key}` only applies to action = \"{key}\" (the action is \"{name}\")");
            e.err_in(here, key, msg);
        }
    }
    act
}

pub(super) fn cache(c: &RawCache, names: &Names, e: &mut EntryCx) -> Cache {
    for g in &c.inputs {
        if let Err(err) = globset::Glob::new(g) {
            let msg = format!("{}: bad input glob {g:?}: {err}", e.ctx);
            e.err(&["cache", "inputs"], msg);
        }
    }
    if let Some(s) = &c.snapshot {
        let msg = match names.index(s).map(|i| &names.decls[i]) {
            Some(d) if d.kind == Kind::Longrun && d.raw.data_dir.is_some() => None,
            Some(d) if d.kind == Kind::Longrun => Some(format!(
                "{}: snapshot names `{s}`, which has no `data_dir` to snapshot",
                e.ctx
            )),
            _ => Some(format!(
                "{}: snapshot names `{s}`, which is not a [process] entry",
                e.ctx
            )),
        };
        if let Some(msg) = msg {
            e.err(&["cache", "snapshot"], msg);
        }
    }
    let mut each = |key: &str, v: &[String]| -> Vec<String> {
        v.iter().map(|x| e.expand(&["cache", key], x)).collect()
    };
    Cache {
        inputs: each("inputs", &c.inputs),
        outputs: each("outputs", &c.outputs)
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        key_extra: each("key_extra", &c.key_extra),
        snapshot: c.snapshot.clone(),
    }
}
