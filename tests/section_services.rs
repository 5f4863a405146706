//! Real services from Debian's packages (postgresql, redis-server, nginx) under the real
//! binary: native readiness probes, privilege drop, restart after SIGKILL, reverse-order
//! stop, and a Postgres that shuts down cleanly (no recovery on the next start).
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn services_table(dir: &Path, pg: u16, redis: u16, web: u16) -> String {
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{ listen 127.0.0.1:{web}; location / {{ return 200 'nginx ok'; }} }}\n}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    format!(
        r#"
[step.pg-init]
command = "test -f {d}/pgdata/PG_VERSION || {pg_bin}/initdb -D {d}/pgdata -U postgres --auth=trust -E UTF8 >/dev/null"
user = "postgres"

[process.postgres]
command = ["{pg_bin}/postgres", "-D", "{d}/pgdata", "-p", "{pg}", "-k", "{d}", "-c", "listen_addresses=127.0.0.1", "-c", "logging_collector=off"]
user = "postgres"
after = ["pg-init"]
ports = [{pg}]
stop_signal = "SIGINT"
stop_timeout = "8s"
ready = {{ postgres = "host=127.0.0.1 port={pg} user=postgres dbname=postgres", interval = "100ms" }}

[process.redis]
command = ["redis-server", "--port", "{redis}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "{d}"]
ports = [{redis}]
ready = {{ redis = "redis://127.0.0.1:{redis}", interval = "50ms" }}

[process.nginx]
command = ["nginx", "-c", "{conf}", "-e", "stderr"]
after = ["postgres", "redis"]
ports = [{web}]
stop_signal = "SIGQUIT"
ready = {{ http = "http://127.0.0.1:{web}/", body = "nginx ok", interval = "50ms" }}
"#,
        d = dir.display(),
        pg_bin = PG_BIN,
        conf = nginx_conf.display(),
    )
}

#[test]
fn postgres_redis_nginx_become_ready_restart_and_stop_cleanly() {
    if !require(&[
        Need::Bin("/usr/lib/postgresql/15/bin/postgres"),
        Need::Bin("/usr/bin/redis-server"),
        Need::Bin("/usr/sbin/nginx"),
    ]) {
        return;
    }
    let (dir, port, cfg) = table("");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("svc");
    std::fs::create_dir_all(&data).unwrap();
    std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&data)
        .status()
        .unwrap();
    let (pg, redis, web) = (free_port(), free_port(), free_port());
    let body = services_table(&data, pg, redis, web);
    let text = std::fs::read_to_string(&cfg).unwrap() + &body;
    std::fs::write(&cfg, text).unwrap();

    let mut s = Sup::spawn(dir, port, cfg.clone(), &[], &[]);
    let ng = s.wait_state("nginx", "ready", Duration::from_secs(60));
    let pgst = s.entry("postgres");
    let rs = s.entry("redis");
    assert_eq!(pgst["state"], "ready");
    assert_eq!(rs["state"], "ready");
    // nginx waited for both.
    let at = |e: &serde_json::Value, k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k}: {e}"));
    assert!(
        at(&ng, "started_at") >= at(&pgst, "ready_at"),
        "{ng}\n{pgst}"
    );
    assert!(at(&ng, "started_at") >= at(&rs, "ready_at"), "{ng}\n{rs}");
    // Postgres runs as user postgres.
    let pid = pgst["pid"].as_i64().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        st.lines().any(|l| l.starts_with("Uid:\t101\t")
            || l.starts_with(&format!("Uid:\t{}\t", uid_of("postgres")))),
        "{st}"
    );
    let (code, _) = s.get("/_supervisor/health");
    assert_eq!(code, 200);

    // SIGKILL of redis: restarted and ready again.
    let rpid = rs["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(rpid, libc::SIGKILL) };
    wait_for("redis restarted", Duration::from_secs(10), || {
        let e = s.entry("redis");
        (e["state"] == "ready" && e["restarts"] == 1).then_some(())
    });

    // SIGTERM: reverse order (nginx first, postgres last), postgres shuts down cleanly.
    assert_eq!(s.stop(), 0);
    let err = s.stderr_text();
    let at = |what: &str| {
        err.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in:\n{err}"))
    };
    assert!(at("nginx: stopped") < at("postgres: stopped"));
    assert!(at("nginx: stopped") < at("redis: stopped"));
    assert!(!err.contains("sending SIGKILL"), "{err}");
    let out = s.stdout_text();
    assert!(
        out.contains("postgres | ") && out.contains("database system is shut down"),
        "{out}"
    );

    // Next start: no crash recovery.
    let mut s2 = s.restart(&["--only", "postgres"]);
    drop(s);
    s2.wait_state("postgres", "ready", Duration::from_secs(60));
    assert_eq!(s2.stop(), 0);
    let out = s2.stdout_text();
    assert!(out.contains("database system was shut down at"), "{out}");
    assert!(
        !out.contains("not properly shut down") && !out.contains("automatic recovery"),
        "{out}"
    );
}

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
