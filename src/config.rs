//! supervisor.toml → validated `Plan`. Every problem is collected and reported at once,
//! each with `file:line:col`.

use crate::interp;
use crate::plan::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.msg
        )
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    supervisor: Option<Spanned<toml::Value>>,
    #[serde(default)]
    template: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    process: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    step: BTreeMap<String, Spanned<toml::Value>>,
    /// Defaults for `${…}` (the environment and env files win).
    #[serde(default)]
    vars: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    env_file: Option<String>,
    #[serde(default)]
    env_file_optional: bool,
    api_listen: Option<String>,
    socket: Option<String>,
    token_env: Option<String>,
    cache_dir: Option<String>,
    shutdown_timeout: Option<String>,
    log_lines: Option<usize>,
    log_dir: Option<String>,
    log_max_size: Option<RawSize>,
    log_max_files: Option<usize>,
    watch_config: Option<bool>,
}

/// `log_max_size`: bytes, or a string with a unit (`"10M"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    src: String,
    dest: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Shell(String),
    Argv(Vec<String>),
}

/// A port: a number, or a string interpolated like every other value (`"${PG_PORT:-5432}"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    /// Range-checked after parsing, so an out-of-range number gets a message of its own
    /// (an untagged `u16` would only say "did not match any variant").
    Number(i64),
    Text(String),
}

/// An entry's `env_file`: one path, or a list where later files win; a path ending in `?`
/// may be missing.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum RawEnvFiles {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl RawEnvFiles {
    fn paths(&self) -> &[String] {
        match self {
            RawEnvFiles::None => &[],
            RawEnvFiles::One(p) => std::slice::from_ref(p),
            RawEnvFiles::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    command: RawCommand,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    env_file: RawEnvFiles,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    listen: Vec<String>,
    stop_signal: Option<String>,
    stop_timeout: Option<String>,
    #[serde(default)]
    critical: bool,
    #[serde(default)]
    optional: bool,
    when_exists: Option<String>,
    skip_hint: Option<String>,
    #[serde(default)]
    restart_with: Vec<String>,
    ready: Option<RawProbe>,
    liveness: Option<RawProbe>,
    restart: Option<RawRestart>,
    watch: Option<RawWatch>,
    cache: Option<RawCache>,
    schedule: Option<String>,
    data_dir: Option<String>,
    /// Steps: killed and failed after this long.
    timeout: Option<String>,
    /// Steps: a "still running" note this often ("0s": never).
    progress: Option<String>,
    /// Off unless one of these profiles is active (`--profile`, DMP_CONTAINED_PROFILES).
    #[serde(default)]
    profiles: Vec<String>,
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

/// `listen` of a longrun (interpolated): socket addresses ("127.0.0.1:5002", "[::1]:5002").
fn listen_addrs(
    errs: &mut Errors,
    span: &std::ops::Range<usize>,
    ctx: &str,
    kind: Kind,
    listen: &[String],
) -> Vec<std::net::SocketAddr> {
    if kind == Kind::Oneshot && !listen.is_empty() {
        errs.key(
            span,
            "listen",
            format!("{ctx}: `listen` applies to [process] entries only"),
        );
        return Vec::new();
    }
    let mut out: Vec<std::net::SocketAddr> = Vec::new();
    for a in listen {
        match a.parse() {
            Ok(addr) if out.contains(&addr) => {
                errs.key(span, "listen", format!("{ctx}: `listen` names {a} twice"))
            }
            Ok(addr) => out.push(addr),
            Err(_) => errs.key(
                span,
                "listen",
                format!("{ctx}: `listen` entry {a:?} is not an IP address and port (e.g. \"127.0.0.1:5002\")"),
            ),
        }
    }
    out
}

/// `timeout` and `progress` of a step (both apply to [step] entries only).
fn step_timing(
    errs: &mut Errors,
    span: &std::ops::Range<usize>,
    ctx: &str,
    kind: Kind,
    r: &RawEntry,
    (timeout, progress): (Duration, Duration),
) -> (Option<Duration>, Option<Duration>) {
    if kind == Kind::Longrun {
        for (k, v) in [("timeout", &r.timeout), ("progress", &r.progress)] {
            if v.is_some() {
                errs.key(
                    span,
                    k,
                    format!("{ctx}: `{k}` applies to [step] entries only"),
                );
            }
        }
        return (None, None);
    }
    let some = |d: Duration| Some(d).filter(|d| !d.is_zero());
    (some(timeout), some(progress))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    tcp: Option<String>,
    http: Option<String>,
    status: Option<u16>,
    body: Option<String>,
    exec: Option<Vec<String>>,
    postgres: Option<String>,
    redis: Option<String>,
    log: Option<String>,
    notify: Option<bool>,
    watchdog: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    policy: Option<String>,
    backoff: Option<String>,
    backoff_max: Option<String>,
    max_restarts: Option<u32>,
    window: Option<String>,
    stable_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    ignore: Vec<String>,
    debounce: Option<String>,
    mode: Option<String>,
    poll_interval: Option<String>,
    action: Option<String>,
    signal: Option<String>,
    exec: Option<Vec<String>>,
    step: Option<String>,
    #[serde(default)]
    on: Vec<RawWatchRule>,
}

/// `action` and its argument (`signal`, `exec` or `step`) of a watch table or rule.
struct RawWatchAction<'a> {
    action: &'a Option<String>,
    signal: &'a Option<String>,
    exec: &'a Option<Vec<String>>,
    step: &'a Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatchRule {
    files: Vec<String>,
    action: Option<String>,
    signal: Option<String>,
    exec: Option<Vec<String>>,
    step: Option<String>,
}

/// A watch action from its raw form; every mistake is an error naming the fix.
fn watch_action(
    errs: &mut Errors,
    span: &std::ops::Range<usize>,
    ctx: &str,
    a: RawWatchAction,
    step_index: &dyn Fn(&str) -> Option<(usize, bool)>,
) -> WatchAction {
    let name = a.action.as_deref().unwrap_or("restart");
    let unused = |errs: &mut Errors, key: &str, present: bool| {
        if present {
            errs.key(span, key, format!("{ctx}: watch `{key}` only applies to action = \"{key}\" (the action is \"{name}\")"));
        }
    };
    let wants = [
        ("signal", a.signal.is_some()),
        ("exec", a.exec.is_some()),
        ("step", a.step.is_some()),
    ];
    let act = match name {
        "restart" => WatchAction::Restart,
        "none" => WatchAction::None,
        "signal" => match a.signal.as_deref().map(|s| (s, parse_signal(s))) {
            Some((_, Some(sig))) => WatchAction::Signal(sig),
            Some((s, None)) => {
                errs.key(
                    span,
                    "signal",
                    format!("{ctx}: unknown signal `{s}` in watch"),
                );
                WatchAction::None
            }
            None => {
                errs.key(span, "action", format!("{ctx}: watch action \"signal\" needs `signal = \"SIGHUP\"` (or another signal)"));
                WatchAction::None
            }
        },
        "exec" => match &a.exec {
            Some(c) if !c.is_empty() && !c[0].is_empty() => WatchAction::Exec(c.clone()),
            _ => {
                errs.key(
                    span,
                    "action",
                    format!("{ctx}: watch action \"exec\" needs `exec = [\"command\", \"arg\"]`"),
                );
                WatchAction::None
            }
        },
        "run" => match a.step.as_deref().map(|s| (s, step_index(s))) {
            Some((s, Some((i, true)))) => WatchAction::Run(i, s.to_string()),
            Some((s, Some((_, false)))) => {
                errs.key(
                    span,
                    "step",
                    format!("{ctx}: watch `step = \"{s}\"` is a [process]; `run` re-runs a [step]"),
                );
                WatchAction::None
            }
            Some((s, None)) => {
                errs.key(
                    span,
                    "step",
                    format!("{ctx}: watch `step = \"{s}\"`: no such step"),
                );
                WatchAction::None
            }
            None => {
                errs.key(
                    span,
                    "action",
                    format!("{ctx}: watch action \"run\" needs `step = \"name\"`"),
                );
                WatchAction::None
            }
        },
        other => {
            errs.key(
                span,
                "action",
                format!("{ctx}: unknown watch action `{other}` (restart, signal, exec, run, none)"),
            );
            WatchAction::None
        }
    };
    for (key, present) in wants {
        if key != name && !(key == "step" && name == "run") {
            unused(errs, key, present);
        }
    }
    act
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    key_extra: Vec<String>,
    snapshot: Option<String>,
}

/// Collects errors against the source text so each can be placed at a line.
struct Errors<'a> {
    file: &'a Path,
    src: &'a str,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&mut self, offset: usize, msg: impl Into<String>) {
        let msg = truncate_msg(msg.into());
        let before = &self.src[..offset.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = offset - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            msg,
        });
    }

    /// Places an error at `key = …` inside the entry's span (or at the entry header).
    fn key(&mut self, span: &std::ops::Range<usize>, key: &str, msg: impl Into<String>) {
        let text = &self.src[span.clone()];
        let mut off = 0;
        let mut found = None;
        for line in text.split_inclusive('\n') {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix(key) {
                let rest = rest.trim_start();
                if rest.starts_with('=') || rest.starts_with('.') || rest.starts_with(']') {
                    found = Some(off + line.len() - t.len());
                    break;
                }
            }
            if let Some(rest) = t.strip_prefix('[') {
                // `[process.x.ready]` sub-table headers
                if rest
                    .trim_end()
                    .trim_end_matches(']')
                    .ends_with(&format!(".{key}"))
                {
                    found = Some(off + line.len() - t.len());
                    break;
                }
            }
            off += line.len();
        }
        self.at(span.start + found.unwrap_or(0), msg);
    }
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
    if !crate::preset::uses_presets(src) {
        return parse_plain(path, src, environ);
    }
    // Preset errors and the expanded entries' own errors are reported together; when an
    // entry's chain is broken (so it is missing), only the preset errors are.
    let (x, mut list, complete) = crate::preset::expand_all(path, src);
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

