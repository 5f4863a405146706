//! Start-up progress, the ready line and critical path, the event stream and `wait`, on the
//! real binary (and in tmux for the TTY block).
mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const CHAIN: &str = r#"
[step.a]
command = "sleep 0.3"
[step.b]
command = "sleep 0.6"
after = ["a"]
[process.c]
command = "exec sleep 60"
after = ["b"]
[step.side]
command = "sleep 0.1"
"#;

#[test]
fn critical_path_of_a_chain_of_sleeps() {
    let s = Sup::start_args(CHAIN, &["--progress", "plain"]);
    s.wait_state("c", "ready", Duration::from_secs(10));
    let st = wait_for("the critical path", Duration::from_secs(5), || {
        let st = s.status();
        (st["critical_path"].as_array()?.len() == 3).then_some(st)
    });
    let path = st["critical_path"].as_array().unwrap();
    let names: Vec<&str> = path.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"], "{st}");
    let d = |i: usize| path[i]["duration_s"].as_f64().unwrap();
    assert!((0.3..0.6).contains(&d(0)), "{st}");
    assert!((0.6..0.9).contains(&d(1)), "{st}");
    assert!(d(2) < 0.2, "{st}");
    // Each entry's own span: b waited for a, then ran 0.6 s.
    let b = s.entry("b");
    assert!(b["waited_s"].as_f64().unwrap() >= 0.3, "{b}");
    assert!(
        (0.6..0.9).contains(&b["duration_s"].as_f64().unwrap()),
        "{b}"
    );
    // The ready line, once, on stderr; and the status command shows the path.
    let err = wait_for("the ready line", Duration::from_secs(5), || {
        let e = s.stderr_text();
        e.contains("stack ready in").then_some(e)
    });
    assert_eq!(err.matches("stack ready in").count(), 1, "{err}");
    assert!(
        err.contains("critical path: a 0.3 s → b 0.6 s → c"),
        "{err}"
    );
    assert!(
        err.contains(&format!("open http://127.0.0.1:{}/_supervisor/", s.port)),
        "{err}"
    );
    let out = s.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("critical path: a "), "{text}");
}

