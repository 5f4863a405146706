//! The client side of the same binary: talks HTTP over the Unix socket.

use crate::reload::{Outcome, Report};
use crate::state::State;
use crate::status::{Health, Status};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::Path;

/// Exit codes for scripts: 0 ok, 1 the answer was negative (unhealthy, action refused),
/// 3 the supervisor is not reachable, 4 unknown entry.
pub const EXIT_NEGATIVE: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_UNKNOWN: i32 = 4;

pub struct Client {
    pub socket: std::path::PathBuf,
}

pub struct Reply {
    pub status: u16,
    pub body: hyper::body::Incoming,
}

impl Client {
    pub async fn request(&self, method: &str, path: &str) -> Result<Reply, String> {
        crate::api::check_socket_owner(&self.socket)?;
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                "the socket is mode 0600: run as the supervisor's user (root in the container)"
            } else {
                "is it running? inside the container use `docker exec CONTAINER dmp-contained …`; elsewhere pass --socket"
            };
            format!(
                "cannot reach the supervisor at {}: {e} ({hint})",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("supervisor at {}: {e}", self.socket.display()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", crate::api::PREFIX))
            .header("host", "localhost")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("supervisor at {}: {e}", self.socket.display()))?;
        Ok(Reply {
            status: resp.status().as_u16(),
            body: resp.into_body(),
        })
    }

    async fn json(&self, method: &str, path: &str) -> Result<(u16, Value), String> {
        let r = self.request(method, path).await?;
        let s = body_string(r.body).await;
        let v = serde_json::from_str(&s).unwrap_or(Value::String(s));
        Ok((r.status, v))
    }
}

pub async fn status(c: &Client, as_json: bool, all: bool) -> i32 {
    let v = match c.json("GET", "/status").await {
        Ok((200, v)) => v,
        Ok((code, v)) => return refused(code, &v),
        Err(e) => return unreachable(e),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    let st: Status = match serde_json::from_value(v) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("error: the supervisor's status is not what this client knows: {e}");
            return EXIT_NEGATIVE;
        }
    };
    let s = &st.supervisor;
    println!(
        "supervisor {} (pid {}, up {:.0}s, v{})",
        s.state.as_str(),
        s.pid,
        s.uptime_s,
        s.version
    );
    println!(
        "{:<24} {:<8} {:<9} {:>7} {:>8} {:>9}  reason",
        "ENTRY", "KIND", "STATE", "PID", "RESTARTS", "READY(s)"
    );
    let mut skipped = Vec::new();
    for e in &st.entries {
        if !all && e.state == State::Skipped {
            skipped.push(e.name.as_str());
            continue;
        }
        println!(
            "{:<24} {:<8} {:<9} {:>7} {:>8} {:>9}  {}",
            e.name,
            e.kind.as_str(),
            e.state.to_string(),
            e.pid.map(|p| p.to_string()).unwrap_or("-".into()),
            e.restarts,
            e.time_to_ready_s
                .map(|t| format!("{t:.2}"))
                .unwrap_or("-".into()),
            e.reason_with_last_line()
        );
    }
    if !skipped.is_empty() {
        println!(
            "{} skipped (`status --all` shows why): {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    if let Some(r) = &st.config_reload {
        print!("last {}", reload_text(r));
        for e in &r.errors {
            println!("  error      {e}");
        }
    }
    if !st.critical_path.is_empty() {
        println!(
            "critical path: {}",
            crate::progress::path_text(&st.critical_path)
        );
    }
    0
}

pub async fn health(c: &Client) -> i32 {
    match c.json("GET", "/health").await {
        Ok((200, _)) => {
            println!("healthy");
            0
        }
        Ok((_, v)) => {
            let h: Option<Health> = serde_json::from_value(v.clone()).ok();
            let list: Vec<String> = h
                .into_iter()
                .flat_map(|h| h.not_ready)
                .map(|e| {
                    let mut s = format!("{} ({})", e.name, e.state);
                    if let Some(r) = e.reason {
                        s.push_str(&format!(": {r}"));
                    }
                    s
                })
                .collect();
            if list.is_empty() {
                println!(
                    "unhealthy: {}",
                    v["error"]
                        .as_str()
                        .unwrap_or("no answer from the supervisor loop")
                );
            } else {
                println!("unhealthy: not ready: {}", list.join("; "));
            }
            EXIT_NEGATIVE
        }
        Err(e) => unreachable(e),
    }
}

