//! In-process probes: TCP connect, HTTP GET, exec, Postgres `SELECT 1`, Redis `PING`.

use crate::plan::{Entry, Probe, ProbeKind};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// One check, bounded by the probe's timeout. `Err` carries a short reason. An exec probe
/// runs in the context of `entry` when given: its user, cwd and environment.
pub async fn check(p: &Probe, entry: Option<&Entry>) -> Result<(), String> {
    match tokio::time::timeout(p.timeout, check_once(&p.kind, entry)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", p.timeout)),
    }
}

async fn check_once(kind: &ProbeKind, entry: Option<&Entry>) -> Result<(), String> {
    match kind {
        ProbeKind::Tcp(addr) => TcpStream::connect(addr.as_str())
            .await
            .map(|_| ())
            .map_err(|e| format!("tcp {addr}: {e}")),
        ProbeKind::Http { url, status, body } => http(url, *status, body.as_deref()).await,
        ProbeKind::Exec(argv) => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            if let Some(e) = entry {
                cmd.current_dir(&e.cwd)
                    .env_clear()
                    .envs(e.env.iter().map(|(k, v)| (k, v)));
                if let Some(u) = &e.user {
                    cmd.uid(u.uid).gid(u.gid);
                }
            }
            let out = cmd
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("exec {}: {e}", argv[0]))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "exec {} exited with {}: {}",
                    argv[0],
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
        ProbeKind::Log(_) | ProbeKind::Notify(_) => {
            Err("log and notify readiness are not polled (src/notify.rs)".into())
        }
        ProbeKind::Postgres(conn) => {
            let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("postgres: {e}"))?;
            let task = tokio::spawn(connection);
            let r = client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| format!("postgres: {e}"));
            drop(client);
            let _ = task.await;
            r
        }
        ProbeKind::Redis(url) => {
            let client = redis::Client::open(url.as_str()).map_err(|e| format!("redis: {e}"))?;
            let mut con = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("redis: {e}"))?;
            let pong: String = redis::cmd("PING")
                .query_async(&mut con)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(format!("redis: PING answered {pong:?}"))
            }
        }
    }
}

async fn http(url: &str, want: Option<u16>, body: Option<&str>) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("http {url}: {e}"))?;
    let host = uri.host().ok_or("http: no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("http {url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http {url}: {e}"))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::USER_AGENT, "dmp-contained-probe")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http {url}: {e}"))?;
    let code = resp.status().as_u16();
    let ok = match want {
        Some(w) => code == w,
        None => (200..400).contains(&code),
    };
    if !ok {
        return Err(format!("http {url}: status {code}"));
    }
    if let Some(needle) = body {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("http {url}: {e}"))?
            .to_bytes();
        if !String::from_utf8_lossy(&bytes).contains(needle) {
            return Err(format!("http {url}: body does not contain {needle:?}"));
        }
    }
    Ok(())
}

/// Runs a readiness probe until it passes. Failures during `start_period` do not count;
/// after it, `retries` consecutive failures give up. Returns the last error on give-up.
pub async fn wait_ready(
    p: &Probe,
    entry: Option<&Entry>,
    on_result: impl Fn(&Result<(), String>),
) -> Result<(), String> {
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let r = check(p, entry).await;
        on_result(&r);
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                if started.elapsed() >= p.start_period {
                    failures += 1;
                    if failures > p.retries {
                        return Err(e);
                    }
                }
            }
        }
        tokio::time::sleep(
            p.interval
                .min(ready_interval(started.elapsed(), p.interval)),
        )
        .await;
    }
}

/// Early checks come faster than `interval` (a service that is ready in 30 ms should not wait
/// a full second): 10 ms, doubling, up to `interval`.
fn ready_interval(elapsed: Duration, interval: Duration) -> Duration {
    let ms = (elapsed.as_millis() as u64 / 2).clamp(10, 1000);
    Duration::from_millis(ms).min(interval)
}

/// Runs a liveness probe forever; returns the error once `retries` consecutive checks fail.
pub async fn watch_liveness(
    p: &Probe,
    entry: Option<&Entry>,
    on_result: impl Fn(&Result<(), String>),
) -> String {
    tokio::time::sleep(p.start_period.min(Duration::from_secs(3600))).await;
    let mut failures = 0;
    loop {
        tokio::time::sleep(p.interval).await;
        let r = check(p, entry).await;
        on_result(&r);
        match r {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures > p.retries {
                    return e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> Probe {
        Probe {
            kind: ProbeKind::Tcp(addr.into()),
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            retries: 2,
            start_period: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn tcp_probe_passes_and_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(check(&tcp(&addr), None).await.is_ok());
        drop(l);
        let err = wait_ready(&tcp(&addr), None, |_| {}).await.unwrap_err();
        assert!(err.contains("tcp"), "{err}");
    }

    #[test]
    fn early_interval_is_short() {
        assert_eq!(
            ready_interval(Duration::ZERO, Duration::from_secs(1)),
            Duration::from_millis(10)
        );
        assert_eq!(
            ready_interval(Duration::from_secs(10), Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
