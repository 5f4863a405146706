//! Issue #17 items 2–5: no input panics the supervisor into an unstoppable state; every
//! catchable signal to PID 1 has its documented effect; every process an entry started is
//! tracked (whatever its group or session) and stopped with it, within the budget; and when
//! the supervisor itself is killed, the stack is still stopped properly (the init shim's
//! stop plan, PR_SET_PDEATHSIG).
//!
//! Real binary, real Postgres from Debian, PID 1 under `unshare --pid --fork --mount-proc`
//! (skipped with a message where namespaces or Postgres are missing).
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const POSTGRES: Need = Need::Bin("/usr/lib/postgresql/15/bin/postgres");

/// The supervisor under `unshare` as PID 1, on `cfg`, output into `dir`.
struct Pid1 {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Pid1 {
    fn start(dir: &Path, cfg: &Path) -> Pid1 {
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", BIN, "up", "--config"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("out.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("err.log")).unwrap())
            .spawn()
            .unwrap();
        Pid1 {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Host pid of the namespace's PID 1 (the child of `unshare`).
    fn init(&self) -> i32 {
        let id = self.child.id() as i32;
        wait_for("namespace init", Duration::from_secs(5), || {
            children(id).into_iter().next()
        })
    }

    /// Host pid of the supervisor proper (the init's child running our binary).
    fn supervisor(&self) -> i32 {
        let init = self.init();
        wait_for("supervisor", Duration::from_secs(5), || {
            children(init)
                .into_iter()
                .find(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok() == Some(BIN.into()))
        })
    }

    fn err(&self) -> String {
        std::fs::read_to_string(self.dir.join("err.log")).unwrap_or_default()
    }

    fn out(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default()
    }

    /// Waits until stdout holds each of `lines` (e.g. a script's `name | up` after its trap).
    fn wait_out(&self, lines: &[&str]) {
        wait_for(
            &format!("stdout lines {lines:?}"),
            Duration::from_secs(10),
            || {
                let out = self.out();
                lines.iter().all(|l| out.contains(l)).then_some(())
            },
        );
    }

    fn wait_err(&self, what: &str, timeout: Duration) {
        wait_for(what, timeout, || self.err().contains(what).then_some(()));
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.init(), sig) };
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < timeout,
                "PID 1 did not exit within {timeout:?}\n{}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn children(ppid: i32) -> Vec<i32> {
    procs()
        .into_iter()
        .filter(|(_, pp)| *pp == ppid)
        .map(|(p, _)| p)
        .collect()
}

/// (pid, ppid) of every live process.
fn procs() -> Vec<(i32, i32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut f = s[s.rfind(')')? + 2..].split(' ');
            let state = f.next()?;
            (state != "Z").then_some(())?;
            Some((pid, f.next()?.parse().ok()?))
        })
        .collect()
}

