//! Presets: a stage before `config::parse`. `[preset.NAME]` tables hold entry keys an entry
//! builds on with `preset = "NAME"` and per-entry parameters `with = { repo = "x" }`, used in the
//! preset's values as `{{repo}}` (`{{name}}` is the entry's own name). A preset may build on
//! another (`preset = "…"` inside it); a chain that comes back to itself is an error.
//!
//! Merge rules, from the root of the chain to the entry: scalars and arrays replace; `env`,
//! `watch`, `cache` and `restart` merge key by key; probes (`ready`, `liveness`) replace whole.
//!
//! The result is a plain table (TOML text) that `config::parse` reads as if written by hand;
//! every line of it remembers where it came from, so an error in a value a preset gave is
//! reported at the preset's line and names the entry's line too.

use crate::config::{ConfigError, ConfigErrors};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::ops::Range;
use std::path::Path;
use toml::{Spanned, Table, Value};

/// Tables of an entry that merge key by key over the preset's.
const MERGED: &[&str] = &["env", "watch", "cache", "restart"];

/// The expanded table and, per line of it, where that line came from.
pub struct Expanded {
    pub text: String,
    origins: Vec<Origin>,
}

#[derive(Clone, Debug)]
enum Origin {
    /// Generated (headers of non-entry parts and the like): no better place than the file start.
    None,
    /// A line of the entry itself (offset in the source).
    Entry(usize),
    /// A value a preset gave: the preset's line, the entry name and its `preset =` line.
    Preset {
        preset: String,
        at: usize,
        entry: String,
        used_at: usize,
    },
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    preset: BTreeMap<String, Spanned<Value>>,
    #[serde(default)]
    process: BTreeMap<String, Spanned<Value>>,
    #[serde(default)]
    step: BTreeMap<String, Spanned<Value>>,
}

/// A table with its place in the source (the header's offset and its whole extent).
struct Located {
    table: Table,
    span: Range<usize>,
}

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
    errs: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, off: usize, msg: impl Into<String>) {
        let (line, col) = line_col(self.src, off);
        self.errs.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            msg: msg.into(),
        });
    }

    fn place(&self, off: usize) -> String {
        let (l, c) = line_col(self.src, off);
        format!("{}:{l}:{c}", self.file.display())
    }

    /// Offset of `key = …` (or `inner = …` below it) inside `span`; the header otherwise.
    fn key_at(&self, span: &Range<usize>, key: &str, inner: Option<&str>) -> usize {
        let outer = find_key(self.src, span, key);
        match (inner, outer) {
            (Some(i), Some(o)) => find_key(self.src, &(o..span.end), i)
                .filter(|&p| p < span.end)
                .unwrap_or(o),
            (Some(i), None) => find_key(self.src, span, i).unwrap_or(span.start),
            (None, o) => o.unwrap_or(span.start),
        }
    }
}

/// True when the table uses presets at all (otherwise it is parsed exactly as written). A table
/// that does not parse is left to `config::parse`, which places the syntax error.
pub fn uses_presets(src: &str) -> bool {
    let Ok(t) = toml::from_str::<Table>(src) else {
        return false;
    };
    let entry_uses = |section: &str| {
        t.get(section).and_then(Value::as_table).is_some_and(|m| {
            m.values().any(|e| {
                e.as_table()
                    .is_some_and(|e| e.contains_key("preset") || e.contains_key("with"))
            })
        })
    };
    t.contains_key("preset") || entry_uses("process") || entry_uses("step")
}

/// Expands every entry's preset chain. Every problem is reported at once.
pub fn expand(file: &Path, src: &str) -> Result<Expanded, ConfigErrors> {
    let (x, errs, _) = expand_all(file, src);
    match errs.is_empty() {
        true => Ok(x),
        false => Err(ConfigErrors(errs)),
    }
}

