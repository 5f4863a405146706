//! `GET /metrics`: the Prometheus text rendering of a `Status` snapshot, plus the API's own
//! gauges (log followers, TCP connections) and the supervisor's resident memory.
//!
//! Rendering only: it reads `&Status` and the API's counters and never asks the loop.

use super::follow::FOLLOWERS;
use super::resp::{full, Resp};
use super::serve::TCP_CONNECTIONS;
use super::Api;
use crate::status::{EntryStatus, Status};
use hyper::StatusCode;
use std::sync::atomic::Ordering;

impl Api {
    pub(super) fn metrics(&self) -> Resp {
        full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render_metrics(&self.status()),
        )
    }
}

/// The per-entry families, labelled `{entry, kind}`: name, help, type, value (no row for None).
type EntryFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&EntryStatus) -> Option<f64>,
);
const ENTRY_FAMILIES: &[EntryFamily] = &[
    (
        "dmp_entry_up",
        "1 if the entry has a live process",
        "gauge",
        |e| Some(f64::from(u8::from(e.pid.is_some()))),
    ),
    (
        "dmp_entry_ready",
        "1 if the entry is ready (longrun) or done (oneshot)",
        "gauge",
        |e| Some(f64::from(u8::from(e.ready))),
    ),
    (
        "dmp_entry_restarts_total",
        "restarts of the entry",
        "counter",
        |e| Some(f64::from(e.restarts)),
    ),
    (
        "dmp_entry_last_exit_code",
        "last exit code (128+n for a signal, -1 if none yet)",
        "gauge",
        |e| {
            Some(
                e.last_exit
                    .as_ref()
                    .map_or(-1.0, |x| f64::from(x.as_code())),
            )
        },
    ),
    (
        "dmp_entry_log_lines_total",
        "lines captured from the entry",
        "counter",
        |e| Some(e.log_lines as f64),
    ),
    (
        "dmp_entry_time_to_ready_seconds",
        "start-to-ready time of the last start",
        "gauge",
        |e| e.time_to_ready_s,
    ),
];

fn render_metrics(st: &Status) -> String {
    let mut s = String::new();
    let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, val) in rows {
            s.push_str(&format!("{name}{labels} {val}\n"));
        }
    };
    let lab = |e: &EntryStatus, extra: &str| {
        let (name, kind) = (label_escape(&e.name), e.kind.as_str());
        format!("{{entry=\"{name}\",kind=\"{kind}\"{extra}}}")
    };
    for (name, help, kind, value) in ENTRY_FAMILIES {
        let rows = st.entries.iter();
        family(
            name,
            help,
            kind,
            rows.filter_map(|e| Some((lab(e, ""), value(e)?))).collect(),
        );
    }
    family(
        "dmp_entry_state",
        "1 for the entry's current state",
        "gauge",
        st.entries
            .iter()
            .map(|e| {
                let state = e.state.to_string();
                (lab(e, &format!(",state=\"{state}\"")), 1.0)
            })
            .collect(),
    );
    let output = &st.supervisor.output;
    let process: [(&str, &str, &str, f64); 6] = [
        (
            "dmp_api_log_followers",
            "log followers currently streaming",
            "gauge",
            FOLLOWERS.load(Ordering::Relaxed) as f64,
        ),
        (
            "dmp_api_tcp_connections",
            "open HTTP connections on the TCP listener",
            "gauge",
            TCP_CONNECTIONS.load(Ordering::Relaxed) as f64,
        ),
        (
            "dmp_supervisor_uptime_seconds",
            "supervisor uptime",
            "gauge",
            st.supervisor.uptime_s,
        ),
        (
            "dmp_output_dropped_lines_total",
            "service output lines dropped because the supervisor's stdout was not being read",
            "counter",
            output.dropped_lines as f64,
        ),
        (
            "dmp_output_queued_bytes",
            "formatted output waiting for stdout",
            "gauge",
            output.queued_bytes as f64,
        ),
        (
            "dmp_supervisor_resident_bytes",
            "supervisor resident memory",
            "gauge",
            rss_bytes() as f64,
        ),
    ];
    for (name, help, kind, value) in process {
        family(name, help, kind, vec![(String::new(), value)]);
    }
    s
}

fn label_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * 4096)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        let entry = |name: &str, state: &str, extra: serde_json::Value| {
            let mut e = serde_json::json!({
                "name": name, "kind": "longrun", "state": state, "ready": false,
                "required": true, "critical": false, "restarts": 0, "runs": 1,
                "after": [], "command": [], "env": {}, "log_lines": 0,
            });
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            e
        };
        serde_json::from_value(serde_json::json!({
            "event_seq": 1, "critical_path": [], "config_reload": null,
            "supervisor": {"version": "0", "pid": 1, "uptime_s": 2.5, "state": "running",
                "config": "/x.toml", "output": {"queued_bytes": 7, "queue_limit_bytes": 0,
                "written_bytes": 0, "dropped_lines": 3, "dropped_bytes": 0}},
            "entries": [
                entry("web \"1\"", "ready", serde_json::json!({"pid": 9, "ready": true,
                    "restarts": 2, "log_lines": 5, "time_to_ready_s": 1.5,
                    "last_exit": {"code": 1, "signal": null, "at": 0}})),
                entry("db", "failed", serde_json::json!({"kind": "oneshot",
                    "last_exit": {"code": null, "signal": "SIGKILL", "at": 0}})),
                entry("idle", "waiting", serde_json::json!({})),
            ],
        }))
        .unwrap()
    }

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let text = render_metrics(&status());
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "dmp_entry_up{entry=\"web \\\"1\\\"\",kind=\"longrun\"} 1",
            "dmp_entry_up{entry=\"db\",kind=\"oneshot\"} 0",
            "dmp_entry_restarts_total{entry=\"web \\\"1\\\"\",kind=\"longrun\"} 2",
            "dmp_entry_last_exit_code{entry=\"web \\\"1\\\"\",kind=\"longrun\"} 1",
            "dmp_entry_last_exit_code{entry=\"db\",kind=\"oneshot\"} 137",
            "dmp_entry_last_exit_code{entry=\"idle\",kind=\"longrun\"} -1",
            "dmp_entry_time_to_ready_seconds{entry=\"web \\\"1\\\"\",kind=\"longrun\"} 1.5",
            "dmp_entry_state{entry=\"db\",kind=\"oneshot\",state=\"failed\"} 1",
            "# TYPE dmp_output_dropped_lines_total counter",
            "dmp_output_dropped_lines_total 3",
            "dmp_output_queued_bytes 7",
            "dmp_supervisor_uptime_seconds 2.5",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        // No row where there is no value: only `web` has a time to ready.
        let ttr = lines
            .iter()
            .filter(|l| l.starts_with("dmp_entry_time_to_ready_seconds{"))
            .count();
        assert_eq!(ttr, 1);
    }
}
