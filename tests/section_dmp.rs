//! Issue #10 (the DMp stack on the shipped table): the supervisor features it needs, on the
//! real binary with small tables. Optional edges, a fresh start once a dependency is ready
//! again, `[supervisor] env_file` interpolation and layered entry env files, the exit code of a
//! requested stop, the folded text `status`.
mod common;
use common::*;
use std::time::Duration;

#[test]
fn requested_stop_exits_0_even_when_an_entry_failed() {
    let mut s = Sup::start(
        r#"
[step.broken]
command = "echo 'cannot migrate'; exit 3"
[process.app]
command = ["sleep", "60"]
"#,
    );
    s.wait_state("broken", "failed", Duration::from_secs(10));
    s.wait_state("app", "ready", Duration::from_secs(10));
    // `docker stop`: a normal end, not an error.
    assert_eq!(s.stop(), 0, "{}", s.stderr_text());
}

#[test]
fn optional_edge_is_satisfied_by_a_skipped_or_absent_dependency() {
    let s = Sup::start(
        r#"
[process.es]
command = ["sleep", "60"]
when_exists = "/nonexistent/elasticsearch"
skip_hint = "Elasticsearch is not installed here"
optional = true
[process.search]
command = ["sleep", "60"]
after = ["es:ready?", "not-in-this-table:ready?"]
[step.index]
command = "true"
after = ["search", "es"]
"#,
    );
    let search = s.wait_state("search", "ready", Duration::from_secs(10));
    assert_eq!(search["after"], serde_json::json!(["es:ready?"]));
    let index = s.wait_state("index", "skipped", Duration::from_secs(10));
    // The skip names the root cause, not only "dependency is skipped".
    let why = index["reason"].as_str().unwrap();
    assert!(
        why.starts_with("dependency `es` is skipped: ")
            && why.contains("Elasticsearch is not installed here"),
        "{why}"
    );
}

#[test]
fn entry_failed_while_dependency_down_gets_a_fresh_start_when_it_is_ready() {
    let port = free_port();
    // The frontend checks the api at boot and every 100 ms, exiting 1 when it is down (as the
    // DMp frontends do at boot).
    let s = Sup::start(&format!(
        r#"
[process.api]
command = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}
[process.frontend]
command = ["python3", "-c", "import socket,time\nwhile True:\n    socket.create_connection(('127.0.0.1',{port}),1).close(); time.sleep(0.1)"]
after = ["api:ready"]
restart = {{ backoff = "50ms", max_restarts = 2, window = "60s" }}
"#
    ));
    s.wait_state("frontend", "ready", Duration::from_secs(10));
    assert!(s.cli(&["stop", "api"]).status.success());
    let f = s.wait_state("frontend", "failed", Duration::from_secs(15));
    assert!(f["reason"].as_str().unwrap().contains("crash loop"), "{f}");
    let restarts = f["restarts"].as_u64().unwrap();
    assert!(s.cli(&["start", "api"]).status.success());
    let f = s.wait_state("frontend", "ready", Duration::from_secs(15));
    assert!(f["restarts"].as_u64().unwrap() > restarts, "{f}");
    assert!(
        s.stderr_text()
            .contains("frontend: dependency `api` is ready again: fresh start"),
        "{}",
        s.stderr_text()
    );
    // A fresh budget: it survives another outage of the api just the same.
    assert!(s.cli(&["stop", "api"]).status.success());
    s.wait_state("frontend", "failed", Duration::from_secs(15));
    assert!(s.cli(&["start", "api"]).status.success());
    s.wait_state("frontend", "ready", Duration::from_secs(15));
}

#[test]
fn own_failure_with_dependencies_ready_stays_failed() {
    let s = Sup::start(
        r#"
[process.api]
command = ["sleep", "60"]
[process.frontend]
command = "echo broken; exit 1"
after = ["api:ready"]
restart = { backoff = "50ms", max_restarts = 1, window = "60s" }
"#,
    );
    s.wait_state("frontend", "failed", Duration::from_secs(10));
    // Restarting the api does not revive an entry that failed on its own.
    assert!(s.cli(&["restart", "api"]).status.success());
    s.wait_state("api", "ready", Duration::from_secs(10));
    wait_for("api restarted", Duration::from_secs(10), || {
        (s.entry("api")["restarts"] == 1).then_some(())
    });
    assert_eq!(s.state("frontend"), "failed");
}

