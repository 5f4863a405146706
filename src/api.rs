//! The control plane over HTTP: a TCP listener (read-only unless a bearer token is set) and a
//! Unix socket (mode 0600, trusted: mutations allowed) serving the same routes.

use crate::control::{Action, Control, Refused, Shared, SnapOp};
use crate::redact::{scrub, secret_values};
use crate::status::{EntryStatus, Status};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

pub const PREFIX: &str = "/_supervisor";
const DASHBOARD: &str = include_str!("dashboard.html");

/// The answer of `GET /_supervisor/cache`.
#[derive(serde::Serialize)]
struct CacheState {
    /// One per successful cached step run: `{step, key, at_ms, duration_s}`.
    records: Vec<crate::cache::Record>,
    /// Chain snapshots (a service's data dir after a cached step).
    snapshots: Vec<ChainSnapshot>,
    /// Snapshots saved by name (`snapshot save NAME`).
    named: Vec<NamedSnapshot>,
    /// Unreadable records (a miss: the step runs again).
    corrupt: Vec<String>,
}

#[derive(serde::Serialize)]
struct ChainSnapshot {
    service: String,
    key: String,
    bytes: u64,
}

#[derive(serde::Serialize)]
struct NamedSnapshot {
    name: String,
    services: Vec<String>,
    bytes: u64,
}

impl CacheState {
    fn read(dir: &std::path::Path) -> CacheState {
        use crate::cache;
        CacheState {
            records: cache::list_records(dir),
            snapshots: cache::list_chain_snapshots(dir)
                .into_iter()
                .map(|(service, key, bytes)| ChainSnapshot {
                    service,
                    key,
                    bytes,
                })
                .collect(),
            named: cache::list_named(dir)
                .into_iter()
                .map(|(name, services, bytes)| NamedSnapshot {
                    name,
                    services,
                    bytes,
                })
                .collect(),
            corrupt: cache::list_corrupt(dir)
                .into_iter()
                .map(|(p, why)| format!("{}: {why}", p.display()))
                .collect(),
        }
    }
}

/// A response body fed by a channel (log follow); ends when the sender is dropped.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    first: Option<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub type Resp = Response<http_body_util::Either<Full<Bytes>, ChannelBody>>;

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("cache-control", "no-store")
        .body(http_body_util::Either::Left(Full::new(body.into())))
        .unwrap()
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    full(status, "application/json", s)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json_resp(status, &json!({ "error": msg.into() }))
}

pub struct Api {
    pub shared: Arc<Shared>,
    pub token: Option<String>,
    /// Secret values per entry name (`secret_values`, plus the token), to scrub from status;
    /// computed once per plan (a config reload swaps the plan).
    secrets: std::sync::Mutex<(Option<Arc<crate::plan::Plan>>, Arc<Secrets>)>,
}

type Secrets = std::collections::HashMap<String, Vec<String>>;

impl Api {
    pub fn new(shared: Arc<Shared>, token: Option<String>) -> Api {
        Api {
            shared,
            token,
            secrets: Default::default(),
        }
    }

    fn secrets(&self) -> Arc<Secrets> {
        let plan = self.shared.plan();
        let mut cached = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if !cached.0.as_ref().is_some_and(|p| Arc::ptr_eq(p, &plan)) {
            let by_name = plan
                .entries
                .iter()
                .zip(secret_values(&plan))
                .map(|(e, mut v)| {
                    v.extend(self.token.clone());
                    (e.name.clone(), v)
                })
                .collect();
            *cached = (Some(plan), Arc::new(by_name));
        }
        cached.1.clone()
    }

    /// The loop's latest status snapshot, with secrets scrubbed.
    pub fn status(&self) -> Status {
        let mut st = self.shared.status();
        st.scrub(&self.secrets());
        st
    }

    /// As JSON for a client: every string also passes the process-wide redactor.
    fn status_json(&self) -> Value {
        let mut v = serde_json::to_value(self.status()).unwrap_or_default();
        crate::redact::global().apply_json(&mut v);
        v
    }

