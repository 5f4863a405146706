//! `ready` / `liveness` probes and `listen` addresses of an entry, and the probe-target check
//! `check` runs once (instead of a probe failing on every attempt).

use super::entry::EntryCx;
use super::raw::RawProbe;
use crate::plan::*;
use std::net::SocketAddr;

/// The probe at `key` (`ready` or `liveness`), or `None` when absent or unusable.
pub(super) fn probe(e: &mut EntryCx, key: &str, p: &Option<RawProbe>) -> Option<Probe> {
    let p = p.as_ref()?;
    let ctx = e.ctx.clone();
    let mut kinds = Vec::new();
    if let Some(t) = &p.tcp {
        kinds.push(ProbeKind::Tcp(e.expand(&[key, "tcp"], t)));
    }
    if let Some(u) = &p.http {
        let url = e.expand(&[key, "http"], u);
        if !url.starts_with("http://") {
            let msg = format!("{ctx}: {key}.http must be an http:// URL, got {url:?}");
            e.err(&[key, "http"], msg);
        }
        let (status, body) = (p.status, p.body.clone());
        kinds.push(ProbeKind::Http { url, status, body });
    }
    if let Some(c) = &p.exec {
        if c.is_empty() || c[0].is_empty() {
            e.err(&[key], format!("{ctx}: {key}.exec is empty (give the command and its arguments, e.g. [\"pg_isready\"])"));
            return None;
        }
        let argv = c.iter().map(|a| e.expand(&[key, "exec"], a)).collect();
        kinds.push(ProbeKind::Exec(argv));
    }
    if let Some(c) = &p.postgres {
        kinds.push(ProbeKind::Postgres(e.expand(&[key, "postgres"], c)));
    }
    if let Some(c) = &p.redis {
        kinds.push(ProbeKind::Redis(e.expand(&[key, "redis"], c)));
    }
    if let Some(re) = &p.log {
        if let Err(err) = regex::Regex::new(re) {
            let msg = format!("{ctx}: {key}.log is not a valid regex: {err}");
            e.err(&[key, "log"], msg);
        }
        kinds.push(ProbeKind::Log(re.clone()));
    }
    if p.notify == Some(true) {
        let wd = p.watchdog.as_ref().map(|_| {
            let d = std::time::Duration::ZERO;
            e.duration(&[key, "watchdog"], &p.watchdog, d)
        });
        kinds.push(ProbeKind::Notify(wd.filter(|d| !d.is_zero())));
    } else if p.watchdog.is_some() {
        let msg = format!("{ctx}: {key}.watchdog needs `notify = true`");
        e.err(&[key, "watchdog"], msg);
    }
    if key != "ready" && (p.log.is_some() || p.notify.is_some()) {
        let msg =
            format!("{ctx}: `log` and `notify` tell readiness once; they apply to `ready` only");
        e.err(&[key], msg);
    }
    if kinds.len() != 1 {
        e.err(&[key], format!(
            "{ctx}: `{key}` needs exactly one of tcp, http, exec, postgres, redis, log, notify (found {})",
            kinds.len()
        ));
        return None;
    }
    if (p.status.is_some() || p.body.is_some()) && p.http.is_none() {
        let msg = format!("{ctx}: `status`/`body` only apply to http probes");
        e.err(&[key], msg);
    }
    Some(Probe {
        kind: kinds.pop().unwrap(),
        interval: e.duration(&[key, "interval"], &p.interval, RawProbe::INTERVAL),
        timeout: e.duration(&[key, "timeout"], &p.timeout, RawProbe::TIMEOUT),
        retries: p.retries.unwrap_or(RawProbe::RETRIES),
        start_period: e.duration(
            &[key, "start_period"],
            &p.start_period,
            RawProbe::START_PERIOD,
        ),
    })
}

/// `listen` of a longrun (interpolated): socket addresses ("127.0.0.1:5002", "[::1]:5002").
/// A oneshot's `listen` is an error of its own (`kind_only_keys`).
pub(super) fn listen(e: &mut EntryCx, listen: &[String]) -> Vec<SocketAddr> {
    let listen: Vec<String> = listen.iter().map(|a| e.expand(&["listen"], a)).collect();
    let mut out: Vec<SocketAddr> = Vec::new();
    if e.kind == Kind::Oneshot {
        return out;
    }
    for a in listen {
        let msg = match a.parse() {
            Ok(addr) if out.contains(&addr) => format!("{}: `listen` names {a} twice", e.ctx),
            Ok(addr) => {
                out.push(addr);
                continue;
            }
            Err(_) => format!(
                "{}: `listen` entry {a:?} is not an IP address and port (e.g. \"127.0.0.1:5002\")",
                e.ctx
            ),
        };
        e.err(&["listen"], msg);
    }
    out
}

/// A `tcp` probe of an address the supervisor holds (`listen`) would pass with no app running.
pub(super) fn held(e: &mut EntryCx, listen: &[SocketAddr], probes: [(&str, &Option<Probe>); 2]) {
    for (key, p) in probes {
        if let Some(ProbeKind::Tcp(a)) = p.as_ref().map(|p| &p.kind) {
            if crate::sockets::probes_held(listen, a) {
                let msg = format!(
                    "{}: `{key} = {{ tcp = \"{a}\" }}` would pass as soon as the supervisor holds the socket (`listen`), \
                     whether or not the app runs; probe its answer instead (`http = \"http://{a}/\"`), or use `log`/`notify` readiness",
                    e.ctx
                );
                e.err(&[key], msg);
            }
        }
    }
}

/// The key that holds a probe's target.
pub(super) fn target_key(kind: &ProbeKind) -> &'static str {
    match kind {
        ProbeKind::Tcp(_) => "tcp",
        ProbeKind::Http { .. } => "http",
        ProbeKind::Exec(_) => "exec",
        ProbeKind::Postgres(_) => "postgres",
        ProbeKind::Redis(_) => "redis",
        ProbeKind::Log(_) => "log",
        ProbeKind::Notify(_) => "notify",
    }
}

/// A probe target that cannot work: checked once by `check`, not failed on every probe.
pub(super) fn target(kind: &ProbeKind) -> Result<(), String> {
    match kind {
        ProbeKind::Tcp(a) => host_port(a),
        // The scheme is checked where the probe is built; this is the parse the probe does.
        ProbeKind::Http { url, .. } if url.starts_with("http://") => http_url(url),
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

fn host_port(s: &str) -> Result<(), String> {
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
}

fn http_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| {
        format!(
            "{url:?} is not a valid URL ({e}; a `/` or `@` in a password must be written %2F, %40)"
        )
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
