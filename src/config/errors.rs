//! Config errors and the collector that places each at a key. A position comes from the TOML
//! parser's own spans (`toml_edit`), found by the key's path in the table, never by searching
//! the source text.

use std::fmt;
use std::path::{Path, PathBuf};
use toml_edit::{ImDocument, Item, Value};

#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, line, col) = (self.file.display(), self.line, self.col);
        write!(f, "{file}:{line}:{col}: {}", self.msg)
    }
}

#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "error: {e}")?;
        }
        write!(f, "{} error(s) in the process table", self.0.len())
    }
}

impl std::error::Error for ConfigErrors {}

/// One step of a key path: a table key, or an element of an array (of tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path from the top of the table: `["process", "a", "ready", "http"]`.
pub(super) type KeyPath = Vec<Seg>;

/// `path` extended by the keys `more`.
pub(super) fn join(path: &[Seg], more: &[&str]) -> KeyPath {
    let mut p = path.to_vec();
    p.extend(more.iter().map(|k| Seg::Key(k.to_string())));
    p
}

/// Collects errors against the parsed document so each is placed at its key.
pub(super) struct Errors<'a> {
    file: &'a Path,
    src: &'a str,
    doc: Option<ImDocument<&'a str>>,
    list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Errors {
            file,
            src,
            doc: ImDocument::parse(src).ok(),
            list: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// An error at a byte offset of the source.
    pub fn at(&mut self, offset: usize, msg: impl Into<String>) {
        let msg = truncate_msg(msg.into());
        let before = &self.src[..offset.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            msg,
        });
    }

    /// An error at the key `path` (or, when the table has no such key, at the deepest part of
    /// the path it has: a default's error lands on the entry's header).
    pub fn at_key(&mut self, path: &[Seg], msg: impl Into<String>) {
        let off = self.doc.as_ref().map_or(0, |d| offset(d.as_item(), path));
        self.at(off, msg);
    }

    /// Every error, sorted by line and column.
    pub fn finish(mut self) -> Vec<ConfigError> {
        self.list.sort_by_key(|e| (e.line, e.col));
        self.list
    }
}

/// A node of the document while walking a key path.
enum Node<'d> {
    Item(&'d Item),
    Value(&'d Value),
    Table(&'d toml_edit::Table),
}

/// Offset of the deepest key (or array element) of `path` that the document has.
fn offset(root: &Item, path: &[Seg]) -> usize {
    let mut node = Node::Item(root);
    let mut off = 0;
    for seg in path {
        let table: Option<&dyn toml_edit::TableLike> = match &node {
            Node::Item(i) => i.as_table_like(),
            Node::Value(v) => v.as_inline_table().map(|t| t as _),
            Node::Table(t) => Some(*t as _),
        };
        node = match seg {
            Seg::Key(k) => {
                let Some((key, item)) = table.and_then(|t| t.get_key_value(k)) else {
                    break;
                };
                off = key.span().map_or(off, |s| s.start);
                Node::Item(item)
            }
            Seg::Index(i) => match &node {
                Node::Item(Item::ArrayOfTables(a)) => match a.get(*i) {
                    Some(t) => {
                        off = t.span().map_or(off, |s| s.start);
                        Node::Table(t)
                    }
                    None => break,
                },
                Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                    match a.get(*i) {
                        Some(v) => {
                            off = v.span().map_or(off, |s| s.start);
                            Node::Value(v)
                        }
                        None => break,
                    }
                }
                _ => break,
            },
        };
        if let Node::Item(Item::Value(v)) = node {
            node = Node::Value(v);
        }
    }
    off
}

/// Messages quote values; a huge one (a 5 MB `user`) is cut to keep the message readable.
pub(crate) fn truncate_msg(msg: String) -> String {
    const MAX: usize = 400;
    if msg.len() <= MAX {
        return msg;
    }
    let mut cut = MAX;
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} more bytes)", &msg[..cut], msg.len() - cut)
}

/// First backticked word of a serde message (`unknown field `comand``).
pub(super) fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

/// The name in `names` nearest to `name` (at most two edits away), for "did you mean".
pub(super) fn closest<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (strsim::levenshtein(name, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

/// Offset of the key at `keys` in `doc`, when the document has it (presets place their
/// errors with it).
pub(crate) fn key_offset(doc: &ImDocument<&str>, keys: &[&str]) -> Option<usize> {
    let mut item = doc.as_item();
    let mut off = None;
    for k in keys {
        let (key, next) = item.as_table_like()?.get_key_value(k)?;
        off = key.span().map(|s| s.start);
        item = next;
    }
    off
}
