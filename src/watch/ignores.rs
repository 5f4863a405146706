//! Ignore rules of one watched root: the defaults, the entry's `ignore` globs and the root's
//! `.gitignore`. Owns [`Ignores`] (pure matching, plus reading directories to list what a new
//! tree holds). It may not touch the watcher, the control loop or status.

use globset::{Glob, GlobSet, GlobSetBuilder};
use std::path::{Path, PathBuf};

/// Ignored everywhere, in addition to the entry's `ignore` and the root's `.gitignore`.
pub const DEFAULT_IGNORES: &[&str] = &[
    ".git",
    "__pycache__",
    "*.pyc",
    "*.swp",
    "*~",
    ".#*",
    "node_modules",
    "venv",
    ".venv",
    ".pytest_cache",
    ".mypy_cache",
    ".tox",
    "*.log",
];

/// Decides which changed paths matter for one watched root.
pub struct Ignores {
    pub(super) root: PathBuf,
    globs: GlobSet,
    gitignore: Option<ignore::gitignore::Gitignore>,
}

impl Ignores {
    /// Defaults + `extra` globs + the root's `.gitignore` (if any).
    pub fn new(root: &Path, extra: &[String]) -> Ignores {
        let mut b = GlobSetBuilder::new();
        for g in DEFAULT_IGNORES
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            // Validated at load time; a bad glob here is skipped rather than fatal.
            if let Ok(g) = Glob::new(g) {
                b.add(g);
            }
            // `dir/**` ignores the directory itself too (its creation is no change).
            if let Some(Ok(g)) = g.strip_suffix("/**").map(Glob::new) {
                b.add(g);
            }
        }
        let globs = b.build().unwrap_or_else(|_| GlobSet::empty());
        let gi = root.join(".gitignore");
        let gitignore = gi.is_file().then(|| {
            let (g, err) = ignore::gitignore::Gitignore::new(&gi);
            if let Some(e) = err {
                tracing::warn!("{}: {e}", gi.display());
            }
            g
        });
        Ignores {
            root: root.to_path_buf(),
            globs,
            gitignore,
        }
    }

    /// The path relative to the root, or None when it is ignored. A glob matches the relative
    /// path or any single component of it (`*.pyc`, `node_modules`, `build/**`).
    pub fn relevant(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        if self.globs.is_match(rel) || rel.components().any(|c| self.globs.is_match(c.as_os_str()))
        {
            return None;
        }
        if let Some(g) = &self.gitignore {
            if path.starts_with(&self.root)
                && g.matched_path_or_any_parents(path, path.is_dir())
                    .is_ignore()
            {
                return None;
            }
        }
        let s = rel.to_string_lossy().into_owned();
        Some(if s.is_empty() { ".".into() } else { s })
    }

    /// Adds the relevant files under `dir` to `out` (at most `limit`), skipping ignored subtrees.
    pub(super) fn walk(&self, dir: &Path, out: &mut Vec<String>, limit: usize) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if out.len() >= limit {
                return;
            }
            let p = e.path();
            if let Some(rel) = self.relevant(&p) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.walk(&p, out, limit);
                } else {
                    out.push(rel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".gitignore"), "build/\n*.tmp\n").unwrap();
        std::fs::create_dir(dir.path().join("build")).unwrap();
        let ig = Ignores::new(dir.path(), &["*.log".to_string(), "data/**".to_string()]);
        let r = |p: &str| ig.relevant(&dir.path().join(p));
        assert_eq!(r("app.py").as_deref(), Some("app.py"));
        assert_eq!(r("pkg/views.py").as_deref(), Some("pkg/views.py"));
        for ignored in [
            "app.pyc",
            "pkg/__pycache__/views.cpython-311.pyc",
            "__pycache__",
            ".git/index",
            ".git",
            "web/node_modules/x/index.js",
            ".app.py.swp",
            "app.py~",
            ".#app.py",
            "server.log",
            "data/x/y.csv",
            "build/out.js",
            "x.tmp",
        ] {
            assert_eq!(r(ignored), None, "{ignored} should be ignored");
        }
    }
}