pub async fn act(c: &Client, action: &str, names: &[String]) -> i32 {
    let mut code = 0;
    for n in names {
        match c
            .json("POST", &format!("/entries/{}/{action}", urlencode(n)))
            .await
        {
            Ok((200, v)) => println!("{}", v["message"].as_str().unwrap_or("ok")),
            Ok((404, v)) => {
                eprintln!("error: {}", v["error"].as_str().unwrap_or("unknown entry"));
                code = code.max(EXIT_UNKNOWN);
            }
            Ok((status, v)) => {
                let negative = refused(status, &v);
                // `run`: the step's own exit code when it ran and failed.
                let c = v["exit_code"]
                    .as_i64()
                    .map(|c| c as i32)
                    .filter(|&c| c != 0);
                code = code.max(c.unwrap_or(negative));
            }
            Err(e) => return unreachable(e),
        }
    }
    code
}

/// `snapshot save|restore NAME` through the running supervisor.
pub async fn snapshot(c: &Client, op: &str, name: &str) -> i32 {
    match c
        .json("POST", &format!("/snapshots/{}/{op}", urlencode(name)))
        .await
    {
        Ok((200, v)) => {
            println!("{}", v["message"].as_str().unwrap_or("ok"));
            0
        }
        Ok((_, v)) => {
            eprintln!("error: {}", v["error"].as_str().unwrap_or("refused"));
            1
        }
        Err(e) => unreachable(e),
    }
}

pub async fn shutdown(c: &Client) -> i32 {
    match c.json("POST", "/shutdown").await {
        Ok((202, _)) => {
            println!("shutting down");
            0
        }
        Ok((code, v)) => refused(code, &v),
        Err(e) => unreachable(e),
    }
}

/// `reload`: what changed, or every error (exit `invalid_code` when the table is invalid, 1
/// when the reload was refused or something it started failed).
pub async fn reload(c: &Client, invalid_code: i32) -> i32 {
    let (status, v) = match c.json("POST", "/reload").await {
        Ok(r) => r,
        Err(e) => return unreachable(e),
    };
    let Ok(r) = serde_json::from_value::<Report>(v.clone()) else {
        return refused(status, &v);
    };
    print!("{}", reload_text(&r));
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    match r.outcome {
        Outcome::Applied => 0,
        Outcome::Invalid => {
            eprintln!("nothing changed: the running stack keeps the table it started with");
            invalid_code
        }
        _ => EXIT_NEGATIVE,
    }
}

/// A reload report (`config_reload` of status) as lines.
fn reload_text(r: &Report) -> String {
    let took = match r.finished_at {
        Some(b) => format!(" in {:.2}s", b.saturating_sub(r.at) as f64 / 1000.0),
        None => String::new(),
    };
    let mut s = format!(
        "config reload ({}): {}{took}\n",
        r.trigger.as_str(),
        r.outcome.as_str()
    );
    for (k, l) in [
        ("added", &r.added),
        ("removed", &r.removed),
        ("changed", &r.changed),
    ] {
        if !l.is_empty() {
            s += &format!("  {k:<10} {}\n", l.join(", "));
        }
    }
    if !matches!(r.outcome, Outcome::Invalid | Outcome::Refused) {
        s += &format!("  unchanged  {} entries\n", r.unchanged.len());
    }
    for (l, label) in [
        (&r.templates, "templates"),
        (&r.template_actions, "reloaded"),
        (&r.notes, "note"),
    ] {
        if !l.is_empty() {
            s += &format!("  {label:<10} {}\n", l.join(", "));
        }
    }
    s
}

/// The supervisor answered, but no: print its message, exit 1.
fn refused(status: u16, v: &Value) -> i32 {
    let msg = v["error"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string());
    eprintln!("error: {msg} (HTTP {status})");
    EXIT_NEGATIVE
}

fn unreachable(e: String) -> i32 {
    eprintln!("error: {e}");
    EXIT_UNREACHABLE
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Socket path: flag, then env, then the table's `[supervisor] socket`, then the default.
pub fn socket_path(flag: Option<&Path>, config: &Path) -> std::path::PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Ok(p) = std::env::var("DMP_CONTAINED_SOCKET") {
        return p.into();
    }
    if let Ok(src) = std::fs::read_to_string(config) {
        if let Ok(v) = src.parse::<toml::Table>() {
            if let Some(s) = v
                .get("supervisor")
                .and_then(|s| s.get("socket"))
                .and_then(|s| s.as_str())
            {
                let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
                if let Ok(x) = crate::interp::expand(s, &|n| env.get(n).cloned()) {
                    return x.into();
                }
            }
        }
    }
    "/run/dmp-contained.sock".into()
}

/// Collects a small response body.
async fn body_string(b: hyper::body::Incoming) -> String {
    b.collect()
        .await
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
        .unwrap_or_default()
}
