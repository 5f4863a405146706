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
//!
//! It reads the published status and only asks the loop to be told when an entry settles
//! (`Control::AwaitSettled`); it never restarts or starts anything itself.

use super::{Api, Resp};
use crate::control::Control;
use crate::state::State;
use crate::status::EntryStatus;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;
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
    let status = api.status();
    let Some(e) = status.entry(name) else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            as_json,
            name,
            "unknown",
            "the supervisor has not published its status yet",
        );
    };
    if e.state == State::Skipped {
        return page(
            StatusCode::NOT_FOUND,
            as_json,
            name,
            "skipped",
            &e.reason_with_last_line(),
        );
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
    let status = api.status();
    let e = status.entry(name).unwrap_or(e);
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        as_json,
        name,
        &e.state.to_string(),
        &e.reason_with_last_line(),
    )
}

/// On its way to ready after having run (hot reload, restart; `runs` counts starts, so a
/// restart's stop and wait have `runs >= 1` and its start `runs >= 2`), or starting now?
fn being_reloaded(e: &EntryStatus) -> bool {
    let reloading = e.watch.as_ref().is_some_and(|w| w.reloading);
    let restarting =
        e.runs >= 1 && matches!(e.state, State::Starting | State::Stopping | State::Waiting);
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

fn page(code: StatusCode, as_json: bool, name: &str, state: &str, reason: &str) -> Resp {
    let reason = crate::redact::global().apply(reason);
    let reason = reason.as_ref();
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
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
