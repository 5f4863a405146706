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

/// A table with its place in the source: its key path (`["preset", "flask-app"]`) and the
/// offset of its header.
struct Located {
    table: Table,
    path: [String; 2],
    start: usize,
}

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
    /// The source as the TOML parser sees it, for the positions of keys.
    doc: toml_edit::ImDocument<&'a str>,
    errs: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, off: usize, msg: impl Into<String>) {
        let (line, col) = line_col(self.src, off);
        self.errs.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            msg: crate::config::truncate_msg(msg.into()),
        });
    }

    fn place(&self, off: usize) -> String {
        let (l, c) = line_col(self.src, off);
        format!("{}:{l}:{c}", self.file.display())
    }

    /// Offset of `key` (or of `inner` below it) in the table `t`; its header otherwise.
    fn key_at(&self, t: &Located, key: &str, inner: Option<&str>) -> usize {
        let [a, b] = &t.path;
        let find = |keys: &[&str]| crate::config::key_offset(&self.doc, keys);
        inner
            .and_then(|i| find(&[a, b, key, i]))
            .or_else(|| find(&[a, b, key]))
            .unwrap_or(t.start)
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
    let parsed = (
        toml::from_str::<Doc>(src),
        toml_edit::ImDocument::parse(src),
    );
    let (doc, mut cx) = match parsed {
        (Ok(d), Ok(doc)) => (
            d,
            Ctx {
                file,
                src,
                doc,
                errs: Vec::new(),
            },
        ),
        // Left to config::parse, which places syntax errors already.
        _ => {
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
            let start = v.span().start;
            match v.into_inner() {
                Value::Table(table) => {
                    let path = [section.to_string(), name.clone()];
                    out.insert(name, Located { table, path, start });
                }
                _ => cx.err(start, format!("[{section}.{name}] must be a table")),
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

/// The entry being expanded and where its values came from.
struct At<'a> {
    presets: &'a BTreeMap<String, Located>,
    section: &'a str,
    name: &'a str,
    e: &'a Located,
    /// The entry's `preset =` key.
    used_at: usize,
}

impl At<'_> {
    /// Where `key` (`inner` below it) of the merged entry was written: the entry, or the
    /// preset `by` that gave it.
    fn origin(&self, cx: &Ctx, key: &str, inner: Option<&str>, by: &Option<String>) -> Origin {
        match by {
            None => Origin::Entry(cx.key_at(self.e, key, inner)),
            Some(p) => Origin::Preset {
                preset: p.clone(),
                at: cx.key_at(&self.presets[p], key, inner),
                entry: format!("[{}.{}]", self.section, self.name),
                used_at: self.used_at,
            },
        }
    }

    fn report(&self, cx: &mut Ctx, o: &Origin, msg: String) {
        match o {
            Origin::Preset {
                preset,
                at,
                entry,
                used_at,
            } => {
                let place = cx.place(*used_at);
                cx.err(
                    *at,
                    format!("{msg} (in preset `{preset}`, used by {entry} at {place})"),
                )
            }
            Origin::Entry(at) => cx.err(*at, msg),
            Origin::None => cx.err(self.e.start, msg),
        }
    }
}

/// The merged entry: every key with who set it, who set each key of a merged table, and the
/// parameters (`with`) from the root of the chain to the entry.
#[derive(Default)]
struct Merged {
    keys: BTreeMap<String, Set>,
    inner_by: BTreeMap<(String, String), Option<String>>,
    params: BTreeMap<String, Value>,
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
    let at = At {
        presets,
        section,
        name,
        e,
        used_at: cx.key_at(e, "preset", None),
    };
    let Some(chain) = chain(cx, &at) else {
        return false;
    };
    let mut m = merge(cx, &at, &chain);
    parameters(cx, &at, &mut m, chain.last().copied());
    write(cx, &at, &m, text, origins);
    true
}

/// The entry's preset chain, root first; `None` (reported) when it is broken.
fn chain<'p>(cx: &mut Ctx, at: &At<'p>) -> Option<Vec<&'p str>> {
    let (section, name, presets) = (at.section, at.name, at.presets);
    let mut chain: Vec<&str> = Vec::new();
    let mut next = at.e.table.get("preset").cloned();
    let mut from = at.e;
    while let Some(p) = next.take() {
        let here = cx.key_at(from, "preset", None);
        let Value::String(p) = p else {
            cx.err(here, "`preset` must be a preset's name");
            return None;
        };
        let Some((key, found)) = presets.get_key_value(&p) else {
            let known: Vec<&str> = presets.keys().map(String::as_str).collect();
            let known = match known.is_empty() {
                true => "none".to_string(),
                false => known.join(", "),
            };
            let msg = format!("[{section}.{name}]: unknown preset `{p}` (presets: {known})");
            cx.err(here, msg);
            return None;
        };
        if let Some(pos) = chain.iter().position(|c| *c == p) {
            let mut path: Vec<&str> = chain[pos..].to_vec();
            path.push(&p);
            let msg = format!(
                "preset cycle: {} (used by [{section}.{name}] at {})",
                path.join(" -> "),
                cx.place(at.used_at)
            );
            cx.err(here, msg);
            return None;
        }
        chain.push(key.as_str());
        next = found.table.get("preset").cloned();
        from = found;
    }
    chain.reverse();
    Some(chain)
}

