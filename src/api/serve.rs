//! The listeners: the TCP accept loop (a connection cap at half the descriptor limit, idle
//! connections evicted first), the trusted Unix socket, and one connection's limits (header
//! timeout, bounded buffers, no big request bodies).
//!
//! Transport only: each request goes to `Api::handle`; nothing here looks at a route.

use super::resp::error;
use super::Api;
use hyper::body::{Body, Incoming};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Open connections on the TCP listener (`dmp_api_tcp_connections`).
pub(super) static TCP_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Holds one unit of a gauge (a follower, a connection) while it lives.
pub(super) struct Count(&'static AtomicUsize);
impl Count {
    pub(super) fn new(c: &'static AtomicUsize) -> Count {
        c.fetch_add(1, Ordering::Relaxed);
        Count(c)
    }
}
impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (many followers and
/// dashboard connections plus every service's pipes). Returns the resulting soft limit.
/// Call it from `main` before the runtime starts.
/// Process-wide, not only the API's: it sits here beside `nofile_soft` (the connection cap is
/// half the soft limit); `process.rs` (process limits) would be its home.
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