/// The expansion, the preset errors, and whether every entry is in the expansion (an entry
/// whose chain is broken is left out).
pub fn expand_all(file: &Path, src: &str) -> (Expanded, Vec<ConfigError>, bool) {
    let mut cx = Ctx {
        file,
        src,
        errs: Vec::new(),
    };
    let doc: Doc = match toml::from_str(src) {
        Ok(d) => d,
        // Left to config::parse, which places syntax errors already.
        Err(_) => {
            let x = Expanded {
                text: src.to_string(),
                origins: Vec::new(),
            };
            return (x, Vec::new(), true);
        }
    };
    let mut whole: Table = toml::from_str(src).unwrap_or_default();
    whole.remove("preset");
    whole.remove("process");
    whole.remove("step");

    let locate = |section: &str, map: BTreeMap<String, Spanned<Value>>, cx: &mut Ctx| {
        let mut out = BTreeMap::new();
        for (name, v) in map {
            let span = crate::config::extent(src, v.span(), &format!("{section}.{name}"));
            match v.into_inner() {
                Value::Table(table) => {
                    out.insert(name, Located { table, span });
                }
                _ => cx.err(span.start, format!("[{section}.{name}] must be a table")),
            }
        }
        out
    };
    let presets = locate("preset", doc.preset, &mut cx);
    let processes = locate("process", doc.process, &mut cx);
    let steps = locate("step", doc.step, &mut cx);

    let mut text = String::new();
    let mut origins = Vec::new();
    if !whole.is_empty() {
        let head = toml::to_string(&whole).unwrap_or_default();
        push(&mut text, &mut origins, &head, Origin::None);
    }
    let mut complete = true;
    for (section, entries) in [("process", &processes), ("step", &steps)] {
        for (name, e) in entries {
            complete &= expand_entry(&mut cx, &presets, section, name, e, &mut text, &mut origins);
        }
    }
    cx.errs.sort_by_key(|e| (e.line, e.col));
    (Expanded { text, origins }, cx.errs, complete)
}

/// One value of the merged entry and who set it.
struct Set {
    value: Value,
    by: Option<String>,
}

