//! Oneshot cache: step keys, cache records and data snapshots (see docs/CACHE.md).
//!
//! Everything here is plain blocking file work, called from spawned tasks (never from the
//! control loop) and from the `cache` / `snapshot` CLI, which works on the cache dir directly.
//!
//! Layout of `cache_dir`:
//! ```text
//! steps/<step>/<key>.json              record: the step succeeded with this key
//! snapshots/<service>/<key>/data/      copy of the service's data_dir after the chain <key>
//! snapshots/<service>/<key>/meta.json
//! named/<NAME>/<service>/data/         named snapshots (`snapshot save NAME`)
//! <data_dir>/.dmp-contained-chain.json  which chain key that data dir holds (inside it)
//! ```

use crate::plan::{Entry, Kind, Plan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
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

fn walk(
    cwd: &Path,
    dir: &Path,
    f: &mut dyn FnMut(String, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let p = e.path();
        let md = std::fs::metadata(&p)?;
        if md.is_dir() {
            walk(cwd, &p, f)?;
        } else if md.is_file() {
            let rel = p
                .strip_prefix(cwd)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            f(rel, &p)?;
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

// ---------------------------------------------------------------------------------------
// Records

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub step: String,
    pub key: String,
    pub at_ms: u64,
    #[serde(default)]
    pub duration_s: f64,
}

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn record_path(dir: &Path, step: &str, key: &str) -> PathBuf {
    dir.join("steps")
        .join(safe(step))
        .join(format!("{key}.json"))
}

/// A hit only for a readable record of this step and key: a corrupt one (garbage, truncated,
/// empty, another schema) is a miss with a warning, so the step runs and rewrites it.
pub fn has_record(dir: &Path, step: &str, key: &str) -> bool {
    match read_record(&record_path(dir, step, key)) {
        Ok(Some(r)) if r.step == step && r.key == key => true,
        Ok(Some(r)) => {
            tracing::warn!(
                "cache record for `{step}` names step `{}` key `{}`; treating it as a miss",
                r.step,
                r.key
            );
            false
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!("{e}; treating it as a miss (the step runs and rewrites it)");
            false
        }
    }
}

/// Reads a record file: `Ok(None)` when there is none, `Err` when it is unreadable.
pub fn read_record(path: &Path) -> Result<Option<Record>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cache record {}: {e}", path.display())),
    };
    serde_json::from_slice::<Record>(&bytes)
        .map(Some)
        .map_err(|e| format!("corrupt cache record {}: {e}", path.display()))
}

/// Record files that cannot be read as records, with the reason (for `cache ls`).
pub fn list_corrupt(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<_> = record_files(dir)
        .filter_map(|f| read_record(&f).err().map(|e| (f, e)))
        .collect();
    out.sort();
    out
}

/// Every record file below `<dir>/steps/<step>/` (dot files, the atomic writes in flight, left out).
fn record_files(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir.join("steps"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
        .map(|f| f.path())
}

/// Writes `bytes` to `path` atomically and durably: temp file in the same dir, fsync,
/// rename, fsync of the directory. A crash leaves the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::logs::now_ms()
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub fn write_record(dir: &Path, r: &Record) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(r).map_err(io::Error::other)?;
    write_atomic(&record_path(dir, &r.step, &r.key), &bytes)
}

pub fn list_records(dir: &Path) -> Vec<Record> {
    let mut out: Vec<Record> = record_files(dir)
        .filter_map(|f| std::fs::read(f).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| (&a.step, a.at_ms).cmp(&(&b.step, b.at_ms)));
    out
}

/// Removes the records of `step` (all when None) and, for all, every chain snapshot.
/// Returns how many records were removed.
pub fn clear(dir: &Path, step: Option<&str>) -> io::Result<usize> {
    let n = list_records(dir)
        .iter()
        .filter(|r| step.is_none_or(|s| s == r.step))
        .count();
    match step {
        Some(s) => remove_all(&dir.join("steps").join(safe(s)))?,
        None => {
            remove_all(&dir.join("steps"))?;
            remove_all(&dir.join("snapshots"))?;
        }
    }
    Ok(n)
}

fn remove_all(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

// ---------------------------------------------------------------------------------------
// Snapshots

pub fn snapshot_dir(dir: &Path, service: &str, key: &str) -> PathBuf {
    dir.join("snapshots").join(safe(service)).join(key)
}

pub fn named_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("named").join(safe(name))
}

/// The chain marker, kept INSIDE the data dir: whether a data dir holds a chain is decided
/// from the data dir itself, so a new container (or a wiped data dir) with the same cache
/// never takes an empty or foreign data dir for a seeded one.
pub const CHAIN_MARKER: &str = ".dmp-contained-chain.json";

fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CHAIN_MARKER)
}