fn parse_plain(
    path: &Path,
    src: &str,
    environ: &BTreeMap<String, String>,
) -> Result<Plan, ConfigErrors> {
    let mut errs = Errors {
        file: path,
        src,
        list: Vec::new(),
    };
    let raw: RawFile = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let off = e.span().map(|s| s.start).unwrap_or(0);
            let msg = e.message().to_string();
            errs.at(off, msg);
            return Err(ConfigErrors(errs.list));
        }
    };
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let base = std::fs::canonicalize(&base).unwrap_or(base);

    // [supervisor]
    let (settings_raw, sup_span) = match raw.supervisor {
        Some(s) => {
            let span = s.span();
            match serde_path_to_error::deserialize::<_, RawSettings>(s.into_inner()) {
                Ok(r) => (r, span),
                Err(e) => {
                    let msg = e.inner().message().to_string();
                    match key_offset(src, "supervisor", e.path()) {
                        Some(off) => errs.at(off, format!("[supervisor]: {msg}")),
                        None => {
                            let k = backticked(&msg).unwrap_or_default();
                            errs.key(&span, &k, format!("[supervisor]: {msg}"))
                        }
                    }
                    (RawSettings::default(), span)
                }
            }
        }
        None => (RawSettings::default(), 0..0),
    };

    // Interpolation environment: the process environment wins over the env_file.
    let mut vars = BTreeMap::new();
    if let Some(f) = &settings_raw.env_file {
        // Interpolated from the process environment only (the file cannot name itself).
        let f = match interp::expand(f, &|n: &str| environ.get(n).cloned()) {
            Ok(v) => v,
            Err(e) => {
                errs.key(&sup_span, "env_file", e);
                f.clone()
            }
        };
        let p = resolve(&base, &f);
        match std::fs::read_to_string(&p) {
            Ok(t) => match interp::parse_env_file(&t) {
                Ok(m) => vars.extend(m),
                Err(e) => errs.key(&sup_span, "env_file", format!("{}: {e}", p.display())),
            },
            Err(_) if settings_raw.env_file_optional => {}
            Err(e) => errs.key(&sup_span, "env_file", format!("{}: {e}", p.display())),
        }
    }
    let file_vars = vars.clone();
    vars.extend(environ.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in var_defaults(&raw.vars, &vars) {
        match v {
            Ok(v) => {
                vars.insert(k, v);
            }
            Err(e) => {
                let off = src.find(&format!("\n{k} =")).map_or(0, |o| o + 1);
                errs.at(off, format!("[vars] {k}: {e}"));
            }
        }
    }
    let lookup = |n: &str| vars.get(n).cloned();

    let x = |errs: &mut Errors, span: &std::ops::Range<usize>, key: &str, s: &str| -> String {
        match interp::expand(s, &lookup) {
            Ok(v) => v,
            Err(e) => {
                errs.key(span, key, e);
                s.to_string()
            }
        }
    };

    let dur = |errs: &mut Errors,
               span: &std::ops::Range<usize>,
               key: &str,
               v: &Option<String>,
               d: Duration|
     -> Duration {
        match v {
            None => d,
            Some(s) => match humantime::parse_duration(s) {
                Ok(v) => v,
                Err(e) => {
                    errs.key(
                        span,
                        key,
                        format!("bad duration {s:?} for `{key}`: {e} (e.g. \"500ms\", \"10s\")"),
                    );
                    d
                }
            },
        }
    };

    let token_env = settings_raw
        .token_env
        .clone()
        .unwrap_or_else(|| "DMP_CONTAINED_TOKEN".into());
    let settings = Settings {
        api_listen: x(
            &mut errs,
            &sup_span,
            "api_listen",
            settings_raw
                .api_listen
                .as_deref()
                .unwrap_or("127.0.0.1:8089"),
        ),
        socket: PathBuf::from(x(
            &mut errs,
            &sup_span,
            "socket",
            settings_raw
                .socket
                .as_deref()
                .unwrap_or("/run/dmp-contained.sock"),
        )),
        token_env: token_env.clone(),
        cache_dir: resolve(
            &base,
            &x(
                &mut errs,
                &sup_span,
                "cache_dir",
                settings_raw
                    .cache_dir
                    .as_deref()
                    .unwrap_or("/var/cache/dmp-contained"),
            ),
        ),
        shutdown_timeout: dur(
            &mut errs,
            &sup_span,
            "shutdown_timeout",
            &settings_raw.shutdown_timeout,
            Duration::from_secs(9),
        ),
        log_lines: settings_raw.log_lines.unwrap_or(1000).max(1),
        log_dir: settings_raw
            .log_dir
            .as_deref()
            .map(|d| resolve(&base, &x(&mut errs, &sup_span, "log_dir", d))),
        log_max_size: match &settings_raw.log_max_size {
            None => 10 << 20,
            Some(RawSize::Bytes(n)) if *n > 0 => *n,
            Some(RawSize::Bytes(_)) => {
                errs.key(&sup_span, "log_max_size", "log_max_size must be above 0");
                1
            }
            Some(RawSize::Text(t)) => crate::logfile::parse_size(t).unwrap_or_else(|e| {
                errs.key(&sup_span, "log_max_size", format!("log_max_size: {e}"));
                1
            }),
        },
        log_max_files: settings_raw.log_max_files.unwrap_or(5).max(1),
        watch_config: settings_raw.watch_config.unwrap_or(false),
    };

    let mut templates = Vec::new();
    for t in raw.template {
        let span = t.span();
        match RawTemplate::deserialize(t.into_inner()) {
            Ok(r) => {
                let src_path = resolve(&base, &x(&mut errs, &span, "src", &r.src));
                if !src_path.exists() {
                    errs.key(
                        &span,
                        "src",
                        format!("template {} does not exist", src_path.display()),
                    );
                }
                let dest = resolve(&base, &x(&mut errs, &span, "dest", &r.dest));
                templates.push(Template {
                    src: src_path,
                    dest,
                });
            }
            Err(e) => errs.at(span.start, format!("[[template]]: {e}")),
        }
    }

    // Entries: first deserialize every one, so names are known for dependencies.
    let mut raws: Vec<(String, Kind, std::ops::Range<usize>, RawEntry)> = Vec::new();
    let mut seen: BTreeMap<String, Kind> = BTreeMap::new();
    for (kind, table) in [(Kind::Longrun, raw.process), (Kind::Oneshot, raw.step)] {
        for (name, v) in table {
            let span = v.span();
            let section = match kind {
                Kind::Longrun => "process",
                Kind::Oneshot => "step",
            };
            if !valid_name(&name) {
                errs.at(
                    span.start,
                    format!("[{section}.{name}]: names may use only letters, digits, `-` and `_`"),
                );
            }
            if seen.insert(name.clone(), kind).is_some() {
                errs.at(
                    span.start,
                    format!("`{name}` is defined both as [process.{name}] and [step.{name}]"),
                );
                continue;
            }
            let span = extent(src, span, &format!("{section}.{name}"));
            match serde_path_to_error::deserialize::<_, RawEntry>(v.into_inner()) {
                Ok(r) => raws.push((name, kind, span, r)),
                Err(e) => {
                    let msg = e.inner().message().to_string();
                    let at = key_offset(src, &format!("{section}.{name}"), e.path());
                    match at {
                        Some(off) => errs.at(off, format!("[{section}.{name}]: {msg}")),
                        None => {
                            let k = backticked(&msg).unwrap_or_default();
                            errs.key(&span, &k, format!("[{section}.{name}]: {msg}"))
                        }
                    }
                }
            }
        }
    }
    let names: Vec<&str> = raws.iter().map(|r| r.0.as_str()).collect();
    let index = |n: &str| names.iter().position(|m| *m == n);
    let step_index = |n: &str| index(n).map(|i| (i, raws[i].1 == Kind::Oneshot));

    let active = active_profiles(environ);
    let mut entries = Vec::new();
    for (name, kind, span, r) in &raws {
        let span = span.clone();
        let ctx = format!("`{name}`");
        let mut cwd = match &r.cwd {
            Some(c) => resolve(&base, &x(&mut errs, &span, "cwd", c)),
            None => base.clone(),
        };
        let skip = match &r.when_exists {
            Some(p) => {
                let p = resolve(&base, &x(&mut errs, &span, "when_exists", p));
                (!p.exists()).then(|| match &r.skip_hint {
                    Some(h) => format!("{} does not exist: {}", p.display(), h),
                    None => format!("{} does not exist", p.display()),
                })
            }
            None => None,
        };
        if skip.is_none() && !cwd.is_dir() {
            errs.key(
                &span,
                "cwd",
                format!("{ctx}: cwd {} is not a directory", cwd.display()),
            );
        }
        if skip.is_some() && !cwd.is_dir() {
            cwd = base.clone();
        }

        // Environment: inherited, global env_file, entry env_file, entry env.
        let mut declared: BTreeMap<String, String> = file_vars.clone();
        for f in r.env_file.paths() {
            let (f, may_miss) = match f.strip_suffix('?') {
                Some(f) => (f, true),
                None => (f.as_str(), false),
            };
            let p = resolve(&base, &x(&mut errs, &span, "env_file", f));
            match std::fs::read_to_string(&p) {
                Ok(t) => match interp::parse_env_file(&t) {
                    Ok(m) => declared.extend(m),
                    Err(e) => errs.key(&span, "env_file", format!("{}: {e}", p.display())),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_miss => {}
                Err(e) if skip.is_none() => {
                    errs.key(&span, "env_file", format!("{}: {e}", p.display()))
                }
                Err(_) => {}
            }
        }
        for (k, v) in &r.env {
            let v = x(&mut errs, &span, k, v);
            declared.insert(k.clone(), v);
        }
        let mut env: BTreeMap<String, String> = environ.clone();
        env.remove("DMP_CONTAINED_ROLE");
        // The control token is the supervisor's alone: services never see it.
        env.remove(&token_env);
        env.remove("DMP_CONTAINED_TOKEN_FILE");
        env.extend(declared.clone());

        let user = match &r.user {
            None => {
                if r.group.is_some() {
                    errs.key(&span, "group", format!("{ctx}: `group` needs `user`"));
                }
                None
            }
            Some(u) => {
                let u = x(&mut errs, &span, "user", u);
                match lookup_user(&u) {
                    Ok(Some(pw)) => {
                        let mut gid = pw.gid.as_raw();
                        if let Some(g) = &r.group {
                            match lookup_group(g) {
                                Ok(Some(gr)) => gid = gr.gid.as_raw(),
                                _ => {
                                    errs.key(&span, "group", format!("{ctx}: unknown group `{g}`"))
                                }
                            }
                        }
                        env.insert("HOME".into(), pw.dir.display().to_string());
                        env.insert("USER".into(), u.clone());
                        env.insert("LOGNAME".into(), u.clone());
                        Some(User {
                            name: u,
                            uid: pw.uid.as_raw(),
                            gid,
                            home: pw.dir,
                        })
                    }
                    // A skipped entry (its software is not installed) may name a user that
                    // does not exist here either.
                    _ if skip.is_some() => None,
                    _ => {
                        errs.key(&span, "user", format!("{ctx}: unknown user `{u}`"));
                        None
                    }
                }
            }
        };

        let command: Vec<String> = match &r.command {
            RawCommand::Shell(s) => vec![
                "/bin/sh".into(),
                "-c".into(),
                x(&mut errs, &span, "command", s),
            ],
            RawCommand::Argv(v) => v
                .iter()
                .map(|a| x(&mut errs, &span, "command", a))
                .collect(),
        };
        if command.is_empty() || command[0].is_empty() {
            errs.key(&span, "command", format!("{ctx}: `command` is empty"));
        }

        let mut after = Vec::new();
        for a in &r.after {
            let (a, optional) = match a.strip_suffix('?') {
                Some(a) => (a, true),
                None => (a.as_str(), false),
            };
            let (dn, cond) = match a.rsplit_once(':') {
                Some((n, c)) => (n, Some(c)),
                None => (a, None),
            };
            let Some(di) = index(dn) else {
                if optional {
                    // An optional dependency that is not in the table is no edge.
                    continue;
                }
                let hint = closest(dn, &names)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                errs.key(
                    &span,
                    "after",
                    format!("{ctx}: unknown dependency `{dn}`{hint}"),
                );
                continue;
            };
            let dkind = raws[di].1;
            let cond = match (cond, dkind) {
                (None, Kind::Longrun) | (Some("ready"), Kind::Longrun) => Cond::Ready,
                (Some("started"), Kind::Longrun) => Cond::Started,
                (None, Kind::Oneshot) | (Some("done"), Kind::Oneshot) => Cond::Done,
                (Some(c), _) => {
                    let ok = match dkind {
                        Kind::Longrun => "`ready` or `started` (it is a longrun)",
                        Kind::Oneshot => "`done` (it is a oneshot)",
                    };
                    errs.key(
                        &span,
                        "after",
                        format!(
                            "{ctx}: bad condition `{a}`: `{dn}` can be awaited as {ok}, not `{c}`"
                        ),
                    );
                    continue;
                }
            };
            after.push(Dep {
                idx: di,
                name: dn.to_string(),
                cond,
                optional,
            });
        }

        let mut ports = Vec::new();
        for p in &r.ports {
            match p {
                RawPort::Number(n) => match u16::try_from(*n) {
                    Ok(n) => ports.push(n),
                    Err(_) => errs.key(
                        &span,
                        "ports",
                        format!("{ctx}: invalid value {n} for a port: not a port number (0-65535)"),
                    ),
                },
                RawPort::Text(t) => {
                    let v = x(&mut errs, &span, "ports", t);
                    match v.trim().parse::<u16>() {
                        Ok(n) => ports.push(n),
                        Err(_) => errs.key(
                            &span,
                            "ports",
                            format!("{ctx}: port {t:?} is {v:?}, not a port number (0-65535)"),
                        ),
                    }
                }
            }
        }

        let stop_signal = match &r.stop_signal {
            None => nix::sys::signal::Signal::SIGTERM,
            Some(s) => {
                match parse_signal(s) {
                    Some(sig) => sig,
                    None => {
                        errs.key(
                        &span,
                        "stop_signal",
                        format!("{ctx}: unknown signal `{s}` (e.g. \"SIGTERM\", \"INT\", \"SIGQUIT\")"),
                    );
                        nix::sys::signal::Signal::SIGTERM
                    }
                }
            }
        };
        let stop_timeout = dur(
            &mut errs,
            &span,
            "stop_timeout",
            &r.stop_timeout,
            Duration::from_secs(5),
        );

        let probe = |errs: &mut Errors, key: &str, p: &Option<RawProbe>| -> Option<Probe> {
            let p = p.as_ref()?;
            let mut kinds = Vec::new();
            if let Some(t) = &p.tcp {
                kinds.push(ProbeKind::Tcp(x(errs, &span, "tcp", t)));
            }
            if let Some(u) = &p.http {
                let url = x(errs, &span, "http", u);
                if !url.starts_with("http://") {
                    errs.key(
                        &span,
                        "http",
                        format!("{ctx}: {key}.http must be an http:// URL, got {url:?}"),
                    );
                }
                kinds.push(ProbeKind::Http {
                    url,
                    status: p.status,
                    body: p.body.clone(),
                });
            }
            if let Some(c) = &p.exec {
                if c.is_empty() || c[0].is_empty() {
                    errs.key(
                        &span,
                        key,
                        format!("{ctx}: {key}.exec is empty (give the command and its arguments, e.g. [\"pg_isready\"])"),
                    );
                    return None;
                }
                kinds.push(ProbeKind::Exec(
                    c.iter().map(|a| x(errs, &span, "exec", a)).collect(),
                ));
            }
            if let Some(c) = &p.postgres {
                kinds.push(ProbeKind::Postgres(x(errs, &span, "postgres", c)));
            }
            if let Some(c) = &p.redis {
                kinds.push(ProbeKind::Redis(x(errs, &span, "redis", c)));
            }
            if let Some(re) = &p.log {
                if let Err(e) = regex::Regex::new(re) {
                    errs.key(
                        &span,
                        "log",
                        format!("{ctx}: {key}.log is not a valid regex: {e}"),
                    );
                }
                kinds.push(ProbeKind::Log(re.clone()));
            }
            if p.notify == Some(true) {
                let wd = p
                    .watchdog
                    .as_ref()
                    .map(|_| dur(errs, &span, "watchdog", &p.watchdog, Duration::ZERO));
                kinds.push(ProbeKind::Notify(wd.filter(|d| !d.is_zero())));
            } else if p.watchdog.is_some() {
                errs.key(
                    &span,
                    "watchdog",
                    format!("{ctx}: {key}.watchdog needs `notify = true`"),
                );
            }
            if key != "ready" && (p.log.is_some() || p.notify.is_some()) {
                errs.key(
                    &span,
                    key,
                    format!(
                        "{ctx}: `log` and `notify` tell readiness once; they apply to `ready` only"
                    ),
                );
            }
            if kinds.len() != 1 {
                errs.key(
                    &span,
                    key,
                    format!(
                        "{ctx}: `{key}` needs exactly one of tcp, http, exec, postgres, redis, log, notify (found {})",
                        kinds.len()
                    ),
                );
                return None;
            }
            if (p.status.is_some() || p.body.is_some()) && p.http.is_none() {
                errs.key(
                    &span,
                    key,
                    format!("{ctx}: `status`/`body` only apply to http probes"),
                );
            }
            Some(Probe {
                kind: kinds.pop().unwrap(),
                interval: dur(errs, &span, "interval", &p.interval, Duration::from_secs(1)),
                timeout: dur(errs, &span, "timeout", &p.timeout, Duration::from_secs(1)),
                retries: p.retries.unwrap_or(3),
                start_period: dur(
                    errs,
                    &span,
                    "start_period",
                    &p.start_period,
                    Duration::from_secs(30),
                ),
            })
        };
        let ready = probe(&mut errs, "ready", &r.ready);
        let liveness = probe(&mut errs, "liveness", &r.liveness);
        let listen: Vec<String> = r
            .listen
            .iter()
            .map(|a| x(&mut errs, &span, "listen", a))
            .collect();
        let listen = listen_addrs(&mut errs, &span, &ctx, *kind, &listen);
        for (key, p) in [("ready", &ready), ("liveness", &liveness)] {
            if let Some(ProbeKind::Tcp(a)) = p.as_ref().map(|p| &p.kind) {
                if crate::sockets::probes_held(&listen, a) {
                    errs.key(&span, key, format!(
                        "{ctx}: `{key} = {{ tcp = \"{a}\" }}` would pass as soon as the supervisor holds the socket (`listen`), \
                         whether or not the app runs; probe its answer instead (`http = \"http://{a}/\"`), or use `log`/`notify` readiness"));
                }
            }
        }

        let mut restart = Restart::default();
        if let Some(rr) = &r.restart {
            if *kind == Kind::Oneshot {
                errs.key(
                    &span,
                    "restart",
                    format!("{ctx}: `restart` applies to [process] entries only"),
                );
            }
            if let Some(p) = &rr.policy {
                restart.policy = match p.as_str() {
                    "always" => Policy::Always,
                    "on-failure" => Policy::OnFailure,
                    "never" => Policy::Never,
                    _ => {
                        errs.key(
                            &span,
                            "policy",
                            format!(
                                "{ctx}: unknown restart policy `{p}` (always, on-failure, never)"
                            ),
                        );
                        Policy::Always
                    }
                }
            }
            restart.backoff = dur(&mut errs, &span, "backoff", &rr.backoff, restart.backoff);
            restart.backoff_max = dur(
                &mut errs,
                &span,
                "backoff_max",
                &rr.backoff_max,
                restart.backoff_max,
            );
            restart.window = dur(&mut errs, &span, "window", &rr.window, restart.window);
            restart.stable_after = dur(
                &mut errs,
                &span,
                "stable_after",
                &rr.stable_after,
                restart.stable_after,
            );
            restart.max_restarts = rr.max_restarts.unwrap_or(restart.max_restarts);
        }
        if *kind == Kind::Oneshot && (r.ready.is_some() || r.liveness.is_some()) {
            errs.key(
                &span,
                if r.ready.is_some() { "ready" } else { "liveness" },
                format!("{ctx}: probes apply to [process] entries only; a oneshot is done when it exits 0"),
            );
        }

        let watch = r.watch.as_ref().map(|w| {
            let mode = match w.mode.as_deref().unwrap_or("auto") {
                "auto" => WatchMode::Auto,
                "native" => WatchMode::Native,
                "poll" => WatchMode::Poll,
                m => {
                    errs.key(
                        &span,
                        "mode",
                        format!("{ctx}: unknown watch mode `{m}` (auto, native, poll)"),
                    );
                    WatchMode::Auto
                }
            };
            let paths = if w.paths.is_empty() {
                vec![cwd.clone()]
            } else {
                w.paths
                    .iter()
                    .map(|p| resolve(&cwd, &x(&mut errs, &span, "paths", p)))
                    .collect()
            };
            for g in &w.ignore {
                if let Err(e) = globset::Glob::new(g) {
                    errs.key(
                        &span,
                        "ignore",
                        format!("{ctx}: bad ignore glob {g:?}: {e}"),
                    );
                }
            }
            Watch {
                paths,
                ignore: w.ignore.clone(),
                debounce: dur(
                    &mut errs,
                    &span,
                    "debounce",
                    &w.debounce,
                    Duration::from_millis(200),
                ),
                mode,
                poll_interval: dur(
                    &mut errs,
                    &span,
                    "poll_interval",
                    &w.poll_interval,
                    Duration::from_secs(1),
                ),
                action: watch_action(
                    &mut errs,
                    &span,
                    &ctx,
                    RawWatchAction {
                        action: &w.action,
                        signal: &w.signal,
                        exec: &w.exec,
                        step: &w.step,
                    },
                    &step_index,
                ),
                on: w
                    .on
                    .iter()
                    .map(|rule| {
                        for g in &rule.files {
                            if let Err(e) = globset::Glob::new(g) {
                                errs.key(
                                    &span,
                                    "files",
                                    format!("{ctx}: bad watch glob {g:?}: {e}"),
                                );
                            }
                        }
                        WatchRule {
                            files: rule.files.clone(),
                            action: watch_action(
                                &mut errs,
                                &span,
                                &ctx,
                                RawWatchAction {
                                    action: &rule.action,
                                    signal: &rule.signal,
                                    exec: &rule.exec,
                                    step: &rule.step,
                                },
                                &step_index,
                            ),
                        }
                    })
                    .collect(),
            }
        });

        let cache = r.cache.as_ref().map(|c| {
            if *kind == Kind::Longrun {
                errs.key(
                    &span,
                    "cache",
                    format!("{ctx}: `cache` applies to [step] entries only"),
                );
            }
            for g in &c.inputs {
                if let Err(e) = globset::Glob::new(g) {
                    errs.key(&span, "inputs", format!("{ctx}: bad input glob {g:?}: {e}"));
                }
            }
            if let Some(s) = &c.snapshot {
                match index(s) {
                    Some(i) if raws[i].1 == Kind::Longrun => {
                        if raws[i].3.data_dir.is_none() {
                            errs.key(
                                &span,
                                "snapshot",
                                format!("{ctx}: snapshot names `{s}`, which has no `data_dir` to snapshot"),
                            );
                        }
                    }
                    _ => errs.key(
                        &span,
                        "snapshot",
                        format!("{ctx}: snapshot names `{s}`, which is not a [process] entry"),
                    ),
                }
            }
            Cache {
                inputs: c
                    .inputs
                    .iter()
                    .map(|i| x(&mut errs, &span, "inputs", i))
                    .collect(),
                outputs: c
                    .outputs
                    .iter()
                    .map(|o| resolve(&cwd, &x(&mut errs, &span, "outputs", o)))
                    .collect(),
                key_extra: c
                    .key_extra
                    .iter()
                    .map(|k| x(&mut errs, &span, "key_extra", k))
                    .collect(),
                snapshot: c.snapshot.clone(),
            }
        });

        if let Some(s) = &r.schedule {
            if *kind == Kind::Longrun {
                errs.key(
                    &span,
                    "schedule",
                    format!("{ctx}: `schedule` applies to [step] entries only"),
                );
            } else if let Err(e) = croner::Cron::new(s).parse() {
                errs.key(
                    &span,
                    "schedule",
                    format!("{ctx}: bad cron expression {s:?}: {e}"),
                );
            }
        }

        let data_dir = r.data_dir.as_ref().map(|d| {
            if *kind == Kind::Oneshot {
                errs.key(
                    &span,
                    "data_dir",
                    format!("{ctx}: `data_dir` applies to [process] entries only"),
                );
            }
            resolve(&cwd, &x(&mut errs, &span, "data_dir", d))
        });

        let mut restart_with = Vec::new();
        for n in &r.restart_with {
            match index(n) {
                Some(i) => restart_with.push(i),
                None => errs.key(
                    &span,
                    "restart_with",
                    format!("{ctx}: restart_with names unknown entry `{n}`"),
                ),
            }
        }

        let timing = (
            dur(&mut errs, &span, "timeout", &r.timeout, Duration::ZERO),
            dur(
                &mut errs,
                &span,
                "progress",
                &r.progress,
                Duration::from_secs(30),
            ),
        );
        let (timeout, progress) = step_timing(&mut errs, &span, &ctx, *kind, r, timing);

        entries.push(Entry {
            name: name.clone(),
            kind: *kind,
            command,
            cwd,
            env: env.into_iter().collect(),
            declared_env: declared.into_iter().collect(),
            user,
            after,
            ports,
            listen,
            stop_signal,
            stop_timeout,
            critical: r.critical,
            optional: r.optional,
            skip,
            ready,
            liveness,
            restart,
            watch,
            cache,
            schedule: r.schedule.clone(),
            data_dir,
            restart_with,
            timeout,
            progress,
            off: !r.profiles.is_empty() && !r.profiles.iter().any(|p| active.contains(p)),
            profiles: r.profiles.clone(),
            removed: false,
        });
    }

    // Executables: a missing one is an error unless a oneshot it waits for may create it.
    let deps: Vec<Vec<usize>> = entries
        .iter()
        .map(|e| e.after.iter().map(|d| d.idx).collect())
        .collect();
    let levels = match crate::graph::levels(&deps) {
        Ok(l) => l,
        Err(cycle) => {
            let path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
            let span = raws[cycle[0]].2.clone();
            errs.key(
                &span,
                "after",
                format!("dependency cycle: {}", path.join(" -> ")),
            );
            Vec::new()
        }
    };
    if !levels.is_empty() {
        for (i, e) in entries.iter().enumerate() {
            if e.skip.is_some() || e.command.is_empty() {
                continue;
            }
            let waits_for_step = ancestors(&deps, i)
                .into_iter()
                .any(|a| entries[a].kind == Kind::Oneshot);
            let path_var = e
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            if !waits_for_step && find_executable(&e.command[0], &e.cwd, &path_var).is_none() {
                errs.key(
                    &raws[i].2,
                    "command",
                    format!(
                        "`{}`: executable `{}` not found (cwd {}, PATH {})",
                        e.name,
                        e.command[0],
                        e.cwd.display(),
                        path_var
                    ),
                );
            }
        }
    }

    validate_values(&mut errs, &settings, &entries);
    if !errs.list.is_empty() {
        errs.list.sort_by_key(|e| (e.line, e.col));
        return Err(ConfigErrors(errs.list));
    }
    Ok(Plan {
        file: path.to_path_buf(),
        settings,
        templates,
        vars,
        entries,
        levels,
    })
}

/// Messages quote values; a huge one (a 5 MB `user`) is cut to keep the message readable.
fn truncate_msg(msg: String) -> String {
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

/// Offset of the deepest key of `path` (a serde path under the dotted `table`) in `src`, for
/// errors that belong at a key rather than at its table's header.
fn key_offset(src: &str, table: &str, path: &serde_path_to_error::Path) -> Option<usize> {
    use serde_path_to_error::Segment;
    let doc = toml_edit::ImDocument::parse(src).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut found = None;
    let keys = table
        .split('.')
        .map(str::to_string)
        .chain(path.iter().filter_map(|s| match s {
            Segment::Map { key } => Some(key.clone()),
            _ => None,
        }));
    for k in keys {
        let (key, next) = item.as_table_like()?.get_key_value(&k)?;
        found = key.span().map(|s| s.start).or(found);
        item = next;
    }
    found
}

/// Minimum for probe intervals and timeouts and for watch polling: below it a probe or a poll
/// loop would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Value checks that need the whole table: every value has a documented range and type, and
/// `check` refuses what would fail (or spin) later.
fn validate_values(errs: &mut Errors, settings: &Settings, entries: &[Entry]) {
    let Ok(doc) = toml_edit::ImDocument::parse(errs.src) else {
        return;
    };
    let at_key = |path: &[&str]| -> usize {
        let mut item: &toml_edit::Item = doc.as_item();
        let mut off = 0;
        for k in path {
            let Some((key, next)) = item.as_table_like().and_then(|t| t.get_key_value(k)) else {
                break;
            };
            off = key.span().map_or(off, |s| s.start);
            item = next;
        }
        off
    };
    if entries.is_empty() && errs.list.is_empty() {
        errs.at(
            0,
            "nothing to supervise: the table has no [process.NAME] or [step.NAME] entry",
        );
    }
    datetimes(errs, doc.as_item());
    if settings.api_listen.parse::<std::net::SocketAddr>().is_err() {
        errs.at(
            at_key(&["supervisor", "api_listen"]),
            format!(
                "`api_listen` must be IP:PORT (e.g. \"127.0.0.1:8089\" or \"0.0.0.0:80\"), not {:?}",
                settings.api_listen
            ),
        );
    }
    for e in entries {
        let section = match e.kind {
            Kind::Longrun => "process",
            Kind::Oneshot => "step",
        };
        for (key, probe) in [("ready", &e.ready), ("liveness", &e.liveness)] {
            let Some(p) = probe else { continue };
            let here = |k: &str| at_key(&[section, &e.name, key, k]);
            if let Err(m) = probe_target(&p.kind) {
                let k = match p.kind {
                    ProbeKind::Tcp(_) => "tcp",
                    ProbeKind::Http { .. } => "http",
                    ProbeKind::Exec(_) => "exec",
                    ProbeKind::Postgres(_) => "postgres",
                    ProbeKind::Redis(_) => "redis",
                    ProbeKind::Log(_) => "log",
                    ProbeKind::Notify(_) => "notify",
                };
                errs.at(here(k), format!("`{}`: {key}.{k}: {m}", e.name));
            }
            for (k, d) in [("interval", p.interval), ("timeout", p.timeout)] {
                if d < MIN_INTERVAL {
                    errs.at(
                        here(k),
                        format!("`{}`: {key}.{k} must be at least 10ms", e.name),
                    );
                }
            }
        }
        if let Some(w) = &e.watch {
            if w.poll_interval < MIN_INTERVAL {
                errs.at(
                    at_key(&[section, &e.name, "watch", "poll_interval"]),
                    format!("`{}`: watch.poll_interval must be at least 10ms", e.name),
                );
            }
        }
    }
}

/// No key takes a date: a TOML datetime where a string was meant (`at = 1979-05-27`) is an
/// error at the value, not a string.
fn datetimes(errs: &mut Errors, item: &toml_edit::Item) {
    use toml_edit::{Item, Value};
    fn value(errs: &mut Errors, v: &Value) {
        match v {
            Value::Datetime(d) => errs.at(
                d.span().map_or(0, |s| s.start),
                format!("a TOML date/time is not a valid value here (quote it if it is a string: \"{}\")", d.value()),
            ),
            Value::Array(a) => a.iter().for_each(|x| value(errs, x)),
            Value::InlineTable(t) => t.iter().for_each(|(_, x)| value(errs, x)),
            _ => {}
        }
    }
    match item {
        Item::Value(v) => value(errs, v),
        Item::Table(t) => t.iter().for_each(|(_, x)| datetimes(errs, x)),
        Item::ArrayOfTables(a) => a.iter().for_each(|t| {
            t.iter().for_each(|(_, x)| datetimes(errs, x));
        }),
        Item::None => {}
    }
}

/// A probe target that cannot work: checked once by `check`, not failed on every probe.
fn probe_target(kind: &ProbeKind) -> Result<(), String> {
    let host_port = |s: &str| -> Result<(), String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} needs HOST:PORT"))?;
        port.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: bad port {port:?}"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{s:?}: bad host {host:?}"));
        }
        Ok(())
    };
    match kind {
        ProbeKind::Tcp(a) => host_port(a),
        // The scheme is checked where the probe is built; this is the parse the probe does.
        ProbeKind::Http { url, .. } if url.starts_with("http://") => {
            let uri: hyper::Uri = url.parse().map_err(|e| {
                format!("{url:?} is not a valid URL ({e}; a `/` or `@` in a password must be written %2F, %40)")
            })?;
            if uri.host().is_none_or(str::is_empty) {
                return Err(format!("{url:?} has no host"));
            }
            let authority = uri.authority().map_or("", |a| a.as_str());
            let hostport = authority.rsplit_once('@').map_or(authority, |x| x.1);
            if hostport.contains(':') && !hostport.ends_with(']') && uri.port_u16().is_none() {
                return Err(format!(
                    "{url:?}: bad port (a `/` in a password must be written %2F)"
                ));
            }
            Ok(())
        }
        ProbeKind::Http { .. } => Ok(()),
        // Checked where they are built (the regex compiles; notify has no target).
        ProbeKind::Exec(_) | ProbeKind::Log(_) | ProbeKind::Notify(_) => Ok(()),
        ProbeKind::Postgres(dsn) => dsn
            .parse::<tokio_postgres::Config>()
            .map(|_| ())
            .map_err(|e| format!("bad connection string: {e}")),
        ProbeKind::Redis(url) => redis::parse_redis_url(url)
            .map(|_| ())
            .ok_or_else(|| format!("{url:?} is not a redis:// URL")),
    }
}