/// Live processes whose command line mentions `needle` (a temp dir path).
fn count_procs(needle: &str) -> usize {
    procs()
        .into_iter()
        .filter(|(p, _)| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .count()
}

/// A copy of `sleep` inside `dir`, so its processes can be counted by path.
fn sleeper(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::copy("/bin/sleep", &p).unwrap();
    p.display().to_string()
}

fn check(body: &str) -> (i32, String) {
    let (_dir, _port, cfg) = table(body);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- item 2: no panic path

#[test]
fn check_rejects_an_empty_exec_probe_at_its_line() {
    let (code, err) = check("[process.a]\ncommand = [\"sleep\", \"1\"]\nready = { exec = [] }\n");
    assert_eq!(code, 2, "{err}");
    // [supervisor] takes 4 lines, an empty line, then the entry: `ready` is on line 8.
    assert!(err.contains("supervisor.toml:8:1"), "{err}");
    assert!(err.contains("ready.exec is empty"), "{err}");
    let (code, err) =
        check("[process.a]\ncommand = [\"sleep\", \"1\"]\n[process.a.liveness]\nexec = [\"\"]\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("liveness.exec is empty"), "{err}");
}

#[test]
fn a_five_megabyte_user_is_an_error_not_an_abort() {
    let user = "u".repeat(5 << 20);
    let (code, err) = check(&format!(
        "[process.a]\ncommand = [\"sleep\", \"1\"]\nuser = \"{user}\"\n"
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown user"),
        "{}",
        &err[..err.len().min(300)]
    );
    let (code, _) = check(&format!(
        "[process.a]\ncommand = [\"sleep\", \"1\"]\nuser = \"root\"\ngroup = \"{user}\"\n"
    ));
    assert_eq!(code, 2);
}

// ---------------------------------------------------------------- item 3: signal matrix

/// Signals logged and ignored by the supervisor (README "Signals"), as (number, log name).
fn logged_and_ignored() -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = [
        (libc::SIGHUP, "SIGHUP: reloading the process table"),
        (libc::SIGUSR1, "SIGUSR1: nothing to reopen"),
        (libc::SIGTRAP, "SIGTRAP ignored"),
        (libc::SIGABRT, "SIGABRT ignored"),
        (libc::SIGSTKFLT, "SIGSTKFLT ignored"),
        (libc::SIGALRM, "SIGALRM ignored"),
        (libc::SIGXCPU, "SIGXCPU ignored"),
        (libc::SIGXFSZ, "SIGXFSZ ignored"),
        (libc::SIGVTALRM, "SIGVTALRM ignored"),
        (libc::SIGPROF, "SIGPROF ignored"),
        (libc::SIGIO, "SIGIO ignored"),
        (libc::SIGPWR, "SIGPWR ignored"),
        (libc::SIGSYS, "SIGSYS ignored"),
        (libc::SIGBUS, "init: SIGBUS ignored"),
        (libc::SIGUSR2, "status (SIGUSR2)"),
    ]
    .into_iter()
    .map(|(s, n)| (s, n.to_string()))
    .collect();
    for rt in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        v.push((rt, format!("SIGRTMIN+{} ignored", rt - libc::SIGRTMIN())));
    }
    v
}

/// Signals with no visible effect at all (default-ignored, job control, fault signals that
/// PID 1 keeps blocked, SIGCHLD and SIGPIPE).
const SILENT: &[i32] = &[
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGPIPE,
    libc::SIGCHLD,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGURG,
    libc::SIGWINCH,
];

#[test]
fn every_catchable_signal_to_pid1_has_its_documented_effect() {
    if !require(&[Need::Unshare]) {
        return;
    }
    let (dir, _port, cfg) = table(
        "[process.svc]\ncommand = \"trap 'echo got-term; exit 0' TERM; echo up; while true; do sleep 0.05; done\"\n",
    );
    let mut p = Pid1::start(dir.path(), &cfg);
    p.wait_err("svc: ready", Duration::from_secs(10));
    p.wait_out(&["svc | up"]);
    let svc_pid = p.supervisor();
    for &sig in SILENT {
        p.signal(sig);
    }
    for (sig, effect) in logged_and_ignored() {
        p.signal(sig);
        p.wait_err(&effect, Duration::from_secs(5));
    }
    // USR2 prints one line per entry: `  svc   ready   pid N   restarts 0`.
    let err = p.err();
    assert!(
        err.lines()
            .any(|l| l.starts_with("  svc ") && l.contains(" ready ") && l.ends_with("restarts 0")),
        "USR2 prints each entry:\n{err}"
    );
    // Still running, same supervisor, the service never restarted.
    assert!(p.running());
    assert_eq!(p.supervisor(), svc_pid);
    assert!(!p.err().contains("svc: exited"), "{}", p.err());
    assert_eq!(p.err().matches("svc: started").count(), 1, "{}", p.err());
    // The stopping signals: QUIT, INT and TERM each stop gracefully with exit code 0.
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 0);
    assert!(p.out().contains("svc | got-term"), "{}", p.out());
    for sig in [libc::SIGQUIT, libc::SIGINT] {
        let mut p = Pid1::start(dir.path(), &cfg);
        p.wait_err("svc: ready", Duration::from_secs(10));
        p.signal(sig);
        assert_eq!(p.wait_exit(Duration::from_secs(10)), 0, "{}", p.err());
        assert!(p.out().contains("svc | got-term"), "{}", p.out());
    }
}

/// A data directory owned by postgres, initialised.
fn pg_dir(dir: &Path) -> std::path::PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("pg");
    std::fs::create_dir_all(&data).unwrap();
    Command::new("chown")
        .arg("postgres:postgres")
        .arg(&data)
        .status()
        .unwrap();
    data
}

