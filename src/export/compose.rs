//! `export compose`: one compose service per entry, all from the same image, each running its
//! own entry under the supervisor (`up --as-service NAME`).

use super::model::{Model, Service, Wait};
use crate::plan::Kind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How entry ports appear on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Publish {
    /// `PORT:PORT`, as in the one-container stack.
    Same,
    /// An ephemeral host port per container port (`docker-compose port` tells which).
    Random,
    /// Not published: reachable from the other services only.
    None,
}

#[derive(Serialize)]
struct File {
    services: BTreeMap<String, ComposeService>,
    volumes: BTreeMap<String, Empty>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ComposeService {
    image: String,
    command: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    depends_on: BTreeMap<String, Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
    /// The supervisor's signal: it stops the entry with the entry's own `stop_signal`.
    stop_signal: &'static str,
    stop_grace_period: String,
    /// Longruns only: a step's container runs once (compose's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    expose: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Port>,
    volumes: Vec<String>,
}

/// The long syntax: `"22:22"` would be a base-60 number to a YAML 1.1 reader.
#[derive(Serialize)]
struct Port {
    target: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    published: Option<u16>,
}

#[derive(Serialize)]
struct Condition {
    condition: &'static str,
}

#[derive(Serialize)]
struct Healthcheck {
    test: Vec<String>,
    interval: String,
    timeout: String,
    retries: u32,
    start_period: String,
}

pub fn render(m: &Model, publish: Publish, mounts: &[String]) -> Result<String, String> {
    let services = m
        .services
        .iter()
        .map(|s| (s.name.clone(), service(m, s, publish, mounts)))
        .collect();
    let volumes = m.volumes.iter().map(|v| (v.clone(), Empty {})).collect();
    serde_norway::to_string(&File { services, volumes }).map_err(|e| e.to_string())
}

fn service(m: &Model, s: &Service, publish: Publish, mounts: &[String]) -> ComposeService {
    let depends_on = s
        .deps
        .iter()
        .map(|(n, w)| {
            let condition = match w {
                Wait::Started => "service_started",
                Wait::Healthy => "service_healthy",
                Wait::Completed => "service_completed_successfully",
            };
            (n.clone(), Condition { condition })
        })
        .collect();
    let healthcheck = (s.kind == Kind::Longrun).then(|| {
        let p = s.ready.as_ref();
        let interval = p
            .map(|p| p.interval)
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut test = vec!["CMD".to_string()];
        test.extend(m.health_cmd());
        Healthcheck {
            test,
            interval: dur(interval),
            timeout: dur(Duration::from_secs(5)),
            retries: 3,
            start_period: dur(p
                .map(|p| p.start_period)
                .unwrap_or_default()
                .max(Duration::from_secs(30))),
        }
    });
    let ports = match publish {
        Publish::None => vec![],
        _ => s
            .ports
            .iter()
            .map(|&p| Port {
                target: p,
                published: (publish == Publish::Same).then_some(p),
            })
            .collect(),
    };
    ComposeService {
        image: m.opts.image.clone(),
        command: m.args(s),
        depends_on,
        healthcheck,
        stop_signal: "SIGTERM",
        stop_grace_period: dur(s.stop_grace),
        restart: (s.kind == Kind::Longrun).then_some("unless-stopped"),
        expose: s.ports.iter().map(|p| p.to_string()).collect(),
        ports,
        volumes: s
            .volumes
            .iter()
            .map(|v| format!("{}:{}", v.name, v.path.display()))
            .chain(mounts.iter().cloned())
            .collect(),
    }
}

/// Compose durations: whole milliseconds (`250ms`, `9000ms`) are always accepted.
fn dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
