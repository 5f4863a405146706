//! The stage that looks at the machine: env files, `when_exists`, working directories, users
//! and groups, template sources, executables. It runs on entries the pure sections already
//! built, and fills in what depends on the host.

use super::entry::EntryCx;
use super::errors::{join, Errors, KeyPath, Seg};
use super::interp;
use super::raw::RawEntry;
use crate::plan::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an entry leaves to this stage, already interpolated.
pub(super) struct Pending {
    when_exists: Option<(PathBuf, Option<String>)>,
    /// (path, may be missing)
    env_files: Vec<(PathBuf, bool)>,
    env: Vec<(String, String)>,
    user: Option<String>,
    group: Option<String>,
}

/// The entry's host-dependent keys, interpolated (no I/O).
pub(super) fn pending(r: &RawEntry, e: &mut EntryCx) -> Pending {
    let base = e.cx.base;
    let when_exists = r.when_exists.as_ref().map(|p| {
        let p = resolve(base, &e.expand(&["when_exists"], p));
        (p, r.skip_hint.clone())
    });
    let env_files = r
        .env_file
        .paths()
        .iter()
        .map(|f| {
            let (f, may_miss) = f
                .strip_suffix('?')
                .map_or((f.as_str(), false), |f| (f, true));
            (resolve(base, &e.expand(&["env_file"], f)), may_miss)
        })
        .collect();
    let env = r
        .env
        .iter()
        .map(|(k, v)| (k.clone(), e.expand(&["env", k], v)))
        .collect();
    if r.user.is_none() && r.group.is_some() {
        let msg = format!("{}: `group` needs `user`", e.ctx);
        e.err(&["group"], msg);
    }
    let user = r.user.as_ref().map(|u| e.expand(&["user"], u));
    let group = r.group.clone().filter(|_| user.is_some());
    Pending {
        when_exists,
        env_files,
        env,
        user,
        group,
    }
}

/// The environment every entry starts from.
pub(super) struct BaseEnv<'a> {
    pub base: &'a Path,
    /// The top-level `env_file`'s variables.
    pub file_vars: &'a BTreeMap<String, String>,
    pub environ: &'a BTreeMap<String, String>,
    pub token_env: &'a str,
}

