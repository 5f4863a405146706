//! `export k8s`: one manifest file per object; `kubectl apply -f DIR` is the whole deploy.
//!
//! - a longrun is a Deployment, or a StatefulSet with a volume claim when it has a `data_dir`,
//!   plus a Service for its ports;
//! - a step that needs no service (nothing it depends on is a longrun) runs as an init container
//!   of each pod that depends on it; any other step is a Job;
//! - a pod waits for the services it depends on with init containers running
//!   `dmp-contained probe tcp NAME:PORT --wait`;
//! - probes map natively (`http` → `httpGet`, `tcp` → `tcpSocket`, `exec` → `exec`);
//!   `postgres`/`redis` (and `http` with a `body`) run `dmp-contained probe …` as an `exec`;
//! - the table's templates are one ConfigMap, mounted over the template sources.

use super::model::{Model, Service, CACHE_VOLUME};
use crate::plan::{Kind, Plan, Probe, ProbeKind};
use serde_json::{json, Value};
use std::time::Duration;

const PART_OF: &str = "dmp-contained";
const TEMPLATES: &str = "dmp-contained-templates";

/// `(file name, YAML)` per object, in apply order.
pub fn render(m: &Model, plan: &Plan) -> Result<Vec<(String, String)>, String> {
    let mut objects: Vec<(String, Value)> = Vec::new();
    let templates = template_files(m, plan);
    if !templates.is_empty() {
        let data: serde_json::Map<String, Value> = templates
            .iter()
            .map(|(k, _, text)| (k.clone(), Value::String(text.clone())))
            .collect();
        objects.push((
            format!("00-{TEMPLATES}.configmap.yaml"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": meta(TEMPLATES), "data": data}),
        ));
    }
    let init_steps: Vec<&Service> = m
        .services
        .iter()
        .filter(|s| runs_as_init(m, plan, s))
        .collect();
    for s in &m.services {
        if init_steps.iter().any(|i| i.name == s.name) {
            continue;
        }
        let pod = pod_spec(m, s, &init_steps, &templates);
        match s.kind {
            Kind::Oneshot => objects.push((
                format!("20-{}.job.yaml", s.name),
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(&s.name),
                       "spec": {"backoffLimit": 3, "template": {
                           "metadata": {"labels": labels(&s.name)}, "spec": pod}}}),
            )),
            Kind::Longrun => {
                let data = s.volumes.iter().find(|v| v.name != CACHE_VOLUME);
                let mut spec = json!({
                    "replicas": 1,
                    "selector": {"matchLabels": labels(&s.name)},
                    "template": {"metadata": {"labels": labels(&s.name)}, "spec": pod},
                });
                let kind = if let Some(v) = data {
                    spec["serviceName"] = json!(s.name);
                    spec["volumeClaimTemplates"] = json!([{
                        "metadata": {"name": v.name},
                        "spec": {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "1Gi"}}}
                    }]);
                    ("StatefulSet", "statefulset")
                } else {
                    ("Deployment", "deployment")
                };
                objects.push((
                    format!("10-{}.{}.yaml", s.name, kind.1),
                    json!({"apiVersion": "apps/v1", "kind": kind.0,
                           "metadata": meta(&s.name), "spec": spec}),
                ));
                if !s.ports.is_empty() {
                    let ports: Vec<Value> = s
                        .ports
                        .iter()
                        .map(|p| json!({"name": format!("p{p}"), "port": p, "targetPort": p}))
                        .collect();
                    objects.push((
                        format!("10-{}.service.yaml", s.name),
                        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(&s.name),
                               "spec": {"selector": labels(&s.name), "ports": ports}}),
                    ));
                }
            }
        }
    }
    objects
        .into_iter()
        .map(|(f, v)| {
            serde_norway::to_string(&v)
                .map(|y| (f, y))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// What Kubernetes cannot wait for: a pod depending on a step that runs as a Job.
pub fn notes(m: &Model, plan: &Plan) -> Vec<String> {
    let mut notes = Vec::new();
    for s in &m.services {
        for (n, _) in &s.deps {
            let Some(d) = m.services.iter().find(|d| d.name == *n) else {
                continue;
            };
            if d.kind == Kind::Oneshot && !runs_as_init(m, plan, d) {
                notes.push(format!(
                    "{}: waits for Job {n} in the table, but Kubernetes starts pods without waiting for Jobs: it may start before {n} is done",
                    s.name
                ));
            }
        }
    }
    notes
}

/// A step no service has to be up for, with someone depending on it.
fn runs_as_init(m: &Model, plan: &Plan, s: &Service) -> bool {
    s.kind == Kind::Oneshot
        && super::rewrite::dependencies(plan, s.idx)
            .iter()
            .all(|&d| plan.entries[d].kind == Kind::Oneshot)
        && m.services
            .iter()
            .any(|o| o.deps.iter().any(|(n, _)| *n == s.name))
}

fn pod_spec(
    m: &Model,
    s: &Service,
    init_steps: &[&Service],
    templates: &[(String, String, String)],
) -> Value {
    let mut inits: Vec<Value> = init_steps
        .iter()
        .filter(|i| s.deps.iter().any(|(n, _)| *n == i.name))
        .map(|i| container(m, i, s, templates, false))
        .collect();
    for (n, _) in &s.deps {
        let Some(d) = m.services.iter().find(|d| d.name == *n) else {
            continue;
        };
        if let (Kind::Longrun, Some(port)) = (d.kind, d.ports.first()) {
            inits.push(json!({
                "name": format!("wait-{n}"),
                "image": m.opts.image,
                "args": ["probe", "tcp", format!("{n}:{port}"), "--wait"],
            }));
        }
    }
    let mut volumes = vec![json!({"name": CACHE_VOLUME, "emptyDir": {}})];
    if !templates.is_empty() {
        volumes.push(json!({"name": "templates", "configMap": {"name": TEMPLATES}}));
    }
    let mut pod = json!({
        "containers": [container(m, s, s, templates, true)],
        "volumes": volumes,
    });
    if !inits.is_empty() {
        pod["initContainers"] = Value::Array(inits);
    }
    if s.kind == Kind::Oneshot {
        pod["restartPolicy"] = json!("Never");
    }
    pod
}

/// The container running entry `s` (in the pod of `pod`: init containers share its volumes).
fn container(
    m: &Model,
    s: &Service,
    pod: &Service,
    templates: &[(String, String, String)],
    main: bool,
) -> Value {
    let mut mounts: Vec<Value> = pod
        .volumes
        .iter()
        .filter(|v| v.name == CACHE_VOLUME || s.volumes.iter().any(|o| o.name == v.name))
        .map(|v| json!({"name": v.name, "mountPath": v.path}))
        .collect();
    for (key, path, _) in templates {
        mounts.push(
            json!({"name": "templates", "mountPath": path, "subPath": key, "readOnly": true}),
        );
    }
    let mut c = json!({
        "name": s.name,
        "image": m.opts.image,
        "args": m.args(s),
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    });
    if !main {
        return c;
    }
    if !s.ports.is_empty() {
        c["ports"] = s
            .ports
            .iter()
            .map(|p| json!({"containerPort": p}))
            .collect();
    }
    if s.kind == Kind::Longrun {
        c["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    }
    if let Some(p) = &s.ready {
        c["readinessProbe"] = probe(p, false);
    }
    if let Some(p) = &s.liveness {
        c["livenessProbe"] = probe(p, true);
    }
    c
}

fn probe(p: &Probe, liveness: bool) -> Value {
    let mut v = match &p.kind {
        ProbeKind::Tcp(addr) => json!({"tcpSocket": {"port": port_of(addr)}}),
        ProbeKind::Http {
            url,
            status: None | Some(200..=399),
            body: None,
        } => match url.parse::<hyper::Uri>() {
            Ok(u) => json!({"httpGet": {
                "path": u.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "port": u.port_u16().unwrap_or(80)}}),
            Err(_) => exec_probe(&["http", url]),
        },
        ProbeKind::Http { url, status, body } => {
            let mut a = vec!["http".to_string(), url.clone()];
            if let Some(s) = status {
                a.extend(["--status".into(), s.to_string()]);
            }
            if let Some(b) = body {
                a.extend(["--body".into(), b.clone()]);
            }
            exec_probe(&a.iter().map(String::as_str).collect::<Vec<_>>())
        }
        ProbeKind::Exec(argv) => json!({"exec": {"command": argv}}),
        ProbeKind::Postgres(dsn) => exec_probe(&["postgres", dsn]),
        ProbeKind::Redis(url) => exec_probe(&["redis", url]),
        // Readiness the service reports itself (a log line, sd_notify) is seen only by the
        // supervisor in that pod, which runs just this entry: its health is the entry's.
        ProbeKind::Log(_) | ProbeKind::Notify(_) => {
            json!({"exec": {"command": ["dmp-contained", "health"]}})
        }
    };
    v["periodSeconds"] = json!(secs(p.interval));
    v["timeoutSeconds"] = json!(secs(p.timeout));
    v["failureThreshold"] = json!(p.retries.max(1));
    if liveness && !p.start_period.is_zero() {
        v["initialDelaySeconds"] = json!(secs(p.start_period));
    }
    v
}

fn exec_probe(args: &[&str]) -> Value {
    let mut cmd = vec!["dmp-contained", "probe"];
    cmd.extend(args);
    json!({"exec": {"command": cmd}})
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

fn meta(name: &str) -> Value {
    json!({"name": name, "labels": labels(name)})
}

fn labels(name: &str) -> Value {
    json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF})
}

/// `(ConfigMap key, source path, source text)` per template.
fn template_files(m: &Model, plan: &Plan) -> Vec<(String, String, String)> {
    plan.templates
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let text = std::fs::read_to_string(&t.src).ok()?;
            let base = t.src.file_name()?.to_string_lossy().replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_",
            );
            Some((
                format!("{i}-{base}"),
                m.image_path(&t.src).display().to_string(),
                text,
            ))
        })
        .collect()
}
