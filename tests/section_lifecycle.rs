//! The real binary on temp tables: ordering, readiness gating, restarts, exit codes,
//! selection, shutdown.
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::time::Duration;

#[test]
fn starts_in_dependency_order_after_readiness() {
    let s = Sup::start(
        r#"
[process.db]
command = "sleep 0.3; exec python3 -m http.server --bind 127.0.0.1 ${DB_PORT}"
ready = { tcp = "127.0.0.1:${DB_PORT}", interval = "50ms" }
[step.seed]
command = "echo seeded"
after = ["db"]
[process.app]
command = "echo app-started; exec sleep 60"
after = ["seed"]
"#
        .replace("${DB_PORT}", &free_port().to_string())
        .as_str(),
    );
    let app = s.wait_state("app", "ready", Duration::from_secs(10));
    let db = s.entry("db");
    let seed = s.entry("seed");
    assert_eq!(seed["state"], "done");
    assert!(db["ready_at"].as_u64().unwrap() <= seed["started_at"].as_u64().unwrap());
    assert!(seed["started_at"].as_u64().unwrap() <= app["started_at"].as_u64().unwrap());
    assert!(db["time_to_ready_s"].as_f64().unwrap() >= 0.25);
}

#[test]
fn crash_is_restarted_immediately_then_backs_off_then_fails() {
    let s = Sup::start(
        r#"
[process.crashy]
command = "echo boom; exit 3"
restart = { backoff = "500ms", max_restarts = 4, window = "60s" }
optional = true
[process.steady]
command = ["sleep", "60"]
"#,
    );
    let e = s.wait_state("crashy", "failed", Duration::from_secs(15));
    assert_eq!(e["restarts"], 4);
    assert_eq!(e["last_exit"]["code"], 3);
    assert!(e["reason"].as_str().unwrap().contains("crash loop"), "{e}");
    // The supervisor and the other entry are unaffected.
    assert_eq!(s.state("steady"), "ready");
    let log = s.stdout_text();
    assert_eq!(log.matches("crashy | boom").count(), 5, "{log}");
    // Backoff between an exit and the next start: immediate, then 500ms, 1s, 2s (doubling),
    // measured on the supervisor's own log timestamps (slack for a loaded machine).
    let st = s.stderr_text();
    let gaps = restart_gaps(&st, "crashy");
    assert_eq!(gaps.len(), 4, "{st}");
    for (gap, want) in gaps.iter().zip([0.0, 0.5, 1.0, 2.0]) {
        assert!(
            *gap >= want && *gap < want + 0.45,
            "gap {gap:.3}s, want {want}s; all {gaps:?}\n{st}"
        );
    }
}

/// Seconds between each `<name>: exited` log line and the next `<name>: started` line.
fn restart_gaps(stderr: &str, name: &str) -> Vec<f64> {
    // `2026-12-01T03:14:33.115190Z  INFO crashy: started (pid 1)` -> seconds of the day.
    let secs = |line: &str| -> f64 {
        let t = &line[line.find('T').unwrap() + 1..line.find('Z').unwrap()];
        let mut f = t.split(':').map(|x| x.parse::<f64>().unwrap());
        f.next().unwrap() * 3600.0 + f.next().unwrap() * 60.0 + f.next().unwrap()
    };
    let mut exited = None;
    let mut gaps = Vec::new();
    for line in stderr.lines() {
        if line.contains(&format!(" {name}: exited")) {
            exited = Some(secs(line));
        } else if line.contains(&format!(" {name}: started")) {
            if let Some(e) = exited.take() {
                gaps.push((secs(line) - e).rem_euclid(86_400.0));
            }
        }
    }
    gaps
}

#[test]
fn killed_service_is_restarted_fast() {
    let s = Sup::start("[process.svc]\ncommand = [\"sleep\", \"60\"]\n");
    let e = s.wait_state("svc", "ready", Duration::from_secs(5));
    let pid = e["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let e = wait_for("a new pid", Duration::from_secs(5), || {
        let e = s.entry("svc");
        (e["state"] == "ready" && e["pid"].as_i64().map(|p| p as i32) != Some(pid)).then_some(e)
    });
    assert_eq!(e["restarts"], 1);
    assert_eq!(e["last_exit"]["signal"], "SIGKILL");
}

