//! The client side of the same binary: talks HTTP over the Unix socket.

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
    let s = &v["supervisor"];
    println!(
        "supervisor {} (pid {}, up {:.0}s, v{})",
        s["state"].as_str().unwrap_or("?"),
        s["pid"],
        s["uptime_s"].as_f64().unwrap_or(0.0),
        s["version"].as_str().unwrap_or("?")
    );
    println!(
        "{:<24} {:<8} {:<9} {:>7} {:>8} {:>9}  reason",
        "ENTRY", "KIND", "STATE", "PID", "RESTARTS", "READY(s)"
    );
    let mut skipped = Vec::new();
    for e in v["entries"].as_array().into_iter().flatten() {
        if !all && e["state"] == "skipped" {
            skipped.push(e["name"].as_str().unwrap_or("?"));
            continue;
        }
        println!(
            "{:<24} {:<8} {:<9} {:>7} {:>8} {:>9}  {}",
            e["name"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["state"].as_str().unwrap_or(""),
            e["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or("-".into()),
            e["restarts"],
            e["time_to_ready_s"]
                .as_f64()
                .map(|t| format!("{t:.2}"))
                .unwrap_or("-".into()),
            reason_text(e)
        );
    }
    if !skipped.is_empty() {
        println!(
            "{} skipped (`status --all` shows why): {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    if v["config_reload"].is_object() {
        print!("last {}", reload_text(&v["config_reload"]));
        for e in v["config_reload"]["errors"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!("  error      {}", e.as_str().unwrap_or_default());
        }
    }
    if let Ok(path) =
        serde_json::from_value::<Vec<crate::progress::Link>>(v["critical_path"].clone())
    {
        if !path.is_empty() {
            println!("critical path: {}", crate::progress::path_text(&path));
        }
    }
    0
}

/// An entry's reason; for a failed entry, with the last line it logged.
fn reason_text(e: &Value) -> String {
    let reason = e["reason"].as_str().unwrap_or("").to_string();
    let last = e["log_tail"].as_array().and_then(|t| {
        t.iter()
            .rev()
            .filter_map(Value::as_str)
            .find(|l| !l.trim().is_empty())
    });
    match last {
        Some(l) if e["state"] == "failed" && !reason.contains(l.trim()) => {
            format!("{reason}; last log line: {}", l.trim())
        }
        _ => reason,
    }
}

pub async fn health(c: &Client) -> i32 {
    match c.json("GET", "/health").await {
        Ok((200, _)) => {
            println!("healthy");
            0
        }
        Ok((_, v)) => {
            let list: Vec<String> = v["not_ready"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let mut s = format!(
                        "{} ({})",
                        e["name"].as_str().unwrap_or("?"),
                        e["state"].as_str().unwrap_or("?")
                    );
                    if let Some(r) = e["reason"].as_str() {
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
    if v["outcome"].is_null() {
        return refused(status, &v);
    }
    print!("{}", reload_text(&v));
    for e in v["errors"].as_array().into_iter().flatten() {
        eprintln!("error: {}", e.as_str().unwrap_or_default());
    }
    match v["outcome"].as_str() {
        Some("applied") => 0,
        Some("invalid") => {
            eprintln!("nothing changed: the running stack keeps the table it started with");
            invalid_code
        }
        _ => EXIT_NEGATIVE,
    }
}

/// A reload report (`config_reload` of status) as lines.
fn reload_text(v: &Value) -> String {
    let list = |k: &str| -> Vec<&str> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    let took = match (v["at"].as_u64(), v["finished_at"].as_u64()) {
        (Some(a), Some(b)) => format!(" in {:.2}s", b.saturating_sub(a) as f64 / 1000.0),
        _ => String::new(),
    };
    let mut s = format!(
        "config reload ({}): {}{took}\n",
        v["trigger"].as_str().unwrap_or("?"),
        v["outcome"].as_str().unwrap_or("?")
    );
    for k in ["added", "removed", "changed"] {
        let l = list(k);
        if !l.is_empty() {
            s += &format!("  {k:<10} {}\n", l.join(", "));
        }
    }
    if v["outcome"] != "invalid" && v["outcome"] != "refused" {
        s += &format!("  unchanged  {} entries\n", list("unchanged").len());
    }
    for (k, label) in [
        ("templates", "templates"),
        ("template_actions", "reloaded"),
        ("notes", "note"),
    ] {
        let l = list(k);
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