#[derive(Debug, Serialize, Deserialize)]
struct Live {
    service: String,
    key: String,
}

/// Does `data_dir` hold exactly the data of `service`'s chain `key` (restored or snapshotted
/// from it, not touched by a step since)? Read from the marker inside `data_dir`.
pub fn live_matches(service: &str, key: &str, data_dir: &Path) -> bool {
    let Ok(b) = std::fs::read(marker_path(data_dir)) else {
        return false;
    };
    let Ok(l) = serde_json::from_slice::<Live>(&b) else {
        return false;
    };
    l.key == key && l.service == service
}

/// Marks `data_dir` as holding chain `key` (owned like the data dir, so e.g. Postgres' own
/// user can still manage everything in its directory).
pub fn set_live(service: &str, key: &str, data_dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let l = Live {
        service: service.into(),
        key: key.into(),
    };
    let p = marker_path(data_dir);
    write_atomic(&p, &serde_json::to_vec(&l).map_err(io::Error::other)?)?;
    if let Ok(md) = std::fs::metadata(data_dir) {
        let _ = std::os::unix::fs::chown(&p, Some(md.uid()), Some(md.gid()));
    }
    Ok(())
}

/// The data dir is about to diverge from any chain snapshot: drop its marker.
pub fn clear_live(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(marker_path(data_dir)) {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(())
        }
        r => r,
    }
}

/// `cp -a` (owners, modes, times, hard links kept; reflinks where the filesystem can).
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(src)
        .arg(dst)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "cp -a {} {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn syncfs(p: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from)
}

/// Copies `data_dir` to `<dest>/data` atomically: into a temp dir next to `dest`, flushed,
/// then renamed. An interrupted save leaves no `dest`. Returns the size in bytes.
pub fn save_tree(data_dir: &Path, dest: &Path, meta: &serde_json::Value) -> io::Result<u64> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::logs::now_ms()
    ));
    let r = (|| {
        std::fs::create_dir_all(&tmp)?;
        copy_tree(data_dir, &tmp.join("data"))?;
        std::fs::write(
            tmp.join("meta.json"),
            serde_json::to_vec_pretty(meta).map_err(io::Error::other)?,
        )?;
        syncfs(&tmp)?;
        remove_all(dest)?;
        std::fs::rename(&tmp, dest)?;
        sync_dir(parent)?;
        Ok(du(&dest.join("data")))
    })();
    if r.is_err() {
        let _ = remove_all(&tmp);
    }
    r
}

/// Replaces `data_dir` with `<src>/data`: copied next to it first, then swapped by rename.
pub fn restore_tree(src: &Path, data_dir: &Path) -> io::Result<()> {
    let data = src.join("data");
    if !data.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no snapshot data at {}", data.display()),
        ));
    }
    let parent = data_dir.parent().unwrap_or(Path::new("."));
    let base = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let tmp = parent.join(format!(".{base}.restore-tmp"));
    let old = parent.join(format!(".{base}.old"));
    remove_all(&tmp)?;
    remove_all(&old)?;
    copy_tree(&data, &tmp)?;
    syncfs(&tmp)?;
    if data_dir.exists() {
        std::fs::rename(data_dir, &old)?;
    }
    std::fs::rename(&tmp, data_dir)?;
    sync_dir(parent)?;
    remove_all(&old)
}

/// Apparent size of a tree in bytes.
pub fn du(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| du(&e.path()))
        .sum()
}

/// `(name, services, bytes)` of the named snapshots.
pub fn list_named(dir: &Path) -> Vec<(String, Vec<String>, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("named"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') {
            continue;
        }
        let mut svcs: Vec<String> = std::fs::read_dir(e.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|s| s.file_name().to_string_lossy().into_owned())
            .collect();
        svcs.sort();
        out.push((n, svcs, du(&e.path())));
    }
    out.sort();
    out
}

