//! `watch` (hot reload) on the real binary: edits are served after a reload, bursts make one
//! train, ignores, polling, broken and fixed edits, a real Flask app, pause/resume, steps with
//! dependents, `restart_with`.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A tiny HTTP server that serves `VERSION` from `appcode.py`, imported once at start.
const SERVER: &str = r#"
import sys, http.server
import appcode
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = appcode.VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("serving", appcode.VERSION, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn write(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, text).unwrap();
}

fn version(v: &str) -> String {
    format!("VERSION = {v:?}\n")
}

/// Starts a supervisor whose `app` serves `app/appcode.py` on a free port with `watch_extra`
/// in its watch table (and `extra` appended to the table).
fn start_app(watch_extra: &str, extra: &str, env: &[(&str, &str)]) -> (Sup, u16) {
    start_app_debounced("100ms", watch_extra, extra, env)
}

fn start_app_debounced(
    debounce: &str,
    watch_extra: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> (Sup, u16) {
    let app_port = free_port();
    let body = format!(
        r#"
[process.app]
command = ["python3", "server.py", "{app_port}"]
cwd = "app"
env = {{ PYTHONDONTWRITEBYTECODE = "1" }}
ready = {{ http = "http://127.0.0.1:{app_port}/", interval = "50ms" }}
restart = {{ max_restarts = 2, backoff = "100ms" }}
stop_timeout = "2s"
watch = {{ paths = ["."], debounce = "{debounce}" {watch_extra} }}
{extra}
"#
    );
    let (dir, port, cfg) = table(&body);
    write(&dir.path().join("app/server.py"), SERVER);
    write(&dir.path().join("app/appcode.py"), &version("v1"));
    let s = Sup::spawn(dir, port, cfg, &[], env);
    s.wait_state("app", "ready", T);
    (s, app_port)
}

/// GET / on the app; None while it is down.
fn get_body(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    if !buf.starts_with("HTTP/1.1 200") && !buf.starts_with("HTTP/1.0 200") {
        return None;
    }
    buf.split_once("\r\n\r\n").map(|x| x.1.to_string())
}

fn wait_served(s: &Sup, port: u16, want: &str) {
    let start = std::time::Instant::now();
    while get_body(port).as_deref() != Some(want) {
        if start.elapsed() > T {
            panic!(
                "`{want}` not served within {T:?}; status: {}\nstderr:\n{}",
                s.status(),
                s.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn watch_of(s: &Sup, name: &str) -> Value {
    s.entry(name)["watch"].clone()
}

/// Waits until no train runs or waits, and `reloads` reached `n`.
fn wait_reloads(s: &Sup, name: &str, n: u64) -> Value {
    wait_for(&format!("{name} to finish {n} reload(s)"), T, || {
        let w = watch_of(s, name);
        (w["reloads"].as_u64() >= Some(n) && w["reloading"] == false && w["pending"] == 0)
            .then_some(w)
    })
}

fn wait_watching(s: &Sup, name: &str) -> Value {
    wait_for("the watcher to be set up", T, || {
        let w = watch_of(s, name);
        (!w["mode"].is_null()).then_some(w)
    })
}

#[test]
fn an_edit_is_served_after_one_reload() {
    let (s, port) = start_app("", "", &[]);
    wait_served(&s, port, "v1");
    let w = wait_watching(&s, "app");
    assert_eq!(w["mode"], "native", "{w}");
    assert_eq!(w["paused"], false);
    let pid = s.entry("app")["pid"].as_u64().unwrap();
    write(&s.path("app/appcode.py"), &version("v2"));
    wait_served(&s, port, "v2");
    let w = wait_reloads(&s, "app", 1);
    assert_eq!(w["reloads"], 1, "{w}");
    let t = &w["trains"][0];
    assert_eq!(t["outcome"], "ready", "{t}");
    assert_eq!(t["files"], serde_json::json!(["appcode.py"]), "{t}");
    assert_eq!(t["count"], 1);
    assert!(t["duration_s"].as_f64().unwrap() > 0.0);
    let e = s.entry("app");
    assert_ne!(e["pid"].as_u64().unwrap(), pid);
    assert_eq!(e["state"], "ready");
}

#[test]
fn a_burst_of_200_files_is_one_reload() {
    // 500 ms of quiet ends the burst: room for a loaded machine's stalls between the writes.
    let (s, port) = start_app_debounced("500ms", "", "", &[]);
    wait_watching(&s, "app");
    for k in 0..200 {
        write(&s.path(&format!("app/data/f{k:03}.txt")), "x");
    }
    write(&s.path("app/appcode.py"), &version("burst"));
    wait_served(&s, port, "burst");
    wait_reloads(&s, "app", 1);
    // A sentinel save after the burst: once its own train is done, every event of the burst
    // has been handled, so the burst made exactly the train before it.
    let w = save_sentinel(&s, "app");
    assert_eq!(
        w["reloads"], 2,
        "one reload for the burst, one for the sentinel: {w}"
    );
    let burst = &w["trains"][0];
    // Every path counted: the new directory `data`, its 200 files and appcode.py.
    assert_eq!(burst["count"], 202, "{burst}");
    assert!(burst["files"].as_array().unwrap().len() <= 10, "{burst}");
}

/// Saves `<name's dir>/sentinel.txt` and waits for the reload it causes; asserts that reload's
/// train holds only the sentinel (nothing else was pending) and returns the watch status.
fn save_sentinel(s: &Sup, name: &str) -> Value {
    let before = watch_of(s, name)["reloads"].as_u64().unwrap();
    write(
        &s.path(&format!("{name}/sentinel.txt")),
        &format!("{before}"),
    );
    let w = wait_reloads(s, name, before + 1);
    let last = w["trains"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["files"], serde_json::json!(["sentinel.txt"]), "{w}");
    assert_eq!(last["count"], 1, "{w}");
    w
}

#[test]
fn pyc_git_and_editor_files_trigger_nothing() {
    let (s, _port) = start_app("", "", &[]);
    wait_watching(&s, "app");
    let pid = s.entry("app")["pid"].clone();
    write(&s.path("app/appcode.pyc"), "x");
    write(&s.path("app/__pycache__/appcode.cpython-311.pyc"), "x");
    write(&s.path("app/.git/HEAD"), "ref: refs/heads/x");
    write(&s.path("app/.git/objects/ab/cdef"), "x");
    write(&s.path("app/node_modules/x/index.js"), "x");
    write(&s.path("app/.appcode.py.swp"), "x");
    write(&s.path("app/appcode.py~"), "x");
    // None of those is pending or reloaded: the sentinel's train is the first and holds only it.
    let w = save_sentinel(&s, "app");
    assert_eq!(w["reloads"], 1, "{w}");
    assert_ne!(s.entry("app")["pid"], pid);
}

#[test]
fn ignore_globs_and_gitignore() {
    let app_port = free_port();
    let (s, port) = {
        let (dir, port, cfg) = table(&format!(
            r#"
[process.app]
command = ["python3", "server.py", "{app_port}"]
cwd = "app"
env = {{ PYTHONDONTWRITEBYTECODE = "1" }}
ready = {{ http = "http://127.0.0.1:{app_port}/", interval = "50ms" }}
watch = {{ debounce = "100ms", ignore = ["*.log", "tmp/**"] }}
"#
        ));
        write(&dir.path().join("app/server.py"), SERVER);
        write(&dir.path().join("app/appcode.py"), &version("v1"));
        write(&dir.path().join("app/.gitignore"), "build/\n*.out\n");
        (Sup::spawn(dir, port, cfg, &[], &[]), app_port)
    };
    s.wait_state("app", "ready", T);
    wait_watching(&s, "app");
    write(&s.path("app/server.log"), "x");
    write(&s.path("app/tmp/a/b"), "x");
    write(&s.path("app/build/bundle.js"), "x");
    write(&s.path("app/x.out"), "x");
    // The next save is the first reload, and its train holds only that file.
    write(&s.path("app/appcode.py"), &version("v2"));
    wait_served(&s, port, "v2");
    let w = wait_reloads(&s, "app", 1);
    assert_eq!(w["reloads"], 1, "{w}");
    assert_eq!(
        w["trains"][0]["files"],
        serde_json::json!(["appcode.py"]),
        "{w}"
    );
    assert_eq!(w["trains"][0]["count"], 1, "{w}");
}

#[test]
fn forced_polling_reloads() {
    let (s, port) = start_app(r#", mode = "poll", poll_interval = "100ms""#, "", &[]);
    let w = wait_watching(&s, "app");
    assert_eq!(w["mode"], "poll", "{w}");
    // `mode` is reported once the poller's first scan (its baseline) is taken.
    write(&s.path("app/appcode.py"), &version("polled"));
    wait_served(&s, port, "polled");
    let w = wait_reloads(&s, "app", 1);
    assert_eq!(w["trains"][0]["files"], serde_json::json!(["appcode.py"]));
    // A second save right away (same second of mtime) is seen too.
    write(&s.path("app/appcode.py"), &version("polled again"));
    wait_served(&s, port, "polled again");
}

#[test]
fn auto_falls_back_to_polling_and_says_so() {
    let (s, port) = start_app(
        r#", poll_interval = "100ms""#,
        "",
        &[("DMP_CONTAINED_WATCH_NO_NATIVE", "1")],
    );
    let w = wait_watching(&s, "app");
    assert_eq!(w["mode"], "poll", "{w}");
    assert!(
        w["note"]
            .as_str()
            .unwrap()
            .contains("native watcher unavailable"),
        "{w}"
    );
    assert!(s.stderr_text().contains("native watcher unavailable"));
    write(&s.path("app/appcode.py"), &version("fallback"));
    wait_served(&s, port, "fallback");
}

#[test]
fn a_broken_edit_fails_with_the_error_and_a_fixed_edit_recovers() {
    let (s, port) = start_app("", "", &[]);
    wait_watching(&s, "app");
    write(&s.path("app/appcode.py"), "VERSION = (\n");
    let w = wait_reloads(&s, "app", 1);
    let t = &w["trains"][0];
    assert_eq!(t["outcome"], "failed", "{t}");
    assert!(t["error"].as_str().unwrap().contains("exited"), "{t}");
    let tail = t["log_tail"].to_string();
    assert!(tail.contains("SyntaxError"), "{t}");
    // Crash loop: backoff, then failed (max_restarts = 2).
    let e = s.wait_state("app", "failed", T);
    assert!(e["reason"].as_str().unwrap().contains("crash loop"), "{e}");
    assert!(get_body(port).is_none());
    write(&s.path("app/appcode.py"), &version("fixed"));
    wait_served(&s, port, "fixed");
    s.wait_state("app", "ready", T);
    let w = wait_reloads(&s, "app", 2);
    assert_eq!(w["trains"][1]["outcome"], "ready", "{w}");
}

#[test]
fn pause_holds_changes_and_resume_reloads_once() {
    let (s, port) = start_app("", "", &[]);
    wait_watching(&s, "app");
    let out = s.cli(&["pause", "app"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(watch_of(&s, "app")["paused"], true);
    write(&s.path("app/appcode.py"), &version("p1"));
    let pending = |n: u64| {
        wait_for(&format!("{n} pending"), T, || {
            let w = watch_of(&s, "app");
            (w["pending"].as_u64() == Some(n)).then_some(w)
        })
    };
    pending(1);
    write(&s.path("app/other.py"), "x = 1\n");
    let w = pending(2);
    assert_eq!(w["reloads"], 0, "{w}");
    assert_eq!(get_body(port).as_deref(), Some("v1"));
    // Over HTTP too: unknown entries and unwatched ones are refused.
    let out = s.cli(&["resume", "app"]);
    assert!(out.status.success(), "{out:?}");
    wait_served(&s, port, "p1");
    let w = wait_reloads(&s, "app", 1);
    assert_eq!(w["reloads"], 1);
    assert_eq!(w["trains"][0]["count"], 2);
    assert_eq!(w["paused"], false);
}

#[test]
fn pause_of_an_unwatched_entry_is_refused() {
    let s = Sup::start("[process.plain]\ncommand = \"exec sleep 60\"\n");
    s.wait_state("plain", "ready", T);
    let out = s.cli(&["pause", "plain"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [watch]"));
    assert!(s.entry("plain")["watch"].is_null());
}

#[test]
fn a_real_flask_app_serves_the_edited_view() {
    let app_port = free_port();
    let body = format!(
        r#"
[process.web]
command = ["python3", "-m", "flask", "--app", "app", "run", "--no-reload", "--port", "{app_port}"]
cwd = "web"
ready = {{ http = "http://127.0.0.1:{app_port}/", interval = "50ms" }}
watch = {{ debounce = "100ms" }}
"#
    );
    let (dir, port, cfg) = table(&body);
    let view = |msg: &str| {
        format!("from flask import Flask\napp = Flask(__name__)\n\n@app.route('/')\ndef index():\n    return {msg:?}\n")
    };
    write(&dir.path().join("web/app.py"), &view("hello"));
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("web", "ready", T);
    wait_watching(&s, "web");
    wait_served(&s, app_port, "hello");
    // Flask writes __pycache__ on import: ignored, so no reload loop.
    write(&s.path("web/app.py"), &view("hello, edited view"));
    wait_served(&s, app_port, "hello, edited view");
    wait_reloads(&s, "web", 1);
    // No reload of its own making: the next one is the sentinel's, holding only it.
    let w = save_sentinel(&s, "web");
    assert_eq!(w["reloads"], 2, "{w}");
}

fn step_table(app_port: u16) -> String {
    format!(
        r#"
[step.deps]
command = "grep -q '^ok' req/requirements.txt && echo installed"
watch = {{ paths = ["req"], debounce = "100ms" }}

[process.app]
command = ["python3", "server.py", "{app_port}"]
cwd = "app"
env = {{ PYTHONDONTWRITEBYTECODE = "1" }}
after = ["deps"]
ready = {{ http = "http://127.0.0.1:{app_port}/", interval = "50ms" }}

[process.worker]
command = "exec sleep 600"
restart_with = ["app"]
"#
    )
}

#[test]
fn a_step_change_reruns_it_then_reloads_dependents_unless_it_fails() {
    let app_port = free_port();
    let (dir, port, cfg) = table(&step_table(app_port));
    write(&dir.path().join("app/server.py"), SERVER);
    write(&dir.path().join("app/appcode.py"), &version("v1"));
    write(&dir.path().join("req/requirements.txt"), "ok flask\n");
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("app", "ready", T);
    wait_watching(&s, "deps");
    let app_pid = s.entry("app")["pid"].clone();

    // A good change: the step runs again, then its dependent restarts.
    write(&s.path("app/appcode.py"), &version("v2"));
    write(&s.path("req/requirements.txt"), "ok flask redis\n");
    let w = wait_reloads(&s, "deps", 1);
    let t = &w["trains"][0];
    assert_eq!(t["outcome"], "done", "{t}");
    let app_c = t["cascade"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(app_c["outcome"], "ready", "{t}");
    assert_eq!(s.entry("deps")["runs"], 2);
    wait_served(&s, app_port, "v2");
    let app = s.entry("app");
    assert_ne!(app["pid"], app_pid);
    assert_eq!(app["watch"]["trains"][0]["via"], "deps", "{app}");
    let app_pid = app["pid"].clone();

    // A failing change: the step fails, the dependent keeps the old code and says why.
    write(&s.path("app/appcode.py"), &version("v3"));
    write(&s.path("req/requirements.txt"), "broken\n");
    let w = wait_reloads(&s, "deps", 2);
    assert_eq!(w["trains"][1]["outcome"], "failed", "{w}");
    assert_eq!(s.state("deps"), "failed");
    let app = s.entry("app");
    assert_eq!(app["state"], "ready");
    assert_eq!(app["pid"], app_pid);
    assert!(
        app["watch"]["held"]
            .as_str()
            .unwrap()
            .contains("`deps` failed"),
        "{app}"
    );
    assert_eq!(get_body(app_port).as_deref(), Some("v2"));

    // Fixed: recovers and the dependent gets the new code.
    write(&s.path("req/requirements.txt"), "ok again\n");
    wait_reloads(&s, "deps", 3);
    wait_served(&s, app_port, "v3");
    assert_eq!(s.state("deps"), "done");
    assert!(s.entry("app")["watch"]["held"].is_null());
}

#[test]
fn restart_with_follows_a_reload() {
    let (s, port) = start_app(
        "",
        "[process.worker]\ncommand = \"exec sleep 600\"\nrestart_with = [\"app\"]\n",
        &[],
    );
    s.wait_state("worker", "ready", T);
    wait_watching(&s, "app");
    let worker_pid = s.entry("worker")["pid"].clone();
    write(&s.path("app/appcode.py"), &version("v2"));
    wait_served(&s, port, "v2");
    let w = wait_reloads(&s, "app", 1);
    assert_eq!(w["trains"][0]["cascade"][0]["name"], "worker", "{w}");
    let worker = s.wait_state("worker", "ready", T);
    assert_ne!(worker["pid"], worker_pid);
    assert_eq!(worker["watch"]["watched"], false);
    assert_eq!(worker["watch"]["trains"][0]["via"], "app");
}