    pub async fn handle(&self, req: Request<Incoming>, trusted: bool) -> Resp {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let rel = path.strip_prefix(PREFIX).unwrap_or(&path);
        let rel = rel.trim_start_matches('/');
        let decoded: Vec<String> = rel
            .split('/')
            .filter(|p| !p.is_empty())
            .map(percent_decode)
            .collect();
        let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let method = req.method().clone();
        if !trusted && !host_allowed(&req) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "Host not allowed: use an IP address or localhost, or list the name in DMP_CONTAINED_API_HOSTS (comma-separated)",
            );
        }
        let authorized = trusted || self.bearer_ok(&req);
        match (&method, parts.as_slice()) {
            (&Method::GET, []) => full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
            (&Method::GET, ["status"]) => json_resp(StatusCode::OK, &self.status_json()),
            (&Method::GET, ["health"]) => self.health(),
            // Any method: nginx forwards the request that found the app down (src/unavailable.rs).
            (_, ["unavailable", name]) => {
                let uri = req
                    .headers()
                    .get("x-dmp-original-uri")
                    .and_then(|h| h.to_str().ok());
                let as_json = query.split('&').any(|q| q == "format=json");
                crate::unavailable::respond(self, name, uri, as_json).await
            }
            (&Method::GET, ["metrics"]) => self.metrics(),
            (&Method::GET, ["events"]) => self.events(),
            (&Method::GET, ["cache"]) => self.cache().await,
            (&Method::GET, ["logs", name]) => self.logs(name, &query),
            (&Method::POST, ["reload"]) => {
                if !authorized {
                    return self.forbidden();
                }
                self.config_reload().await
            }
            (&Method::POST, ["entries", name, action]) | (&Method::POST, [action, name])
                if action.parse::<Action>().is_ok() =>
            {
                if !authorized {
                    return self.forbidden();
                }
                self.act(action.parse().unwrap(), name).await
            }
            (&Method::POST, ["snapshots", name, op @ ("save" | "restore")]) => {
                if !authorized {
                    return self.forbidden();
                }
                let op = if *op == "save" {
                    SnapOp::Save
                } else {
                    SnapOp::Restore
                };
                let name = name.to_string();
                match self
                    .ask(|reply| Control::Snapshot { op, name, reply })
                    .await
                {
                    Ok(Ok(m)) => json_resp(StatusCode::OK, &json!({"ok": true, "message": m})),
                    Ok(Err(e)) => error(StatusCode::CONFLICT, e),
                    Err(resp) => resp,
                }
            }
            (&Method::POST, ["shutdown"]) => {
                if !authorized {
                    return self.forbidden();
                }
                let (tx, rx) = oneshot::channel();
                let _ = self.shared.control.send(Control::Shutdown(tx)).await;
                drop(rx);
                json_resp(
                    StatusCode::ACCEPTED,
                    &json!({"ok": true, "message": "shutting down"}),
                )
            }
            (_, ["status"] | ["health"] | ["metrics"] | ["cache"] | ["logs", _] | []) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed on {path}"),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }

    fn forbidden(&self) -> Resp {
        let hint = if self.token.is_some() {
            "this route needs `Authorization: Bearer <token>`"
        } else {
            "mutations over HTTP are disabled: set a token (env DMP_CONTAINED_TOKEN or DMP_CONTAINED_TOKEN_FILE) and send `Authorization: Bearer <token>`, or use the CLI over the Unix socket (`dmp-contained restart NAME`)"
        };
        error(StatusCode::FORBIDDEN, hint)
    }

    fn bearer_ok(&self, req: &Request<Incoming>) -> bool {
        let Some(tok) = &self.token else { return false };
        let Some(h) = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, given)) = h.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let given = given.trim();
        // Constant-time comparison.
        given.len() == tok.len()
            && given
                .bytes()
                .zip(tok.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    fn health(&self) -> Resp {
        let h = self.status().health();
        let code = if h.healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut v = serde_json::to_value(h).unwrap_or_default();
        crate::redact::global().apply_json(&mut v);
        json_resp(code, &v)
    }

    /// Sends a request that answers with a message or an error; `Err` is the response to
    /// give when the loop is gone.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Control) -> Result<T, Resp> {
        let gone = || error(StatusCode::SERVICE_UNAVAILABLE, "supervisor is stopping");
        let (tx, rx) = oneshot::channel();
        if self.shared.control.send(make(tx)).await.is_err() {
            return Err(gone());
        }
        rx.await.map_err(|_| gone())
    }

    /// `POST /_supervisor/reload` (src/reload.rs): 200 with what changed, or 422 with every
    /// error of the edited table (nothing changed).
    async fn config_reload(&self) -> Resp {
        let trigger = crate::reload::Trigger::Api;
        match self
            .ask(|reply| Control::ConfigReload { trigger, reply })
            .await
        {
            Ok(r) => {
                let code = match r {
                    Ok(_) => StatusCode::OK,
                    Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
                };
                let mut v = serde_json::to_value(r.unwrap_or_else(|e| e)).unwrap_or_default();
                crate::redact::global().apply_json(&mut v);
                json_resp(code, &v)
            }
            Err(resp) => resp,
        }
    }

    async fn act(&self, action: Action, name: &str) -> Resp {
        let owned = name.to_string();
        let answer = self
            .ask(|reply| Control::Act {
                action,
                name: owned,
                reply,
            })
            .await;
        match answer {
            Ok(Ok(m)) => json_resp(StatusCode::OK, &json!({"ok": true, "message": m})),
            Ok(Err(e @ Refused::UnknownEntry { .. })) => {
                error(StatusCode::NOT_FOUND, e.to_string())
            }
            // The step's own exit code, for `dmp-contained run STEP`'s exit status.
            Ok(Err(Refused::Failed { message, exit_code })) => json_resp(
                StatusCode::CONFLICT,
                &json!({ "error": message, "exit_code": exit_code }),
            ),
            Ok(Err(e @ Refused::Conflict(_))) => error(StatusCode::CONFLICT, e.to_string()),
            Err(resp) => resp,
        }
    }

    fn logs(&self, name: &str, query: &str) -> Resp {
        let Some(log) = self.shared.log(name) else {
            return error(StatusCode::NOT_FOUND, format!("unknown entry `{name}`"));
        };
        let q = parse_query(query);
        let tail = match q.get("tail").map(|t| t.parse::<usize>()) {
            None => 100,
            Some(Ok(n)) => n,
            Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "tail must be a number"),
        };
        let json_fmt = q.get("format").map(|f| f == "json").unwrap_or(false);
        let follow = matches!(q.get("follow").map(String::as_str), Some("1" | "true"));
        let fmt = move |l: &crate::logs::Line, buf: &mut Vec<u8>| {
            if json_fmt {
                let _ = serde_json::to_writer(&mut *buf, l);
            } else {
                buf.extend_from_slice(l.text.as_bytes());
            }
            buf.push(b'\n');
        };
        let ctype = if json_fmt {
            "application/x-ndjson"
        } else {
            "text/plain; charset=utf-8"
        };
        if !follow {
            let mut buf = Vec::new();
            for l in log.tail(tail) {
                fmt(&l, &mut buf);
            }
            return full(StatusCode::OK, ctype, buf);
        }
        let (lines, rx) = log.follow(tail);
        let mut first = Vec::new();
        for l in lines {
            fmt(&l, &mut first);
        }
        let (tx, body_rx) = mpsc::channel::<Bytes>(2);
        tokio::spawn(pump_follower(rx, tx, first, fmt));
        stream_response(ctype, body_rx)
    }

    /// `GET /_supervisor/events`: state changes as NDJSON, from now on (src/progress.rs).
    fn events(&self) -> Resp {
        let rx = self.shared.events.subscribe();
        let (tx, body_rx) = mpsc::channel::<Bytes>(64);
        let secrets = self.secrets();
        tokio::spawn(crate::progress::pump_events(rx, tx, move |name, text| {
            let s = secrets.get(name);
            let s: Vec<&str> = s.into_iter().flatten().map(String::as_str).collect();
            scrub(text, &s)
        }));
        stream_response("application/x-ndjson", body_rx)
    }

    /// `GET /_supervisor/cache`: the step records and snapshots in `cache_dir` (for the
    /// dashboard; the same as `dmp-contained cache ls`). Read from disk off the runtime.
    async fn cache(&self) -> Resp {
        let dir = self.shared.plan().settings.cache_dir.clone();
        match tokio::task::spawn_blocking(move || CacheState::read(&dir)).await {
            Ok(c) => {
                let mut v = json!(c);
                crate::redact::global().apply_json(&mut v);
                json_resp(StatusCode::OK, &v)
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    fn metrics(&self) -> Resp {
        full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render_metrics(&self.status()),
        )
    }
}

/// Bytes a follower may have formatted but not yet written to its socket; beyond this its
/// newest lines are dropped (with a marker line) instead of growing memory or slowing anyone.
const FOLLOW_MAX_PENDING: usize = 256 << 10;

static FOLLOWERS: AtomicUsize = AtomicUsize::new(0);
static TCP_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

struct Count(&'static AtomicUsize);
impl Count {
    fn new(c: &'static AtomicUsize) -> Count {
        c.fetch_add(1, Ordering::Relaxed);
        Count(c)
    }
}
impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Moves one follower's lines from the log broadcast to its response body. It drains the
/// broadcast continuously (so a fast burst never overruns it) and buffers up to
/// `FOLLOW_MAX_PENDING` bytes while the client is slow; a client that does not read at all
/// costs a bounded amount of memory and never blocks the service or other followers.
async fn pump_follower(
    mut rx: broadcast::Receiver<crate::logs::Batch>,
    tx: mpsc::Sender<Bytes>,
    mut buf: Vec<u8>,
    fmt: impl Fn(&crate::logs::Line, &mut Vec<u8>),
) {
    use tokio::sync::broadcast::error::RecvError;
    let _count = Count::new(&FOLLOWERS);
    let mut skipped: u64 = 0;
    let mut lagged: u64 = 0;
    let mut open = true;
    loop {
        let pending = !buf.is_empty() || skipped > 0 || lagged > 0;
        if !open && !pending {
            return;
        }
        tokio::select! {
            r = rx.recv(), if open => match r {
                Ok(batch) => {
                    // Full: hand what is pending to the body first if the client has room for
                    // it (a burst arrives as a few big batches); skip only when it has not.
                    if buf.len() >= FOLLOW_MAX_PENDING {
                        if let Ok(permit) = tx.try_reserve() {
                            send_pending(permit, &mut buf, &mut skipped, &mut lagged);
                        }
                    }
                    if buf.len() >= FOLLOW_MAX_PENDING {
                        skipped += batch.len() as u64;
                    } else {
                        for l in batch.iter() {
                            fmt(&l, &mut buf);
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => lagged += n,
                Err(RecvError::Closed) => open = false,
            },
            permit = tx.reserve(), if pending => {
                let Ok(permit) = permit else { return };
                send_pending(permit, &mut buf, &mut skipped, &mut lagged);
            }
            _ = tx.closed(), if !pending => return,
        }
    }
}

/// Sends a follower's pending bytes, with a marker line for what it skipped.
fn send_pending(
    permit: mpsc::Permit<'_, Bytes>,
    buf: &mut Vec<u8>,
    skipped: &mut u64,
    lagged: &mut u64,
) {
    if *skipped > 0 {
        let note = format!("[dmp-contained: follower too slow, {skipped} lines skipped]\n");
        buf.extend_from_slice(note.as_bytes());
    } else if *lagged > 0 {
        let note =
            format!("[dmp-contained: follower too slow, {lagged} batches of lines skipped]\n");
        buf.extend_from_slice(note.as_bytes());
    }
    *skipped = 0;
    *lagged = 0;
    permit.send(Bytes::from(std::mem::take(buf)));
}

/// Decodes `%XX` escapes; anything else (a lone `%`, `%` before a multi-byte character) is
/// kept as it is. Never slices inside a character.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A 200 whose body is fed by `body_rx` (follow, events), never buffered by a proxy.
fn stream_response(ctype: &'static str, body_rx: mpsc::Receiver<Bytes>) -> Resp {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", ctype)
        .header("cache-control", "no-store")
        .header("x-accel-buffering", "no")
        .body(http_body_util::Either::Right(ChannelBody {
            rx: body_rx,
            first: None,
        }))
        .unwrap()
}

#[cfg(test)]
mod decode_tests {
    #[test]
    fn percent_decode_never_panics() {
        assert_eq!(super::percent_decode("a%20b"), "a b");
        assert_eq!(super::percent_decode("a%\u{20ac}"), "a%\u{20ac}");
        assert_eq!(super::percent_decode("%"), "%");
        assert_eq!(super::percent_decode("%e2%82"), "\u{fffd}");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
    }
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (many followers and
/// dashboard connections plus every service's pipes). Returns the resulting soft limit.
/// Call it from `main` before the runtime starts.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

fn nofile_soft() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

pub fn render_metrics(st: &Status) -> String {
    let mut s = String::new();
    let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, val) in rows {
            s.push_str(&format!("{name}{labels} {val}\n"));
        }
    };
    let kind = |e: &EntryStatus| e.kind.as_str();
    let lab = |e: &EntryStatus| {
        format!(
            "{{entry=\"{}\",kind=\"{}\"}}",
            label_escape(&e.name),
            kind(e)
        )
    };
    let rows = |f: &dyn Fn(&EntryStatus) -> f64| {
        st.entries
            .iter()
            .map(|e| (lab(e), f(e)))
            .collect::<Vec<_>>()
    };
    family(
        "dmp_entry_up",
        "1 if the entry has a live process",
        "gauge",
        rows(&|e| f64::from(u8::from(e.pid.is_some()))),
    );
    family(
        "dmp_entry_ready",
        "1 if the entry is ready (longrun) or done (oneshot)",
        "gauge",
        rows(&|e| f64::from(u8::from(e.ready))),
    );
    family(
        "dmp_entry_restarts_total",
        "restarts of the entry",
        "counter",
        rows(&|e| f64::from(e.restarts)),
    );
    family(
        "dmp_entry_last_exit_code",
        "last exit code (128+n for a signal, -1 if none yet)",
        "gauge",
        rows(&|e| {
            e.last_exit
                .as_ref()
                .map_or(-1.0, |x| f64::from(x.as_code()))
        }),
    );
    family(
        "dmp_entry_log_lines_total",
        "lines captured from the entry",
        "counter",
        rows(&|e| e.log_lines as f64),
    );
    family(
        "dmp_entry_time_to_ready_seconds",
        "start-to-ready time of the last start",
        "gauge",
        st.entries
            .iter()
            .filter_map(|e| Some((lab(e), e.time_to_ready_s?)))
            .collect(),
    );
    family(
        "dmp_entry_state",
        "1 for the entry's current state",
        "gauge",
        st.entries
            .iter()
            .map(|e| {
                (
                    format!(
                        "{{entry=\"{}\",kind=\"{}\",state=\"{}\"}}",
                        label_escape(&e.name),
                        kind(e),
                        crate::state::state_name(e.state)
                    ),
                    1.0,
                )
            })
            .collect(),
    );
    family(
        "dmp_api_log_followers",
        "log followers currently streaming",
        "gauge",
        vec![(String::new(), FOLLOWERS.load(Ordering::Relaxed) as f64)],
    );
    family(
        "dmp_api_tcp_connections",
        "open HTTP connections on the TCP listener",
        "gauge",
        vec![(
            String::new(),
            TCP_CONNECTIONS.load(Ordering::Relaxed) as f64,
        )],
    );
    family(
        "dmp_supervisor_uptime_seconds",
        "supervisor uptime",
        "gauge",
        vec![(String::new(), st.supervisor.uptime_s)],
    );
    let output = &st.supervisor.output;
    family(
        "dmp_output_dropped_lines_total",
        "service output lines dropped because the supervisor's stdout was not being read",
        "counter",
        vec![(String::new(), output.dropped_lines as f64)],
    );
    family(
        "dmp_output_queued_bytes",
        "formatted output waiting for stdout",
        "gauge",
        vec![(String::new(), output.queued_bytes as f64)],
    );
    family(
        "dmp_supervisor_resident_bytes",
        "supervisor resident memory",
        "gauge",
        vec![(String::new(), rss_bytes() as f64)],
    );
    s
}

fn label_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * 4096)
        .unwrap_or(0)
}

fn parse_query(q: &str) -> std::collections::HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Does the request's Host name this supervisor? An IP literal, `localhost` or any single-label
/// name always does (a DNS-rebinding page can only use a dotted name it controls); other names
/// must be listed in
/// `DMP_CONTAINED_API_HOSTS` (comma-separated).
fn host_allowed(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get("host").and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |x| x.0),
    }
    .trim_end_matches('.')
    .to_ascii_lowercase();
    // A rebinding page needs a public, dotted name; a single label (`localhost`, a compose
    // service name) or an IP literal cannot be one.
    if name.parse::<std::net::Ipv4Addr>().is_ok()
        || !name.contains('.')
        || name.ends_with(".localhost")
    {
        return true;
    }
    static EXTRA: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    EXTRA
        .get_or_init(|| {
            std::env::var("DMP_CONTAINED_API_HOSTS")
                .unwrap_or_default()
                .split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        })
        .contains(&name)
}

/// One TCP connection, as the accept loop sees it: idle ones are evicted when the cap is
/// reached, so a flood of idle connections never locks everyone out.
struct Conn {
    cancel: tokio_util::sync::CancellationToken,
    /// Requests in flight, or a streaming (follow) response.
    busy: AtomicUsize,
    /// When it last became idle (ms since start of the process clock).
    idle_since: std::sync::atomic::AtomicU64,
}

fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Live TCP connections (owned by the accept loop; each connection task only updates its own
/// counters).
#[derive(Default)]
struct Conns(Vec<std::sync::Weak<Conn>>);

impl Conns {
    fn add(&mut self) -> Arc<Conn> {
        self.0.retain(|w| w.strong_count() > 0);
        let c = Arc::new(Conn {
            cancel: tokio_util::sync::CancellationToken::new(),
            busy: AtomicUsize::new(0),
            idle_since: std::sync::atomic::AtomicU64::new(mono_ms()),
        });
        self.0.push(Arc::downgrade(&c));
        c
    }

    /// Closes the connection idle the longest; false when every one is busy.
    fn evict_idle(&mut self) -> bool {
        self.0.retain(|w| w.strong_count() > 0);
        let oldest = self
            .0
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|c| c.busy.load(Ordering::Relaxed) == 0 && !c.cancel.is_cancelled())
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match oldest {
            Some(c) => {
                c.cancel.cancel();
                true
            }
            None => false,
        }
    }
}

/// Serves one connection with limits: header read timeout, bounded buffers.
async fn serve_conn<IO>(api: Arc<Api>, io: IO, trusted: bool, conn: Option<Arc<Conn>>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = conn.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let api = api.clone();
        let state = state.clone();
        async move {
            if let Some(c) = &state {
                c.busy.fetch_add(1, Ordering::Relaxed);
            }
            // Request bodies are not used; refuse big ones without reading them.
            if req.body().size_hint().lower() > 64 * 1024 {
                return Ok::<_, Infallible>(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                ));
            }
            let (parts, body) = req.into_parts();
            let req = Request::from_parts(parts, body);
            let resp = api.handle(req, trusted).await;
            if let Some(c) = &state {
                // A streaming (follow) response keeps the connection busy until it closes.
                if matches!(resp.body(), http_body_util::Either::Left(_)) {
                    c.idle_since.store(mono_ms(), Ordering::Relaxed);
                    c.busy.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Ok(resp)
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_headers(64)
        .max_header_size(32 * 1024)
        .max_buf_size(64 * 1024);
    let serve = b.serve_connection(TokioIo::new(io), svc);
    match conn {
        Some(c) => {
            tokio::select! {
                _ = serve => {}
                _ = c.cancel.cancelled() => {}
            }
        }
        None => {
            let _ = serve.await;
        }
    }
}

pub async fn serve_tcp(api: Arc<Api>, listener: tokio::net::TcpListener) {
    // Leave most descriptors to the services: at most half the soft limit for HTTP clients.
    let cap = (nofile_soft() / 2).clamp(64, 16384) as usize;
    let mut last_warn: Option<std::time::Instant> = None;
    let mut conns = Conns::default();
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                // At the cap, the connection idle the longest makes room; only when every
                // one is busy is the new one refused.
                if TCP_CONNECTIONS.load(Ordering::Relaxed) >= cap && !conns.evict_idle() {
                    // Closing at once tells the client; idle ones time out (header_read_timeout).
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!("control API: {cap} connections open; refusing more");
                        last_warn = Some(std::time::Instant::now());
                    }
                    drop(s);
                    continue;
                }
                let _ = s.set_nodelay(true);
                let count = Count::new(&TCP_CONNECTIONS);
                let api = api.clone();
                let conn = conns.add();
                tokio::spawn(async move {
                    serve_conn(api, s, false, Some(conn)).await;
                    drop(count);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("api accept: {e}");
                    last_warn = Some(std::time::Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Named timer: pause after a failed accept (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub async fn serve_unix(api: Arc<Api>, listener: tokio::net::UnixListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(serve_conn(api.clone(), s, true, None));
            }
            Err(e) => {
                tracing::warn!("socket accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A control socket must belong to us or to root: another local user could otherwise squat
/// the path (in `/tmp`, say) and have the CLI talk to an impostor, or keep the supervisor from
/// starting with a confusing error. Missing is fine (the caller reports it).
pub fn check_socket_owner(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to this user (uid {me}) or root: refusing to use it (someone else may have squatted the path; use a private directory such as /run or $XDG_RUNTIME_DIR)",
            path.display(),
            meta.uid()
        ));
    }
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{} is a symlink: refusing to use it",
            path.display()
        ));
    }
    Ok(())
}

/// Binds the Unix socket with mode 0600, replacing a stale socket file. The path must not
/// belong to another user, and a directory created for it is private (0700).
pub fn bind_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    check_socket_owner(path)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another running supervisor", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(path);
    umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Reads the HTTP mutation token from `$token_env` or `$DMP_CONTAINED_TOKEN_FILE`.
pub fn load_token(token_env: &str) -> Option<String> {
    if let Ok(t) = std::env::var(token_env) {
        if !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    let f = std::env::var("DMP_CONTAINED_TOKEN_FILE").ok()?;
    let t = std::fs::read_to_string(f).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}