fn pg_table(data: &Path, port: u16, extra: &str) -> String {
    format!(
        r#"
[step.pg-init]
command = "test -f {d}/data/PG_VERSION || {b}/initdb -D {d}/data -U postgres --auth=trust >/dev/null"
user = "postgres"

[process.postgres]
command = ["{b}/postgres", "-D", "{d}/data", "-p", "{port}", "-k", "{d}", "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
user = "postgres"
after = ["pg-init"]
stop_signal = "SIGINT"
stop_timeout = "8s"
ready = {{ postgres = "host=127.0.0.1 port={port} user=postgres dbname=postgres", interval = "50ms" }}
{extra}
"#,
        d = data.display(),
        b = PG_BIN,
    )
}

/// Did the Postgres of this run start from a clean shutdown?
fn assert_clean_start(out: &str) {
    assert!(
        out.contains("database system was shut down at"),
        "no clean-start line:\n{out}"
    );
    assert!(
        !out.contains("not properly shut down") && !out.contains("automatic recovery"),
        "crash recovery:\n{out}"
    );
}

#[test]
fn signal_matrix_with_postgres_stops_it_cleanly() {
    if !require(&[Need::Unshare, POSTGRES]) {
        return;
    }
    let (dir, _port, cfg) = table("");
    let data = pg_dir(dir.path());
    let pg = free_port();
    let text = std::fs::read_to_string(&cfg).unwrap() + &pg_table(&data, pg, "");
    std::fs::write(&cfg, text).unwrap();
    let mut p = Pid1::start(dir.path(), &cfg);
    p.wait_err("postgres: ready", Duration::from_secs(60));
    for &sig in SILENT {
        p.signal(sig);
    }
    for (sig, effect) in logged_and_ignored() {
        p.signal(sig);
        p.wait_err(&effect, Duration::from_secs(5));
    }
    assert!(!p.err().contains("postgres: exited"), "{}", p.err());
    // QUIT (Ctrl-\ under `docker run -it`) stops like TERM: SIGINT to Postgres, clean.
    p.signal(libc::SIGQUIT);
    assert_eq!(p.wait_exit(Duration::from_secs(15)), 0, "{}", p.err());
    assert!(
        p.out().contains("database system is shut down"),
        "{}",
        p.out()
    );
    let mut again = Pid1::start(dir.path(), &cfg);
    again.wait_err("postgres: ready", Duration::from_secs(60));
    assert_clean_start(&again.out());
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait_exit(Duration::from_secs(15)), 0);
}

// ------------------------------------------------- item 4: processes that leave the group

#[test]
fn double_forking_daemon_restarted_5_times_leaves_no_extra_process() {
    let (dir, port, cfg) = table("");
    let d = sleeper(dir.path(), "escaped-daemon");
    let body = format!(
        "[process.forker]\ncommand = \"(setsid {d} 100000 </dev/null >/dev/null 2>&1 &); exec sleep 100000\"\n"
    );
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &body).unwrap();
    let mut s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("forker", "ready", Duration::from_secs(10));
    wait_for("the daemon", Duration::from_secs(5), || {
        (count_procs(&d) == 1).then_some(())
    });
    for n in 1..=5 {
        let out = s.cli(&["restart", "forker"]);
        assert!(out.status.success(), "{out:?}");
        wait_for("restarted", Duration::from_secs(10), || {
            let e = s.entry("forker");
            (e["state"] == "ready" && e["restarts"] == n).then_some(())
        });
        wait_for("one daemon", Duration::from_secs(5), || {
            (count_procs(&d) == 1).then_some(())
        });
    }
    assert_eq!(count_procs(&d), 1, "one daemon: the current instance's");
    assert_eq!(s.stop(), 0);
    assert_eq!(count_procs(&d), 0, "nothing left after the stop");
}

#[test]
fn escaped_stubborn_daemon_stops_inside_the_budget() {
    let (dir, port, cfg) = table_with("", "shutdown_timeout = \"3s\"");
    let d = sleeper(dir.path(), "stubborn-daemon");
    // The daemon ignores TERM (inherited across exec) and left the group with setsid.
    let body = format!(
        "[process.svc]\ncommand = \"setsid sh -c 'trap \\\"\\\" TERM; exec {d} 100000' & exec sleep 100000\"\n"
    );
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &body).unwrap();
    let mut s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("svc", "ready", Duration::from_secs(10));
    wait_for("the daemon", Duration::from_secs(5), || {
        (count_procs(&d) == 1).then_some(())
    });
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), 0);
    let took = start.elapsed();
    eprintln!("stop with a stubborn escaped daemon took {took:?} (budget 3 s)");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(count_procs(&d), 0);
}

#[test]
fn postmaster_sigkilled_recovers_quickly_without_a_shared_memory_storm() {
    if !require(&[POSTGRES]) {
        return;
    }
    let (dir, port, cfg) = table("");
    let data = pg_dir(dir.path());
    let pg = free_port();
    let body = pg_table(&data, pg, "restart = { backoff = \"100ms\" }");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &body).unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("postgres", "ready", Duration::from_secs(60));
    // A backend busy in a loop that never checks for postmaster death keeps the shared
    // memory attached after the postmaster is gone.
    let mut client = Command::new(format!("{PG_BIN}/psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.to_string(),
            "-U",
            "postgres",
            "-c",
        ])
        .arg("DO $$BEGIN LOOP END LOOP; END$$")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let busy = || {
        procs().into_iter().find(|(p, _)| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("postgres postgres 127.0.0.1"))
                .unwrap_or(false)
        })
    };
    let (backend, _) = wait_for("the busy backend", Duration::from_secs(10), busy);
    let pid = s.entry("postgres")["pid"].as_i64().unwrap() as i32;
    let start = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let e = wait_for("postgres ready again", Duration::from_secs(20), || {
        let e = s.entry("postgres");
        (e["state"] == "ready" && e["pid"].as_i64() != Some(pid as i64)).then_some(e)
    });
    let took = start.elapsed();
    eprintln!("postgres back after {took:?}, {} restart(s)", e["restarts"]);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(e["restarts"].as_u64().unwrap() <= 2, "{e}");
    assert!(!alive(backend), "the orphaned backend was killed");
    assert!(!s.stdout_text().contains("pre-existing shared memory block"));
    let _ = client.kill();
    let _ = client.wait();
}