#[test]
fn readiness_failure_restarts_and_liveness_failure_restarts() {
    let dead = free_port();
    let s = Sup::start(&format!(
        r#"
[process.never-ready]
command = ["sleep", "60"]
ready = {{ tcp = "127.0.0.1:{dead}", interval = "20ms", timeout = "100ms", retries = 2, start_period = "0s" }}
restart = {{ max_restarts = 1, backoff = "10ms" }}
optional = true
[process.hangs]
command = ["sleep", "60"]
liveness = {{ tcp = "127.0.0.1:{dead}", interval = "50ms", timeout = "100ms", retries = 1, start_period = "0s" }}
restart = {{ backoff = "10ms" }}
optional = true
"#
    ));
    let e = s.wait_state("never-ready", "failed", Duration::from_secs(10));
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("readiness probe failed"),
        "{e}"
    );
    assert_eq!(e["last_probe"]["ok"], false);
    let e = wait_for("liveness restart", Duration::from_secs(10), || {
        let e = s.entry("hangs");
        (e["restarts"].as_u64().unwrap_or(0) >= 1).then_some(e)
    });
    assert!(s.stderr_text().contains("liveness probe failed"), "{e}");
}

#[test]
fn critical_failure_ends_the_supervisor_with_its_exit_code() {
    let mut s = Sup::start(
        r#"
[process.other]
command = ["sleep", "60"]
[process.core]
command = "sleep 0.3; exit 7"
critical = true
restart = { policy = "never" }
"#,
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), 7);
}

#[test]
fn a_table_of_oneshots_exits_0_when_all_succeed_and_1_when_one_fails() {
    let mut ok = Sup::start(
        "[step.a]\ncommand = \"sleep 0.3\"\n[step.b]\ncommand = \"true\"\nafter = [\"a\"]\n",
    );
    assert_eq!(ok.wait_exit(Duration::from_secs(10)), 0);
    let mut bad = Sup::start("[step.a]\ncommand = \"sleep 0.3; exit 4\"\n[step.b]\ncommand = \"true\"\nafter = [\"a\"]\n");
    assert_eq!(bad.wait_exit(Duration::from_secs(10)), 1);
    assert!(
        bad.stderr_text()
            .contains("a: failed: failed with exit code 4"),
        "{}",
        bad.stderr_text()
    );
}

#[test]
fn failing_step_blocks_only_its_dependents() {
    let s = Sup::start(
        r#"
[step.bad]
command = "echo 'ERROR: relation does not exist' >&2; exit 3"
[process.needs-bad]
command = ["sleep", "60"]
after = ["bad"]
[process.unrelated]
command = ["sleep", "60"]
"#,
    );
    let e = s.wait_state("bad", "failed", Duration::from_secs(5));
    assert_eq!(e["last_exit"]["code"], 3);
    let w = s.wait_state("needs-bad", "waiting", Duration::from_secs(5));
    assert!(
        w["reason"]
            .as_str()
            .unwrap()
            .contains("dependency `bad` is failed"),
        "{w}"
    );
    assert_eq!(s.state("unrelated"), "ready");
    let (code, _) = s.get("/_supervisor/logs/bad?tail=5");
    assert_eq!(code, 200);
}

#[test]
fn only_and_without_select_entries() {
    let body = r#"
[process.db]
command = ["sleep", "60"]
[process.api]
command = ["sleep", "60"]
after = ["db"]
[process.web]
command = ["sleep", "60"]
after = ["api"]
"#;
    let s = Sup::start_args(body, &["--only", "api"]);
    s.wait_state("api", "ready", Duration::from_secs(5));
    let names: Vec<String> = s.status()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["api", "db"]);
    drop(s);
    let s = Sup::start_args(body, &["--without", "api"]);
    // web depends on api, which runs elsewhere: it starts anyway.
    s.wait_state("web", "ready", Duration::from_secs(5));
    assert_eq!(s.status()["entries"].as_array().unwrap().len(), 2);
}