#[test]
fn supervisor_env_file_is_interpolated_and_a_later_entry_env_file_wins() {
    let (dir, port, cfg) = table_with(
        r#"
[process.app]
command = "echo \"greeting=$GREETING from=${FROM_DOTENV}\"; exec sleep 60"
env_file = ["base.env", "${MOUNT}/.env?"]
[process.other]
command = "echo \"other=$GREETING\"; exec sleep 60"
env_file = ["base.env", "${MOUNT}/missing.env?"]
"#,
        "env_file = \"${MOUNT}/.env\"\nenv_file_optional = true\n",
    );
    let mount = dir.path().join("mount");
    std::fs::create_dir(&mount).unwrap();
    std::fs::write(mount.join(".env"), "GREETING=override\nFROM_DOTENV=yes\n").unwrap();
    std::fs::write(dir.path().join("base.env"), "GREETING=base\n").unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[("MOUNT", mount.to_str().unwrap())]);
    s.wait_state("app", "ready", Duration::from_secs(10));
    s.wait_state("other", "ready", Duration::from_secs(10));
    let out = wait_for("both lines", Duration::from_secs(5), || {
        let t = s.stdout_text();
        (t.contains("greeting=") && t.contains("other=")).then_some(t)
    });
    assert!(out.contains("greeting=override from=yes"), "{out}");
    assert!(out.contains("other=base"), "{out}");
}

#[test]
fn text_status_folds_skipped_rows_and_shows_the_last_log_line_of_a_failure() {
    let s = Sup::start(
        r#"
[process.keep]
command = ["sleep", "60"]
[step.migrate]
command = "echo 'sqlalchemy.exc.OperationalError: role root does not exist'; exit 1"
[process.a]
command = ["sleep", "60"]
when_exists = "/nonexistent/a"
[process.b]
command = ["sleep", "60"]
when_exists = "/nonexistent/b"
[process.c]
command = ["sleep", "60"]
after = ["a"]
"#,
    );
    s.wait_state("migrate", "failed", Duration::from_secs(10));
    s.wait_state("c", "skipped", Duration::from_secs(10));
    let text = String::from_utf8(s.cli(&["status"]).stdout).unwrap();
    assert!(
        text.contains("3 skipped (`status --all` shows why): a, b, c"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("a ")), "{text}");
    assert!(
        text.contains("last log line: sqlalchemy.exc.OperationalError: role root does not exist"),
        "{text}"
    );
    let all = String::from_utf8(s.cli(&["status", "--all"]).stdout).unwrap();
    assert!(
        all.lines()
            .any(|l| l.starts_with("c ") && l.contains("dependency `a` is skipped")),
        "{all}"
    );
    assert!(!all.contains("skipped (`status --all`"), "{all}");
}

#[test]
fn unavailable_route_says_why_and_holds_a_request_during_a_restart() {
    let port = free_port();
    let s = Sup::start(&format!(
        r#"
[process.web]
command = "sleep 1; exec python3 -m http.server --bind 127.0.0.1 {port}"
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}
[process.broken]
command = "echo 'ModuleNotFoundError: No module named flask_login'; exit 1"
restart = {{ backoff = "50ms", max_restarts = 1, window = "60s" }}
[process.absent]
command = ["sleep", "60"]
when_exists = "/nonexistent/app"
"#
    ));
    s.wait_state("web", "ready", Duration::from_secs(10));
    s.wait_state("broken", "failed", Duration::from_secs(10));
    let orig = [("X-Dmp-Original-Uri", "/search?q=cloud")];

    // Being restarted: the request is held until it is ready, then retried with a 307.
    assert!(s.cli(&["restart", "web"]).status.success());
    let resp = raw_http(s.port, "/_supervisor/unavailable/web", &orig);
    assert!(resp.starts_with("HTTP/1.1 307"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: /search?q=cloud"),
        "{resp}"
    );
    assert_eq!(s.state("web"), "ready");

    // Failed: 503 with the reason and the last line it logged, refreshing itself.
    let resp = raw_http(s.port, "/_supervisor/unavailable/broken", &orig);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("refresh: 3"), "{resp}");
    assert!(resp.contains("broken is failed"), "{resp}");
    assert!(resp.contains("No module named flask_login"), "{resp}");

    // Stopped by request: 503 at once (not held), as JSON for the API proxies.
    assert!(s.cli(&["stop", "web"]).status.success());
    s.wait_state("web", "stopped", Duration::from_secs(10));
    let (code, body) = http(
        s.port,
        "GET",
        "/_supervisor/unavailable/web?format=json",
        &orig,
    );
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "stopped", "{v}");

    // Not mounted (skipped) or unknown: 404, so nginx shows the example app's page.
    assert_eq!(
        http(s.port, "GET", "/_supervisor/unavailable/absent", &[]).0,
        404
    );
    assert_eq!(
        http(s.port, "GET", "/_supervisor/unavailable/nope", &[]).0,
        404
    );
}

/// GET returning the whole response (status line and headers too).
fn raw_http(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}