pub fn remove_named(dir: &Path, name: &str) -> io::Result<bool> {
    let p = named_dir(dir, name);
    if !p.exists() {
        return Ok(false);
    }
    remove_all(&p).map(|_| true)
}

/// `(service, key, bytes)` of the chain snapshots.
pub fn list_chain_snapshots(dir: &Path) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for s in std::fs::read_dir(dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for k in std::fs::read_dir(s.path()).into_iter().flatten().flatten() {
            let key = k.file_name().to_string_lossy().into_owned();
            if k.path().is_dir() && !key.starts_with('.') {
                out.push((
                    s.file_name().to_string_lossy().into_owned(),
                    key,
                    du(&k.path()),
                ));
            }
        }
    }
    out.sort();
    out
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

    #[test]
    fn records_atomic_and_clearable() {
        let d = tempfile::tempdir().unwrap();
        let r = Record {
            step: "seed".into(),
            key: "k1".into(),
            at_ms: 1,
            duration_s: 0.5,
        };
        write_record(d.path(), &r).unwrap();
        assert!(has_record(d.path(), "seed", "k1"));
        assert!(!has_record(d.path(), "seed", "k2"));
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(d.path().join("steps/seed"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(list_records(d.path()).len(), 1);
        assert_eq!(clear(d.path(), Some("other")).unwrap(), 0);
        assert_eq!(clear(d.path(), Some("seed")).unwrap(), 1);
        assert!(list_records(d.path()).is_empty());
        // An unwritable cache dir is an error, not a panic.
        assert!(write_record(Path::new("/proc/nope"), &r).is_err());
    }

    #[test]
    fn corrupt_records_are_misses_and_listed() {
        let d = tempfile::tempdir().unwrap();
        let good = Record {
            step: "seed".into(),
            key: "k1".into(),
            at_ms: 1,
            duration_s: 0.5,
        };
        let full = serde_json::to_vec(&good).unwrap();
        let other = serde_json::to_vec(&Record {
            key: "other".into(),
            ..good.clone()
        })
        .unwrap();
        let cases: [&[u8]; 5] = [
            b"\x00\xffgarbage",
            &full[..full.len() / 2],
            b"",
            br#"{"version": 2, "entries": []}"#,
            &other,
        ];
        for bytes in cases {
            let p = record_path(d.path(), "seed", "k1");
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            assert!(!has_record(d.path(), "seed", "k1"), "{bytes:?}");
        }
        // The last case is a readable record under the wrong name: not listed as corrupt.
        std::fs::write(record_path(d.path(), "seed", "k1"), b"{").unwrap();
        let bad = list_corrupt(d.path());
        assert_eq!(bad.len(), 1);
        assert!(bad[0].1.starts_with("corrupt cache record"), "{}", bad[0].1);
        write_record(d.path(), &good).unwrap();
        assert!(has_record(d.path(), "seed", "k1"));
        assert!(list_corrupt(d.path()).is_empty());
    }

    #[test]
    fn save_and_restore_tree_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("pg/data");
        std::fs::create_dir_all(data.join("base")).unwrap();
        std::fs::write(data.join("base/1"), "one").unwrap();
        let snap = d.path().join("cache/snapshots/pg/k");
        let n = save_tree(&data, &snap, &serde_json::json!({})).unwrap();
        assert_eq!(n, 3);
        std::fs::write(data.join("base/1"), "changed").unwrap();
        std::fs::write(data.join("extra"), "x").unwrap();
        restore_tree(&snap, &data).unwrap();
        assert_eq!(std::fs::read_to_string(data.join("base/1")).unwrap(), "one");
        assert!(!data.join("extra").exists());
        assert!(!d.path().join("pg/.data.old").exists());
        set_live("pg", "k", &data).unwrap();
        assert!(live_matches("pg", "k", &data));
        assert!(!live_matches("pg", "k2", &data));
        assert!(!live_matches("other", "k", &data));
        // The marker lives in the data dir: a replaced data dir (new container, wiped
        // PGDATA) does not match, whatever the cache holds.
        let fresh = d.path().join("pg/fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::write(fresh.join("PG_VERSION"), "15").unwrap();
        assert!(!live_matches("pg", "k", &fresh));
        clear_live(&data).unwrap();
        assert!(!live_matches("pg", "k", &data));
        clear_live(&data).unwrap();
    }
}
