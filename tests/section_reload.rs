//! Reloads that drop no request (`listen`: sockets held by the supervisor, passed by the
//! systemd protocol and `WERKZEUG_SERVER_FD`), on the real binary with a plain Python server,
//! Debian's Flask dev server and nginx in front.
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The apps (shared with bench/reload_bench.py): a plain Python server and a Flask app on
/// Werkzeug's dev server; both finish the requests they accepted when stopped.
const PLAIN: &str = include_str!("fixtures/reload/server.py");
const FLASK: &str = include_str!("fixtures/reload/flaskapp.py");

fn write(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, text).unwrap();
}

fn version(v: &str) -> String {
    format!("VERSION = {v:?}\n")
}

fn have(p: &str) -> bool {
    Path::new(p).exists()
}

#[derive(Clone, Copy, PartialEq)]
enum App {
    Plain,
    Flask,
}

/// A supervisor running `app` (watched, `listen` on its port when `held`), and nginx in
/// front of it when `nginx`. Returns it, the port to load, and the app's port.
fn start(app: App, held: bool, nginx: bool) -> (Sup, u16, u16) {
    let app_port = free_port();
    let (script, command, stop) = match app {
        App::Plain => ("server.py", "python3", "SIGTERM"),
        App::Flask => ("flaskapp.py", "/usr/bin/python3", "SIGTERM"),
    };
    let listen = if held {
        format!("listen = [\"127.0.0.1:{app_port}\"]")
    } else {
        String::new()
    };
    let mut body = format!(
        r#"
[process.app]
command = ["{command}", "{script}", "{app_port}"]
cwd = "app"
env = {{ PYTHONDONTWRITEBYTECODE = "1" }}
{listen}
stop_signal = "{stop}"
ready = {{ http = "http://127.0.0.1:{app_port}/", interval = "20ms" }}
restart = {{ max_restarts = 50, backoff = "50ms" }}
stop_timeout = "5s"
watch = {{ paths = ["."], debounce = "50ms" }}
"#
    );
    let (dir, port, cfg) = table("");
    let mut front = app_port;
    if nginx {
        front = free_port();
        let d = dir.path().join("nginx");
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let conf = d.join("nginx.conf");
        write(
            &conf,
            &format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://127.0.0.1:{app_port}; }} }}\n}}\n",
                d = d.display()
            ),
        );
        body.push_str(&format!(
            "\n[process.nginx]\ncommand = [\"/usr/sbin/nginx\", \"-c\", \"{}\", \"-e\", \"stderr\"]\nstop_signal = \"SIGQUIT\"\nready = {{ http = \"http://127.0.0.1:{front}/\", interval = \"20ms\" }}\nafter = [\"app\"]\n",
            conf.display()
        ));
    }
    let text = std::fs::read_to_string(&cfg).unwrap() + &body;
    std::fs::write(&cfg, text).unwrap();
    write(
        &dir.path().join("app").join(script),
        if app == App::Plain { PLAIN } else { FLASK },
    );
    write(&dir.path().join("app/appcode.py"), &version("v0"));
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("app", "ready", T);
    if nginx {
        s.wait_state("nginx", "ready", T);
    }
    (s, front, app_port)
}

/// One GET; Ok(body) only for a 200.
fn get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if !buf.starts_with("HTTP/1.1 200") && !buf.starts_with("HTTP/1.0 200") {
        return Err(buf.lines().next().unwrap_or("empty response").to_string());
    }
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default())
}

/// A bounded request loop: `threads` clients, each on a fixed schedule of `rate` req/s
/// (a late client catches up), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered or failed so far (all clients).
    done: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(port: u16, threads: usize, rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let period = Duration::from_secs(1) / rate;
        let threads = (0..threads)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let (mut ok, mut failed) = (0, Vec::new());
                    let t0 = Instant::now();
                    let mut k = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let due = t0 + period * k;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        k += 1;
                        match get(port) {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(e),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    (ok, failed)
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }

    fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// (requests served, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in self.threads {
            let (o, f) = t.join().unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}

