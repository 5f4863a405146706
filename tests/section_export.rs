//! `export compose|k8s`, `probe` and `up --as-service`: goldens of the shipped and example
//! tables (UPDATE_GOLDEN=1 rewrites them), the compose files accepted by `docker-compose config`,
//! the manifests by `kubernetes-validate` (Kubernetes OpenAPI schemas). tests/export-compose.sh
//! runs the exported example stack for real.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// (table, its path in the image, golden name)
const TABLES: &[(&str, &str, &str)] = &[
    (
        "examples/minimal.toml",
        "/dmp-contained/examples/minimal.toml",
        "minimal",
    ),
    (
        "supervisor.toml",
        "/dmp-contained/supervisor.toml",
        "supervisor",
    ),
];

fn export(table: &str, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .current_dir(ROOT)
        .args(["--config", table, "export"])
        .args(args)
        .env("DMP_ROOT", ROOT)
        .env_remove("DMP_MOUNT")
        .env_remove("DMP_CONTAINED_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "export {table} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn golden_dir() -> PathBuf {
    Path::new(ROOT).join("tests/golden/export")
}

/// Compares with the golden file, or writes it with UPDATE_GOLDEN=1.
fn golden(name: &str, text: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        want == text,
        "{} differs from the export (UPDATE_GOLDEN=1 rewrites it):\n{text}",
        path.display()
    );
}

#[test]
fn compose_files_match_goldens_and_docker_compose_accepts_them() {
    for (table, in_image, name) in TABLES {
        let out = export(
            table,
            &[
                "compose",
                "--image",
                "dmp-contained",
                "--image-config",
                in_image,
            ],
        );
        let yaml = String::from_utf8(out.stdout).unwrap();
        golden(&format!("{name}.compose.yaml"), &yaml);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let check = Command::new("docker-compose")
            .args(["-p", "dmpexportcheck", "-f"])
            .arg(&file)
            .args(["config", "-q"])
            .output()
            .expect("docker-compose (apt-get install docker-compose)");
        assert!(
            check.status.success(),
            "docker-compose config rejects the export of {table}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

#[test]
fn compose_carries_the_table_over() {
    let out = export(
        "examples/minimal.toml",
        &[
            "compose",
            "--image-config",
            "/dmp-contained/examples/minimal.toml",
        ],
    );
    let v: serde_json::Value = serde_norway::from_slice(&out.stdout).unwrap();
    let s = &v["services"];
    // One service per entry, each running only its own entry.
    let names: Vec<&str> = s.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "db-create",
            "example-app",
            "nginx",
            "pg-init",
            "postgres",
            "redis"
        ]
    );
    assert_eq!(
        s["postgres"]["command"],
        serde_json::json!([
            "up",
            "--config",
            "/dmp-contained/examples/minimal.toml",
            "--as-service",
            "postgres"
        ])
    );
    // `after` conditions.
    let cond = |svc: &str, dep: &str| s[svc]["depends_on"][dep]["condition"].clone();
    assert_eq!(
        cond("postgres", "pg-init"),
        "service_completed_successfully"
    );
    assert_eq!(cond("db-create", "postgres"), "service_healthy");
    assert_eq!(cond("nginx", "example-app"), "service_started");
    // Health, stop, ports, volumes.
    assert_eq!(s["redis"]["healthcheck"]["test"][4], "health");
    assert!(s["pg-init"]["healthcheck"].is_null());
    assert_eq!(s["nginx"]["stop_signal"], "SIGTERM");
    assert_eq!(s["nginx"]["stop_grace_period"], "4s");
    assert_eq!(
        s["postgres"]["ports"][0],
        serde_json::json!({"target": 15432, "published": 15432})
    );
    let vols = |svc: &str| s[svc]["volumes"].to_string();
    assert!(vols("postgres").contains("postgres-data:/tmp/dmp-contained-example/pgdata"));
    assert!(
        vols("pg-init").contains("postgres-data:"),
        "the step that prepares the data"
    );
    assert!(!vols("redis").contains("postgres-data"));
    // What is not carried over is listed, on stderr and in the file.
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(notes.contains("example-app: hot reload"), "{notes}");
    assert!(
        notes.contains("nginx: cannot rewrite `127.0.0.1:15002` (template nginx.conf.template)"),
        "{notes}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("#   example-app: hot reload"));

    // --mount: a bind mount in every service, by reference.
    let out = export(
        "examples/minimal.toml",
        &["compose", "--mount", "./mount:/dmp-contained/mount"],
    );
    let v: serde_json::Value = serde_norway::from_slice(&out.stdout).unwrap();
    for (name, svc) in v["services"].as_object().unwrap() {
        let vols = svc["volumes"].as_array().unwrap();
        assert!(
            vols.iter().any(|m| m == "./mount:/dmp-contained/mount"),
            "{name}: {vols:?}"
        );
    }
}

#[test]
fn shipped_table_lists_what_it_leaves_out() {
    let out = export("supervisor.toml", &["compose"]);
    let notes = String::from_utf8_lossy(&out.stderr);
    // Apps that are not mounted, and whatever depends on them, are left out and said so.
    assert!(notes.contains("warning: api: left out:"), "{notes}");
    // db-import names its port (`-h 127.0.0.1 -p ${PG_PORT:-5432}`): rewritable, so no note.
    assert!(
        !notes.contains("db-import: cannot rewrite"),
        "a host with its port on the line is rewritten: {notes}"
    );
    assert!(notes.contains("elasticsearch: left out:"), "{notes}");
    // The shipped example app listens on loopback: said, not silently broken.
    assert!(
        notes.contains("example-app: listens on loopback only (`--host 127.0.0.1`)"),
        "{notes}"
    );
    // Data snapshots do not cross containers.
    assert!(notes.contains("db-import: data snapshots"), "{notes}");
    let v: serde_json::Value = serde_norway::from_slice(&out.stdout).unwrap();
    assert!(v["services"]["api"].is_null());
    assert!(!v["services"]["example-app"].is_null());
    // The data_dir of postgres is a named volume.
    assert!(v["volumes"]["postgres-data"].is_object());
}

#[test]
fn k8s_manifests_match_goldens_and_the_kubernetes_schemas() {
    for (table, in_image, name) in TABLES {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("k8s");
        let o = out_dir.to_str().unwrap();
        export(table, &["k8s", "--image-config", in_image, "-o", o]);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let gdir = golden_dir().join(format!("{name}.k8s"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            let _ = std::fs::remove_dir_all(&gdir);
        } else {
            let mut want: Vec<String> = std::fs::read_dir(&gdir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            want.sort();
            let got: Vec<String> = files
                .iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(got, want, "{table}: manifest files");
        }
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap().replace(o, "OUT");
            golden(
                &format!("{name}.k8s/{}", f.file_name().unwrap().to_string_lossy()),
                &text,
            );
        }
        let v = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .args(&files)
            .output()
            .expect("kubernetes-validate (pip install kubernetes-validate)");
        assert!(
            v.status.success(),
            "{table}: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
}

#[test]
fn k8s_maps_probes_natively_and_steps_to_init_containers_or_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("k8s");
    let os = o.to_str().unwrap();
    let out = export(
        "examples/minimal.toml",
        &[
            "k8s",
            "--image-config",
            "/dmp-contained/examples/minimal.toml",
            "-o",
            os,
        ],
    );
    let read = |f: &str| -> serde_json::Value {
        serde_norway::from_str(&std::fs::read_to_string(o.join(f)).unwrap()).unwrap()
    };
    let app = read("10-example-app.deployment.yaml");
    let pod = &app["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/_status"
    );
    assert_eq!(pod["initContainers"][0]["args"][2], "postgres:15432");
    let pg = read("10-postgres.statefulset.yaml");
    let pod = &pg["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["exec"]["command"][1],
        "probe"
    );
    // pg-init needs no service: an init container sharing the data volume.
    assert_eq!(pod["initContainers"][0]["name"], "pg-init");
    assert_eq!(
        pg["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "postgres-data"
    );
    let nginx = read("10-nginx.deployment.yaml");
    assert_eq!(
        nginx["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        18080
    );
    // db-create needs postgres: a Job waiting for it.
    let job = read("20-db-create.job.yaml");
    assert_eq!(job["kind"], "Job");
    assert_eq!(
        job["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "wait-postgres"
    );
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(
        notes.contains("example-app: waits for Job db-create"),
        "{notes}"
    );
}

fn probe(args: &[&str]) -> Output {
    Command::new(BIN).arg("probe").args(args).output().unwrap()
}

#[test]
fn probe_command_passes_fails_and_waits() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    assert_eq!(probe(&["tcp", &addr]).status.code(), Some(0));
    drop(l);
    let out = probe(&["tcp", &addr, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("probe failed: tcp"));
    assert_eq!(probe(&["exec", "false"]).status.code(), Some(1));
    assert_eq!(probe(&["exec", "test", "-d", "/"]).status.code(), Some(0));

    // --wait: passes once something listens.
    let port = free_port();
    let mut waiter = Command::new(BIN)
        .args(["probe", "tcp", &format!("127.0.0.1:{port}"), "--wait"])
        .args(["--interval", "50ms"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = waiter.stderr.take().unwrap();
    // It has failed at least once before the port opens.
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut err, &mut first).unwrap();
    assert_eq!(&first, b"waiting:");
    let _l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    drop(err);
    let code = wait_for("probe --wait", Duration::from_secs(10), || {
        waiter.try_wait().unwrap()
    });
    assert_eq!(code.code(), Some(0));
}

#[test]
fn as_service_runs_one_entry_and_rewrites_its_dependencies() {
    let db_port = free_port();
    let tdir = tempfile::tempdir().unwrap();
    let src = tdir.path().join("upstream.conf.template");
    let dest = tdir.path().join("upstream.conf");
    std::fs::write(&src, format!("proxy_pass http://127.0.0.1:{db_port};\n")).unwrap();
    let body = format!(
        r#"
[[template]]
src = "{}"
dest = "{}"

[process.db]
command = ["sleep", "100"]
ports = [{db_port}]

[process.app]
command = ["sh", "-c", "echo URL=$$URL; echo DSN=$$DSN; echo ARGS $$0 $$1 $$2 $$3 $$4; exec sleep 100", "-h", "127.0.0.1", "-p", "{db_port}"]
env = {{ URL = "redis://127.0.0.1:{db_port}/0", DSN = "host=localhost port={db_port} user=x", OTHER = "http://127.0.0.1:1/" }}
after = ["db"]
"#,
        src.display(),
        dest.display()
    );
    let mut sup = Sup::start_args(&body, &["--as-service", "app"]);
    wait_for("app output", Duration::from_secs(10), || {
        sup.stdout_text().contains("ARGS").then_some(())
    });
    let out = sup.stdout_text();
    assert!(
        out.contains(&format!("URL=redis://db:{db_port}/0")),
        "{out}"
    );
    assert!(
        out.contains(&format!("DSN=host=db port={db_port} user=x")),
        "{out}"
    );
    assert!(out.contains(&format!("ARGS -h db -p {db_port}")), "{out}");
    // Rendered templates follow the same rule.
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        format!("proxy_pass http://db:{db_port};\n")
    );
    // Only app runs here: db is another container's.
    let st = sup.status();
    let names: Vec<&str> = st["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app"]);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(Duration::from_secs(10)), 0);

    // An unknown name is a usage error.
    let (_d, _p, cfg) = table(&body);
    let out = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&cfg)
        .args(["--as-service", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown entry `nope`"));
}

#[test]
fn bad_input_is_a_clear_error() {
    // An invalid table: the config errors, exit 2, nothing written.
    let (dir, _port, cfg) = table("[process.x]\ncommand = [\"true\"]\nafter = [\"nope\"]\n");
    let out_file = dir.path().join("compose.yaml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["export", "compose", "-o"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(!out_file.exists());
    // An output directory that cannot be made: exit 1 with the path.
    let (_dir, _port, cfg) = table("[process.x]\ncommand = [\"true\"]\n");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["export", "k8s", "-o", "/proc/nope/k8s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/proc/nope/k8s"));
}