/// Plain progress lines, times normalised: one line per change, in order, then the ready line.
#[test]
fn plain_progress_golden() {
    let s = Sup::start_args(
        r#"
[step.a]
command = "true"
[process.c]
command = "exec sleep 60"
after = ["a"]
"#,
        &["--progress", "plain"],
    );
    s.wait_state("c", "ready", Duration::from_secs(10));
    let err = wait_for("the ready line", Duration::from_secs(5), || {
        let e = s.stderr_text();
        e.contains("stack ready in").then_some(e)
    });
    let time = regex::Regex::new(r"\d+(\.\d+)? s\b").unwrap();
    let lines: Vec<String> = err
        .lines()
        .filter(|l| l.starts_with('[') || l.starts_with("stack ready"))
        .map(|l| {
            time.replace_all(l, "T s")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let port = s.port;
    assert_eq!(
        lines,
        [
            "[0/2] T s a: running".to_string(),
            "[1/2] T s a: done".into(),
            "[1/2] T s c: starting".into(),
            "[2/2] T s c: ready".into(),
            format!("stack ready in T s; critical path: a T s → c T s; 0 steps cached; open http://127.0.0.1:{port}/_supervisor/"),
        ],
        "{err}"
    );
}

#[test]
fn wait_exit_codes_and_messages() {
    let port = free_port();
    let s = Sup::start_args(
        &format!(
            r#"
[process.slow]
command = "sleep 1; exec python3 -m http.server --bind 127.0.0.1 {port}"
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}
[step.broken]
command = "echo 'FATAL: the disk is full'; exit 3"
optional = true
[process.never]
command = "exec sleep 60"
ready = {{ tcp = "127.0.0.1:1", interval = "100ms" }}
optional = true
"#
        ),
        &["--progress", "quiet"],
    );
    // Success: blocks until slow is ready (about 1 s), printing progress.
    let t = std::time::Instant::now();
    let out = s.cli(&["wait", "--timeout", "30", "slow"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("ready: slow"), "{err}");
    assert_eq!(s.state("slow"), "ready");
    assert!(t.elapsed() < Duration::from_secs(10));
    // Failure: names the entry, its reason and its last log lines.
    let out = s.cli(&["wait", "broken"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed: broken (failed)"), "{err}");
    assert!(err.contains("FATAL: the disk is full"), "{err}");
    // Timeout: 124, naming what still waits and why.
    let t = std::time::Instant::now();
    let out = s.cli(&["wait", "--timeout", "1s", "never", "slow"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("timed out after 1s: not ready: never"),
        "{err}"
    );
    assert!(err.contains("still waiting: never (starting)"), "{err}");
    assert!(t.elapsed() >= Duration::from_secs(1) && t.elapsed() < Duration::from_secs(5));
    // Unknown entry.
    let out = s.cli(&["wait", "nope"]);
    assert_eq!(out.status.code(), Some(4));
    // Default: every required entry (slow).
    let out = s.cli(&["wait"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wait` started before the supervisor reached ready follows the event stream to the end.
#[test]
fn wait_follows_the_event_stream() {
    let s = Sup::start_args(CHAIN, &["--progress", "quiet"]);
    let out = s.cli(&["wait", "--timeout", "20", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("c: ready") || err.contains("ready: c"),
        "{err}"
    );
    assert_eq!(s.state("c"), "ready");
}

/// In a real terminal (tmux), the block is redrawn in place and the ready line stays.
#[test]
fn tty_block_in_tmux() {
    if !require(&[Need::Bin("tmux")]) {
        return;
    }
    let (dir, _port, config) = table(CHAIN);
    let session = format!("dmp-progress-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap()
    };
    let cmd = format!("{BIN} up --config {} ; sleep 60", config.display());
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "40",
        &cmd,
    ]);
    assert!(out.status.success(), "{out:?}");
    let screen = wait_for(
        "the ready line in the pane",
        Duration::from_secs(20),
        || {
            let o = tmux(&["capture-pane", "-p", "-t", &session]);
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.contains("stack ready in").then_some(text)
        },
    );
    let _ = tmux(&["kill-server"]);
    drop(dir);
    assert!(screen.contains("[4/4 ready]"), "{screen}");
    assert_eq!(
        screen.matches("[4/4 ready]").count(),
        1,
        "redrawn in place:\n{screen}"
    );
    assert!(
        !screen.contains("[0/4 ready]"),
        "redrawn in place:\n{screen}"
    );
    for line in [" ✔ a ", " ✔ b ", " ✔ c ", " ✔ side "] {
        assert!(screen.contains(line), "{line}\n{screen}");
    }
    assert!(screen.contains("critical path: a "), "{screen}");
    // A finished entry shows how long it took: b slept 0.6 s.
    let b = screen.lines().find(|l| l.contains(" ✔ b ")).unwrap();
    assert!(b.contains("0.6 s") || b.contains("0.7 s"), "{screen}");
}

/// `logs` with no names interleaves every entry; `--grep`, `-t` and `--since` filter/annotate.
#[test]
fn logs_all_entries_grep_since_timestamps() {
    let s = Sup::start_args(
        r#"
[process.one]
command = "echo 'one: old line'; sleep 2; echo 'one: new error'; exec sleep 60"
[process.two]
command = "echo 'two: hello'; exec sleep 60"
"#,
        &["--progress", "quiet"],
    );
    s.wait_stdout(&["one | one: new error"], Duration::from_secs(10));
    let run = |args: &[&str]| {
        let o = s.cli(args);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let since = run(&["logs", "--since", "1500ms"]);
    assert!(since.contains("one | one: new error"), "{since}");
    assert!(
        !since.contains("old line") && !since.contains("two: hello"),
        "{since}"
    );
    let all = run(&["logs"]);
    let pos = |t: &str| all.find(t).unwrap_or_else(|| panic!("{t} in {all}"));
    assert!(
        pos("one | one: old line") < pos("one | one: new error"),
        "{all}"
    );
    assert!(
        pos("two | two: hello") < pos("one | one: new error"),
        "{all}"
    );
    let grep = run(&["logs", "--grep", "err(or)?$", "-t"]);
    let re = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z one \| one: new error\n$")
        .unwrap();
    assert!(re.is_match(&grep), "{grep:?}");
    // One name: no prefix, as before.
    assert_eq!(run(&["logs", "two"]), "two: hello\n");
    let bad = s.cli(&["logs", "--grep", "("]);
    assert_eq!(bad.status.code(), Some(2));
}

/// `log_dir` keeps a file per entry, rotated by size, `log_max_files` kept.
#[test]
fn log_files_rotate_by_size() {
    let (dir, port, config) = table_with(
        r#"
[process.chatty]
command = "for i in $(seq 1 40); do echo \"line number $i padded\"; done; echo finished; exec sleep 60"
"#,
        "log_dir = \"logs\"\nlog_max_size = \"1K\"\nlog_max_files = 3\n",
    );
    let s = Sup::spawn(dir, port, config, &["--progress", "quiet"], &[]);
    s.wait_stdout(&["chatty | finished"], Duration::from_secs(10));
    let logs = s.path("logs");
    let read = |n: &str| std::fs::read_to_string(logs.join(n)).unwrap_or_default();
    let cur = wait_for("the last line in the file", Duration::from_secs(5), || {
        let t = read("chatty.log");
        t.contains("finished").then_some(t)
    });
    // 41 lines of ~45 bytes (timestamp + text) = ~1.8 KiB: one rotation, two files.
    let old = read("chatty.log.1");
    assert!(
        !old.is_empty(),
        "{:?}",
        std::fs::read_dir(&logs).unwrap().collect::<Vec<_>>()
    );
    assert!(!logs.join("chatty.log.2").exists());
    for f in [&cur, &old] {
        assert!(f.len() <= 1024, "{f}");
    }
    assert!(
        old.starts_with(|c: char| c.is_ascii_digit()) && old.contains("Z line number 1 padded\n"),
        "{old}"
    );
    let all = old.clone() + &cur;
    for i in 1..=40 {
        assert_eq!(
            all.matches(&format!(" line number {i} padded\n")).count(),
            1,
            "{all}"
        );
    }
}

#[test]
fn bad_log_max_size_is_a_config_error() {
    let (_dir, _port, config) = table_with(
        "[process.x]\ncommand = \"sleep 1\"\n",
        "log_dir = \"logs\"\nlog_max_size = \"5T\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("log_max_size") && err.contains("unknown size unit"),
        "{err}"
    );
}

/// Benchmark (ignored by default): the event stream's cost with 50 subscribers, on a crash loop
/// that makes hundreds of transitions a second. Prints the supervisor's CPU per event with 0 and
/// with 50 subscribers, and checks that every subscriber saw every event (contiguous `seq`).
/// `cargo test --release --test section_progress bench_events -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_events_50_subscribers() {
    use std::io::{Read, Write};
    let s = Sup::start_args(
        r#"
[process.flappy]
command = ["false"]
restart = { backoff = "1ms", backoff_max = "1ms", max_restarts = 1000000, window = "1s" }
optional = true
"#,
        &["--progress", "quiet"],
    );
    // `up` is the init shim; the supervisor proper is its child.
    let sup_pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", s.pid()))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let cpu_ticks = || {
        let st = std::fs::read_to_string(format!("/proc/{sup_pid}/stat")).unwrap();
        let f: Vec<&str> = st.rsplit(") ").next().unwrap().split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let seq = || s.status()["event_seq"].as_u64().unwrap();
    let window = Duration::from_secs(5);
    let measure = || {
        let (c0, s0, t0) = (cpu_ticks(), seq(), std::time::Instant::now());
        std::thread::sleep(window);
        let (c1, s1) = (cpu_ticks(), seq());
        let events = s1 - s0;
        let cpu_s = (c1 - c0) as f64 / 100.0;
        (events, cpu_s, t0.elapsed().as_secs_f64(), s1)
    };
    let (e0, cpu0, w0, _) = measure();
    // Set to the last event's seq once it is known: each subscriber reads until it has that
    // event (it may still be on its way when the window ends), or for 10 s more at most.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let subs: Vec<_> = (0..50)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.write_all(b"GET /_supervisor/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let mut buf = [0u8; 65536];
                let mut deadline = None;
                loop {
                    let last = stop.load(std::sync::atomic::Ordering::Relaxed);
                    if last > 0 {
                        let until = *deadline.get_or_insert_with(|| {
                            std::time::Instant::now() + Duration::from_secs(10)
                        });
                        let want = format!("\"seq\":{last},");
                        if std::time::Instant::now() > until
                            || memchr::memmem::find(&text, want.as_bytes()).is_some()
                        {
                            break;
                        }
                    }
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => text.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                }
                String::from_utf8_lossy(&text).to_string()
            })
        })
        .collect();
    // Subscribed before this point: from here on, every subscriber must see every event.
    std::thread::sleep(Duration::from_millis(300));
    let first = seq() + 1;
    let (e1, cpu1, w1, last) = measure();
    stop.store(last, std::sync::atomic::Ordering::Relaxed);
    let re = regex::Regex::new(r#""seq":(\d+)"#).unwrap();
    let mut complete = 0;
    for h in subs {
        let text = h.join().unwrap();
        assert!(!text.contains("lagged"), "a subscriber lagged");
        let seqs: Vec<u64> = re
            .captures_iter(&text)
            .map(|c| c[1].parse().unwrap())
            .filter(|&n| n >= first && n <= last)
            .collect();
        let want: Vec<u64> = (first..=last).collect();
        assert_eq!(seqs, want, "a subscriber missed or reordered events");
        complete += 1;
    }
    println!(
        "FIGURES events: 0 subscribers {e0} events in {w0:.1} s, CPU {cpu0:.2} s ({:.1} µs/event); \
         50 subscribers {e1} events in {w1:.1} s, CPU {cpu1:.2} s ({:.1} µs/event, {:.2} µs/event/subscriber extra); \
         {complete}/50 subscribers saw all {} events",
        cpu0 / e0 as f64 * 1e6,
        cpu1 / e1 as f64 * 1e6,
        (cpu1 / e1 as f64 - cpu0 / e0 as f64) * 1e6 / 50.0,
        last - first + 1
    );
}
