//! Hot config reload (`dmp-contained reload`, SIGHUP, `[supervisor] watch_config`) on the
//! real binary: only the difference is applied, untouched processes keep their pid.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Replaces the table's entries, keeping the generated `[supervisor]` block (the first five
/// lines `table_with` writes).
fn edit(s: &Sup, extra_settings: &str, body: &str) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let head: Vec<&str> = text.lines().take(4).collect();
    let new = format!("{}\n{extra_settings}\n{body}", head.join("\n"));
    let tmp = s.config.with_extension("tmp");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, &s.config).unwrap();
}

fn pid(s: &Sup, name: &str) -> u64 {
    s.entry(name)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} has no pid: {}", s.entry(name)))
}

fn names(s: &Sup) -> Vec<String> {
    s.status()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

fn reload(s: &Sup) -> (i32, String, String) {
    let o = s.cli(&["reload"]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The last reload of status once it settled.
fn settled_reload(s: &Sup, trigger: &str, at_after: u64) -> Value {
    wait_for(&format!("a settled {trigger} reload"), T, || {
        let r = s.status()["config_reload"].clone();
        (r["trigger"] == trigger
            && r["at"].as_u64() > Some(at_after)
            && !r["finished_at"].is_null())
        .then_some(r)
    })
}

const FOUR: &str = r#"
[process.keep]
command = ["sleep", "1000"]

[process.change]
command = ["sh", "-c", "echo v1 $MODE; exec sleep 1000"]
env = { MODE = "one" }

[process.gone]
command = ["sleep", "1000"]
"#;

const FOUR_EDITED: &str = r#"
[process.keep]
command = ["sleep", "1000"]

[process.change]
command = ["sh", "-c", "echo v2 $MODE; exec sleep 1000"]
env = { MODE = "two" }

[process.new]
command = ["sh", "-c", "echo hello from new; exec sleep 1000"]
after = ["keep", "change"]
"#;

/// One changed, one added, one removed and one untouched entry.
#[test]
fn reload_applies_only_the_difference() {
    let s = Sup::start(FOUR);
    for n in ["keep", "change", "gone"] {
        s.wait_state(n, "ready", T);
    }
    s.wait_stdout(&["change | v1 one"], T);
    let (keep, change, gone) = (pid(&s, "keep"), pid(&s, "change"), pid(&s, "gone"));
    assert!(s.status()["config_reload"].is_null());

    edit(&s, "", FOUR_EDITED);
    let (code, out, err) = reload(&s);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("config reload (api): applied"), "{out}");
    assert!(out.contains("added      new"), "{out}");
    assert!(out.contains("removed    gone"), "{out}");
    assert!(out.contains("changed    change"), "{out}");
    assert!(out.contains("unchanged  1 entries"), "{out}");

    // The reply comes once everything it started is ready.
    assert_eq!(s.state("new"), "ready");
    assert_eq!(s.state("change"), "ready");
    assert_eq!(
        pid(&s, "keep"),
        keep,
        "the untouched entry kept its process"
    );
    assert!(alive(keep as i32));
    assert_ne!(pid(&s, "change"), change);
    assert!(
        !alive(change as i32),
        "the old process of the changed entry is gone"
    );
    assert!(!alive(gone as i32), "the removed entry was stopped");
    assert_eq!(names(&s), ["change", "keep", "new"]);
    s.wait_stdout(&["change | v2 two", "new | hello from new"], T);
    let c = s.entry("change");
    assert_eq!(c["env"]["MODE"], "two", "{c}");
    assert_eq!(c["restarts"], 1, "{c}");
    let n = s.entry("new");
    assert_eq!(
        n["after"],
        serde_json::json!(["keep:ready", "change:ready"]),
        "{n}"
    );
    // The added entry started once its restarted dependency was ready again.
    let log = wait_for("the reload's log", T, || {
        let log = s.stderr_text();
        log.contains("config reload applied").then_some(log)
    });
    let ready = log.rfind("change: ready after").unwrap();
    let started = log.rfind("new: started (pid").unwrap();
    assert!(ready < started, "{log}");

    let r = s.status()["config_reload"].clone();
    assert_eq!(r["outcome"], "applied", "{r}");
    assert_eq!(r["added"], serde_json::json!(["new"]));
    assert_eq!(r["removed"], serde_json::json!(["gone"]));
    assert_eq!(r["changed"], serde_json::json!(["change"]));
    assert_eq!(r["unchanged"], serde_json::json!(["keep"]));
    assert_eq!(r["errors"], serde_json::json!([]));

    // The removed name is unknown now; the added one is addressable.
    let o = s.cli(&["restart", "gone"]);
    assert_eq!(o.status.code(), Some(4));
    let o = s.cli(&["restart", "new"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let (c, logs) = s.get("/logs/new");
    assert_eq!(c, 200);
    assert!(logs.contains("hello from new"), "{logs}");

    // `status` shows the last reload.
    let o = s.cli(&["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("last config reload (api): applied"), "{text}");

    // The same table again: nothing changes.
    let (code, out, _) = reload(&s);
    assert_eq!(code, 0);
    assert!(!out.contains("\n  changed"), "{out}");
    assert_eq!(pid(&s, "keep"), keep);
}

/// A changed dependency restarts before what depends on it; an untouched dependent keeps its
/// process.
#[test]
fn a_changed_dependency_chain_restarts_in_order() {
    let chain = |v: &str| {
        format!(
            r#"
[process.base]
command = ["sh", "-c", "echo base {v}; exec sleep 1000"]

[process.mid]
command = ["sh", "-c", "echo mid {v}; exec sleep 1000"]
after = ["base"]

[process.leaf]
command = ["sleep", "1000"]
after = ["base"]
"#
        )
    };
    let s = Sup::start(&chain("v1"));
    for n in ["base", "mid", "leaf"] {
        s.wait_state(n, "ready", T);
    }
    let leaf = pid(&s, "leaf");
    edit(&s, "", &chain("v2"));
    let (code, out, err) = reload(&s);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("changed    base, mid"), "{out}");
    s.wait_stdout(&["base | base v2", "mid | mid v2"], T);
    assert_eq!(
        pid(&s, "leaf"),
        leaf,
        "leaf's own definition did not change"
    );

    // The supervisor's own log reaches stderr asynchronously: wait for the reload's last line.
    let log = wait_for("the reload's log", T, || {
        let log = s.stderr_text();
        log.contains("config reload applied").then_some(log)
    });
    let at = |needle: &str| {
        log.rfind(needle)
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{log}"))
    };
    // Stopped dependents first, started dependencies first (the supervisor's own lines, not
    // the progress view's, which a thread of its own prints).
    assert!(at("mid: stopped (") < at("base: stopped ("), "{log}");
    assert!(at("base: started (pid") < at("mid: started (pid"), "{log}");
    assert!(at("base: stopped (") < at("base: started (pid"), "{log}");
}

/// An invalid edit changes nothing and reports every error with its line and column.
#[test]
fn an_invalid_edit_changes_nothing_and_reports_every_error() {
    let s = Sup::start(FOUR);
    for n in ["keep", "change", "gone"] {
        s.wait_state(n, "ready", T);
    }
    let before: Vec<u64> = ["keep", "change", "gone"]
        .iter()
        .map(|n| pid(&s, n))
        .collect();
    edit(
        &s,
        "",
        r#"
[process.keep]
command = ["sleep", "1000"]
stop_timeout = "soon"

[process.change]
command = ["sleep", "1000"]
after = ["nowhere"]
"#,
    );
    let (code, out, err) = reload(&s);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("invalid"), "{out}");
    let cfg = s.config.display().to_string();
    let located: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("error: {cfg}:")))
        .collect();
    assert!(located.len() >= 2, "every error, located:\n{err}");
    assert!(err.contains("stop_timeout"), "{err}");
    assert!(err.contains("nowhere"), "{err}");
    // file:line:col with a real line.
    for l in &located {
        let rest = &l[format!("error: {cfg}:").len()..];
        let mut parts = rest.splitn(3, ':');
        let line: u32 = parts.next().unwrap().parse().unwrap();
        let _col: u32 = parts.next().unwrap().parse().unwrap();
        assert!(line > 4, "{l}");
    }
    assert!(err.contains("nothing changed"), "{err}");

    let after: Vec<u64> = ["keep", "change", "gone"]
        .iter()
        .map(|n| pid(&s, n))
        .collect();
    assert_eq!(before, after, "everything kept running");
    let r = s.status()["config_reload"].clone();
    assert_eq!(r["outcome"], "invalid", "{r}");
    assert!(r["errors"].as_array().unwrap().len() >= 2, "{r}");
    let o = s.cli(&["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("last config reload (api): invalid"), "{text}");
    assert!(text.contains("stop_timeout"), "{text}");
}

/// SIGHUP does what `reload` does.
#[test]
fn sighup_reloads_like_the_command() {
    let s = Sup::start(FOUR);
    for n in ["keep", "change", "gone"] {
        s.wait_state(n, "ready", T);
    }
    let keep = pid(&s, "keep");
    edit(&s, "", FOUR_EDITED);
    s.signal(libc::SIGHUP);
    let r = settled_reload(&s, "sighup", 0);
    assert_eq!(r["outcome"], "applied", "{r}");
    assert_eq!(r["added"], serde_json::json!(["new"]));
    assert_eq!(r["removed"], serde_json::json!(["gone"]));
    assert_eq!(r["changed"], serde_json::json!(["change"]));
    assert_eq!(pid(&s, "keep"), keep);
    assert_eq!(names(&s), ["change", "keep", "new"]);
    s.wait_stdout(&["change | v2 two"], T);

    // An invalid table over SIGHUP: logged, nothing changed.
    let at = r["at"].as_u64().unwrap();
    edit(&s, "", "[process.keep]\ncommand = 42\n");
    s.signal(libc::SIGHUP);
    let r = settled_reload(&s, "sighup", at);
    assert_eq!(r["outcome"], "invalid", "{r}");
    assert_eq!(names(&s), ["change", "keep", "new"]);
    assert_eq!(pid(&s, "keep"), keep);
    wait_for("the errors in the log", T, || {
        s.stderr_text()
            .contains("is invalid; nothing changed")
            .then_some(())
    });
}

/// `[supervisor] watch_config = true`: a save reloads the table.
#[test]
fn watch_config_reloads_on_save() {
    let (dir, port, cfg) = table_with(FOUR, "watch_config = true");
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    for n in ["keep", "change", "gone"] {
        s.wait_state(n, "ready", T);
    }
    let keep = pid(&s, "keep");
    edit(&s, "watch_config = true", FOUR_EDITED);
    let r = settled_reload(&s, "watch", 0);
    assert_eq!(r["outcome"], "applied", "{r}");
    assert_eq!(r["added"], serde_json::json!(["new"]));
    assert_eq!(pid(&s, "keep"), keep);
    s.wait_state("new", "ready", T);
}

/// Records its pid and counts SIGHUPs into files next to its first argument's name.
const HUPPER: &str = r#"
import os, signal, sys, time
tag = sys.argv[2]
n = 0
def hup(*a):
    global n
    n += 1
    open(tag + ".hups.tmp", "w").write(str(n))
    os.rename(tag + ".hups.tmp", tag + ".hups")
signal.signal(signal.SIGHUP, hup)
print("started", open(sys.argv[1]).read().strip(), flush=True)
while True:
    time.sleep(1000)
"#;

/// A re-rendered template: its user with a `signal` watch action gets the signal (same pid),
/// its user without one restarts, an entry not using it is untouched.
#[test]
fn a_changed_template_signals_or_restarts_its_users() {
    let body = |d: &Path, port: &str| {
        let d = d.display();
        format!(
            r#"
[vars]
SITE_PORT = "{port}"

[[template]]
src = "{d}/site.conf.in"
dest = "{d}/rendered/site.conf"

[process.web]
command = ["python3", "hup.py", "{d}/rendered/site.conf", "web"]
watch = {{ paths = ["src"], action = "signal", signal = "SIGHUP" }}

[process.app]
command = ["python3", "hup.py", "{d}/rendered/site.conf", "app"]

[process.other]
command = ["sleep", "1000"]
"#
        )
    };
    let (dir, port, cfg) = table("");
    let d = dir.path().to_path_buf();
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap() + &body(&d, "8001"),
    )
    .unwrap();
    std::fs::write(d.join("hup.py"), HUPPER).unwrap();
    std::fs::write(d.join("site.conf.in"), "listen ${SITE_PORT};\n").unwrap();
    std::fs::create_dir_all(d.join("rendered")).unwrap();
    std::fs::create_dir_all(d.join("src")).unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    for n in ["web", "app", "other"] {
        s.wait_state(n, "ready", T);
    }
    s.wait_stdout(
        &["web | started listen 8001", "app | started listen 8001"],
        T,
    );
    let (web, app, other) = (pid(&s, "web"), pid(&s, "app"), pid(&s, "other"));

    edit(&s, "", &body(&d, "8002"));
    let (code, out, err) = reload(&s);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        std::fs::read_to_string(s.path("rendered/site.conf")).unwrap(),
        "listen 8002;\n"
    );
    let r = s.status()["config_reload"].clone();
    assert_eq!(r["changed"], serde_json::json!([]), "{r}");
    let acts = r["template_actions"].to_string();
    assert!(acts.contains("web: signal SIGHUP"), "{r}");
    assert!(acts.contains("app: restart"), "{r}");
    assert!(!acts.contains("other"), "{r}");
    wait_for("web got SIGHUP", T, || {
        (std::fs::read_to_string(s.path("web.hups")).ok()? == "1").then_some(())
    });
    assert_eq!(pid(&s, "web"), web, "a signal, not a restart");
    assert_ne!(pid(&s, "app"), app, "app restarted");
    s.wait_stdout(&["app | started listen 8002"], T);
    assert_eq!(pid(&s, "other"), other);
    assert!(!s.path("app.hups").exists());
}

/// A real Postgres that the edit does not touch is never restarted; the app after it is.
#[test]
fn untouched_postgres_is_never_restarted() {
    if !require(&[Need::Root, Need::Bin("/usr/lib/postgresql/15/bin/postgres")]) {
        return;
    }
    let pg = free_port();
    let table_body = |d: &Path, v: &str| {
        let pgdir = d.join("pg");
        format!(
            r#"{postgres}
[process.app]
command = ["sh", "-c", "echo app {v}; exec sleep 1000"]
after = ["postgres"]
"#,
            postgres = postgres_entry(&pgdir, pg, false),
        )
    };
    let (dir, port, cfg) = table("");
    let d = dir.path().to_path_buf();
    std::fs::create_dir_all(d.join("pg")).unwrap();
    let ok = std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(d.join("pg"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let text = std::fs::read_to_string(&cfg).unwrap() + &table_body(&d, "v1");
    std::fs::write(&cfg, text).unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[]);
    s.wait_state("postgres", "ready", Duration::from_secs(90));
    s.wait_state("app", "ready", T);
    let (pg_pid, app) = (pid(&s, "postgres"), pid(&s, "app"));

    edit(&s, "", &table_body(&d, "v2"));
    let (code, out, err) = reload(&s);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("changed    app"), "{out}");
    s.wait_stdout(&["app | app v2"], T);
    let p = s.entry("postgres");
    assert_eq!(p["pid"].as_u64(), Some(pg_pid), "{p}");
    assert_eq!(p["restarts"], 0, "{p}");
    assert_eq!(p["runs"], 1, "{p}");
    assert!(alive(pg_pid as i32));
    assert_ne!(pid(&s, "app"), app);
    assert!(!s.stderr_text().contains("postgres: stopped"));
}

/// An entry a reload adds has its secrets redacted like the entries the stack started with:
/// in the supervisor's stdout, the log API and status.
#[test]
fn an_added_entrys_secret_is_redacted_everywhere() {
    let s = Sup::start("[process.a]\ncommand = [\"sleep\", \"1000\"]\n");
    s.wait_state("a", "ready", T);
    edit(
        &s,
        "",
        "[process.a]\ncommand = [\"sleep\", \"1000\"]\n[process.b]\ncommand = [\"sh\", \"-c\", \"echo pw=$DB_PASSWORD; exec sleep 1000\"]\nenv = { DB_PASSWORD = \"hunter2-added\" }\n",
    );
    let (code, out, err) = reload(&s);
    assert_eq!(code, 0, "{out}{err}");
    s.wait_stdout(&["b | pw=<redacted>"], T);
    assert!(!s.stdout_text().contains("hunter2-added"));
    let (_, logs) = s.get("/_supervisor/logs/b");
    assert!(logs.contains("pw=<redacted>"), "{logs}");
    assert!(!logs.contains("hunter2-added"), "{logs}");
    assert!(!s.status().to_string().contains("hunter2-added"));
}
