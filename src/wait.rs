//! `dmp-contained wait [NAMES...] [--timeout 5m]`: blocks until the entries are ready/done,
//! following the supervisor's event stream (`GET /_supervisor/events`), not polling it.

use crate::cli::{Client, EXIT_NEGATIVE, EXIT_UNKNOWN, EXIT_UNREACHABLE};
use crate::progress::{Event, Mode, Renderer};
use crate::state::State;
use crate::status::Status;
use http_body_util::BodyExt;
use hyper::body::Incoming;
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
        e.state,
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
    let mut body = match subscribe(c).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let status = match get_status(c).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let targets: Vec<String> = if names.is_empty() {
        status
            .entries
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
    let mut view = View::new(&status, targets);
    loop {
        match judge(&view.targets, &view.states) {
            Some(Outcome::Ready) => {
                eprintln!("ready: {}", view.targets.join(", "));
                return 0;
            }
            Some(Outcome::Failed(name)) => return failed(c, status, &name).await,
            None => {}
        }
        let data = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return timed_out(c, status, view, timeout).await,
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Ok(_) => {
                eprintln!("error: the supervisor closed the event stream (shutting down?)");
                return EXIT_UNREACHABLE;
            }
        };
        view.feed(c, &data).await;
    }
}

/// `GET /events`, or the exit code when the supervisor cannot be reached or refuses.
async fn subscribe(c: &Client) -> Result<Incoming, i32> {
    match c.request("GET", "/events").await {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => {
            eprintln!("error: the supervisor answered {} to /events", r.status);
            Err(EXIT_NEGATIVE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_UNREACHABLE)
        }
    }
}

/// What `wait` knows: every entry's state, as of event `seq`, and the progress lines.
struct View {
    targets: Vec<String>,
    states: HashMap<String, State>,
    seq: u64,
    renderer: Renderer,
    /// Bytes of the event stream after its last complete line.
    pending: Vec<u8>,
}

impl View {
    fn new(status: &Status, targets: Vec<String>) -> View {
        let entries = &status.entries;
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
        let states = states_of(status);
        for (n, s) in &states {
            renderer.seed(n, *s, None, uptime);
        }
        View {
            targets,
            states,
            seq: status.event_seq,
            renderer,
            pending: Vec::new(),
        }
    }

    /// Applies the complete event lines in `data` (and what was pending before it).
    async fn feed(&mut self, c: &Client, data: &[u8]) {
        self.pending.extend_from_slice(data);
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            match serde_json::from_slice::<Event>(&line) {
                Ok(ev) if ev.seq() > self.seq => {
                    self.seq = ev.seq();
                    if let Event::State { name, to, .. } = &ev {
                        self.states.insert(name.clone(), *to);
                    }
                    eprint!("{}", self.renderer.apply(&ev));
                }
                Ok(_) => {}
                // `lagged`: events were missed; the snapshot is the truth again.
                Err(_) => {
                    if let Ok(v) = get_status(c).await {
                        self.seq = v.event_seq;
                        self.states = states_of(&v);
                    }
                }
            }
        }
    }
}

/// A target failed: why, from a fresh snapshot (else `status`), and its last log lines.
async fn failed(c: &Client, mut status: Status, name: &str) -> i32 {
    if let Ok(v) = get_status(c).await {
        status = v;
    }
    explain(&status, name, "failed");
    print_log_tail(c, name).await;
    EXIT_NEGATIVE
}

/// The timeout passed: which targets are not ready, and why.
async fn timed_out(c: &Client, mut status: Status, view: View, timeout: Duration) -> i32 {
    let mut states = view.states;
    if let Ok(v) = get_status(c).await {
        status = v;
        states = states_of(&status);
    }
    let still: Vec<&String> = view
        .targets
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
    EXIT_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_target_ends_the_wait_before_readiness() {
        let targets = vec!["db".to_string(), "web".to_string()];
        let mut states = HashMap::from([
            ("db".to_string(), State::Ready),
            ("web".to_string(), State::Starting),
            ("other".to_string(), State::Failed),
        ]);
        // A failure outside the targets does not matter.
        assert!(judge(&targets, &states).is_none());
        states.insert("web".into(), State::Done);
        assert!(matches!(judge(&targets, &states), Some(Outcome::Ready)));
        states.insert("db".into(), State::Failed);
        assert!(matches!(judge(&targets, &states), Some(Outcome::Failed(n)) if n == "db"));
    }

    #[test]
    fn timeouts_take_seconds_or_human_durations() {
        assert_eq!(parse_timeout("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_timeout("soon").is_err());
    }
}