#[test]
fn a_taken_port_is_a_loud_error_naming_port_and_entry() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let s = Sup::start(&format!(
        "[process.postgres]\ncommand = [\"sleep\", \"60\"]\nports = [{port}]\nrestart = {{ max_restarts = 1, backoff = \"10ms\" }}\noptional = true\n[process.steady]\ncommand = [\"sleep\", \"60\"]\n"
    ));
    let e = s.wait_state("postgres", "failed", Duration::from_secs(5));
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("port {port} is already in use")) && reason.contains("`postgres`"),
        "{reason}"
    );
    assert!(s
        .stderr_text()
        .contains(&format!("port {port} is already in use")));
    let (_, logs) = s.get("/_supervisor/logs/postgres");
    assert!(logs.contains("already in use"), "{logs}");
}

#[test]
fn shutdown_is_in_reverse_dependency_order_with_per_entry_signals() {
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order");
    let mk = |name: &str, sig: &str| {
        script(
            dir.path(),
            name,
            &format!(
                "trap 'echo {name} >> {o}; exit 0' {sig}\necho up\nwhile true; do sleep 0.05; done",
                o = order.display()
            ),
        )
    };
    let db = mk("db", "INT");
    let api = mk("api", "TERM");
    let web = mk("web", "QUIT");
    let mut s = Sup::start(&format!(
        r#"
[process.db]
command = ["{}"]
stop_signal = "SIGINT"
[process.api]
command = ["{}"]
after = ["db"]
[process.web]
command = ["{}"]
after = ["api"]
stop_signal = "QUIT"
"#,
        db.display(),
        api.display(),
        web.display()
    ));
    s.wait_state("web", "ready", Duration::from_secs(5));
    // Ready means started; each script says `up` once its trap is set.
    s.wait_stdout(&["db | up", "api | up", "web | up"], Duration::from_secs(5));
    let t = std::time::Instant::now();
    assert_eq!(s.stop(), 0);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "web\napi\ndb\n");
}

#[test]
fn stubborn_group_is_killed_after_timeout_and_nothing_survives() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let sc = script(dir.path(), "stubborn", &format!(
        "trap '' TERM\n(trap '' TERM; sleep 300) &\necho $! >> {p}\necho $$ >> {p}\nwhile true; do sleep 0.05; done",
        p = pids.display()
    ));
    let mut s = Sup::start(&format!(
        "[process.stubborn]\ncommand = [\"{}\"]\nstop_timeout = \"500ms\"\n",
        sc.display()
    ));
    s.wait_state("stubborn", "ready", Duration::from_secs(5));
    wait_for("pids", Duration::from_secs(5), || {
        std::fs::read_to_string(&pids)
            .ok()
            .filter(|p| p.lines().count() == 2)
    });
    let t = std::time::Instant::now();
    assert_eq!(s.stop(), 0);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(4),
        "{took:?}"
    );
    for p in std::fs::read_to_string(&pids).unwrap().lines() {
        let pid: i32 = p.trim().parse().unwrap();
        wait_for("group member gone", Duration::from_secs(2), || {
            (!alive(pid)).then_some(())
        });
    }
    assert!(s
        .stderr_text()
        .contains("sending SIGKILL to its process group"));
}

#[test]
fn second_sigterm_kills_immediately() {
    let mut s = Sup::start("[process.stubborn]\ncommand = \"trap '' TERM; echo up; while true; do sleep 0.05; done\"\nstop_timeout = \"30s\"\n");
    s.wait_stdout(&["stubborn | up"], Duration::from_secs(5));
    let first = std::time::Instant::now();
    s.signal(libc::SIGTERM);
    // The first SIGTERM is being honoured (the entry got its stop signal, which it ignores).
    s.wait_state("stubborn", "stopping", Duration::from_secs(5));
    // A repeat within 500 ms is a duplicate (docker stop + a tty), not "kill now": this wait is
    // the rule's own time window, not a guess at how long something takes.
    std::thread::sleep(Duration::from_millis(600).saturating_sub(first.elapsed()));
    let t = std::time::Instant::now();
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn services_start_with_default_signal_dispositions_even_if_ours_were_ignored() {
    // A shell's `&` (and `trap '' INT`) leaves SIGINT ignored across exec; a service whose stop
    // signal is SIGINT must still get it.
    let (dir, port, config) = table("[process.pg-like]\ncommand = [\"sleep\", \"60\"]\nstop_signal = \"SIGINT\"\nstop_timeout = \"20s\"\n");
    let wrapper = script(
        dir.path(),
        "wrap",
        &format!(
            "trap '' INT QUIT\nexec {} up --config {}",
            BIN,
            config.display()
        ),
    );
    let mut cmd = std::process::Command::new(&wrapper);
    let stdout = dir.path().join("stdout.log");
    let stderr = dir.path().join("stderr.log");
    let child = cmd
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut s = Sup {
        dir,
        port,
        child: Some(child),
        config,
        stdout,
        stderr,
    };
    wait_for("api", Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let e = s.wait_state("pg-like", "ready", Duration::from_secs(5));
    let pid = e["pid"].as_i64().unwrap();
    let sigign = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = sigign.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    // Standard signals 1..31 (glibc reserves 32/33 for itself).
    let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask & 0x7fff_ffff, 0, "{line}");
    let t = std::time::Instant::now();
    assert_eq!(s.stop(), 0);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}: SIGINT was not delivered",
        t.elapsed()
    );
}

