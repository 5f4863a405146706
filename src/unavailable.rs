//! `/_supervisor/unavailable/NAME`: what nginx shows when a mounted app does not answer.
//!
//! nginx sends a request here when the app's port refused it (502/504), with the original URI
//! in `X-Dmp-Original-Uri`. The answer never looks fine:
//! - the app is being reloaded, restarted or started: the request is held until it is ready
//!   (at most `HOLD`), then answered `307` to the same URI, so the browser retries it against
//!   the new code instead of seeing a placeholder;
//! - otherwise `503` naming the app's real state and reason (with its last log line when it
//!   failed), refreshing itself every few seconds;
//! - an entry that is skipped (its repository is not mounted) or unknown is `404`: nginx then
//!   shows the example app's "clone it" page.

use crate::api::{Api, Resp};
use crate::supervisor::Control;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a request for an app that is being reloaded is held before the 503 page.
const HOLD: Duration = Duration::from_secs(10);
/// The 503 page's `Refresh` / `Retry-After`, in seconds.
const REFRESH_S: u32 = 3;

pub async fn respond(api: &Api, name: &str, original_uri: Option<&str>, as_json: bool) -> Resp {
    let Some(idx) = api.shared.plan().index(name) else {
        return page(
            StatusCode::NOT_FOUND,
            as_json,
            name,
            "unknown",
            &format!("no entry `{name}`"),
        );
    };
    let Some(status) = api.status().await else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            as_json,
            name,
            "unknown",
            "the supervisor loop is not answering",
        );
    };
    let e = &status["entries"][idx];
    let state = e["state"].as_str().unwrap_or("unknown").to_string();
    if state == "skipped" {
        return page(StatusCode::NOT_FOUND, as_json, name, &state, &reason(e));
    }
    if let Some(uri) = original_uri.filter(|u| u.starts_with('/')) {
        if being_reloaded(e) && settled_ready(api, idx).await {
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", uri)
                .header("cache-control", "no-store")
                .body(http_body_util::Either::Left(Full::new(Bytes::new())))
                .unwrap();
        }
    }
    // Read again: holding may have ended in a failure with a new reason.
    let e = match api.status().await {
        Some(s) => s["entries"][idx].clone(),
        None => e.clone(),
    };
    let state = e["state"].as_str().unwrap_or("unknown");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        as_json,
        name,
        state,
        &reason(&e),
    )
}

/// On its way to ready after having run (hot reload, restart; `runs` counts starts, so a
/// restart's stop and wait have `runs >= 1` and its start `runs >= 2`), or starting now?
fn being_reloaded(e: &Value) -> bool {
    let reloading = e["watch"]["reloading"].as_bool() == Some(true);
    let restarting = e["runs"].as_u64().unwrap_or(0) >= 1
        && matches!(
            e["state"].as_str(),
            Some("starting" | "stopping" | "waiting")
        );
    reloading || restarting
}

/// Waits (at most `HOLD`) for the entry to be ready; false when it settled elsewhere.
async fn settled_ready(api: &Api, idx: usize) -> bool {
    let (tx, rx) = oneshot::channel();
    if api
        .shared
        .control
        .send(Control::AwaitSettled { idx, reply: tx })
        .await
        .is_err()
    {
        return false;
    }
    matches!(tokio::time::timeout(HOLD, rx).await, Ok(Ok(Ok(()))))
}

/// The reason from status; for a failure, with the last line the app logged.
fn reason(e: &Value) -> String {
    let mut r = e["reason"].as_str().unwrap_or("").to_string();
    if let Some(last) = e["log_tail"].as_array().and_then(|t| {
        t.iter()
            .rev()
            .filter_map(Value::as_str)
            .find(|l| !l.trim().is_empty())
    }) {
        if !r.contains(last.trim()) {
            r = format!("{r}; last log line: {}", last.trim());
        }
    }
    r
}

fn page(code: StatusCode, as_json: bool, name: &str, state: &str, reason: &str) -> Resp {
    let (ctype, body) = if as_json {
        let v = json!({"status": "error", "app": name, "state": state, "reason": reason,
            "message": format!("{name} is {state}: {reason}")});
        ("application/json", format!("{v}\n"))
    } else {
        let (n, s, r) = (escape(name), escape(state), escape(reason));
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content={REFRESH_S}>\
                 <title>{} {n} is {s}</title><h1>{n} is {s}</h1><p>{r}</p>\
                 <p>This page reloads itself every {REFRESH_S} s. The state of every service: \
                 <a href=\"/_supervisor/\">/_supervisor/</a>, its output: \
                 <a href=\"/_supervisor/logs/{n}\">/_supervisor/logs/{n}</a>.</p>\n",
                code.as_u16()
            ),
        )
    };
    Response::builder()
        .status(code)
        .header("content-type", ctype)
        .header("cache-control", "no-store")
        .header("refresh", REFRESH_S.to_string())
        .header("retry-after", REFRESH_S.to_string())
        .body(http_body_util::Either::Left(Full::new(Bytes::from(body))))
        .unwrap()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_has_the_last_log_line_once() {
        let e = json!({"reason": "crash loop", "log_tail": ["a", "ImportError: no module x", ""]});
        assert_eq!(
            reason(&e),
            "crash loop; last log line: ImportError: no module x"
        );
        let e = json!({"reason": "failed: ImportError: no module x", "log_tail": ["ImportError: no module x"]});
        assert_eq!(reason(&e), "failed: ImportError: no module x");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
