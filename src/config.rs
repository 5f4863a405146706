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
    Number(u16),
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
        let before = &self.src[..offset.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = offset - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            msg: msg.into(),
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
            match RawSettings::deserialize(s.into_inner()) {
                Ok(r) => (r, span),
                Err(e) => {
                    let msg = e.to_string();
                    let k = backticked(&msg).unwrap_or_default();
                    errs.key(&span, &k, format!("[supervisor]: {msg}"));
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
            match RawEntry::deserialize(v.into_inner()) {
                Ok(r) => raws.push((name, kind, span, r)),
                Err(e) => {
                    let msg = e.to_string();
                    let k = backticked(&msg).unwrap_or_default();
                    errs.key(&span, &k, format!("[{section}.{name}]: {msg}"));
                }
            }
        }
    }
    let names: Vec<&str> = raws.iter().map(|r| r.0.as_str()).collect();
    let index = |n: &str| names.iter().position(|m| *m == n);

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
                RawPort::Number(n) => ports.push(*n),
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
            if kinds.len() != 1 {
                errs.key(
                    &span,
                    key,
                    format!(
                        "{ctx}: `{key}` needs exactly one of tcp, http, exec, postgres, redis (found {})",
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
