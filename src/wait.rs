//! `dmp-contained wait [NAMES...] [--timeout 5m]`: blocks until the entries are ready/done,
//! following the supervisor's event stream (`GET /_supervisor/events`), not polling it.

use crate::cli::{Client, EXIT_NEGATIVE, EXIT_UNKNOWN, EXIT_UNREACHABLE};
use crate::progress::{Event, Mode, Renderer};
use crate::state::State;
use crate::status::Status;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::time::Duration;

/// Exit code when the timeout passed with entries still on their way.
pub const EXIT_TIMEOUT: i32 = 124;

/// `300`, `300s`, `5m`, `1h 30m`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("bad timeout {s:?}: {e}")),
    }
}

async fn get_status(c: &Client) -> Result<Status, String> {
    let r = c.request("GET", "/status").await?;
    let b = r
        .body
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&b).map_err(|e| format!("/status: {e}"))
}

enum Outcome {
    Ready,
    Failed(String),
}

/// Targets: `names`, or every required entry. `states` from the last status snapshot.
fn judge(targets: &[String], states: &HashMap<String, State>) -> Option<Outcome> {
    if let Some(f) = targets
        .iter()
        .find(|n| states.get(*n) == Some(&State::Failed))
    {
        return Some(Outcome::Failed(f.clone()));
    }
    targets
        .iter()
        .all(|n| states.get(n).is_some_and(|s| s.is_healthy()))
        .then_some(Outcome::Ready)
}

fn states_of(status: &Status) -> HashMap<String, State> {
    status
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.state))
        .collect()
}

/// Prints why `name` is not ready (its state, reason and last log lines) from a status snapshot.
fn explain(status: &Status, name: &str, what: &str) {
    let Some(e) = status.entry(name) else {
        return;
    };
    eprintln!(
        "{what}: {name} ({}){}",
        crate::state::state_name(e.state),
        e.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
}

async fn print_log_tail(c: &Client, name: &str) {
    let path = format!("/logs/{name}?tail=5");
    if let Ok(r) = c.request("GET", &path).await {
        if let Ok(b) = r.body.collect().await {
            let text = String::from_utf8_lossy(&b.to_bytes()).to_string();
            if !text.trim().is_empty() {
                eprintln!("last log lines of {name}:");
                for l in text.lines() {
                    eprintln!("  {l}");
                }
            }
        }
    }
}

pub async fn wait(c: &Client, names: &[String], timeout: Duration) -> i32 {
    // Subscribe first, then read the snapshot: events up to its `event_seq` are in it.
    let stream = match c.request("GET", "/events").await {
        Ok(r) if r.status == 200 => r.body,
        Ok(r) => {
            eprintln!("error: the supervisor answered {} to /events", r.status);
            return EXIT_NEGATIVE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut status = match get_status(c).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let entries = &status.entries;
    let targets: Vec<String> = if names.is_empty() {
        entries
            .iter()
            .filter(|e| e.required)
            .map(|e| e.name.clone())
            .collect()
    } else {
        names.to_vec()
    };
    if let Some(n) = targets.iter().find(|n| status.entry(n).is_none()) {
        eprintln!("error: unknown entry `{n}`");
        return EXIT_UNKNOWN;
    }
    let mut renderer = Renderer::new(
        Mode::Plain,
        entries
            .iter()
            .map(|e| {
                let after = e
                    .dependency_names()
                    .filter_map(|d| entries.iter().position(|x| x.name == d))
                    .collect();
                (e.name.clone(), targets.contains(&e.name), after)
            })
            .collect(),
    );
    let uptime = status.supervisor.uptime_s;
    let mut states = states_of(&status);
    for (n, s) in &states {
        renderer.seed(n, *s, None, uptime);
    }
    let mut seq = status.event_seq;
    let mut body = stream;
    let mut pending = Vec::<u8>::new();
    loop {
        match judge(&targets, &states) {
            Some(Outcome::Ready) => {
                eprintln!("ready: {}", targets.join(", "));
                return 0;
            }
            Some(Outcome::Failed(name)) => {
                if let Ok(v) = get_status(c).await {
                    status = v;
                }
                explain(&status, &name, "failed");
                print_log_tail(c, &name).await;
                return EXIT_NEGATIVE;
            }
            None => {}
        }
        let frame = tokio::time::timeout_at(deadline, body.frame()).await;
        let data = match frame {
            Err(_) => {
                if let Ok(v) = get_status(c).await {
                    status = v;
                    states = states_of(&status);
                }
                let still: Vec<&String> = targets
                    .iter()
                    .filter(|n| !states.get(*n).is_some_and(|s| s.is_healthy()))
                    .collect();
                eprintln!(
                    "timed out after {}: not ready: {}",
                    humantime::format_duration(timeout),
                    still
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                for n in still {
                    explain(&status, n, "still waiting");
                    print_log_tail(c, n).await;
                }
                return EXIT_TIMEOUT;
            }
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Ok(_) => {
                eprintln!("error: the supervisor closed the event stream (shutting down?)");
                return EXIT_UNREACHABLE;
            }
        };
        pending.extend_from_slice(&data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            match serde_json::from_slice::<Event>(&line) {
                Ok(ev) if ev.seq() > seq => {
                    seq = ev.seq();
                    if let Event::State { name, to, .. } = &ev {
                        states.insert(name.clone(), *to);
                    }
                    eprint!("{}", renderer.apply(&ev));
                }
                Ok(_) => {}
                // `lagged`: events were missed; the snapshot is the truth again.
                Err(_) => {
                    if let Ok(v) = get_status(c).await {
                        seq = v.event_seq;
                        states = states_of(&v);
                    }
                }
            }
        }
    }
}
