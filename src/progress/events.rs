//! The typed events the control loop broadcasts, the critical path of a start, and the
//! `/events` stream of them.

use crate::state::State;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One thing the control loop reports (`GET /_supervisor/events`, one JSON object a line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An entry changed state; `t_s` is seconds since the supervisor started.
    State {
        seq: u64,
        t_s: f64,
        name: String,
        from: State,
        to: State,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// For a failed entry: the last line it logged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_line: Option<String>,
    },
    /// Every required entry is ready/done for the first time.
    Ready {
        seq: u64,
        t_s: f64,
        critical_path: Vec<Link>,
        cached: usize,
        url: String,
    },
}

impl Event {
    pub fn seq(&self) -> u64 {
        match self {
            Event::State { seq, .. } | Event::Ready { seq, .. } => *seq,
        }
    }
}

/// One entry's start-up span, seconds since the supervisor started.
#[derive(Debug, Clone, Default)]
pub struct Span {
    pub name: String,
    /// Left `waiting` (spawned, or found cached).
    pub start_s: Option<f64>,
    /// First ready / done / cached.
    pub end_s: Option<f64>,
    /// Indexes of its dependencies.
    pub after: Vec<usize>,
}

/// One link of the critical path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    /// From leaving `waiting` to ready/done.
    pub duration_s: f64,
    /// From the supervisor's start to leaving `waiting`.
    pub waited_s: f64,
}

/// The chain that decided when `spans` were all up: the entry that finished last, then
/// (backwards) the dependency of each link that finished last. First link first.
pub fn critical_path(spans: &[Span]) -> Vec<Link> {
    let end = |i: usize| spans[i].end_s;
    let last = (0..spans.len())
        .filter(|&i| end(i).is_some())
        .max_by(|&a, &b| {
            end(a)
                .partial_cmp(&end(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    let mut path = Vec::new();
    let mut cur = last;
    while let Some(i) = cur {
        let s = &spans[i];
        let start = s.start_s.unwrap_or(0.0);
        path.push(Link {
            name: s.name.clone(),
            duration_s: (s.end_s.unwrap_or(start) - start).max(0.0),
            waited_s: start,
        });
        cur = s
            .after
            .iter()
            .copied()
            .filter(|&d| {
                d != i && end(d).is_some() && !path.iter().any(|l| l.name == spans[d].name)
            })
            .max_by(|&a, &b| {
                end(a)
                    .partial_cmp(&end(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
    }
    path.reverse();
    path
}

/// `pg-init 0.02 s → postgres 0.17 s → api 2.9 s`
pub fn path_text(path: &[Link]) -> String {
    path.iter()
        .map(|l| format!("{} {}", l.name, secs(l.duration_s)))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The line printed once when the stack is first ready.
pub fn ready_line(t_s: f64, path: &[Link], cached: usize, url: &str) -> String {
    let mut s = format!("stack ready in {}", secs(t_s));
    if !path.is_empty() {
        let _ = write!(s, "; critical path: {}", path_text(path));
    }
    let _ = write!(
        s,
        "; {cached} step{} cached; open {url}",
        if cached == 1 { "" } else { "s" }
    );
    s
}

pub(super) fn secs(t: f64) -> String {
    if t < 0.1 {
        format!("{t:.2} s")
    } else if t < 10.0 {
        format!("{t:.1} s")
    } else {
        format!("{t:.0} s")
    }
}

/// Moves events from the broadcast to one `/events` response as JSON lines, scrubbing
/// reasons and log lines with `scrub(entry, text)`. A subscriber that falls behind gets a
/// `{"type":"lagged","missed":N}` line (and should re-read `/status`).
pub async fn pump_events(
    mut rx: tokio::sync::broadcast::Receiver<Event>,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    scrub: impl Fn(&str, &str) -> String,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let line = tokio::select! {
            r = rx.recv() => match r {
                Ok(mut ev) => {
                    if let Event::State { name, reason, last_line, .. } = &mut ev {
                        for t in [reason, last_line].into_iter().flatten() {
                            *t = scrub(name, t);
                        }
                    }
                    serde_json::to_string(&ev).unwrap_or_default()
                }
                Err(RecvError::Lagged(n)) => format!("{{\"type\":\"lagged\",\"missed\":{n}}}"),
                Err(RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
        };
        if tx.send(bytes::Bytes::from(line + "\n")).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, start: f64, end: f64, after: &[usize]) -> Span {
        Span {
            name: name.into(),
            start_s: Some(start),
            end_s: Some(end),
            after: after.to_vec(),
        }
    }

    #[test]
    fn critical_path_follows_the_latest_dependency() {
        let spans = vec![
            span("pg-init", 0.0, 0.02, &[]),
            span("postgres", 0.02, 0.19, &[0]),
            span("redis", 0.0, 0.1, &[]),
            span("db-create", 0.19, 1.19, &[1, 2]),
            span("api", 1.19, 4.1, &[3, 2]),
            span("docs", 0.0, 0.5, &[]),
        ];
        let p = critical_path(&spans);
        let names: Vec<&str> = p.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["pg-init", "postgres", "db-create", "api"]);
        assert!((p[3].duration_s - 2.91).abs() < 1e-9);
        assert!((p[3].waited_s - 1.19).abs() < 1e-9);
        assert_eq!(
            path_text(&p),
            "pg-init 0.02 s → postgres 0.2 s → db-create 1.0 s → api 2.9 s"
        );
        assert!(critical_path(&[]).is_empty());
    }
}