// ------------------------------------------------------- item 5: the supervisor is killed

#[test]
fn supervisor_killed_as_pid1_stops_entries_in_reverse_order_with_their_signals() {
    if !require(&[Need::Unshare]) {
        return;
    }
    let (dir, _port, cfg) = table("");
    let log = dir.path().join("stops.log");
    let body = format!(
        r#"
[process.db]
command = "trap 'echo db INT >> {l}; exit 0' INT; echo up; while true; do sleep 0.05 & wait; done"
stop_signal = "SIGINT"
[process.app]
command = "trap 'echo app TERM >> {l}; exit 0' TERM; echo up; while true; do sleep 0.05 & wait; done"
after = ["db"]
[process.web]
command = "trap 'echo web QUIT >> {l}; exit 0' QUIT; echo up; while true; do sleep 0.05 & wait; done"
stop_signal = "SIGQUIT"
after = ["app"]
"#,
        l = log.display()
    );
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &body).unwrap();
    // (Background sleeps: once the supervisor is gone, a shell that reports a killed
    // foreground job on its stderr would die of SIGPIPE before its trap runs.)
    let mut p = Pid1::start(dir.path(), &cfg);
    p.wait_err("web: ready", Duration::from_secs(10));
    // Ready means started: wait for each trap to be set.
    p.wait_out(&["db | up", "app | up", "web | up"]);
    let start = Instant::now();
    unsafe { libc::kill(p.supervisor(), libc::SIGKILL) };
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 128 + 9);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text, "web QUIT\napp TERM\ndb INT\n", "{}", p.err());
}

#[test]
fn supervisor_killed_as_pid1_postgres_gets_sigint_and_needs_no_recovery() {
    if !require(&[Need::Unshare, POSTGRES]) {
        return;
    }
    let (dir, _port, cfg) = table("");
    let data = pg_dir(dir.path());
    let pg = free_port();
    let text = std::fs::read_to_string(&cfg).unwrap() + &pg_table(&data, pg, "");
    std::fs::write(&cfg, text).unwrap();
    let mut p = Pid1::start(dir.path(), &cfg);
    p.wait_err("postgres: ready", Duration::from_secs(60));
    unsafe { libc::kill(p.supervisor(), libc::SIGKILL) };
    assert_eq!(p.wait_exit(Duration::from_secs(15)), 128 + 9);
    assert!(
        p.err()
            .contains("stopping them with their own stop signals"),
        "{}",
        p.err()
    );
    let mut again = Pid1::start(dir.path(), &cfg);
    again.wait_err("postgres: ready", Duration::from_secs(60));
    assert_clean_start(&again.out());
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait_exit(Duration::from_secs(15)), 0);
}

#[test]
fn kill_9_of_up_not_as_pid1_stops_the_whole_stack() {
    let (dir, port, cfg) = table("");
    let d = sleeper(dir.path(), "svc-sleep");
    let body = format!("[process.svc]\ncommand = [\"{d}\", \"100000\"]\n");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &body).unwrap();
    let mut s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("svc", "ready", Duration::from_secs(10));
    let shim = s.pid() as i32;
    let sup = children(shim)[0];
    let environ = std::fs::read(format!("/proc/{sup}/environ")).unwrap();
    let plan = String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|kv| {
            kv.strip_prefix("DMP_CONTAINED_STOP_PLAN=")
                .map(String::from)
        })
        .expect("the shim hands the supervisor a stop-plan path");
    let plan_dir = Path::new(&plan).parent().unwrap().to_path_buf();
    assert!(plan_dir.exists());
    s.child.as_mut().unwrap().kill().unwrap();
    s.child.take().unwrap().wait().unwrap();
    wait_for("supervisor gone", Duration::from_secs(5), || {
        (!alive(sup)).then_some(())
    });
    wait_for("service gone", Duration::from_secs(5), || {
        (count_procs(&d) == 0).then_some(())
    });
    wait_for("API port free", Duration::from_secs(5), || {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
}
