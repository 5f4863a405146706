//! The client side of the same binary: talks HTTP over the Unix socket.

use crate::api::body_string;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// Exit codes for scripts: 0 ok, 1 the answer was negative (unhealthy, action refused),
/// 3 the supervisor is not reachable, 4 unknown entry.
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
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            format!(
                "cannot reach the supervisor at {}: {e} (is it running? inside the container use `docker exec CONTAINER dmp-contained …`; elsewhere pass --socket)",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", crate::api::PREFIX))
            .header("host", "localhost")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
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

pub async fn status(c: &Client, as_json: bool) -> i32 {
    let (_, v) = match c.json("GET", "/status").await {
        Ok(x) => x,
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
        "{:<30} {:<8} {:<9} {:>7} {:>8} {:>9}  reason",
        "ENTRY", "KIND", "STATE", "PID", "RESTARTS", "READY(s)"
    );
    for e in v["entries"].as_array().into_iter().flatten() {
        println!(
            "{:<30} {:<8} {:<9} {:>7} {:>8} {:>9}  {}",
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
            e["reason"].as_str().unwrap_or("")
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
            println!("unhealthy: {}", v["not_ready"]);
            1
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
            Ok((_, v)) => {
                eprintln!("error: {}", v["error"].as_str().unwrap_or("refused"));
                code = code.max(1);
            }
            Err(e) => return unreachable(e),
        }
    }
    code
}

pub async fn shutdown(c: &Client) -> i32 {
    match c.json("POST", "/shutdown").await {
        Ok((202, _)) => {
            println!("shutting down");
            0
        }
        Ok((_, v)) => {
            eprintln!("error: {v}");
            1
        }
        Err(e) => unreachable(e),
    }
}

pub async fn logs(c: &Client, names: &[String], follow: bool, tail: usize) -> i32 {
    let multi = names.len() > 1;
    let mut tasks = Vec::new();
    for n in names {
        let path = format!(
            "/logs/{}?tail={tail}{}",
            urlencode(n),
            if follow { "&follow=1" } else { "" }
        );
        let r = match c.request("GET", &path).await {
            Ok(r) => r,
            Err(e) => return unreachable(e),
        };
        if r.status == 404 {
            eprintln!("error: unknown entry `{n}`");
            return EXIT_UNKNOWN;
        }
        let prefix = if multi {
            format!("{n} | ")
        } else {
            String::new()
        };
        tasks.push(tokio::spawn(async move {
            let mut body = r.body;
            let mut pending = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    pending.extend_from_slice(d);
                    let mut out = std::io::stdout().lock();
                    while let Some(i) = memchr::memchr(b'\n', &pending) {
                        let _ = out.write_all(prefix.as_bytes());
                        let _ = out.write_all(&pending[..=i]);
                        pending.drain(..=i);
                    }
                    let _ = out.flush();
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    0
}

fn unreachable(e: String) -> i32 {
    eprintln!("error: {e}");
    EXIT_UNREACHABLE
}

fn urlencode(s: &str) -> String {
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
