//! The control plane against the real binary: status schema for every state, health,
//! logs (tail, follow, JSON), 404s, token-gated HTTP mutations, socket mutations through the
//! CLI, secret redaction, CLI exit codes, and hostile clients.
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

fn post(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http(port, "POST", path, headers)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Opens a follow stream (HTTP/1.0, so the body is close-delimited) and returns a line reader
/// positioned at the start of the body.
fn follow(port: u16, name: &str, query: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /_supervisor/logs/{name}?follow=1&{query} HTTP/1.0\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        assert!(!h.contains("chunked"), "expected a close-delimited body");
        if h == "\r\n" {
            return r;
        }
    }
}

fn read_numbered(r: &mut BufReader<TcpStream>, n: u32) {
    for want in 1..=n {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        assert_eq!(
            l.trim_end(),
            want.to_string(),
            "line {want} lost or out of order"
        );
    }
}

const ENTRY_KEYS: &[&str] = &[
    "name",
    "kind",
    "state",
    "pid",
    "ready",
    "required",
    "critical",
    "started_at",
    "ready_at",
    "uptime_s",
    "time_to_ready_s",
    "restarts",
    "runs",
    "last_exit",
    "last_probe",
    "reason",
    "after",
    "command",
    "env",
    "log_lines",
];

#[test]
fn status_schema_for_every_state() {
    let s = Sup::start(
        r#"
[process.web]
command = "exec sleep 60"
[process.slow]
command = "exec sleep 60"
ready = { exec = ["false"], interval = "50ms", start_period = "60s" }
[process.blocked]
command = "exec sleep 60"
after = ["slow"]
[process.crashy]
command = "echo crashing; exit 3"
restart = { backoff = "30s", max_restarts = 5 }
[process.broken]
command = "exit 4"
restart = { policy = "never" }
optional = true
[step.seed]
command = "echo seeded"
[step.maybe]
command = "echo never"
when_exists = "/nonexistent/dmp-flag"
skip_hint = "create /nonexistent/dmp-flag to enable"
[process.victim]
command = "exec sleep 60"
"#,
    );
    s.wait_state("web", "ready", T);
    s.wait_state("crashy", "backoff", T);
    s.wait_state("broken", "failed", T);
    s.wait_state("seed", "done", T);
    s.wait_state("victim", "ready", T);
    let out = s.cli(&["stop", "victim"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    s.wait_state("victim", "stopped", T);
    wait_for("a failed readiness probe", T, || {
        s.entry("slow")["last_probe"]["ok"]
            .as_bool()
            .filter(|ok| !ok)
    });

    let st = s.status();
    let sup = &st["supervisor"];
    assert_eq!(sup["version"], env!("CARGO_PKG_VERSION"));
    // The supervisor proper runs under the init shim (the spawned process).
    let sup_pid = sup["pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{sup_pid}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        sup_pid,
        u64::from(s.pid()),
        "the supervisor is not the shim"
    );
    assert_eq!(ppid, s.pid(), "the supervisor is the shim's child");
    assert!(sup["uptime_s"].as_f64().unwrap() > 0.0);
    assert_eq!(sup["state"], "starting", "slow is required and not ready");
    for e in st["entries"].as_array().unwrap() {
        for k in ENTRY_KEYS {
            assert!(e.get(*k).is_some(), "entry {} lacks `{k}`: {e}", e["name"]);
        }
    }
    let e = |n: &str| {
        st["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .unwrap()
            .clone()
    };
    let web = e("web");
    assert_eq!(web["kind"], "longrun");
    assert_eq!(web["state"], "ready");
    assert_eq!(web["ready"], true);
    assert!(web["pid"].as_u64().unwrap() > 1);
    assert!(web["started_at"].as_u64().unwrap() <= web["ready_at"].as_u64().unwrap());
    assert!(web["time_to_ready_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(web["restarts"], 0);
    assert!(web["last_exit"].is_null());

    let slow = e("slow");
    assert_eq!(slow["state"], "starting");
    assert_eq!(slow["ready"], false);
    assert!(slow["pid"].is_number());
    assert!(slow["ready_at"].is_null());
    assert_eq!(slow["last_probe"]["ok"], false);
    assert!(slow["last_probe"]["at"].is_number());

    let blocked = e("blocked");
    assert_eq!(blocked["state"], "waiting");
    assert!(blocked["pid"].is_null());
    assert_eq!(blocked["after"], serde_json::json!(["slow:ready"]));
    assert!(
        blocked["reason"].as_str().unwrap().contains("slow:ready"),
        "{blocked}"
    );

    let crashy = e("crashy");
    assert_eq!(crashy["state"], "backoff");
    assert!(crashy["restarts"].as_u64().unwrap() >= 1);
    assert_eq!(crashy["last_exit"]["code"], 3);
    assert!(crashy["reason"].as_str().unwrap().contains("restarting in"));

    let broken = e("broken");
    assert_eq!(broken["state"], "failed");
    assert_eq!(broken["required"], false);
    assert_eq!(broken["last_exit"]["code"], 4);
    assert!(!broken["reason"].as_str().unwrap().is_empty());

    let seed = e("seed");
    assert_eq!(seed["kind"], "oneshot");
    assert_eq!(seed["state"], "done");
    assert_eq!(seed["ready"], true);
    assert_eq!(seed["last_exit"]["code"], 0);
    assert!(seed["log_lines"].as_u64().unwrap() >= 1);

    let maybe = e("maybe");
    assert_eq!(maybe["state"], "skipped");
    assert!(maybe["reason"].as_str().unwrap().contains("create"));
    assert!(maybe["started_at"].is_null());

    let victim = e("victim");
    assert_eq!(victim["state"], "stopped");
    assert!(victim["pid"].is_null());
    assert!(victim["last_exit"].is_object());

    // The CLI table shows the same thing.
    let out = s.cli(&["status"]);
    assert_eq!(code(&out), 0);
    let t = text(&out);
    for n in [
        "web", "slow", "blocked", "crashy", "broken", "seed", "maybe", "victim",
    ] {
        assert!(t.contains(n), "{t}");
    }
    let j = s.cli(&["status", "--json"]);
    assert_eq!(
        json(&String::from_utf8_lossy(&j.stdout))["entries"]
            .as_array()
            .unwrap()
            .len(),
        8
    );

    // Metrics are Prometheus text with one state row per entry.
    let (c, m) = s.get("/_supervisor/metrics");
    assert_eq!(c, 200);
    assert!(m.contains("# TYPE dmp_entry_restarts_total counter"), "{m}");
    assert!(m.contains("dmp_entry_state{entry=\"crashy\",kind=\"longrun\",state=\"backoff\"} 1"));
    assert!(m.contains("dmp_entry_last_exit_code{entry=\"broken\",kind=\"longrun\"} 4"));
}

#[test]
fn health_flips_only_when_every_required_entry_is_ready() {
    let (dir, port, cfg) = table("");
    let flag = dir.path().join("flag");
    let body = format!(
        r#"
[process.api]
command = "exec sleep 60"
ready = {{ exec = ["test", "-f", "{flag}"], interval = "50ms" }}
[process.extra]
command = "exec sleep 60"
ready = {{ exec = ["false"], interval = "50ms", start_period = "60s" }}
optional = true
[step.migrate]
command = "true"
[step.opt]
command = "true"
when_exists = "/nonexistent"
"#,
        flag = flag.display()
    );
    let text0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text0}{body}")).unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("migrate", "done", T);
    for _ in 0..3 {
        let (c, b) = s.get("/_supervisor/health");
        assert_eq!(c, 503, "{b}");
        let v = json(&b);
        assert_eq!(v["healthy"], false);
        let names: Vec<&str> = v["not_ready"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["api"], "only the required, unready entry: {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = s.cli(&["health"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("api (starting)"), "{}", text(&out));
    std::fs::write(&flag, "").unwrap();
    s.wait_state("api", "ready", T);
    let (c, b) = s.get("/_supervisor/health");
    assert_eq!(c, 200, "{b}");
    assert_eq!(json(&b)["healthy"], true);
    assert_eq!(code(&s.cli(&["health"])), 0);
    assert_eq!(s.status()["supervisor"]["state"], "running");
}

#[test]
fn tail_and_follow_deliver_every_line_in_order() {
    let (dir, port, cfg) = table_with("", "log_lines = 30000");
    let go = dir.path().join("go");
    let body = format!(
        r#"
[process.counter]
command = "while [ ! -f {go} ]; do sleep 0.02; done; seq 1 20000; exec sleep 60"
"#,
        go = go.display()
    );
    let t0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{t0}{body}")).unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("counter", "ready", T);
    let mut followers: Vec<_> = (0..5).map(|_| follow(port, "counter", "tail=0")).collect();
    let mut json_follower = follow(port, "counter", "tail=0&format=json");
    std::fs::write(&go, "").unwrap();
    // Every follower reads as the lines come (one that does not read gets a skip marker,
    // tests/section_hardening.rs).
    let json_reader = std::thread::spawn(move || {
        for want in 1..=20000u64 {
            let mut l = String::new();
            json_follower.read_line(&mut l).unwrap();
            let v = json(&l);
            assert_eq!(v["text"], want.to_string());
            assert_eq!(v["seq"], want - 1);
            assert_eq!(v["entry"], "counter");
            assert_eq!(v["stream"], "stdout");
        }
    });
    let handles: Vec<_> = followers
        .drain(..)
        .map(|mut r| std::thread::spawn(move || read_numbered(&mut r, 20000)))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    json_reader.join().unwrap();
    wait_for("all lines captured", T, || {
        (s.entry("counter")["log_lines"] == 20000).then_some(())
    });
    // tail returns exactly the last N lines, in order.
    let (c, b) = s.get("/_supervisor/logs/counter?tail=20000");
    assert_eq!(c, 200);
    let lines: Vec<&str> = b.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| *l == (i + 1).to_string()));
    let (_, b) = s.get("/_supervisor/logs/counter?tail=3");
    assert_eq!(b, "19998\n19999\n20000\n");
    let (_, b) = s.get("/_supervisor/logs/counter?tail=1&format=json");
    assert_eq!(json(&b)["text"], "20000");
    let (c, _) = s.get("/_supervisor/logs/counter?tail=abc");
    assert_eq!(c, 400);
    // A follower that starts late gets the tail, then new lines.
    let mut late = follow(port, "counter", "tail=2");
    let mut l = String::new();
    late.read_line(&mut l).unwrap();
    assert_eq!(l, "19999\n");
    // The CLI prints the tail.
    let out = s.cli(&["logs", "--tail", "2", "counter"]);
    assert_eq!(code(&out), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "19999\n20000\n");
}

#[test]
fn unknown_names_are_404_never_a_file() {
    let s = Sup::start("[process.web]\ncommand = \"exec sleep 60\"\n");
    s.wait_state("web", "ready", T);
    for p in [
        "/_supervisor/logs/nope",
        "/_supervisor/logs/..%2F..%2F..%2Fetc%2Fpasswd",
        "/_supervisor/logs/%2Fetc%2Fpasswd?tail=5",
        "/_supervisor/logs/../../etc/passwd",
        "/_supervisor/nothing",
    ] {
        let (c, b) = s.get(p);
        assert_eq!(c, 404, "{p}: {b}");
        assert!(!b.contains("root:"), "{p}: {b}");
    }
    let (c, _) = s.get("/_supervisor/logs/web?follow=1&tail=0&x=%2F");
    assert_eq!(c, 200);
    let out = s.cli(&["logs", "nope"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = s.cli(&["restart", "nope"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("unknown entry"), "{}", text(&out));
}

#[test]
fn http_mutations_need_a_token() {
    // No token configured: refused with a hint.
    let s = Sup::start("[process.web]\ncommand = \"exec sleep 60\"\n");
    s.wait_state("web", "ready", T);
    for p in [
        "/_supervisor/entries/web/restart",
        "/_supervisor/entries/web/stop",
        "/_supervisor/shutdown",
    ] {
        let (c, b) = post(s.port, p, &[]);
        assert_eq!(c, 403, "{p}: {b}");
        assert!(json(&b)["error"]
            .as_str()
            .unwrap()
            .contains("DMP_CONTAINED_TOKEN"));
        let (c, _) = post(s.port, p, &[("Authorization", "Bearer guess")]);
        assert_eq!(c, 403);
    }
    assert_eq!(s.entry("web")["restarts"], 0);
    drop(s);

    // With a token in the environment.
    let (dir, port, cfg) = table("[process.web]\ncommand = \"exec sleep 60\"\n");
    let s = Sup::spawn(
        dir,
        port,
        cfg,
        &[],
        &[("DMP_CONTAINED_TOKEN", "s3cr3t-tok")],
    );
    let before = s.wait_state("web", "ready", T);
    let p = "/_supervisor/entries/web/restart";
    let (c, b) = post(port, p, &[]);
    assert_eq!(c, 403, "{b}");
    assert!(b.contains("Authorization"), "{b}");
    let (c, _) = post(port, p, &[("Authorization", "Bearer wrong-token")]);
    assert_eq!(c, 403);
    let (c, b) = post(port, p, &[("Authorization", "Bearer s3cr3t-tok")]);
    assert_eq!(c, 200, "{b}");
    let after = wait_for("restart", T, || {
        let e = s.entry("web");
        (e["restarts"] == 1 && e["state"] == "ready").then_some(e)
    });
    assert_ne!(before["pid"], after["pid"]);
    // GET routes stay open; unknown entries are 404 once authorized.
    let (c, _) = post(
        port,
        "/_supervisor/entries/nope/restart",
        &[("Authorization", "bearer s3cr3t-tok")],
    );
    assert_eq!(c, 404);
    let (c, _) = http(port, "GET", "/_supervisor/entries/web/restart", &[]);
    assert_eq!(c, 404);
    let (c, b) = post(
        port,
        "/_supervisor/entries/web/stop",
        &[("Authorization", "Bearer s3cr3t-tok")],
    );
    assert_eq!(c, 200, "{b}");
    s.wait_state("web", "stopped", T);
    drop(s);

    // With a token file.
    let (dir, port, cfg) = table("[process.web]\ncommand = \"exec sleep 60\"\n");
    let tf = dir.path().join("token");
    std::fs::write(&tf, "file-tok\n").unwrap();
    let tf = tf.to_str().unwrap().to_string();
    let mut s = Sup::spawn(dir, port, cfg, &[], &[("DMP_CONTAINED_TOKEN_FILE", &tf)]);
    s.wait_state("web", "ready", T);
    let (c, b) = post(
        port,
        "/_supervisor/shutdown",
        &[("Authorization", "Bearer file-tok")],
    );
    assert_eq!(c, 202, "{b}");
    assert_eq!(s.wait_exit(T), 0);
}

#[test]
fn cli_mutations_over_the_socket_and_exit_codes() {
    let (dir, port, cfg) = table("");
    let marker = dir.path().join("ran");
    let body = format!(
        r#"
[process.web]
command = "exec sleep 60"
[process.worker]
command = "exec sleep 60"
[step.job]
command = "echo run >> {m}"
[step.bad]
command = "exit 7"
optional = true
[step.gone]
command = "true"
when_exists = "/nonexistent"
"#,
        m = marker.display()
    );
    let t0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{t0}{body}")).unwrap();
    let mut s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("web", "ready", T);
    s.wait_state("job", "done", T);
    s.wait_state("bad", "failed", T);

    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(s.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let out = s.cli(&["stop", "web", "worker"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    s.wait_state("web", "stopped", T);
    s.wait_state("worker", "stopped", T);
    let out = s.cli(&["start", "web"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    s.wait_state("web", "ready", T);
    let pid = s.entry("worker")["pid"].clone();
    assert!(pid.is_null());
    let out = s.cli(&["restart", "worker"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    s.wait_state("worker", "ready", T);

    // `run` waits for the step and reports its outcome.
    let out = s.cli(&["run", "job"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\nrun\n");
    // ... and exits with the step's own exit code (`bad` exits 7).
    let out = s.cli(&["run", "bad"]);
    assert_eq!(code(&out), 7, "{}", text(&out));
    let out = s.cli(&["run", "web"]);
    assert_eq!(
        code(&out),
        1,
        "`run` of a longrun is refused: {}",
        text(&out)
    );
    let out = s.cli(&["restart", "gone"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("skipped"), "{}", text(&out));
    let out = s.cli(&["run", "nope"]);
    assert_eq!(code(&out), 4);
    let out = s.cli(&["restart", "web", "nope"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert_eq!(code(&s.cli(&["status"])), 0);
    assert_eq!(code(&s.cli(&["health"])), 0, "bad is optional");

    // Unreachable supervisor: exit 3 with a clear message.
    let o = std::process::Command::new(BIN)
        .args(["--socket", "/nonexistent/dmp.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    assert!(
        text(&o).contains("cannot reach the supervisor"),
        "{}",
        text(&o)
    );
    for args in [
        &["health"][..],
        &["logs", "x"],
        &["restart", "x"],
        &["shutdown"],
    ] {
        let o = std::process::Command::new(BIN)
            .args(["--socket", "/nonexistent/dmp.sock"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 3, "{args:?}");
    }

    let out = s.cli(&["shutdown"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    s.wait_exit(T);
    assert!(!s.socket().exists(), "socket removed on exit");
}

#[test]
fn secrets_are_never_shown() {
    let (dir, port, cfg) = table(
        r#"
[process.db]
command = "exec sleep 60 # ${MY_SECRET_KEY}"
env = { DB_PASSWORD = "hunter2hunter2", API_TOKEN = "tok-abc-123", PLAIN = "visible-value", DATABASE_URL = "postgres://app:pw-in-url-987@db:5432/app", DSN = "host=db password=dsnpass-555 user=app" }
"#,
    );
    let s = Sup::spawn(
        dir,
        port,
        cfg,
        &[],
        &[
            ("MY_SECRET_KEY", "sk-live-zzz-777"),
            ("DMP_CONTAINED_TOKEN", "the-api-token-1"),
        ],
    );
    s.wait_state("db", "ready", T);
    let (_, status) = s.get("/_supervisor/status");
    let cli_json = String::from_utf8_lossy(&s.cli(&["status", "--json"]).stdout).into_owned();
    let cli_table = text(&s.cli(&["status"]));
    let (_, metrics) = s.get("/_supervisor/metrics");
    for out in [&status, &cli_json, &cli_table, &metrics] {
        for secret in [
            "hunter2hunter2",
            "tok-abc-123",
            "pw-in-url-987",
            "dsnpass-555",
            "sk-live-zzz-777",
            "the-api-token-1",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
    }
    let v = json(&status);
    let env = &v["entries"][0]["env"];
    assert_eq!(env["PLAIN"], "visible-value");
    assert_eq!(env["DB_PASSWORD"], "<redacted>");
    assert_eq!(env["DATABASE_URL"], "postgres://app:<redacted>@db:5432/app");
    assert!(v["entries"][0]["command"]
        .to_string()
        .contains("<redacted>"));
}

/// Raises this test process's open-file soft limit (1,000+ sockets).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        if r.rlim_cur < 4096 && r.rlim_max > r.rlim_cur {
            r.rlim_cur = r.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[test]
fn hostile_clients_do_not_hurt_the_supervisor() {
    raise_nofile();
    let (dir, port, cfg) = table("");
    let go = dir.path().join("go");
    let body = format!(
        r#"
[process.web]
command = "exec sleep 120"
[process.noisy]
command = "while [ ! -f {go} ]; do sleep 0.02; done; seq 1 50000; exec sleep 120"
"#,
        go = go.display()
    );
    let t0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{t0}{body}")).unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    let web_pid = s.wait_state("web", "ready", T)["pid"].as_i64().unwrap() as i32;
    s.wait_state("noisy", "ready", T);

    // Malformed request lines: each gets an error or a close, never a hang or a crash.
    for junk in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\xff\xfe\r\n\r\n",
        b"GET /_supervisor/status HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /_supervisor/shutdown HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(junk).unwrap();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let t = String::from_utf8_lossy(&buf);
        assert!(!t.contains(" 200 ") && !t.contains(" 202 "), "{t}");
    }
    // An oversized header (100 KB).
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = format!(
        "GET /_supervisor/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = c.write_all(big.as_bytes());
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let t = String::from_utf8_lossy(&buf);
    assert!(!t.contains(" 200 "), "oversized header accepted: {t}");

    // A stalled follower: never reads while the service writes 50k lines.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(b"GET /_supervisor/logs/noisy?follow=1&tail=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // A live follower at the same time must still get every line.
    let mut live = follow(port, "noisy", "tail=0");

    // 1,000 idle connections.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();

    std::fs::write(&go, "").unwrap();
    read_numbered(&mut live, 50000);
    wait_for("50k lines captured", T, || {
        (s.entry("noisy")["log_lines"] == 50000).then_some(())
    });

    // Status still answers quickly, several times over, while all that is open.
    for _ in 0..20 {
        let t = Instant::now();
        let (c, _) = s.get("/_supervisor/status");
        assert_eq!(c, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "status took {:?}",
            t.elapsed()
        );
    }
    let (_, m) = s.get("/_supervisor/metrics");
    assert!(m.contains("dmp_api_log_followers 2"), "{m}");
    assert!(alive(web_pid));
    assert_eq!(s.entry("web")["pid"].as_i64().unwrap() as i32, web_pid);
    assert_eq!(s.state("noisy"), "ready");
    assert_eq!(s.entry("noisy")["restarts"], 0);
    let rss: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("dmp_supervisor_resident_bytes "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap() as u64;
    assert!(rss < 200 << 20, "supervisor RSS {rss}");
    drop(idle);
    drop(stalled);
    let out = s.cli(&["status"]);
    assert_eq!(code(&out), 0);
}

#[test]
fn snapshot_refusals_map_to_http_codes_by_variant() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("rows"), "1\n").unwrap();
    let body = format!(
        "[process.web]\ncommand = \"exec sleep 60\"\ndata_dir = \"{}\"\n",
        data.path().display()
    );
    let (dir, port, cfg) = table(&body);
    let s = Sup::spawn(dir, port, cfg, &[], &[("DMP_CONTAINED_TOKEN", "snap-tok")]);
    s.wait_state("web", "ready", T);
    let auth = [("Authorization", "Bearer snap-tok")];
    let (c, b) = post(port, "/_supervisor/snapshots/.hidden/save", &auth);
    assert_eq!(c, 400, "{b}");
    assert!(b.contains("bad snapshot name"), "{b}");
    let (c, b) = post(port, "/_supervisor/snapshots/nope/restore", &auth);
    assert_eq!(c, 404, "{b}");
    assert!(b.contains("snapshot `nope` not found for web"), "{b}");
    let (c, b) = post(port, "/_supervisor/snapshots/s1/save", &auth);
    assert_eq!(c, 200, "{b}");
    assert!(b.contains("snapshot `s1` saved"), "{b}");
    s.wait_state("web", "ready", T);
    let (c, b) = post(port, "/_supervisor/snapshots/s1/restore", &auth);
    assert_eq!(c, 200, "{b}");
    drop(s);

    // Nothing to snapshot: a conflict with the table, not a bad request.
    let (dir, port, cfg) = table("[process.web]\ncommand = \"exec sleep 60\"\n");
    let s = Sup::spawn(dir, port, cfg, &[], &[("DMP_CONTAINED_TOKEN", "snap-tok")]);
    s.wait_state("web", "ready", T);
    let (c, b) = post(port, "/_supervisor/snapshots/s1/save", &auth);
    assert_eq!(c, 409, "{b}");
    assert!(
        b.contains("no [process] entry declares a `data_dir`"),
        "{b}"
    );
}