#[test]
fn output_is_prefixed_split_and_flushed() {
    let mut s = Sup::start(
        "[step.talk]\ncommand = \"echo hello; echo oops >&2; head -c 40000 /dev/zero | tr '\\\\0' x; echo; printf 'no newline at end'\"\n",
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), 0);
    let out = s.stdout_text();
    assert!(out.contains("talk | hello\n"), "{out}");
    assert!(out.contains("talk | oops\n"));
    assert!(out.contains("talk | no newline at end\n"));
    let long: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("talk | xxx"))
        .collect();
    assert_eq!(long.len(), 3, "40,000 chars split at 16 KiB");
    assert_eq!(long.iter().map(|l| l.len() - 7).sum::<usize>(), 40000);
}

#[test]
fn json_log_format() {
    let (dir, port, config) = table("[step.talk]\ncommand = \"echo hello\"\n");
    let mut s = Sup::spawn(dir, port, config, &["--log-format", "json"], &[]);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), 0);
    let line = s.stdout_text().lines().next().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["entry"], "talk");
    assert_eq!(v["stream"], "stdout");
    assert_eq!(v["text"], "hello");
    assert!(v["ts"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn skipped_entries_and_their_dependents_say_why() {
    let s = Sup::start(
        r#"
[process.app]
command = ["/not/mounted/bin/app"]
when_exists = "/not/mounted"
skip_hint = "clone digitalmarketplace-app into mount/apps-github-repos/"
[step.index]
command = ["true"]
after = ["app"]
[process.ok]
command = ["sleep", "60"]
"#,
    );
    let e = s.wait_state("app", "skipped", Duration::from_secs(5));
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("clone digitalmarketplace-app"),
        "{e}"
    );
    let i = s.wait_state("index", "skipped", Duration::from_secs(5));
    assert!(i["reason"]
        .as_str()
        .unwrap()
        .contains("dependency `app` is skipped"));
    s.wait_state("ok", "ready", Duration::from_secs(5));
    let (code, _) = s.get("/_supervisor/health");
    assert_eq!(code, 200);
}

#[test]
fn one_stop_request_delivered_twice_stays_graceful() {
    // `pkill -f`, `timeout` or a terminal can deliver the same SIGTERM to the shim and the
    // supervisor: that is one request, not "kill now".
    let mut s = Sup::start(
        "[process.slow]\ncommand = \"trap 'sleep 0.3; echo clean-exit; exit 0' TERM; echo up; while true; do sleep 0.05; done\"\nstop_timeout = \"10s\"\n",
    );
    s.wait_stdout(&["slow | up"], Duration::from_secs(5));
    let shim = s.pid() as i32;
    let sup = wait_for("supervisor child", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
            .ok()
            .and_then(|c| {
                c.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            })
    });
    unsafe {
        libc::kill(sup, libc::SIGTERM);
        libc::kill(shim, libc::SIGTERM);
    }
    assert_eq!(s.wait_exit(Duration::from_secs(10)), 0);
    assert!(
        s.stdout_text().contains("slow | clean-exit"),
        "{}",
        s.stderr_text()
    );
    assert!(!s.stderr_text().contains("killing every process group"));
}

