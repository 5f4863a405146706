//! `[supervisor]`, `[vars]` and `[[template]]`: the table's global sections.

use super::errors::{join, Errors, Seg};
use super::os::resolve;
use super::raw::{lenient, RawSettings, RawSize, RawTemplate};
use super::{interp, Cx};
use crate::plan::{Settings, Template};
use std::collections::BTreeMap;
use toml::Spanned;

/// The `[supervisor]` table as written (a bad key reported and left out).
pub(super) fn raw(sup: Option<Spanned<toml::Value>>, errs: &mut Errors) -> RawSettings {
    let Some(s) = sup else {
        return RawSettings::default();
    };
    let at = [Seg::Key("supervisor".into())];
    lenient(s.into_inner(), &at, "supervisor", errs)
        .0
        .unwrap_or_default()
}

/// The interpolation variables: the `env_file`'s, the environment's (winning), then `[vars]`
/// for what neither sets.
pub(super) fn vars(
    raw: &BTreeMap<String, String>,
    file_vars: &BTreeMap<String, String>,
    environ: &BTreeMap<String, String>,
    errs: &mut Errors,
) -> BTreeMap<String, String> {
    let mut vars = file_vars.clone();
    vars.extend(environ.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in var_defaults(raw, &vars) {
        match v {
            Ok(v) => {
                vars.insert(k, v);
            }
            Err(e) => errs.at_key(&join(&[], &["vars", &k]), format!("[vars] {k}: {e}")),
        }
    }
    vars
}

/// The `[vars]` defaults, each interpolated in turn (a var may use the environment and other
/// vars); names the environment or env file sets (non-empty) are left to them.
fn var_defaults(
    raw: &BTreeMap<String, String>,
    outer: &BTreeMap<String, String>,
) -> BTreeMap<String, Result<String, String>> {
    fn value(
        n: &str,
        raw: &BTreeMap<String, String>,
        outer: &BTreeMap<String, String>,
        depth: usize,
    ) -> Option<String> {
        if let Some(v) = outer.get(n).filter(|v| !v.is_empty()) {
            return Some(v.clone());
        }
        let v = raw.get(n)?;
        if depth > 16 {
            return None;
        }
        interp::expand(v, &|m: &str| value(m, raw, outer, depth + 1)).ok()
    }
    raw.iter()
        // An empty variable counts as unset, as in `${X:-default}`.
        .filter(|(k, _)| outer.get(*k).is_none_or(|v| v.is_empty()))
        .map(|(k, v)| {
            let r = interp::expand(v, &|m: &str| value(m, raw, outer, 1));
            (k.clone(), r)
        })
        .collect()
}

/// `[supervisor]` with its defaults, interpolated.
pub(super) fn settings(r: &RawSettings, cx: &Cx, errs: &mut Errors) -> Settings {
    let mut x = |key: &str, s: &str| -> String {
        interp::expand(s, &|n| cx.vars.get(n).cloned()).unwrap_or_else(|e| {
            errs.at_key(&join(&[], &["supervisor", key]), e);
            s.to_string()
        })
    };
    let api_listen = x(
        "api_listen",
        r.api_listen.as_deref().unwrap_or(RawSettings::API_LISTEN),
    );
    let socket = x("socket", r.socket.as_deref().unwrap_or(RawSettings::SOCKET)).into();
    let cache_dir = x(
        "cache_dir",
        r.cache_dir.as_deref().unwrap_or(RawSettings::CACHE_DIR),
    );
    let log_dir = r
        .log_dir
        .as_deref()
        .map(|d| resolve(cx.base, &x("log_dir", d)));
    let here = join(&[], &["supervisor", "shutdown_timeout"]);
    let shutdown = super::duration(
        errs,
        &here,
        &r.shutdown_timeout,
        RawSettings::SHUTDOWN_TIMEOUT,
    );
    Settings {
        api_listen,
        socket,
        token_env: token_env(r).to_string(),
        cache_dir: resolve(cx.base, &cache_dir),
        shutdown_timeout: shutdown,
        log_lines: r.log_lines.unwrap_or(RawSettings::LOG_LINES).max(1),
        log_dir,
        log_max_size: log_max_size(r, errs),
        log_max_files: r.log_max_files.unwrap_or(RawSettings::LOG_MAX_FILES).max(1),
        watch_config: r.watch_config.unwrap_or(RawSettings::WATCH_CONFIG),
    }
}

pub(super) fn token_env(r: &RawSettings) -> &str {
    r.token_env.as_deref().unwrap_or(RawSettings::TOKEN_ENV)
}

fn log_max_size(r: &RawSettings, errs: &mut Errors) -> u64 {
    let here = join(&[], &["supervisor", "log_max_size"]);
    match &r.log_max_size {
        None => RawSettings::LOG_MAX_SIZE,
        Some(RawSize::Bytes(n)) if *n > 0 => *n,
        Some(RawSize::Bytes(_)) => {
            errs.at_key(&here, "log_max_size must be above 0");
            1
        }
        Some(RawSize::Text(t)) => crate::logfile::parse_size(t).unwrap_or_else(|e| {
            errs.at_key(&here, format!("log_max_size: {e}"));
            1
        }),
    }
}

/// Every `[[template]]` that reads, with its index in the table.
pub(super) fn templates(
    raw: Vec<Spanned<toml::Value>>,
    cx: &Cx,
    errs: &mut Errors,
) -> Vec<(usize, Template)> {
    let mut out = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let at = [Seg::Key("template".into()), Seg::Index(i)];
        let Some(r) = lenient::<RawTemplate>(t.into_inner(), &at, "[template]", errs).0 else {
            continue;
        };
        let mut x = |key: &str, s: &str| -> std::path::PathBuf {
            let v = interp::expand(s, &|n| cx.vars.get(n).cloned()).unwrap_or_else(|e| {
                errs.at_key(&join(&at, &[key]), e);
                s.to_string()
            });
            resolve(cx.base, &v)
        };
        let src = x("src", &r.src);
        let dest = x("dest", &r.dest);
        out.push((i, Template { src, dest }));
    }
    out
}