/// Extends an entry's span over its sub-tables (`[process.a.restart]` …), up to the next
/// header that belongs to something else.
pub(crate) fn extent(
    src: &str,
    span: std::ops::Range<usize>,
    prefix: &str,
) -> std::ops::Range<usize> {
    let mut off = span.start;
    let mut first = true;
    for line in src[span.start..].split_inclusive('\n') {
        let t = line.trim_start();
        if !first && t.starts_with('[') {
            let h = t.trim_start_matches('[').trim_start();
            if !h.starts_with(&format!("{prefix}.")) {
                break;
            }
        }
        first = false;
        off += line.len();
    }
    span.start..off.max(span.end)
}

fn ancestors(deps: &[Vec<usize>], i: usize) -> Vec<usize> {
    let mut seen = vec![false; deps.len()];
    let mut stack = deps[i].clone();
    let mut out = Vec::new();
    while let Some(d) = stack.pop() {
        if !std::mem::replace(&mut seen[d], true) {
            out.push(d);
            stack.extend(&deps[d]);
        }
    }
    out
}

pub fn find_executable(cmd: &str, cwd: &Path, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = resolve(cwd, cmd);
        return is_exec(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| is_exec(p))
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

pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse().ok()
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// First backticked word of a serde message (`unknown field `comand``).
fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

fn closest<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (strsim(name, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance (small strings only).
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        std::env::vars().collect()
    }

    fn errs(src: &str) -> Vec<String> {
        parse(Path::new("/tmp/t.toml"), src, &env())
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn valid_plan_levels() {
        let p = parse(
            Path::new("/tmp/t.toml"),
            r#"
[process.db]
command = ["sleep", "1"]
ready = { tcp = "127.0.0.1:1" }
[step.seed]
command = "true"
after = ["db"]
[process.app]
command = ["sleep", "1"]
after = ["seed", "db:started"]
"#,
            &env(),
        )
        .unwrap();
        let names: Vec<Vec<&str>> = p
            .levels
            .iter()
            .map(|l| l.iter().map(|&i| p.entries[i].name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["db"], vec!["seed"], vec!["app"]]);
        let app = &p.entries[p.index("app").unwrap()];
        assert_eq!(app.after[0].cond, Cond::Done);
        assert_eq!(app.after[1].cond, Cond::Started);
        let seed = &p.entries[p.index("seed").unwrap()];
        assert_eq!(seed.command[0], "/bin/sh");
    }

    #[test]
    fn every_error_at_once_with_lines() {
        let e = errs(
            "[process.a]\ncommand = [\"sleep\"]\ncomand = 1\n\n[process.b]\ncommand = [\"sleep\"]\nafter = [\"zz\"]\nstop_signal = \"SIGNOPE\"\nstop_timeout = \"ten\"\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("/tmp/t.toml:3:1:") && e[0].contains("unknown field `comand`"),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("/tmp/t.toml:7:1:") && e[1].contains("unknown dependency `zz`"),
            "{}",
            e[1]
        );
        assert!(e[2].starts_with("/tmp/t.toml:8:1:") && e[2].contains("unknown signal"));
        assert!(e[3].starts_with("/tmp/t.toml:9:1:") && e[3].contains("bad duration"));
    }

    #[test]
    fn cycle_is_printed() {
        let e = errs("[process.a]\ncommand=[\"sleep\"]\nafter=[\"b\"]\n[process.b]\ncommand=[\"sleep\"]\nafter=[\"c\"]\n[process.c]\ncommand=[\"sleep\"]\nafter=[\"a\"]\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("dependency cycle: a -> b -> c -> a"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let e = errs("[process.a]\ncommand = [\"x\"\nfoo = 1\n");
        assert!(
            e[0].starts_with("/tmp/t.toml:3:") && e[0].contains("invalid array"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn select_only_and_without() {
        let p = parse(
            Path::new("/tmp/t.toml"),
            "[process.db]\ncommand=[\"sleep\"]\n[process.api]\ncommand=[\"sleep\"]\nafter=[\"db\"]\n[process.web]\ncommand=[\"sleep\"]\nafter=[\"api\"]\n[process.other]\ncommand=[\"sleep\"]\n",
            &env(),
        )
        .unwrap();
        let only = p.clone().select(&["api".into()], &[]).unwrap();
        assert_eq!(only.names(), "api, db");
        let without = p.clone().select(&[], &["api".into()]).unwrap();
        assert_eq!(without.names(), "db, other, web");
        assert!(without.entries[without.index("web").unwrap()]
            .after
            .is_empty());
        assert!(p.select(&["nope".into()], &[]).is_err());
    }

    #[test]
    fn signals_parse() {
        assert_eq!(
            parse_signal("quit"),
            Some(nix::sys::signal::Signal::SIGQUIT)
        );
        assert_eq!(
            parse_signal("SIGINT"),
            Some(nix::sys::signal::Signal::SIGINT)
        );
        assert_eq!(parse_signal("SIGFOO"), None);
    }
}

/// Config fuzzer: mutated shipped tables never panic or hang `check`, and every error has a
/// place. Longer runs: `PROPTEST_CASES=20000 cargo test --release config::fuzz`.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    const SHIPPED: [&str; 2] = [
        include_str!("../supervisor.toml"),
        include_str!("../examples/minimal.toml"),
    ];

    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"\"".to_string()),
            Just("\"0s\"".to_string()),
            Just("1979-05-27".to_string()),
            Just("1979-05-27T07:32:00Z".to_string()),
            Just("07:32:00".to_string()),
            Just("5".to_string()),
            Just("-1".to_string()),
            Just("1e308".to_string()),
            Just("[]".to_string()),
            Just("[[]]".to_string()),
            Just("{}".to_string()),
            Just("{ exec = [] }".to_string()),
            Just("true".to_string()),
            Just("\"http://\"".to_string()),
            Just("\"localhost\"".to_string()),
            Just("\"${UNSET}\"".to_string()),
            Just(format!("\"{}\"", "x".repeat(200_000))),
            "[ -~]{0,40}".prop_map(|s| s),
            "[a-z0-9:/@.%]{0,30}".prop_map(|s| format!("{s:?}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
        ))]
        #[test]
        fn mutated_tables_never_panic(
            which in 0..SHIPPED.len(),
            muts in proptest::collection::vec((any::<prop::sample::Index>(), hostile()), 1..4),
        ) {
            let mut lines: Vec<String> = SHIPPED[which].lines().map(str::to_string).collect();
            let values: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains(" = ")).collect();
            for (idx, v) in muts {
                let i = values[idx.index(values.len())];
                let key = lines[i].split(" = ").next().unwrap().to_string();
                lines[i] = format!("{key} = {v}");
            }
            let src = lines.join("\n");
            let env = std::collections::BTreeMap::new();
            let start = std::time::Instant::now();
            if let Err(e) = super::parse(std::path::Path::new("/tmp/fuzz.toml"), &src, &env) {
                for err in &e.0 {
                    prop_assert!(err.line >= 1, "{err}");
                    prop_assert!(err.msg.len() < 2_000, "message not truncated: {}", err.msg.len());
                }
            }
            prop_assert!(start.elapsed() < std::time::Duration::from_secs(5));
        }
    }

    #[test]
    fn bad_values_are_refused_at_their_key() {
        let src = "[supervisor]\napi_listen = \"localhost\"\n\n[process.a]\ncommand = \"true\"\nstop_timeout = 5\n\n[process.b]\ncommand = \"true\"\nready = { tcp = \"x\", interval = \"0s\" }\nwatch = { paths = [\".\"], poll_interval = \"1ms\" }\n[process.c]\ncommand = \"true\"\nready = { redis = \"http://r\" }\nschedule = 1979-05-27\n";
        let env = std::collections::BTreeMap::new();
        let errs = super::parse(std::path::Path::new("/t/s.toml"), src, &env).unwrap_err();
        let got: Vec<String> = errs
            .0
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.col, e.msg))
            .collect();
        let want = [
            "2:1 `api_listen` must be IP:PORT",
            "6:1 [process.a]: invalid type: integer `5`, expected a string",
            "10:11 `b`: ready.tcp",
            "10:22 `b`: ready.interval must be at least 10ms",
            "11:26 `b`: watch.poll_interval must be at least 10ms",
            "14:11 `c`: ready.redis",
            "15:12 a TOML date/time is not a valid value here",
        ];
        for w in want {
            assert!(got.iter().any(|g| g.starts_with(w)), "{w} not in {got:#?}");
        }
        let empty =
            super::parse(std::path::Path::new("/t/e.toml"), "# nothing\n", &env).unwrap_err();
        assert!(empty.0[0].msg.contains("nothing to supervise"));
    }
}