/// Fills in the entry's skip, working directory (and the paths relative to it), environment
/// and user.
pub(super) fn settle(e: &mut Entry, p: Pending, at: &KeyPath, b: &BaseEnv, errs: &mut Errors) {
    let ctx = format!("`{}`", e.name);
    e.skip = p.when_exists.and_then(|(path, hint)| {
        (!path.exists()).then(|| match hint {
            Some(h) => format!("{} does not exist: {}", path.display(), h),
            None => format!("{} does not exist", path.display()),
        })
    });
    if !e.cwd.is_dir() {
        if e.skip.is_some() {
            e.cwd = b.base.to_path_buf();
        } else {
            let msg = format!("{ctx}: cwd {} is not a directory", e.cwd.display());
            errs.at_key(&join(at, &["cwd"]), msg);
        }
    }
    anchor(e);
    // Environment: inherited, global env_file, entry env_file, entry env.
    let mut declared = b.file_vars.clone();
    for (path, may_miss) in &p.env_files {
        let here = join(at, &["env_file"]);
        match std::fs::read_to_string(path) {
            Ok(t) => match interp::parse_env_file(&t) {
                Ok(m) => declared.extend(m),
                Err(err) => errs.at_key(&here, format!("{}: {err}", path.display())),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && *may_miss => {}
            Err(err) if e.skip.is_none() => {
                errs.at_key(&here, format!("{}: {err}", path.display()))
            }
            Err(_) => {}
        }
    }
    declared.extend(p.env);
    let mut env = b.environ.clone();
    env.remove(crate::process::ROLE_ENV);
    // The control token is the supervisor's alone: services never see it.
    env.remove(b.token_env);
    env.remove("DMP_CONTAINED_TOKEN_FILE");
    env.extend(declared.clone());
    if let Some(u) = p.user {
        e.user = user(
            &u,
            p.group.as_deref(),
            e.skip.is_some(),
            &mut env,
            &ctx,
            at,
            errs,
        );
    }
    e.env = env.into_iter().collect();
    e.declared_env = declared.into_iter().collect();
}

/// Watch paths, cache outputs and `data_dir` are relative to the working directory.
fn anchor(e: &mut Entry) {
    let cwd = e.cwd.clone();
    let at = |p: &PathBuf| resolve(&cwd, &p.to_string_lossy());
    if let Some(w) = &mut e.watch {
        w.paths = match w.paths.is_empty() {
            true => vec![cwd.clone()],
            false => w.paths.iter().map(at).collect(),
        };
    }
    if let Some(c) = &mut e.cache {
        c.outputs = c.outputs.iter().map(at).collect();
    }
    e.data_dir = e.data_dir.as_ref().map(at);
}

/// The account `u` (and `group`), setting HOME, USER and LOGNAME in `env`.
fn user(
    u: &str,
    group: Option<&str>,
    skipped: bool,
    env: &mut BTreeMap<String, String>,
    ctx: &str,
    at: &KeyPath,
    errs: &mut Errors,
) -> Option<User> {
    let Ok(Some(pw)) = lookup_user(u) else {
        // A skipped entry (its software is not installed) may name a user that does not
        // exist here either.
        if !skipped {
            errs.at_key(&join(at, &["user"]), format!("{ctx}: unknown user `{u}`"));
        }
        return None;
    };
    let mut gid = pw.gid.as_raw();
    if let Some(g) = group {
        match lookup_group(g) {
            Ok(Some(gr)) => gid = gr.gid.as_raw(),
            _ => errs.at_key(&join(at, &["group"]), format!("{ctx}: unknown group `{g}`")),
        }
    }
    env.insert("HOME".into(), pw.dir.display().to_string());
    env.insert("USER".into(), u.to_string());
    env.insert("LOGNAME".into(), u.to_string());
    Some(User {
        name: u.to_string(),
        uid: pw.uid.as_raw(),
        gid,
        home: pw.dir,
    })
}

/// The top-level `env_file`'s variables (its path interpolated from the environment alone).
pub(super) fn env_file(
    f: &str,
    optional: bool,
    base: &Path,
    environ: &BTreeMap<String, String>,
    errs: &mut Errors,
) -> BTreeMap<String, String> {
    let here = [Seg::Key("supervisor".into()), Seg::Key("env_file".into())];
    let f = interp::expand(f, &|n| environ.get(n).cloned()).unwrap_or_else(|e| {
        errs.at_key(&here, e);
        f.to_string()
    });
    let p = resolve(base, &f);
    match std::fs::read_to_string(&p) {
        Ok(t) => interp::parse_env_file(&t).unwrap_or_else(|e| {
            errs.at_key(&here, format!("{}: {e}", p.display()));
            BTreeMap::new()
        }),
        Err(_) if optional => BTreeMap::new(),
        Err(e) => {
            errs.at_key(&here, format!("{}: {e}", p.display()));
            BTreeMap::new()
        }
    }
}

/// Every template's source exists.
pub(super) fn templates(templates: &[(usize, Template)], errs: &mut Errors) {
    for (i, t) in templates {
        if !t.src.exists() {
            let here = [
                Seg::Key("template".into()),
                Seg::Index(*i),
                Seg::Key("src".into()),
            ];
            errs.at_key(
                &here,
                format!("template {} does not exist", t.src.display()),
            );
        }
    }
}

/// The directory relative paths in the table start from (canonical when it exists).
pub(super) fn base_dir(table: &Path) -> PathBuf {
    let base = match table.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&base).unwrap_or(base)
}

/// Longest user or group name looked up (LOGIN_NAME_MAX): libc's lookup of a huge name
/// would grow its buffer until the allocation aborts the process.
const MAX_ACCOUNT_NAME: usize = 256;

fn lookup_user(name: &str) -> nix::Result<Option<nix::unistd::User>> {
    if name.len() > MAX_ACCOUNT_NAME {
        return Ok(None);
    }
    nix::unistd::User::from_name(name)
}

fn lookup_group(name: &str) -> nix::Result<Option<nix::unistd::Group>> {
    if name.len() > MAX_ACCOUNT_NAME {
        return Ok(None);
    }
    nix::unistd::Group::from_name(name)
}

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