fn expand_entry(
    cx: &mut Ctx,
    presets: &BTreeMap<String, Located>,
    section: &str,
    name: &str,
    e: &Located,
    text: &mut String,
    origins: &mut Vec<Origin>,
) -> bool {
    let used_at = cx.key_at(&e.span, "preset", None);
    // The chain, root first.
    let mut chain: Vec<&str> = Vec::new();
    let mut next = e.table.get("preset").cloned();
    let mut from_span = e.span.clone();
    while let Some(p) = next.take() {
        let Value::String(p) = p else {
            cx.err(
                cx.key_at(&from_span, "preset", None),
                "`preset` must be a preset's name",
            );
            return false;
        };
        let Some(found) = presets.get(&p) else {
            let known: Vec<&str> = presets.keys().map(String::as_str).collect();
            cx.err(
                cx.key_at(&from_span, "preset", None),
                format!(
                    "[{section}.{name}]: unknown preset `{p}` (presets: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            return false;
        };
        if let Some(pos) = chain.iter().position(|c| *c == p) {
            let mut path: Vec<&str> = chain[pos..].to_vec();
            path.push(&p);
            cx.err(
                cx.key_at(&from_span, "preset", None),
                format!(
                    "preset cycle: {} (used by [{section}.{name}] at {})",
                    path.join(" -> "),
                    cx.place(used_at)
                ),
            );
            return false;
        }
        chain.push(presets.get_key_value(&p).map(|(k, _)| k.as_str()).unwrap());
        next = found.table.get("preset").cloned();
        from_span = found.span.clone();
    }
    chain.reverse();

    // Merge: presets root first, then the entry.
    let layers: Vec<(Option<&str>, &Located)> = chain
        .iter()
        .map(|p| (Some(*p), &presets[*p]))
        .chain(std::iter::once((None, e)))
        .collect();
    let mut merged: BTreeMap<String, Set> = BTreeMap::new();
    let mut inner_by: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
    let mut params: BTreeMap<String, Value> = BTreeMap::new();
    for (by, layer) in &layers {
        for (k, v) in &layer.table {
            match k.as_str() {
                "preset" => continue,
                "with" => {
                    match v {
                        Value::Table(t) => params.extend(t.clone()),
                        _ => cx.err(
                            cx.key_at(&layer.span, "with", None),
                            "`with` must be a table of parameters (`with = { repo = \"api\" }`)",
                        ),
                    }
                    continue;
                }
                _ => {}
            }
            let by = by.map(str::to_string);
            match (merged.get_mut(k), v) {
                (Some(old), Value::Table(t)) if MERGED.contains(&k.as_str()) => {
                    if let Value::Table(ot) = &mut old.value {
                        for (ik, iv) in t {
                            ot.insert(ik.clone(), iv.clone());
                            inner_by.insert((k.clone(), ik.clone()), by.clone());
                        }
                    } else {
                        *old = Set {
                            value: v.clone(),
                            by: by.clone(),
                        };
                    }
                }
                _ => {
                    if let Value::Table(t) = v {
                        for ik in t.keys() {
                            inner_by.insert((k.clone(), ik.clone()), by.clone());
                        }
                    }
                    merged.insert(
                        k.clone(),
                        Set {
                            value: v.clone(),
                            by,
                        },
                    );
                }
            }
        }
    }

    // Parameters: `{{p}}` everywhere; an unused one is an error, and so is a missing one.
    // A parameter's default may name the entry (`with = { app = "{{name}}" }`).
    for v in params.values_mut() {
        if let Value::String(s) = v {
            *s = s.replace("{{name}}", name);
        }
    }
    params.insert("name".into(), Value::String(name.to_string()));
    let mut used = BTreeSet::new();
    let origin_of = |cx: &Ctx, key: &str, inner: Option<&str>, by: &Option<String>| match by {
        None => Origin::Entry(cx.key_at(&e.span, key, inner)),
        Some(p) => Origin::Preset {
            preset: p.clone(),
            at: cx.key_at(&presets[p].span, key, inner),
            entry: format!("[{section}.{name}]"),
            used_at,
        },
    };
    let report = |cx: &mut Ctx, o: &Origin, msg: String| match o {
        Origin::Preset {
            preset,
            at,
            entry,
            used_at,
        } => {
            let m = format!(
                "{msg} (in preset `{preset}`, used by {entry} at {})",
                cx.place(*used_at)
            );
            cx.err(*at, m)
        }
        Origin::Entry(at) => cx.err(*at, msg),
        Origin::None => cx.err(e.span.start, msg),
    };
    for (k, s) in merged.iter_mut() {
        let mut missing = Vec::new();
        s.value = substitute(true, &s.value, &params, &mut used, &mut missing);
        for m in missing {
            let o = origin_of(cx, k, None, &s.by);
            report(
                cx,
                &o,
                format!("[{section}.{name}]: parameter `{m}` is not given (add it to `with`)"),
            );
        }
    }
    if let Some(Value::Table(w)) = e.table.get("with") {
        for k in w.keys() {
            if !used.contains(k) {
                cx.err(
                    cx.key_at(&e.span, "with", None),
                    format!(
                        "[{section}.{name}]: parameter `{k}` is not used by preset `{}`",
                        chain.last().copied().unwrap_or("(none)")
                    ),
                );
            }
        }
    }

    // The entry as text, one key a line; tables as sub-tables so each key keeps its line.
    push(
        text,
        origins,
        &format!("\n[{section}.{}]\n", key(name)),
        Origin::Entry(e.span.start),
    );
    let mut subtables = Vec::new();
    for (k, s) in &merged {
        match &s.value {
            Value::Table(t) => subtables.push((k, t, &s.by)),
            v => push(
                text,
                origins,
                &format!("{} = {v}\n", key(k)),
                origin_of(cx, k, None, &s.by),
            ),
        }
    }
    for (k, t, by) in subtables {
        push(
            text,
            origins,
            &format!("[{section}.{}.{}]\n", key(name), key(k)),
            origin_of(cx, k, None, by),
        );
        for (ik, iv) in t {
            let by = inner_by
                .get(&(k.clone(), ik.clone()))
                .cloned()
                .unwrap_or(by.clone());
            push(
                text,
                origins,
                &format!("{} = {iv}\n", key(ik)),
                origin_of(cx, k, Some(ik), &by),
            );
        }
    }
    true
}

/// `{{p}}` replaced in every string; a key whose whole value is `{{p}}` takes the parameter's
/// own type (`critical = "{{critical}}"` with `critical = true`); elsewhere it is text.
fn substitute(
    top: bool,
    v: &Value,
    params: &BTreeMap<String, Value>,
    used: &mut BTreeSet<String>,
    missing: &mut Vec<String>,
) -> Value {
    match v {
        Value::String(s) => {
            if let Some(p) = s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
                if top && !p.contains("{{") {
                    let p = p.trim();
                    used.insert(p.to_string());
                    return match params.get(p) {
                        Some(v) => v.clone(),
                        None => {
                            missing.push(p.to_string());
                            v.clone()
                        }
                    };
                }
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("{{") {
                let Some(j) = rest[i..].find("}}") else { break };
                out.push_str(&rest[..i]);
                let p = rest[i + 2..i + j].trim();
                used.insert(p.to_string());
                match params.get(p) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(other) => out.push_str(&other.to_string()),
                    None => {
                        missing.push(p.to_string());
                        out.push_str(&rest[i..i + j + 2]);
                    }
                }
                rest = &rest[i + j + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute(false, x, params, used, missing))
                .collect(),
        ),
        Value::Table(t) => Value::Table(
            t.iter()
                .map(|(k, x)| (k.clone(), substitute(true, x, params, used, missing)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn push(text: &mut String, origins: &mut Vec<Origin>, piece: &str, o: Origin) {
    text.push_str(piece);
    origins.extend(std::iter::repeat_n(o, piece.matches('\n').count()));
}

/// A key as TOML writes it (quoted unless bare).
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        let mut s = String::new();
        let _ = write!(s, "{}", Value::String(k.to_string()));
        s
    }
}

fn find_key(src: &str, span: &Range<usize>, key: &str) -> Option<usize> {
    let mut off = span.start;
    for line in src[span.clone()].split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            let rest = rest.trim_start();
            if rest.starts_with('=') || rest.starts_with('.') {
                return Some(off + line.len() - t.len());
            }
        }
        if t.starts_with('[')
            && t.trim_end()
                .trim_end_matches(']')
                .ends_with(&format!(".{key}"))
        {
            return Some(off + line.len() - t.len());
        }
        off += line.len();
    }
    None
}

fn line_col(src: &str, off: usize) -> (usize, usize) {
    let before = &src[..off.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = off.min(src.len()) - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
    (line, col)
}

impl Expanded {
    /// Moves an error found in the expanded text back to the source it came from.
    pub fn relocate(&self, src: &str, mut e: ConfigError) -> ConfigError {
        if e.line == 0 || self.origins.is_empty() {
            return e;
        }
        let o = self
            .origins
            .get(e.line - 1)
            .cloned()
            .unwrap_or(Origin::None);
        let file = e.file.display().to_string();
        let (at, note) = match o {
            Origin::None => (0, None),
            Origin::Entry(at) => (at, None),
            Origin::Preset {
                preset,
                at,
                entry,
                used_at,
            } => {
                let (l, c) = line_col(src, used_at);
                (
                    at,
                    Some(format!(
                        " (in preset `{preset}`, used by {entry} at {file}:{l}:{c})"
                    )),
                )
            }
        };
        (e.line, e.col) = line_col(src, at);
        if let Some(n) = note {
            e.msg.push_str(&n);
        }
        e
    }
}
