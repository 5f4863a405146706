//! Step keys: what a oneshot's key depends on (command, cwd, declared env, the contents of
//! its input files, `key_extra`, its oneshot dependencies' keys), and which steps a service's
//! chain snapshot covers.

use crate::plan::{Entry, Kind, Plan};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

/// Bumped when the key derivation changes (old records then simply miss).
const KEY_DOMAIN: &str = "dmp-contained/step-key/v1";

/// Everything a step key depends on, with file contents already reduced to hashes.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub command: Vec<String>,
    pub cwd: String,
    /// Declared environment (sorted by the caller or not: it is sorted here).
    pub env: Vec<(String, String)>,
    /// `(path relative to cwd, blake3 of the contents)`.
    pub inputs: Vec<(String, [u8; 32])>,
    pub key_extra: Vec<String>,
    /// `(dependency name, its key)`.
    pub deps: Vec<(String, String)>,
}

fn field(h: &mut blake3::Hasher, tag: &str, data: &[u8]) {
    // Length-prefixed framing: no two different specs can produce the same byte stream.
    h.update(&(tag.len() as u64).to_le_bytes());
    h.update(tag.as_bytes());
    h.update(&(data.len() as u64).to_le_bytes());
    h.update(data);
}

/// The step key: blake3 over a framed, order-normalised encoding of the spec (hex, 64 chars).
pub fn compute_key(spec: &KeySpec) -> String {
    let mut h = blake3::Hasher::new();
    field(&mut h, "domain", KEY_DOMAIN.as_bytes());
    field(&mut h, "argc", &(spec.command.len() as u64).to_le_bytes());
    for a in &spec.command {
        field(&mut h, "arg", a.as_bytes());
    }
    field(&mut h, "cwd", spec.cwd.as_bytes());
    let mut env = spec.env.clone();
    env.sort();
    for (k, v) in &env {
        field(&mut h, "env.k", k.as_bytes());
        field(&mut h, "env.v", v.as_bytes());
    }
    let mut inputs = spec.inputs.clone();
    inputs.sort();
    for (p, d) in &inputs {
        field(&mut h, "input.path", p.as_bytes());
        field(&mut h, "input.blake3", d);
    }
    for x in &spec.key_extra {
        field(&mut h, "extra", x.as_bytes());
    }
    let mut deps = spec.deps.clone();
    deps.sort();
    for (n, k) in &deps {
        field(&mut h, "dep.name", n.as_bytes());
        field(&mut h, "dep.key", k.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn hash_file(p: &Path) -> io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(p)?;
    let mut h = blake3::Hasher::new();
    io::copy(&mut f, &mut h)?;
    Ok(*h.finalize().as_bytes())
}

/// Expands input globs relative to `cwd` (`*` stays within a path component, `**` crosses;
/// a plain directory means everything below it) and hashes every matched file's contents.
/// Sorted by relative path; mtimes and other metadata play no part.
pub fn collect_inputs(cwd: &Path, globs: &[String]) -> io::Result<Vec<(String, [u8; 32])>> {
    let mut out: BTreeMap<String, [u8; 32]> = BTreeMap::new();
    for g in globs {
        let pat = g.trim_start_matches("./");
        let is_glob = pat.contains(['*', '?', '[', '{']);
        if !is_glob {
            let p = cwd.join(pat);
            let md = std::fs::metadata(&p)
                .map_err(|e| io::Error::new(e.kind(), format!("input {}: {e}", p.display())))?;
            if md.is_dir() {
                walk(cwd, &p, &mut |rel, full| {
                    out.insert(rel, hash_file(full)?);
                    Ok(())
                })?;
            } else {
                out.insert(pat.to_string(), hash_file(&p)?);
            }
            continue;
        }
        let matcher = globset::GlobBuilder::new(pat)
            .literal_separator(true)
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
            .compile_matcher();
        // Walk only below the literal prefix of the pattern.
        let mut base = PathBuf::new();
        for c in pat.split('/') {
            if c.contains(['*', '?', '[', '{']) {
                break;
            }
            base.push(c);
        }
        let root = cwd.join(&base);
        if !root.is_dir() {
            continue;
        }
        walk(cwd, &root, &mut |rel, full| {
            if matcher.is_match(&rel) {
                out.insert(rel, hash_file(full)?);
            }
            Ok(())
        })?;
    }
    Ok(out.into_iter().collect())
}

/// Calls `f(path relative to cwd, full path)` for every file below `dir`, sorted by name,
/// following symbolic links; hidden and git-ignored files count like any other.
fn walk(
    cwd: &Path,
    dir: &Path,
    f: &mut dyn FnMut(String, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let files = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .follow_links(true)
        .sort_by_file_name(|a, b| a.cmp(b))
        .build();
    for e in files {
        let e = e.map_err(|e| match e.io_error() {
            Some(io) => io::Error::new(io.kind(), e.to_string()),
            None => io::Error::other(e.to_string()),
        })?;
        if e.file_type().is_some_and(|t| t.is_file()) {
            let p = e.path();
            let rel = p
                .strip_prefix(cwd)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned();
            f(rel, p)?;
        }
    }
    Ok(())
}

/// Computes the key of oneshot `i` (and, memoised in `memo`, of its oneshot ancestors).
pub fn step_key(plan: &Plan, i: usize, memo: &mut HashMap<usize, String>) -> io::Result<String> {
    if let Some(k) = memo.get(&i) {
        return Ok(k.clone());
    }
    let e = &plan.entries[i];
    let mut deps = Vec::new();
    for d in &e.after {
        if plan.entries[d.idx].kind == Kind::Oneshot {
            deps.push((d.name.clone(), step_key(plan, d.idx, memo)?));
        }
    }
    let spec = spec_of(e, deps)?;
    let k = compute_key(&spec);
    memo.insert(i, k.clone());
    Ok(k)
}

fn spec_of(e: &Entry, deps: Vec<(String, String)>) -> io::Result<KeySpec> {
    let (inputs, key_extra) = match &e.cache {
        Some(c) => (collect_inputs(&e.cwd, &c.inputs)?, c.key_extra.clone()),
        None => (Vec::new(), Vec::new()),
    };
    Ok(KeySpec {
        command: e.command.clone(),
        cwd: e.cwd.to_string_lossy().into_owned(),
        env: e.declared_env.clone(),
        inputs,
        key_extra,
        deps,
    })
}

/// Oneshots whose effects live in `service`'s data and that the snapshot step `s` covers:
/// `s` and its oneshot ancestors that (transitively) wait for `service`.
pub fn chain(plan: &Plan, s: usize, service: usize) -> Vec<usize> {
    fn uses(plan: &Plan, i: usize, service: usize, memo: &mut HashMap<usize, bool>) -> bool {
        if let Some(&b) = memo.get(&i) {
            return b;
        }
        let b = plan.entries[i]
            .after
            .iter()
            .any(|d| d.idx == service || uses(plan, d.idx, service, memo));
        memo.insert(i, b);
        b
    }
    let mut memo = HashMap::new();
    let mut out = Vec::new();
    let mut stack = vec![s];
    while let Some(i) = stack.pop() {
        if out.contains(&i) || plan.entries[i].kind != Kind::Oneshot {
            continue;
        }
        if i == s || uses(plan, i, service, &mut memo) {
            out.push(i);
            stack.extend(plan.entries[i].after.iter().map(|d| d.idx));
        }
    }
    out.sort();
    out
}

/// Why a declared output does not count as produced: missing, an empty file, or a directory
/// with no file anywhere below it (e.g. `node_modules` of an npm run that died half-way).
pub fn output_problem(p: &Path) -> Option<String> {
    fn has_file(d: &Path) -> bool {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => has_file(&p),
                    Ok(_) => true,
                    Err(_) => false,
                }
            })
    }
    match std::fs::metadata(p) {
        Err(e) => Some(format!("declared output {} is missing ({e})", p.display())),
        Ok(m) if m.is_dir() && !has_file(p) => Some(format!(
            "declared output {} is empty (a directory with no file in it)",
            p.display()
        )),
        Ok(m) if m.is_file() && m.len() == 0 => {
            Some(format!("declared output {} is an empty file", p.display()))
        }
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KeySpec {
        KeySpec {
            command: vec!["/bin/sh".into(), "-c".into(), "psql -f seed.sql".into()],
            cwd: "/app".into(),
            env: vec![("PGDATABASE".into(), "dmp".into())],
            inputs: vec![(
                "seed.sql".into(),
                *blake3::hash(b"CREATE TABLE t();").as_bytes(),
            )],
            key_extra: vec!["v1".into()],
            deps: vec![("createdb".into(), "ab".repeat(32))],
        }
    }

    #[test]
    fn golden_key_is_stable() {
        // If this changes, every existing cache record misses: bump KEY_DOMAIN on purpose only.
        assert_eq!(
            compute_key(&spec()),
            "f60c58421105b2abe99f544eb61a3e91b43af10e8f63b5872be975bf1e91c25b"
        );
    }

    #[test]
    fn key_is_sensitive_to_every_part() {
        let base = compute_key(&spec());
        let mut variants: Vec<KeySpec> = Vec::new();
        let mut s = spec();
        s.command[2].push(' ');
        variants.push(s);
        let mut s = spec();
        s.cwd = "/app2".into();
        variants.push(s);
        let mut s = spec();
        s.env[0].1 = "other".into();
        variants.push(s);
        let mut s = spec();
        s.inputs[0].1 = *blake3::hash(b"CREATE TABLE u();").as_bytes();
        variants.push(s);
        let mut s = spec();
        s.inputs[0].0 = "seed2.sql".into();
        variants.push(s);
        let mut s = spec();
        s.key_extra.clear();
        variants.push(s);
        let mut s = spec();
        s.deps[0].1 = "cd".repeat(32);
        variants.push(s);
        // Framing: moving bytes between fields changes the key.
        let mut s = spec();
        s.command = vec!["/bin/sh-c".into(), "".into(), "psql -f seed.sql".into()];
        variants.push(s);
        let keys: std::collections::HashSet<String> = variants.iter().map(compute_key).collect();
        assert_eq!(keys.len(), variants.len());
        assert!(!keys.contains(&base));
    }

    #[test]
    fn key_ignores_declaration_order() {
        let mut a = spec();
        a.env.push(("A".into(), "1".into()));
        a.inputs.push(("a.sql".into(), [7; 32]));
        let mut b = a.clone();
        b.env.reverse();
        b.inputs.reverse();
        assert_eq!(compute_key(&a), compute_key(&b));
    }

    #[test]
    fn inputs_globs_contents_not_mtimes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sql/sub")).unwrap();
        std::fs::write(d.path().join("sql/a.sql"), "a").unwrap();
        std::fs::write(d.path().join("sql/sub/b.sql"), "b").unwrap();
        std::fs::write(d.path().join("sql/notes.txt"), "n").unwrap();
        std::fs::write(d.path().join("top.sql"), "t").unwrap();
        let globs = vec!["sql/*.sql".to_string(), "top.sql".to_string()];
        let got = collect_inputs(d.path(), &globs).unwrap();
        let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["sql/a.sql", "top.sql"]);
        let deep = collect_inputs(d.path(), &["sql/**/*.sql".to_string()]).unwrap();
        let names: Vec<&str> = deep.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["sql/a.sql", "sql/sub/b.sql"]);
        let dir = collect_inputs(d.path(), &["sql".to_string()]).unwrap();
        assert_eq!(dir.len(), 3);

        // Touching (same contents, new mtime) keeps the hashes; editing changes one.
        let f = std::fs::File::options()
            .write(true)
            .open(d.path().join("sql/a.sql"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        assert_eq!(collect_inputs(d.path(), &globs).unwrap(), got);
        std::fs::write(d.path().join("sql/a.sql"), "a2").unwrap();
        let edited = collect_inputs(d.path(), &globs).unwrap();
        assert_ne!(edited[0].1, got[0].1);
        assert_eq!(edited[1], got[1]);
        // A missing plain input is an error (the caller runs the step uncached).
        assert!(collect_inputs(d.path(), &["nope.sql".to_string()]).is_err());
    }

    #[test]
    fn directory_inputs_take_every_file_hidden_ignored_and_linked() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join(".git")).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        std::fs::write(d.path().join("elsewhere/o.txt"), "o").unwrap();
        std::fs::write(t.join(".gitignore"), "*.log\n").unwrap();
        std::fs::write(t.join(".git/HEAD"), "h").unwrap();
        std::fs::write(t.join("a.log"), "a").unwrap();
        std::fs::write(t.join("B.txt"), "b").unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), t.join("linked")).unwrap();
        let got = collect_inputs(d.path(), &["t".to_string()]).unwrap();
        let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "t/.git/HEAD",
                "t/.gitignore",
                "t/B.txt",
                "t/a.log",
                "t/linked/o.txt"
            ]
        );
        // A dangling link below an input directory is an error, like a missing input.
        std::os::unix::fs::symlink(d.path().join("nope"), t.join("dangling")).unwrap();
        assert!(collect_inputs(d.path(), &["t".to_string()]).is_err());
    }

    #[test]
    fn outputs_must_exist_and_hold_something() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        assert!(output_problem(&p.join("nope")).unwrap().contains("missing"));
        std::fs::write(p.join("empty"), "").unwrap();
        assert!(output_problem(&p.join("empty"))
            .unwrap()
            .contains("empty file"));
        std::fs::create_dir_all(p.join("nm/a/b")).unwrap();
        assert!(output_problem(&p.join("nm")).unwrap().contains("no file"));
        std::fs::write(p.join("nm/a/b/index.js"), "x").unwrap();
        assert_eq!(output_problem(&p.join("nm")), None);
        std::fs::write(p.join("full"), "x").unwrap();
        assert_eq!(output_problem(&p.join("full")), None);
    }
}
