//! Issue #17 items 1, 6–9: a blocked stdout never freezes the supervisor; no secret the
//! supervisor knows reaches any output; hostile HTTP clients cannot exhaust it; bad config
//! values are refused by `check`; faults (corrupt cache records, a squatted socket, a deleted
//! watch root) are handled. Real binary, real pipes and sockets.
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The supervisor with its stdout and stderr on a pipe that nobody reads (a paused terminal,
/// `up | less`, a stalled log driver).
#[test]
fn blocked_stdout_never_freezes_status_or_shutdown() {
    let (dir, port, config) = table(
        r#"
[process.chatty]
command = "yes 'a line of output that nobody is going to read, over and over' | head -n 3000000; exec sleep 1000"
"#,
    );
    // stdout and stderr on one pipe that is never read, as under a stalled log driver.
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (_unread, w) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let mut child = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w.try_clone().unwrap()))
        .stderr(Stdio::from(w))
        .spawn()
        .unwrap();
    let _ = &dir;
    let status = || -> Option<serde_json::Value> {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let (code, body) = http(port, "GET", "/_supervisor/status", &[]);
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    };
    // The service writes far more than the pipe (64 KiB) and the queue (8 MiB) hold.
    let st = wait_for("lines dropped", Duration::from_secs(30), || {
        status().filter(|s| s["supervisor"]["output"]["dropped_lines"].as_u64() > Some(0))
    });
    let out = &st["supervisor"]["output"];
    assert!(out["queued_bytes"].as_u64().unwrap() <= 9 << 20, "{out}");
    // Everything still answers: status, metrics, logs (the ring keeps every line).
    let t = Instant::now();
    let (code, metrics) = http(port, "GET", "/_supervisor/metrics", &[]);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("dmp_output_dropped_lines_total "),
        "{metrics}"
    );
    let (code, logs) = http(port, "GET", "/_supervisor/logs/chatty?tail=3", &[]);
    assert_eq!(code, 200);
    assert!(logs.contains("nobody is going to read"), "{logs}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // SIGTERM still stops everything promptly.
    let t = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = wait_for("exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(code.code(), Some(0));
}

/// Every secret the supervisor knows — a secret-named variable (`DB_PASS`), a password inside a
/// probe URL (with a `/` in it), a DSN `password=`, the API token — printed by the service
/// itself or shown by the supervisor, is redacted in every output.
#[test]
fn secrets_are_redacted_in_every_output() {
    let dead = free_port();
    let (dir, port, config) = table(&format!(
        r#"
[process.leaky]
command = "echo db=$DB_PASS url=$DATABASE_URL dsn=$DSN_PW tok=$DMP_CONTAINED_TOKEN; echo err $DB_PASS >&2; exec sleep 1000"
env = {{ DB_PASS = "s3cr3t-DB-value", DSN_PW = "pg-hunter22", DATABASE_URL = "postgres://admin:pa/ss-Q9x@db:5432/app" }}
ready = {{ http = "http://admin:probe%2Fpw-77@127.0.0.1:{dead}/health", interval = "50ms", retries = 1, start_period = "0s" }}
restart = {{ policy = "never" }}

[process.dsn]
command = "exec sleep 1000"
ready = {{ postgres = "host=127.0.0.1 port={dead} user=x password=pg-hunter22" }}
"#
    ));
    let sup = Sup::spawn(
        dir,
        port,
        config,
        &[],
        &[("DMP_CONTAINED_TOKEN", "tok-abcdef-123456")],
    );
    wait_for("the service's lines", Duration::from_secs(10), || {
        let (_, l) = sup.get("/_supervisor/logs/leaky?tail=50");
        (l.contains("db=") && l.contains("err")).then_some(())
    });
    wait_for("a failed probe", Duration::from_secs(10), || {
        let e = sup.entry("leaky");
        e["last_probe"]["error"].is_string().then_some(())
    });
    let secrets = [
        "s3cr3t-DB-value",
        "pa/ss-Q9x",
        "pg-hunter22",
        "tok-abcdef-123456",
    ];
    let (_, status) = sup.get("/_supervisor/status");
    let (_, text_logs) = sup.get("/_supervisor/logs/leaky?tail=100");
    let (_, json_logs) = sup.get("/_supervisor/logs/leaky?tail=100&format=json");
    let (_, metrics) = sup.get("/_supervisor/metrics");
    let cli_status = sup.cli(&["status", "--json"]);
    let cli_logs = sup.cli(&["logs", "leaky"]);
    let outputs = [
        ("status", status),
        ("/logs", text_logs.clone()),
        ("/logs json", json_logs),
        ("metrics", metrics),
        (
            "cli status",
            String::from_utf8_lossy(&cli_status.stdout).into(),
        ),
        ("cli logs", String::from_utf8_lossy(&cli_logs.stdout).into()),
        ("stdout", sup.stdout_text()),
        ("stderr", sup.stderr_text()),
    ];
    for (what, text) in &outputs {
        for s in secrets {
            assert!(!text.contains(s), "{s} leaked in {what}:\n{text}");
        }
    }
    assert!(text_logs.contains("db=<redacted>"), "{text_logs}");
    assert!(text_logs.contains("err <redacted>"), "{text_logs}");
    assert!(sup.stdout_text().contains("<redacted>"));
    wait_for(
        "the probe warning on stderr",
        Duration::from_secs(10),
        || {
            sup.stderr_text()
                .contains("admin:<redacted>@")
                .then_some(())
        },
    );
    for s in secrets {
        assert!(!sup.stderr_text().contains(s), "{s} leaked in stderr");
    }
    // Only secrets are redacted: the token variable's name is not a secret.
    assert!(text_logs.contains("tok="), "{text_logs}");
    assert!(!sup.entry("leaky")["command"]
        .to_string()
        .contains("$<redacted>"));
}

/// A corrupt cache record (truncated here) is a miss with a warning: the step runs again and
/// rewrites it, and `cache ls` shows the corrupt file until then.
#[test]
fn corrupt_cache_record_is_a_miss_and_shown_by_cache_ls() {
    let (dir, port, config) = table(
        r#"
[step.gen]
command = "echo run >> gen.runs"
cache = { key_extra = ["v1"] }
[process.web]
command = "exec sleep 60"
"#,
    );
    let runs = dir.path().join("gen.runs");
    let count = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut s = Sup::spawn(dir, port, config, &[], &[]);
    s.wait_state("gen", "done", Duration::from_secs(10));
    let key = s.entry("gen")["cache_key"].as_str().unwrap().to_string();
    assert_eq!(s.stop(), 0);
    assert_eq!(count(), 1);
    let rec = s.path(&format!("cache/steps/gen/{key}.json"));
    let text = std::fs::read_to_string(&rec).unwrap();
    std::fs::write(&rec, &text[..text.len() / 2]).unwrap();
    let ls = s.cli(&["cache", "ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
    assert!(ls.contains("corrupt") && ls.contains(&key), "{ls}");

    let mut s = s.restart(&[]);
    s.wait_state("gen", "done", Duration::from_secs(10));
    assert_eq!(count(), 2, "the step ran again");
    assert!(
        s.stderr_text().contains("corrupt cache record"),
        "{}",
        s.stderr_text()
    );
    let ls = s.cli(&["cache", "ls"]);
    assert!(!String::from_utf8_lossy(&ls.stdout).contains("corrupt"));
    assert_eq!(s.stop(), 0);
}

fn raw_request(port: u16, req: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// HTTP abuse: a foreign Host (DNS rebinding) gets 421; a flood of idle connections over the
/// cap does not lock anyone out; stalled followers cost bounded memory; odd paths never panic.
#[test]
fn http_abuse_host_check_idle_flood_and_stalled_followers() {
    let (dir, port, config) = table(
        r#"
[process.spew]
command = "yes 'spewing a line for followers that never read it, to fill their buffers' | head -n 4000000; exec sleep 1000"
"#,
    );
    // A low descriptor limit makes the connection cap 64.
    let mut child = Command::new("prlimit")
        .args(["--nofile=128:128", BIN, "up", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for("API", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let get = |host: &str, path: &str| {
        raw_request(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    let code = |r: &str| r.split_whitespace().nth(1).unwrap_or("").to_string();
    assert_eq!(code(&get("evil.example", "/_supervisor/status")), "421");
    assert_eq!(
        code(&get("evil.example:80", "/_supervisor/logs/spew")),
        "421"
    );
    assert_eq!(
        code(&get(&format!("127.0.0.1:{port}"), "/_supervisor/status")),
        "200"
    );
    assert_eq!(code(&get("localhost", "/_supervisor/status")), "200");
    assert_eq!(code(&get("[::1]:80", "/_supervisor/health")).len(), 3);
    for p in [
        "/_supervisor/logs/a%E2%82",
        "/_supervisor/logs/%",
        "/_supervisor/logs/%zz%",
    ] {
        let c = code(&get("localhost", p));
        assert!(c == "404" || c == "400", "{p}: {c}");
    }

    // Stalled followers: 40 clients that never read while the service spews.
    let followers: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(
                b"GET /_supervisor/logs/spew?follow=1&tail=0 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            )
            .unwrap();
            s
        })
        .collect();
    // An idle flood over the cap (64): the oldest idle connections make room.
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let t = Instant::now();
    let st = get("localhost", "/_supervisor/status");
    assert_eq!(code(&st), "200", "{st}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let rss = || {
        let m = get("localhost", "/_supervisor/metrics");
        m.lines()
            .find_map(|l| l.strip_prefix("dmp_supervisor_resident_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap()
    };
    wait_for("the spew to end", Duration::from_secs(30), || {
        let (_, l) = http(port, "GET", "/_supervisor/status", &[]);
        let v: serde_json::Value = serde_json::from_str(&l).ok()?;
        (v["entries"][0]["log_lines"].as_u64()? >= 4_000_000).then_some(())
    });
    let r = rss();
    assert!(r < 120e6, "RSS {} MB with 40 stalled followers", r / 1e6);
    eprintln!(
        "RSS with 40 stalled followers after 4M lines: {:.1} MB",
        r / 1e6
    );
    drop(followers);
    drop(idle);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for("exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
}

/// Another user's socket at the control path (squatted in a shared directory) is refused by
/// both the supervisor and the CLI, with the owner named.
#[test]
fn squatted_socket_is_refused_by_supervisor_and_cli() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root to create a socket owned by another user");
        return;
    }
    let (dir, _port, config) = table("[process.web]\ncommand = \"exec sleep 60\"\n");
    let sock = dir.path().join("ctl.sock");
    let _impostor = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).unwrap();
    let up = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&up.stderr);
    assert_ne!(up.status.code(), Some(0));
    assert!(err.contains("belongs to uid 65534"), "{err}");
    let cli = Command::new(BIN)
        .args(["--config"])
        .arg(&config)
        .args(["status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&cli.stderr);
    assert_ne!(cli.status.code(), Some(0));
    assert!(err.contains("belongs to uid 65534"), "{err}");
}

/// In native (inotify) mode, a watched root that is deleted and recreated is watched again:
/// status says so, the recreation is a reload, and later edits reload too.
#[test]
fn watched_root_deleted_and_recreated_is_watched_again() {
    let (dir, port, config) = table(
        r#"
[process.app]
command = "exec sleep 1000"
watch = { paths = ["src"], mode = "native", debounce = "50ms" }
"#,
    );
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.py"), "1").unwrap();
    let s = Sup::spawn(dir, port, config, &[], &[]);
    let watch = || s.entry("app")["watch"].clone();
    wait_for("native watching", Duration::from_secs(10), || {
        (watch()["mode"] == "native").then_some(())
    });
    std::fs::remove_dir_all(&src).unwrap();
    wait_for("a note about the deletion", Duration::from_secs(10), || {
        let n = watch()["note"].as_str()?.to_string();
        n.contains("was deleted;").then_some(())
    });
    let before = watch()["reloads"].as_u64().unwrap();
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.py"), "2").unwrap();
    wait_for("watching again", Duration::from_secs(10), || {
        let w = watch();
        (w["note"].as_str()?.contains("recreated; watching again")
            && w["reloads"].as_u64()? > before)
            .then_some(())
    });
    // An edit after the recreation is seen (the new tree is really watched).
    wait_for("the reload to finish", Duration::from_secs(10), || {
        let w = watch();
        (w["reloading"] == false && w["pending"] == 0).then_some(())
    });
    let mid = watch()["reloads"].as_u64().unwrap();
    std::fs::write(src.join("b.py"), "3").unwrap();
    wait_for("a reload for the edit", Duration::from_secs(10), || {
        (watch()["reloads"].as_u64()? > mid).then_some(())
    });
}

/// HTTP fuzzer: requests generated from a grammar of the API's routes, mutated (odd methods,
/// percent escapes, traversal, control bytes, huge or contradictory lengths, chunked garbage,
/// foreign Hosts) plus raw byte strings, sent over TCP. Every answer is well-formed HTTP and
/// never a 500; no handler panics; status still answers afterwards. Deterministic (the seed is
/// fixed); `PROPTEST_CASES=N` for a longer run (bench/fuzz-bench.sh runs the config fuzzer).
#[test]
fn http_fuzzer_never_panics_or_500s() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use std::io::{Read, Write};

    let s = Sup::start(
        r#"
[process.api]
command = ["sh", "-c", "echo hello; exec sleep 1000"]
"#,
    );
    s.wait_state("api", "ready", Duration::from_secs(10));
    let port = s.port;

    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("HEAD".to_string()),
        Just("DELETE".to_string()),
        "[A-Z]{1,12}",
        "[ -~]{0,8}",
    ];
    let segment = prop_oneof![
        Just("_supervisor".to_string()),
        Just("status".to_string()),
        Just("health".to_string()),
        Just("metrics".to_string()),
        Just("logs".to_string()),
        Just("events".to_string()),
        Just("cache".to_string()),
        Just("reload".to_string()),
        Just("entries".to_string()),
        Just("api".to_string()),
        Just("unavailable".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        "%[0-9a-fA-Fzg]{0,3}",
        "[a-z0-9._~-]{0,12}",
        "\\PC{0,6}",
        "[\\x00-\\x1f]{1,3}",
    ];
    let path = prop::collection::vec(segment, 0..6).prop_map(|v| format!("/{}", v.join("/")));
    let query = prop_oneof![
        Just(String::new()),
        Just("?follow=1".to_string()),
        Just("?tail=-1".to_string()),
        Just("?tail=99999999999999999999".to_string()),
        Just("?since=10m&grep=[".to_string()),
        "\\?[ -~]{0,30}",
    ];
    let host = prop_oneof![
        Just("localhost".to_string()),
        Just("127.0.0.1".to_string()),
        Just("evil.example.com".to_string()),
        Just(String::new()),
        "[ -~]{0,20}",
    ];
    let extra = prop_oneof![
        Just(String::new()),
        Just("Content-Length: 5\r\n".to_string()),
        Just("Content-Length: 99999999999\r\n".to_string()),
        Just("Content-Length: -1\r\n".to_string()),
        Just("Content-Length: 1\r\nContent-Length: 2\r\n".to_string()),
        Just("Transfer-Encoding: chunked\r\n".to_string()),
        Just("Authorization: Bearer x\r\n".to_string()),
        "[A-Za-z-]{1,10}: [ -~]{0,40}\r\n",
        "[ -~]{0,40}\r\n",
    ];
    let body = prop_oneof![
        Just(String::new()),
        "[ -~]{0,64}",
        Just("zz\r\nxx\r\n".to_string())
    ];
    let request = prop_oneof![
        4 => (method, path, query, host, extra, body).prop_map(|(m, p, q, h, x, b)| {
            format!("{m} {p}{q} HTTP/1.1\r\nHost: {h}\r\n{x}Connection: close\r\n\r\n{b}").into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ];

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let result = runner.run(&request, |req| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = c.write_all(&req);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        // Either nothing (a connection closed on garbage) or a well-formed status line.
        if !buf.is_empty() {
            prop_assert!(
                text.starts_with("HTTP/1.1 "),
                "not HTTP: {:?}",
                &text[..text.len().min(200)]
            );
            let code = text.get(9..12).unwrap_or("");
            prop_assert!(
                code != "500",
                "500 for {:?}: {}",
                String::from_utf8_lossy(&req),
                &text[..text.len().min(300)]
            );
        }
        Ok(())
    });
    assert!(result.is_ok(), "{result:?}");
    // Still alive and answering; no handler panicked.
    assert_eq!(s.get("/_supervisor/status").0, 200);
    let err = s.stderr_text();
    assert!(!err.contains("panicked"), "{err}");
}
