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

mod entry;

use super::{ConfigError, ConfigErrors};
use entry::{expand_entry, push};
use serde::Deserialize;
use std::collections::BTreeMap;
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

impl Origin {
    /// Where an error about this line belongs (`none_at` for generated lines), and for a
    /// preset's value the note naming the preset and where it is used (`place` of an offset).
    fn located(&self, none_at: usize, place: impl Fn(usize) -> String) -> (usize, String) {
        match self {
            Origin::None => (none_at, String::new()),
            Origin::Entry(at) => (*at, String::new()),
            Origin::Preset {
                preset,
                at,
                entry,
                used_at,
            } => {
                let p = place(*used_at);
                (
                    *at,
                    format!(" (in preset `{preset}`, used by {entry} at {p})"),
                )
            }
        }
    }
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
            msg: super::truncate_msg(msg.into()),
        });
    }

    fn place(&self, off: usize) -> String {
        let (l, c) = line_col(self.src, off);
        format!("{}:{l}:{c}", self.file.display())
    }

    /// Offset of `key` (or of `inner` below it) in the table `t`; its header otherwise.
    fn key_at(&self, t: &Located, key: &str, inner: Option<&str>) -> usize {
        let [a, b] = &t.path;
        let find = |keys: &[&str]| super::key_offset(&self.doc, keys);
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
        let (at, note) = o.located(0, |u| {
            let (l, c) = line_col(src, u);
            format!("{file}:{l}:{c}")
        });
        (e.line, e.col) = line_col(src, at);
        e.msg.push_str(&note);
        e
    }
}