fn watch_of(s: &Sup) -> Value {
    s.entry("app")["watch"].clone()
}

fn wait_reloads(s: &Sup, n: u64) {
    let t0 = std::time::Instant::now();
    loop {
        let w = watch_of(s);
        if w["reloads"].as_u64() >= Some(n) && w["reloading"] == false && w["pending"] == 0 {
            return;
        }
        if t0.elapsed() > T {
            let err = s.stderr_text();
            let lines: Vec<&str> = err.lines().rev().take(40).collect();
            panic!(
                "timed out after {T:?} waiting for reload {n}: watch = {w}\napp = {}\nsupervisor log (last 40 lines, newest first):\n{}",
                s.entry("app"),
                lines.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The load tests run one at a time: the request rate they prove is not shared with another.
static ONE_LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// 20 saves under a 256 req/s loop (8 clients): every request is served, none fails.
fn twenty_saves_drop_nothing(app: App, nginx: bool) {
    let _one = ONE_LOAD.lock().unwrap_or_else(|p| p.into_inner());
    if (app == App::Flask && !have("/usr/lib/python3/dist-packages/flask"))
        || (nginx && !have("/usr/sbin/nginx"))
    {
        panic!("needs Debian's python3-flask and nginx (scripts/install-deps.sh)");
    }
    let (s, front, _) = start(app, true, nginx);
    let load = Load::start(front, 8, 32);
    // Requests made while each reload ran: the load really covered every reload.
    let mut during = Vec::new();
    for i in 1..=20u64 {
        let before = load.count();
        write(&s.path("app/appcode.py"), &version(&format!("v{i}")));
        wait_reloads(&s, i);
        s.wait_state("app", "ready", T);
        during.push(load.count() - before);
    }
    wait_for("v20 served", T, || {
        (get(front).ok()? == "v20").then_some(())
    });
    let (ok, failed) = load.finish();
    assert_eq!(watch_of(&s)["reloads"], 20, "{}", watch_of(&s));
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during 20 reloads: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(10)]
    );
    assert!(
        during.iter().all(|&n| n > 0),
        "a reload ran with no request in flight (requests per reload: {during:?})"
    );
}

#[test]
fn plain_server_direct_20_saves_0_failed_requests() {
    twenty_saves_drop_nothing(App::Plain, false);
}

#[test]
fn plain_server_behind_nginx_20_saves_0_failed_requests() {
    twenty_saves_drop_nothing(App::Plain, true);
}

#[test]
fn flask_dev_server_direct_20_saves_0_failed_requests() {
    twenty_saves_drop_nothing(App::Flask, false);
}

#[test]
fn flask_dev_server_behind_nginx_20_saves_0_failed_requests() {
    twenty_saves_drop_nothing(App::Flask, true);
}

/// The environment and fds of a process with two held sockets, per sd_listen_fds(3), and the
/// same sockets after a restart (declared `ports` count as the entry's own).
#[test]
fn listen_fds_follow_the_systemd_protocol_and_survive_restarts() {
    let (p1, p2) = (free_port(), free_port());
    let script = r#"
import json, os, socket
n = int(os.environ["LISTEN_FDS"])
next_fd_open = os.path.exists("/proc/self/fd/%d" % (3 + n))
socks = [socket.socket(fileno=os.dup(fd)) for fd in range(3, 3 + n)]
info = {k: os.environ.get(k) for k in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WERKZEUG_SERVER_FD", "WERKZEUG_RUN_MAIN"]}
info["pid"] = os.getpid()
info["ports"] = [s.getsockname()[1] for s in socks]
info["listening"] = [s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in socks]
info["next_fd_open"] = next_fd_open
with open("env-%d.json" % os.getpid(), "w") as f:
    json.dump(info, f)
os.rename("env-%d.json" % os.getpid(), "env.json")
import time
time.sleep(1000)
"#;
    let body = format!(
        "[process.svc]\ncommand = [\"python3\", \"env.py\"]\nlisten = [\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"]\nports = [{p1}, {p2}]\nready = {{ exec = [\"test\", \"-e\", \"env.json\"], interval = \"20ms\" }}\n"
    );
    let (dir, port, cfg) = table(&body);
    write(&dir.path().join("env.py"), script);
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    let read = |s: &Sup| -> Value {
        serde_json::from_str(&std::fs::read_to_string(s.path("env.json")).unwrap()).unwrap()
    };
    let st = s.wait_state("svc", "ready", T);
    let first = read(&s);
    assert_eq!(first["LISTEN_FDS"], "2", "{first}");
    assert_eq!(first["LISTEN_PID"], first["pid"].to_string(), "{first}");
    assert_eq!(
        first["pid"], st["pid"],
        "LISTEN_PID is the entry's own process"
    );
    assert_eq!(first["LISTEN_FDNAMES"], "svc:svc", "{first}");
    assert_eq!(first["WERKZEUG_SERVER_FD"], "3");
    assert_eq!(first["WERKZEUG_RUN_MAIN"], "true");
    assert_eq!(first["ports"], serde_json::json!([p1, p2]));
    assert_eq!(first["listening"], serde_json::json!([1, 1]));
    assert_eq!(
        first["next_fd_open"], false,
        "only the held sockets are passed"
    );
    // Connections made while the process is down wait, and the socket is the same one.
    std::fs::remove_file(s.path("env.json")).unwrap();
    let out = s.cli(&["restart", "svc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_state("svc", "ready", T);
    let second = read(&s);
    assert_ne!(second["pid"], first["pid"]);
    assert_eq!(second["LISTEN_PID"], second["pid"].to_string());
    assert_eq!(second["ports"], serde_json::json!([p1, p2]));
}

/// A `tcp` probe of a held address would pass without the app: refused, with the fix.
#[test]
fn a_tcp_probe_of_a_held_socket_is_refused() {
    let body = "[process.a]\ncommand = [\"sleep\", \"100\"]\nlisten = [\"127.0.0.1:26001\"]\nready = { tcp = \"127.0.0.1:26001\" }\n";
    let (_dir, _port, cfg) = table(body);
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("would pass as soon as the supervisor holds the socket"),
        "{err}"
    );
    assert!(err.contains("http = \"http://127.0.0.1:26001/\""), "{err}");
}

/// Readiness told by the service: `starting` until it says so, `ready` right after, with
/// `user`-less defaults (NOTIFY_SOCKET per start; the first matching output line).
fn told_readiness(ready: &str, script: &str) {
    let body = format!(
        "[process.svc]\ncommand = [\"python3\", \"svc.py\"]\nready = {ready}\nrestart = {{ backoff = \"50ms\" }}\n"
    );
    let (dir, port, cfg) = table(&body);
    write(&dir.path().join("svc.py"), script);
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    wait_for("svc started", T, || {
        s.path("started").exists().then_some(())
    });
    // It runs and has not told yet: still starting (a probe would have nothing to see).
    assert_eq!(s.state("svc"), "starting");
    write(&s.path("go"), "");
    s.wait_state("svc", "ready", T);
    // Told again by the next process after a restart.
    std::fs::remove_file(s.path("go")).unwrap();
    std::fs::remove_file(s.path("started")).unwrap();
    let out = s.cli(&["restart", "svc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("svc restarted", T, || {
        s.path("started").exists().then_some(())
    });
    assert_eq!(s.state("svc"), "starting");
    write(&s.path("go"), "");
    s.wait_state("svc", "ready", T);
}

/// Waits for `go` (test fixture side), then tells readiness by `tell()`.
const TELLER: &str = r#"
import os, socket, sys, time
def tell(): pass
TELL
open("started", "w").close()
print("booting", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
tell()
time.sleep(1000)
"#;

#[test]
fn notify_readiness_waits_for_ready_1_on_notify_socket() {
    let tell = r#"
def tell():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"STATUS=warming up", os.environ["NOTIFY_SOCKET"])
    s.sendto(b"STATUS=done\nREADY=1", os.environ["NOTIFY_SOCKET"])
"#;
    told_readiness("{ notify = true }", &TELLER.replace("TELL", tell));
}

#[test]
fn log_readiness_waits_for_a_matching_line() {
    let tell = r#"
def tell():
    print("listening on port 1234", file=sys.stderr, flush=True)
"#;
    told_readiness(
        r#"{ log = "listening on port \\d+" }"#,
        &TELLER.replace("TELL", tell),
    );
}

#[test]
fn log_and_notify_readiness_refuse_bad_input() {
    let body = "[process.a]\ncommand = [\"sleep\", \"100\"]\nready = { log = \"(unclosed\" }\nliveness = { notify = true }\n";
    let (_dir, _port, cfg) = table(body);
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("ready.log is not a valid regex"), "{err}");
    assert!(err.contains("they apply to `ready` only"), "{err}");
}

/// An exec probe runs as the entry's user, in its cwd, with its environment.
#[test]
fn exec_probes_run_in_the_entrys_context() {
    let root = unsafe { libc::getuid() } == 0;
    let (user, uid) = if root {
        ("user = \"nobody\"\n", "65534")
    } else {
        ("", "")
    };
    let uid = if root {
        uid.to_string()
    } else {
        unsafe { libc::getuid() }.to_string()
    };
    let body = format!(
        "[process.a]\ncommand = [\"sleep\", \"100\"]\ncwd = \"work\"\nenv = {{ PROBE_MARK = \"yes\" }}\n{user}ready = {{ exec = [\"sh\", \"-c\", \"test \\\"$PROBE_MARK\\\" = yes && test -e here && test $(id -u) = {uid}\"], interval = \"20ms\", start_period = \"0s\", retries = 5 }}\n"
    );
    let (dir, port, cfg) = table(&body);
    write(&dir.path().join("work/here"), "");
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    let st = s.wait_state("a", "ready", T);
    assert_eq!(st["state"], "ready", "{st}");
}

/// Records its pid and counts SIGHUPs into files of its cwd.
const HUPPER: &str = r#"
import os, signal, time
n = 0
def hup(*a):
    global n
    n += 1
    open("hups.tmp", "w").write(str(n))
    os.rename("hups.tmp", "hups")
signal.signal(signal.SIGHUP, hup)
open("pid.tmp", "w").write(str(os.getpid()))
os.rename("pid.tmp", "pid")
while True:
    time.sleep(1000)
"#;

fn read(s: &Sup, f: &str) -> Option<String> {
    std::fs::read_to_string(s.path(f)).ok()
}

fn last_train(s: &Sup, name: &str, n: u64) -> Value {
    wait_for(&format!("{name} train {n}"), T, || {
        let w = s.entry(name)["watch"].clone();
        (w["reloads"].as_u64() >= Some(n) && w["reloading"] == false && w["pending"] == 0)
            .then(|| w["trains"].as_array().unwrap().last().unwrap().clone())
    })
}

/// Per path group: `none` for templates, `signal` for the config, `exec` for assets, and
/// the default `restart` for the rest; only a restart replaces the process.
#[test]
fn watch_actions_signal_exec_none_and_restart() {
    let body = r#"
[process.svc]
command = ["python3", "svc.py"]
ready = { exec = ["test", "-e", "pid"], interval = "20ms" }
watch = { paths = ["src"], debounce = "50ms", on = [
    { files = ["templates/**"], action = "none" },
    { files = ["*.conf"], action = "signal", signal = "SIGHUP" },
    { files = ["assets/*"], action = "exec", exec = ["sh", "-c", "cat src/assets/* > built.txt"] },
] }
"#;
    let (dir, port, cfg) = table(body);
    write(&dir.path().join("svc.py"), HUPPER);
    write(&dir.path().join("src/templates/a.html"), "1");
    write(&dir.path().join("src/site.conf"), "1");
    write(&dir.path().join("src/assets/a.css"), "1");
    write(&dir.path().join("src/code.py"), "1");
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("svc", "ready", T);
    wait_for("watching", T, || {
        (!s.entry("svc")["watch"]["mode"].is_null()).then_some(())
    });
    let pid = read(&s, "pid").unwrap();

    write(&s.path("src/templates/a.html"), "2");
    let t = last_train(&s, "svc", 1);
    assert_eq!(t["action"], "none", "{t}");

    write(&s.path("src/site.conf"), "2");
    let t = last_train(&s, "svc", 2);
    assert_eq!(t["action"], "signal SIGHUP", "{t}");
    wait_for("SIGHUP received", T, || {
        (read(&s, "hups")? == "1").then_some(())
    });

    write(&s.path("src/assets/a.css"), "body{}");
    let t = last_train(&s, "svc", 3);
    assert_eq!(
        t["action"], "exec sh -c cat src/assets/* > built.txt",
        "{t}"
    );
    assert_eq!(t["outcome"], "done", "{t}");
    assert_eq!(read(&s, "built.txt").as_deref(), Some("body{}"));
    assert_eq!(
        read(&s, "pid").unwrap(),
        pid,
        "no action so far replaced the process"
    );

    write(&s.path("src/code.py"), "2");
    let t = last_train(&s, "svc", 4);
    assert!(t["action"].is_null(), "a plain restart: {t}");
    assert_eq!(t["outcome"], "ready", "{t}");
    wait_for("a new process", T, || {
        (read(&s, "pid")? != pid).then_some(())
    });
}

/// `run`: a change re-runs the step, then what depends on it reloads.
#[test]
fn watch_action_run_reruns_the_step_then_reloads_its_dependents() {
    let body = r#"
[step.deps]
command = ["sh", "-c", "echo x >> runs"]

[process.svc]
command = ["python3", "svc.py"]
after = ["deps"]
ready = { exec = ["test", "-e", "pid"], interval = "20ms" }
watch = { paths = ["src"], debounce = "50ms", on = [{ files = ["requirements.txt"], action = "run", step = "deps" }] }
"#;
    let (dir, port, cfg) = table(body);
    write(&dir.path().join("svc.py"), HUPPER);
    write(&dir.path().join("src/requirements.txt"), "a");
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("svc", "ready", T);
    wait_for("watching", T, || {
        (!s.entry("svc")["watch"]["mode"].is_null()).then_some(())
    });
    let pid = read(&s, "pid").unwrap();
    write(&s.path("src/requirements.txt"), "b");
    let t = last_train(&s, "svc", 1);
    assert_eq!(t["action"], "run deps", "{t}");
    assert_eq!(t["outcome"], "done", "{t}");
    assert_eq!(
        read(&s, "runs").unwrap().lines().count(),
        2,
        "the step ran again"
    );
    wait_for("svc restarted", T, || {
        (read(&s, "pid")? != pid).then_some(())
    });
    s.wait_state("svc", "ready", T);
}

#[test]
fn watch_action_mistakes_are_config_errors() {
    let body = r#"
[step.deps]
command = ["true"]
[process.svc]
command = ["sleep", "100"]
watch = { action = "signal", on = [{ files = ["x"], action = "run", step = "svc" }, { files = ["y"], action = "exec" }, { files = ["z"], action = "reboot" }] }
"#;
    let (_dir, _port, cfg) = table(body);
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    for want in [
        "needs `signal = \"SIGHUP\"`",
        "`step = \"svc\"` is a [process]",
        "action \"exec\" needs `exec = [",
        "unknown watch action `reboot`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// An entry that writes into its own watched tree on every start, before it is ready: after
/// a few reloads the loop is detected, watching pauses, and status names the file.
#[test]
fn a_reload_loop_is_detected_paused_and_names_the_file() {
    let body = r#"
[process.svc]
command = ["sh", "-c", "date +%s%N >> state.txt; echo up; exec sleep 1000"]
ready = { log = "^up$" }
watch = { paths = ["."], debounce = "50ms", ignore = ["*.toml", "*.sock", "cache"] }
"#;
    let (dir, port, cfg) = table(body);
    write(&dir.path().join("code.py"), "1");
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("svc", "ready", T);
    wait_for("watching", T, || {
        (!s.entry("svc")["watch"]["mode"].is_null()).then_some(())
    });
    write(&s.path("code.py"), "2");
    let w = wait_for("the loop to be detected", T, || {
        let w = s.entry("svc")["watch"].clone();
        (w["paused"] == true).then_some(w)
    });
    let last = w["trains"].as_array().unwrap().last().unwrap().clone();
    let err = last["error"].as_str().unwrap_or_default();
    assert!(err.contains("reload loop: `"), "{w}");
    assert!(err.contains("`state.txt`"), "{w}");
    let n = w["reloads"].as_u64().unwrap();
    assert!(n <= 8, "{n} reloads before the loop was caught");
    // Paused: the entry runs, and no more reloads happen.
    s.wait_state("svc", "ready", T);
    let starts = std::fs::read_to_string(s.path("state.txt"))
        .unwrap()
        .lines()
        .count();
    write(&s.path("code.py"), "3");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.entry("svc")["watch"]["reloads"].as_u64().unwrap(), n);
    assert_eq!(
        std::fs::read_to_string(s.path("state.txt"))
            .unwrap()
            .lines()
            .count(),
        starts
    );
}

/// `restart_with` applies to a crash too: when `db` dies and is restarted, `app` restarts
/// once `db` is ready again.
#[test]
fn restart_with_follows_a_crash() {
    let body = r#"
[process.db]
command = ["sh", "-c", "echo up >> db.log; exec sleep 1000"]
restart = { backoff = "50ms" }

[process.app]
command = ["sh", "-c", "echo up >> app.log; exec sleep 1000"]
after = ["db"]
restart_with = ["db"]
"#;
    let (dir, port, cfg) = table(body);
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("db", "ready", T);
    let app = s.wait_state("app", "ready", T);
    let db_pid = s.entry("db")["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(db_pid, libc::SIGKILL) };
    let lines = |f: &str| {
        std::fs::read_to_string(s.path(f))
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_for("db restarted", T, || (lines("db.log") == 2).then_some(()));
    wait_for("app restarted with it", T, || {
        (lines("app.log") == 2).then_some(())
    });
    let app2 = s.wait_state("app", "ready", T);
    assert_ne!(app["pid"], app2["pid"]);
    assert_eq!(lines("app.log"), 2);
}

/// `watchdog`: `WATCHDOG_USEC` is set, and a service that stops sending `WATCHDOG=1` is
/// restarted like a failed liveness probe.
#[test]
fn notify_watchdog_restarts_a_silent_service() {
    let script = r#"
import os, socket, time
open("usec", "w").write(os.environ.get("WATCHDOG_USEC", ""))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while os.path.exists("alive"):
    s.sendto(b"WATCHDOG=1", os.environ["NOTIFY_SOCKET"])
    time.sleep(0.05)
time.sleep(1000)
"#;
    let body = "[process.svc]\ncommand = [\"python3\", \"svc.py\"]\nready = { notify = true, watchdog = \"400ms\" }\nrestart = { backoff = \"50ms\" }\n";
    let (dir, port, cfg) = table(body);
    write(&dir.path().join("svc.py"), script);
    write(&dir.path().join("alive"), "");
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    let first = s.wait_state("svc", "ready", T);
    assert_eq!(read(&s, "usec").as_deref(), Some("400000"));
    // Petting: still the same process well past the interval.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(s.entry("svc")["pid"], first["pid"]);
    std::fs::remove_file(s.path("alive")).unwrap();
    let e = wait_for("a restart", T, || {
        let e = s.entry("svc");
        (e["pid"] != first["pid"] && e["pid"].is_number()).then_some(e)
    });
    let reason = s.stderr_text() + &s.stdout_text();
    assert!(reason.contains("no WATCHDOG=1"), "{e}\n{reason}");
}
