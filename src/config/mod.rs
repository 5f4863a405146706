//! supervisor.toml → validated `Plan`, as a short pipeline of per-section stages. Every
//! problem is collected and reported at once, each at its key's own `file:line:col`.
//!
//! Stages: read the file (a syntax error stops here) → `[supervisor]`, the top-level
//! `env_file` and `[vars]` (the interpolation variables) → `[[template]]` → every entry read
//! leniently (`checks::declare`: a bad key is reported and left out, the entry still exists)
//! → each entry's sections (`entry`, `probe`, `watch`; no I/O) → the host (`os`: env files,
//! `when_exists`, working directories, users) → whole-table checks (`checks`: cycles,
//! executables, values). Defaults are constants on the `raw` types they belong to.
//!
//! Owns: nothing at run time. May not import the supervisor, the API or the caches.

mod checks;
mod entry;
mod errors;
#[cfg(test)]
mod fuzz;
mod os;
pub mod preset;
mod probe;
mod raw;
mod settings;
#[cfg(test)]
mod tests;
mod watch;

use crate::interp;
use crate::plan::*;
use errors::{Errors, Seg};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[cfg(test)]
use entry::parse_signal;
pub(crate) use errors::{key_offset, truncate_msg};
pub use errors::{ConfigError, ConfigErrors};

/// What every section reads: the table's directory, the interpolation variables and the
/// active profiles.
pub(super) struct Cx<'a> {
    pub base: &'a Path,
    pub vars: &'a BTreeMap<String, String>,
    pub profiles: Vec<String>,
}

/// Loads and validates a process table; `environ` is the interpolation environment
/// (normally the supervisor's own).
pub fn load(path: &Path, environ: &BTreeMap<String, String>) -> Result<Plan, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            msg: format!("cannot read: {e}"),
        }])
    })?;
    parse(path, &src, environ)
}

pub fn parse(
    path: &Path,
    src: &str,
    environ: &BTreeMap<String, String>,
) -> Result<Plan, ConfigErrors> {
    if !preset::uses_presets(src) {
        return parse_plain(path, src, environ);
    }
    // Preset errors and the expanded entries' own errors are reported together; when an
    // entry's chain is broken (so it is missing), only the preset errors are.
    let (x, mut list, complete) = preset::expand_all(path, src);
    let plain = parse_plain(path, &x.text, environ);
    match plain {
        Ok(plan) if list.is_empty() => return Ok(plan),
        Ok(_) => {}
        Err(ConfigErrors(more)) if complete => {
            for e in more.into_iter().map(|e| x.relocate(src, e)) {
                // A value left unexpanded by a missing parameter is reported once, as that.
                if !e.msg.contains("{{") {
                    list.push(e);
                }
            }
        }
        Err(_) => {}
    }
    list.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(list))
}

fn parse_plain(
    path: &Path,
    src: &str,
    environ: &BTreeMap<String, String>,
) -> Result<Plan, ConfigErrors> {
    let mut errs = Errors::new(path, src);
    let raw: raw::RawFile = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            errs.at(e.span().map_or(0, |s| s.start), e.message());
            return Err(ConfigErrors(errs.finish()));
        }
    };
    let base = os::base_dir(path);
    let sup = settings::raw(raw.supervisor, &mut errs);
    let file_vars = match &sup.env_file {
        Some(f) => os::env_file(f, sup.env_file_optional, &base, environ, &mut errs),
        None => BTreeMap::new(),
    };
    let vars = settings::vars(&raw.vars, &file_vars, environ, &mut errs);
    let cx = Cx {
        base: &base,
        vars: &vars,
        profiles: active_profiles(environ),
    };
    let settings = settings::settings(&sup, &cx, &mut errs);
    let templates = settings::templates(raw.template, &cx, &mut errs);
    let decls = checks::declare(raw.process, raw.step, &mut errs);
    let names = entry::Names::new(&decls);
    let drafts: Vec<_> = decls
        .iter()
        .map(|d| entry::resolve(d, &names, &cx, &mut errs))
        .collect();
    // The host: files, directories, accounts.
    os::templates(&templates, &mut errs);
    let host = os::BaseEnv {
        base: &base,
        file_vars: &file_vars,
        environ,
        token_env: settings::token_env(&sup),
    };
    let mut entries = Vec::new();
    for ((mut e, pending), d) in drafts.into_iter().zip(&decls) {
        os::settle(&mut e, pending, &d.at, &host, &mut errs);
        entries.push(e);
    }
    let levels = checks::levels(&entries, &decls, &mut errs);
    if !levels.is_empty() {
        checks::executables(&entries, &decls, &mut errs);
    }
    checks::values(&mut errs, &settings, &entries);
    checks::datetimes(&mut errs, src);
    if !errs.is_empty() {
        return Err(ConfigErrors(errs.finish()));
    }
    Ok(Plan {
        file: path.to_path_buf(),
        settings,
        templates: templates.into_iter().map(|(_, t)| t).collect(),
        vars,
        entries,
        levels,
    })
}

/// The active profiles: DMP_CONTAINED_PROFILES (comma-separated; `up --profile` sets it).
fn active_profiles(environ: &BTreeMap<String, String>) -> Vec<String> {
    environ
        .get("DMP_CONTAINED_PROFILES")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The duration at `at`, or `default` when absent; a bad one is an error there.
fn duration(errs: &mut Errors, at: &[Seg], v: &Option<String>, default: Duration) -> Duration {
    let Some(s) = v else { return default };
    humantime::parse_duration(s).unwrap_or_else(|e| {
        let key = match at.last() {
            Some(Seg::Key(k)) => k.as_str(),
            _ => "",
        };
        errs.at_key(
            at,
            format!("bad duration {s:?} for `{key}`: {e} (e.g. \"500ms\", \"10s\")"),
        );
        default
    })
}