/// Presets root first, then the entry: scalars and arrays replace, `MERGED` tables merge key
/// by key, `with` parameters accumulate.
fn merge(cx: &mut Ctx, at: &At, chain: &[&str]) -> Merged {
    let layers = chain
        .iter()
        .map(|p| (Some(*p), &at.presets[*p]))
        .chain(std::iter::once((None, at.e)));
    let mut m = Merged::default();
    for (by, layer) in layers {
        for (k, v) in &layer.table {
            match (k.as_str(), v) {
                ("preset", _) => continue,
                ("with", Value::Table(t)) => {
                    m.params.extend(t.clone());
                    continue;
                }
                ("with", _) => {
                    let msg = "`with` must be a table of parameters (`with = { repo = \"api\" }`)";
                    cx.err(cx.key_at(layer, "with", None), msg);
                    continue;
                }
                _ => {}
            }
            let by = by.map(str::to_string);
            if let (Some(old), Value::Table(t)) = (m.keys.get_mut(k), v) {
                if let (true, Value::Table(ot)) = (MERGED.contains(&k.as_str()), &mut old.value) {
                    for (ik, iv) in t {
                        ot.insert(ik.clone(), iv.clone());
                        m.inner_by.insert((k.clone(), ik.clone()), by.clone());
                    }
                    continue;
                }
            }
            if let Value::Table(t) = v {
                for ik in t.keys() {
                    m.inner_by.insert((k.clone(), ik.clone()), by.clone());
                }
            }
            let value = v.clone();
            m.keys.insert(k.clone(), Set { value, by });
        }
    }
    m
}

/// Parameters: `{{p}}` everywhere; an unused one is an error, and so is a missing one.
/// A parameter's default may name the entry (`with = { app = "{{name}}" }`).
fn parameters(cx: &mut Ctx, at: &At, m: &mut Merged, last: Option<&str>) {
    let (section, name) = (at.section, at.name);
    for v in m.params.values_mut() {
        if let Value::String(s) = v {
            *s = s.replace("{{name}}", name);
        }
    }
    m.params
        .insert("name".into(), Value::String(name.to_string()));
    let mut used = BTreeSet::new();
    for (k, s) in m.keys.iter_mut() {
        let mut missing = Vec::new();
        s.value = substitute(true, &s.value, &m.params, &mut used, &mut missing);
        for p in missing {
            let o = at.origin(cx, k, None, &s.by);
            let msg =
                format!("[{section}.{name}]: parameter `{p}` is not given (add it to `with`)");
            at.report(cx, &o, msg);
        }
    }
    if let Some(Value::Table(w)) = at.e.table.get("with") {
        for k in w.keys().filter(|k| !used.contains(*k)) {
            let msg = format!(
                "[{section}.{name}]: parameter `{k}` is not used by preset `{}`",
                last.unwrap_or("(none)")
            );
            cx.err(cx.key_at(at.e, "with", None), msg);
        }
    }
}

/// The entry as text, one key a line; tables as sub-tables so each key keeps its line.
fn write(cx: &Ctx, at: &At, m: &Merged, text: &mut String, origins: &mut Vec<Origin>) {
    let (section, name) = (at.section, key(at.name));
    let header = format!("\n[{section}.{name}]\n");
    push(text, origins, &header, Origin::Entry(at.e.start));
    let mut subtables = Vec::new();
    for (k, s) in &m.keys {
        match &s.value {
            Value::Table(t) => subtables.push((k, t, &s.by)),
            v => {
                let o = at.origin(cx, k, None, &s.by);
                push(text, origins, &format!("{} = {v}\n", key(k)), o);
            }
        }
    }
    for (k, t, by) in subtables {
        let o = at.origin(cx, k, None, by);
        push(
            text,
            origins,
            &format!("[{section}.{name}.{}]\n", key(k)),
            o,
        );
        for (ik, iv) in t {
            let by = m.inner_by.get(&(k.clone(), ik.clone())).unwrap_or(by);
            let o = at.origin(cx, k, Some(ik), by);
            push(text, origins, &format!("{} = {iv}\n", key(ik)), o);
        }
    }
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
