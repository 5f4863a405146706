//! One entry's expansion: its preset chain, the merge from the root of the chain to the
//! entry, `{{parameters}}`, and the entry written back as text that remembers, per line, where
//! each value came from.

use super::{Ctx, Located, Origin, MERGED};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use toml::Value;

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
        let (at, note) = o.located(self.e.start, |u| cx.place(u));
        cx.err(at, msg + &note);
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

pub(super) fn expand_entry(
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

pub(super) fn push(text: &mut String, origins: &mut Vec<Origin>, piece: &str, o: Origin) {
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
