//! The binary as real PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`):
//! orphans are reaped, signals are forwarded, exit codes pass through. Needs root; skipped
//! (with a message) where namespaces cannot be created.
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_as_pid1(body: &str) -> (std::process::Child, tempfile::TempDir, std::path::PathBuf) {
    let (dir, _port, cfg) = table(body);
    let out = dir.path().join("out.log");
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", BIN, "up", "--config"])
        .arg(&cfg)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
        .spawn()
        .unwrap();
    (child, dir, out)
}

fn wait_child(c: &mut std::process::Child, timeout: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < timeout,
            "PID 1 did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Host pid of the namespace's PID 1 (the child of `unshare`).
fn ns_init(unshare_pid: u32) -> i32 {
    wait_for("namespace init", Duration::from_secs(5), || {
        crate_children(unshare_pid as i32).into_iter().next()
    })
}

fn crate_children(ppid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 2..]
                        .split(' ')
                        .nth(1)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(ppid)
        })
        .collect()
}

const COUNT_ZOMBIES: &str = "n=0; for f in /proc/[0-9]*/stat; do case \"$(cat $f 2>/dev/null)\" in *') Z '*) n=$((n+1));; esac; done; echo $n";

#[test]
fn thousand_orphans_leave_no_zombies_as_pid1() {
    if !require(&[Need::Unshare]) {
        return;
    }
    let (mut c, _dir, out) = run_as_pid1(&format!(
        r#"
[step.orphans]
command = ["python3", "{}", "--count", "1000", "--sleep", "0.05"]
[step.count]
command = '''sleep 0.1; echo at100ms=$({COUNT_ZOMBIES}); sleep 0.9; echo at1s=$({COUNT_ZOMBIES})'''
after = ["orphans"]
"#,
        fixture("orphan-maker.py")
    ));
    assert_eq!(wait_child(&mut c, Duration::from_secs(30)), 0);
    let text = std::fs::read_to_string(out).unwrap();
    assert!(text.contains("count | at1s=0"), "{text}");
    // 100 ms after the last fork the 50 ms sleepers have exited and been reaped.
    assert!(text.contains("count | at100ms=0"), "{text}");
}

#[test]
fn sigterm_to_pid1_stops_services_gracefully_and_exits_0() {
    if !require(&[Need::Unshare]) {
        return;
    }
    let (mut c, dir, _out) = run_as_pid1(
        "[process.svc]\ncommand = \"trap 'echo got-term; exit 0' TERM; echo up; while true; do sleep 0.05; done\"\n",
    );
    let init = ns_init(c.id());
    // Let the service set its trap, then signal PID 1 from outside the namespace.
    let out = dir.path().join("out.log");
    wait_for("service output", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        t.contains("svc | up").then_some(())
    });
    unsafe { libc::kill(init, libc::SIGTERM) };
    assert_eq!(wait_child(&mut c, Duration::from_secs(10)), 0);
    let text = std::fs::read_to_string(out).unwrap();
    assert!(text.contains("svc | got-term"), "{text}");
}

#[test]
fn exit_code_of_a_critical_entry_passes_through_pid1() {
    if !require(&[Need::Unshare]) {
        return;
    }
    let (mut c, _dir, _out) = run_as_pid1(
        "[process.core]\ncommand = \"sleep 0.2; exit 42\"\ncritical = true\nrestart = { policy = \"never\" }\n[process.other]\ncommand = [\"sleep\", \"60\"]\n",
    );
    assert_eq!(wait_child(&mut c, Duration::from_secs(10)), 42);
}

#[test]
fn daemonized_leftovers_are_swept_before_pid1_exits() {
    if !require(&[Need::Unshare]) {
        return;
    }
    // A oneshot that double-forks a long sleeper into its own session (escaping its group):
    // when the table finishes, PID 1 must still TERM it and wait, leaving nothing behind.
    // The sleeper's argument is unique to this run, so no other test's sleeper is counted.
    let mark = tempfile::tempdir().unwrap();
    let pidfile = mark.path().join("pidfile");
    let secs = format!("300.{}", std::process::id());
    let (mut c, _dir, _out) = run_as_pid1(&format!(
        "[step.daemonize]\ncommand = \"setsid sh -c 'sleep {secs} & echo $! > {p}' & while [ ! -s {p} ]; do sleep 0.01; done\"\n",
        p = pidfile.display()
    ));
    let start = Instant::now();
    assert_eq!(wait_child(&mut c, Duration::from_secs(10)), 0);
    assert!(start.elapsed() < Duration::from_secs(5));
    // The daemon was started (its pid written from inside the namespace) ...
    wait_for("the daemon's pidfile", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&pidfile).ok()?;
        t.trim().parse::<u32>().ok()
    });
    // ... and PID 1 exited only once it was gone: no process runs `sleep <secs>` any more.
    let leftovers = Command::new("pgrep")
        .args(["-fx", &format!("sleep {secs}")])
        .output()
        .unwrap();
    assert_eq!(leftovers.status.code(), Some(1), "{leftovers:?}");
}

#[test]
fn not_pid1_it_is_a_subreaper_and_reaps_orphans() {
    let s = Sup::start(&format!(
        r#"
[process.orphans]
command = "python3 {} --count 200 --sleep 3; exec sleep 60"
"#,
        fixture("orphan-maker.py")
    ));
    // A running service's orphans (a finished step's are killed with it) are re-parented to
    // the shim (our child, a child subreaper), not to the host's init: while they sleep, the
    // shim's children are the supervisor and the 200 orphans.
    let shim = s.pid() as i32;
    wait_for(
        "200 orphans re-parented to the shim",
        Duration::from_secs(10),
        || (crate_children(shim).len() > 200).then_some(()),
    );
    // Once they exit, the shim reaps them: its only child is the supervisor again (a zombie
    // stays in /proc, with its parent, until reaped).
    wait_for("orphans reaped", Duration::from_secs(15), || {
        (crate_children(shim).len() == 1).then_some(())
    });
    let st = std::fs::read_to_string(format!("/proc/{shim}/status")).unwrap();
    assert!(st.contains("State:\tS"), "{st}");
}
