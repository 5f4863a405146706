//! Whole-table checks: entry names, the dependency graph (cycles), executables, and the values
//! `check` refuses because they would fail or spin later.

use super::entry::{section, Decl};
use super::errors::{join, Errors, Seg};
use super::raw::{lenient, RawEntry};
use crate::plan::*;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

type Section = BTreeMap<String, Spanned<toml::Value>>;

/// Every entry of `[process]` and `[step]`, read leniently: one with bad keys still exists
/// (for references and cycles), its bad keys reported and left out.
pub(super) fn declare(process: Section, step: Section, errs: &mut Errors) -> Vec<Decl> {
    let mut decls = Vec::new();
    let mut seen: BTreeMap<String, Kind> = BTreeMap::new();
    for (kind, table) in [(Kind::Longrun, process), (Kind::Oneshot, step)] {
        let sec = section(kind);
        for (name, v) in table {
            let start = v.span().start;
            if !valid_name(&name) {
                errs.at(
                    start,
                    format!("[{sec}.{name}]: names may use only letters, digits, `-` and `_`"),
                );
            }
            if seen.insert(name.clone(), kind).is_some() {
                errs.at(
                    start,
                    format!("`{name}` is defined both as [process.{name}] and [step.{name}]"),
                );
                continue;
            }
            let at = vec![Seg::Key(sec.into()), Seg::Key(name.clone())];
            let label = format!("{sec}.{name}");
            let (raw, mut dropped) = lenient::<RawEntry>(v.into_inner(), &at, &label, errs);
            if raw.is_none() {
                // Unreadable as a whole (reported): it still exists, with no keys.
                dropped.push(Vec::new());
            }
            decls.push(Decl {
                name,
                kind,
                at,
                raw: raw.unwrap_or_default(),
                dropped,
            });
        }
    }
    decls
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Start levels; a cycle is an error (the whole path) at the `after` of its first entry.
pub(super) fn levels(entries: &[Entry], decls: &[Decl], errs: &mut Errors) -> Vec<Vec<usize>> {
    match crate::graph::levels(&deps(entries)) {
        Ok(l) => l,
        Err(cycle) => {
            let path: Vec<&str> = cycle.iter().map(|&i| decls[i].name.as_str()).collect();
            let msg = format!("dependency cycle: {}", path.join(" -> "));
            errs.at_key(&join(&decls[cycle[0]].at, &["after"]), msg);
            Vec::new()
        }
    }
}

fn deps(entries: &[Entry]) -> Vec<Vec<usize>> {
    entries
        .iter()
        .map(|e| e.after.iter().map(|d| d.idx).collect())
        .collect()
}

/// A missing executable is an error unless a oneshot the entry waits for may create it.
pub(super) fn executables(entries: &[Entry], decls: &[Decl], errs: &mut Errors) {
    let deps = deps(entries);
    for (i, e) in entries.iter().enumerate() {
        if e.skip.is_some() || e.command.is_empty() {
            continue;
        }
        let waits_for_step = ancestors(&deps, i)
            .into_iter()
            .any(|a| entries[a].kind == Kind::Oneshot);
        let path_var = e
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !waits_for_step
            && crate::process::find_executable(&e.command[0], &e.cwd, &path_var).is_none()
        {
            let msg = format!(
                "`{}`: executable `{}` not found (cwd {}, PATH {})",
                e.name,
                e.command[0],
                e.cwd.display(),
                path_var
            );
            errs.at_key(&join(&decls[i].at, &["command"]), msg);
        }
    }
}

fn ancestors(deps: &[Vec<usize>], i: usize) -> Vec<usize> {
    let mut seen = vec![false; deps.len()];
    let mut stack = deps[i].clone();
    let mut out = Vec::new();
    while let Some(d) = stack.pop() {
        if !std::mem::replace(&mut seen[d], true) {
            out.push(d);
            stack.extend(&deps[d]);
        }
    }
    out
}

/// Minimum for probe intervals and timeouts and for watch polling: below it a probe or a poll
/// loop would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Value checks that need the whole table: every value has a documented range and type, and
/// `check` refuses what would fail (or spin) later.
pub(super) fn values(errs: &mut Errors, settings: &Settings, entries: &[Entry]) {
    if entries.is_empty() && errs.is_empty() {
        errs.at(
            0,
            "nothing to supervise: the table has no [process.NAME] or [step.NAME] entry",
        );
    }
    if settings.api_listen.parse::<std::net::SocketAddr>().is_err() {
        errs.at_key(
            &join(&[], &["supervisor", "api_listen"]),
            format!(
                "`api_listen` must be IP:PORT (e.g. \"127.0.0.1:8089\" or \"0.0.0.0:80\"), not {:?}",
                settings.api_listen
            ),
        );
    }
    for e in entries {
        let at = join(&[], &[section(e.kind), &e.name]);
        for (key, probe) in [("ready", &e.ready), ("liveness", &e.liveness)] {
            let Some(p) = probe else { continue };
            if let Err(m) = super::probe::target(&p.kind) {
                let k = super::probe::target_key(&p.kind);
                errs.at_key(
                    &join(&at, &[key, k]),
                    format!("`{}`: {key}.{k}: {m}", e.name),
                );
            }
            for (k, d) in [("interval", p.interval), ("timeout", p.timeout)] {
                if d < MIN_INTERVAL {
                    let msg = format!("`{}`: {key}.{k} must be at least 10ms", e.name);
                    errs.at_key(&join(&at, &[key, k]), msg);
                }
            }
        }
        if let Some(w) = &e.watch {
            if w.poll_interval < MIN_INTERVAL {
                let msg = format!("`{}`: watch.poll_interval must be at least 10ms", e.name);
                errs.at_key(&join(&at, &["watch", "poll_interval"]), msg);
            }
        }
    }
}

/// No key takes a date: a TOML datetime where a string was meant (`at = 1979-05-27`) is an
/// error at the value, not a string.
pub(super) fn datetimes(errs: &mut Errors, src: &str) {
    use toml_edit::{Item, Value};
    fn value(errs: &mut Errors, v: &Value) {
        match v {
            Value::Datetime(d) => errs.at(
                d.span().map_or(0, |s| s.start),
                format!("a TOML date/time is not a valid value here (quote it if it is a string: \"{}\")", d.value()),
            ),
            Value::Array(a) => a.iter().for_each(|x| value(errs, x)),
            Value::InlineTable(t) => t.iter().for_each(|(_, x)| value(errs, x)),
            _ => {}
        }
    }
    fn item(errs: &mut Errors, i: &Item) {
        match i {
            Item::Value(v) => value(errs, v),
            Item::Table(t) => t.iter().for_each(|(_, x)| item(errs, x)),
            Item::ArrayOfTables(a) => a.iter().for_each(|t| {
                t.iter().for_each(|(_, x)| item(errs, x));
            }),
            Item::None => {}
        }
    }
    if let Ok(doc) = toml_edit::ImDocument::parse(src) {
        item(errs, doc.as_item());
    }
}
