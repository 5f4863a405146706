//! Issue #17 items 1, 6–9: a blocked stdout never freezes the supervisor; no secret the
//! supervisor knows reaches any output; hostile HTTP clients cannot exhaust it; bad config
//! values are refused by `check`; faults (corrupt cache records, a squatted socket, a deleted
//! watch root) are handled. Real binary, real pipes and sockets.
mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The supervisor with its stdout on a pipe that nobody reads (a paused terminal, `up | less`,
/// a stalled log driver).
#[test]
fn blocked_stdout_never_freezes_status_or_shutdown() {
    let (dir, port, config) = table(
        r#"
[process.chatty]
command = "yes 'a line of output that nobody is going to read, over and over' | head -n 3000000; exec sleep 1000"
"#,
    );
    let mut child = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped()) // never read
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
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