#[test]
fn env_files_interpolation_and_entry_env_reach_the_service() {
    let (dir, port, cfg) = table_with(
        r#"
[step.show]
command = "echo db=$DATABASE_URL mode=$MODE extra=$EXTRA home=$HOME_DIR"
env_file = "app.env"
env = { MODE = "${MODE_FROM_ENV:-dev}", HOME_DIR = "${DMP_TEST_DIR}" }
"#,
        "env_file = \"global.env\"",
    );
    std::fs::write(
        dir.path().join("global.env"),
        "DMP_TEST_DIR=/srv/test\nEXTRA=from-global\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.env"),
        "# app\nexport DATABASE_URL=\"postgres://localhost/dmp\"\n",
    )
    .unwrap();
    let mut s = Sup::spawn(dir, port, cfg, &[], &[("MODE_FROM_ENV", "")]);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), 0);
    let out = s.stdout_text();
    assert!(
        out.contains(
            "show | db=postgres://localhost/dmp mode=dev extra=from-global home=/srv/test"
        ),
        "{out}"
    );
}

#[test]
fn shutdown_order_follows_dependencies_through_finished_steps() {
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order");
    let mk = |name: &str, delay: &str| {
        script(dir.path(), name, &format!(
            "trap 'sleep {delay}; echo {name} >> {o}; exit 0' TERM\necho up\nwhile true; do sleep 0.05; done",
            o = order.display()
        ))
    };
    // The app is slow to stop, Postgres quick: Postgres must still wait for it.
    let (pg, app) = (mk("pg", "0"), mk("app", "0.4"));
    let mut s = Sup::start(&format!(
        "[process.pg]\ncommand = [\"{}\"]\n[step.db-create]\ncommand = \"true\"\nafter = [\"pg\"]\n[process.app]\ncommand = [\"{}\"]\nafter = [\"db-create\"]\n",
        pg.display(),
        app.display()
    ));
    s.wait_state("app", "ready", Duration::from_secs(5));
    s.wait_stdout(&["pg | up", "app | up"], Duration::from_secs(5));
    assert_eq!(s.stop(), 0);
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "app\npg\n");
}

#[test]
fn services_never_see_the_control_token() {
    let (dir, port, cfg) =
        table("[step.peek]\ncommand = \"echo token=[$${DMP_CONTAINED_TOKEN:-none}]\"\n");
    let mut s = Sup::spawn(
        dir,
        port,
        cfg,
        &[],
        &[("DMP_CONTAINED_TOKEN", "s3cret-t0ken")],
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), 0);
    let out = s.stdout_text();
    assert!(out.contains("peek | token=[none]"), "{out}");
    assert!(!out.contains("s3cret") && !s.stderr_text().contains("s3cret"));
}

#[test]
fn restart_of_an_entry_in_backoff_starts_it_now() {
    let s = Sup::start(
        "[process.flappy]\ncommand = \"exit 1\"\nrestart = { backoff = \"30s\", max_restarts = 10 }\noptional = true\n[process.steady]\ncommand = [\"sleep\", \"60\"]\n",
    );
    // The first restart is immediate, the second waits 30 s in backoff.
    s.wait_state("flappy", "backoff", Duration::from_secs(5));
    let before = s.entry("flappy")["runs"].as_u64().unwrap();
    let out = s.cli(&["restart", "flappy"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("a new run", Duration::from_secs(5), || {
        (s.entry("flappy")["runs"].as_u64().unwrap() > before).then_some(())
    });
}

#[test]
fn exec_and_http_probes_gate_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("ready-flag");
    let web = free_port();
    let s = Sup::start(&format!(
        r#"
[process.worker]
command = "sleep 0.4; touch {flag}; exec sleep 60"
ready = {{ exec = ["test", "-f", "{flag}"], interval = "50ms" }}
[process.web]
command = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{web}"]
after = ["worker"]
ready = {{ http = "http://127.0.0.1:{web}/", status = 200, body = "Directory listing", interval = "50ms" }}
[step.after-web]
command = "true"
after = ["web"]
"#,
        flag = flag.display()
    ));
    s.wait_state("after-web", "done", Duration::from_secs(15));
    let w = s.entry("worker");
    assert!(w["time_to_ready_s"].as_f64().unwrap() >= 0.35, "{w}");
    assert_eq!(w["last_probe"]["ok"], true);
    let web = s.entry("web");
    let (started, ready) = (web["started_at"].as_u64(), w["ready_at"].as_u64());
    assert!(started.unwrap() >= ready.unwrap(), "{web}\n{w}");
}
