//! Steps on the real binary: `timeout`, `progress`, declared outputs, the chain marker inside a
//! real PostgreSQL data dir, and the shipped helpers `make-venv` (uv + pin overrides, real PyPI)
//! and `build-frontend` (real npm with a local `file:` dependency) on tests/fixtures/dmp-like/.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin(name: &str) -> String {
    repo()
        .join("resources-for-container/bin")
        .join(name)
        .display()
        .to_string()
}

/// The step's log lines as one text (`log_tail` of a failed entry, or `logs --tail`).
fn logs(s: &Sup, name: &str) -> String {
    let o = s.cli(&["logs", name, "--tail", "200"]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn records(d: &Path, step: &str) -> usize {
    std::fs::read_dir(d.join("cache/steps").join(step))
        .map(|r| r.count())
        .unwrap_or(0)
}

fn copy_dir(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_step_past_its_timeout_is_killed_and_failed_and_says_what_it_does_meanwhile() {
    let s = Sup::start(
        r#"
[step.slow]
command = "echo fetching the world; exec sleep 991"
timeout = "2s"
progress = "500ms"
cache = { key_extra = ["v1"] }
[process.idle]
command = "exec sleep 600"
"#,
    );
    let e = s.wait_state("slow", "failed", Duration::from_secs(20));
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("timed out after 2 s"), "{e}");
    let log = logs(&s, "slow");
    assert!(log.contains("still running after"), "{log}");
    assert!(log.contains("fetching the world"), "{log}");
    // Nothing of it is left, nothing was cached, and it is not restarted.
    let out = Command::new("pgrep")
        .args(["-f", "sleep 991"])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "sleep 991 still runs");
    assert_eq!(records(s.dir.path(), "slow"), 0);
    assert_eq!(s.entry("slow")["runs"], 1);

    // A longrun cannot have a timeout.
    let (_d, _p, cfg) = table("[process.a]\ncommand = \"sleep 1\"\ntimeout = \"1s\"\n");
    let o = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("applies to [step] entries only"),
        "{err}"
    );
}

#[test]
fn a_step_that_exits_0_without_its_outputs_fails_and_is_not_cached() {
    let (dir, port, config) = table(
        r#"
[step.assets]
command = "mkdir -p out/sub; [ -f fill ] && echo css > out/sub/app.css; exit 0"
cache = { inputs = ["src.txt"], outputs = ["out"] }
[process.idle]
command = "exec sleep 600"
"#,
    );
    std::fs::write(dir.path().join("src.txt"), "a").unwrap();
    let mut s = Sup::spawn(dir, port, config, &[], &[]);
    let e = s.wait_state("assets", "failed", Duration::from_secs(20));
    assert!(
        e["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("declared output"),
        "{e}"
    );
    assert_eq!(records(s.dir.path(), "assets"), 0);
    // (Not asserting the exit code: a stop with a failed entry is the lifecycle's business.)
    s.stop();

    // The same step producing its output: done, then cached.
    std::fs::write(s.path("fill"), "").unwrap();
    let mut s = s.restart(&[]);
    s.wait_state("assets", "done", Duration::from_secs(20));
    assert_eq!(records(s.dir.path(), "assets"), 1);
    assert_eq!(s.stop(), 0);
    // An output emptied behind the cache's back is a miss.
    std::fs::remove_file(s.path("out/sub/app.css")).unwrap();
    std::fs::remove_file(s.path("fill")).unwrap();
    let s = s.restart(&[]);
    s.wait_state("assets", "failed", Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------
// The chain marker lives in the data dir (real PostgreSQL 15)

fn psql_cmd(pg: u16) -> String {
    format!("{PG_BIN}/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {pg} -U postgres")
}

fn query(pg: u16, db: &str, sql: &str) -> Result<String, String> {
    let o = Command::new(format!("{PG_BIN}/psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &pg.to_string(), "-d", db, "-c", sql])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if o.status.success() {
        Ok(text)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A table whose postgres keeps its cluster in `<dir>/<pgdir>/data`, seeded by a snapshotted step.
fn pg_table(d: &Path, pgdir: &str, pg: u16) -> String {
    let pgdir = d.join(pgdir);
    format!(
        r#"{postgres}
[step.seed]
command = "{psql} -c 'CREATE DATABASE app' && {psql} -d app -f seed.sql"
cwd = "{d}"
after = ["postgres"]
cache = {{ inputs = ["seed.sql"], snapshot = "postgres" }}

[step.migrate]
command = "{psql} -d app -c 'ALTER TABLE t ADD COLUMN IF NOT EXISTS y int DEFAULT 7'"
after = ["seed"]
"#,
        postgres = postgres_entry(&pgdir, pg, true),
        d = d.display(),
        psql = psql_cmd(pg),
    )
}

fn make_pgdir(d: &Path, name: &str, initdb: bool) {
    let p = d.join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir(&p).unwrap();
    let st = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    if initdb {
        // What an image ships (and a re-initialised host cluster looks like): a valid, EMPTY cluster.
        let st = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/initdb")])
            .args(["-U", "postgres", "-A", "trust", "-D"])
            .arg(p.join("data"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn write_table(config: &Path, base: &str, d: &Path, pgdir: &str, pg: u16) {
    std::fs::write(config, format!("{base}{}", pg_table(d, pgdir, pg))).unwrap();
}

#[test]
fn a_data_dir_without_the_chain_marker_gets_the_snapshot_whatever_the_cache_says() {
    let pg = free_port();
    let (dir, port, config) = table("");
    let d = dir.path().to_path_buf();
    let base = std::fs::read_to_string(&config).unwrap();
    Command::new("chmod").arg("755").arg(&d).status().unwrap();
    std::fs::write(
        d.join("seed.sql"),
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000);",
    )
    .unwrap();
    make_pgdir(&d, "pg", false);
    write_table(&config, &base, &d, "pg", pg);
    let sum = "SELECT count(*) || ':' || sum(x) || ':' || sum(y) FROM t";

    // 1. Cold: the chain runs, the data is snapshotted, the marker is in the data dir.
    let mut s = Sup::spawn(dir, port, config.clone(), &[], &[]);
    s.wait_state("migrate", "done", Duration::from_secs(120));
    assert_eq!(query(pg, "app", sum).unwrap(), "1000:500500:7000");
    let marker = d.join("pg/data/.dmp-contained-chain.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(m["key"], s.entry("seed")["cache_key"], "{m}");
    assert!(!d.join("cache/snapshots/postgres/live.json").exists());
    assert_eq!(s.stop(), 0);

    // 2. Same data dir, same cache: kept as is (no copy), chain cached.
    let mut s = s.restart(&[]);
    s.wait_state("migrate", "done", Duration::from_secs(60));
    assert_eq!(s.state("seed"), "cached");
    assert!(s.stderr_text().contains("already holds chain"));
    assert_eq!(s.stop(), 0);

    // 3. Data dir wiped and re-initialised (an empty but valid cluster), cache kept: the
    //    snapshot is restored, not "kept" (which left the databases missing before).
    make_pgdir(&d, "pg", true);
    let mut s = s.restart(&[]);
    s.wait_state("migrate", "done", Duration::from_secs(120));
    assert_eq!(s.state("seed"), "cached");
    let pglog = s.stderr_text();
    assert!(pglog.contains("restored data snapshot"), "{pglog}");
    assert_eq!(query(pg, "app", sum).unwrap(), "1000:500500:7000");
    assert_eq!(s.stop(), 0);

    // 4. A new data dir (a new container with only the cache volume): restored too.
    make_pgdir(&d, "pg2", true);
    write_table(&config, &base, &d, "pg2", pg);
    let mut s = s.restart(&[]);
    s.wait_state("migrate", "done", Duration::from_secs(120));
    assert_eq!(s.state("seed"), "cached");
    assert_eq!(query(pg, "app", sum).unwrap(), "1000:500500:7000");
    assert!(d.join("pg2/data/.dmp-contained-chain.json").is_file());
    assert_eq!(s.stop(), 0);

    // 5. An edited seed: the marker goes before the chain runs again; new data, new marker.
    std::fs::write(
        d.join("seed.sql"),
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10);",
    )
    .unwrap();
    make_pgdir(&d, "pg2", true);
    let mut s = s.restart(&[]);
    s.wait_state("migrate", "done", Duration::from_secs(120));
    assert_eq!(s.state("seed"), "done");
    assert_eq!(query(pg, "app", sum).unwrap(), "10:55:70");
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.join("pg2/data/.dmp-contained-chain.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["key"], s.entry("seed")["cache_key"]);
    assert_eq!(s.stop(), 0);
}

// ---------------------------------------------------------------------------------------
// make-venv: uv, pin overrides, isolation (real PyPI)

fn fixture(app: &str) -> PathBuf {
    repo().join("tests/fixtures/dmp-like").join(app)
}

fn venv_table(d: &Path, app: &str, extra_env: &str) -> String {
    format!(
        r#"
[step.venv]
command = ["{mk}", ".", "{d}/venvs/{app}"]
cwd = "{d}/{app}"
env = {{ PYTHON_OVERRIDES = "{d}/overrides.txt"{extra_env} }}
cache = {{ inputs = ["requirements*.txt", "{d}/overrides.txt", "{mk}"], outputs = ["{d}/venvs/{app}/bin/python"] }}
timeout = "10m"
[process.idle]
command = "exec sleep 600"
"#,
        mk = bin("make-venv"),
        d = d.display(),
    )
}

fn py(venv: &Path, code: &str) -> Result<String, String> {
    let o = Command::new(venv.join("bin/python"))
        .args(["-c", code])
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn make_venv_installs_real_pins_with_overrides_isolated_and_cached() {
    let (dir, port, config) = table("");
    let d = dir.path().to_path_buf();
    copy_dir(&fixture("api"), &d.join("api"));
    std::fs::copy(
        repo().join("resources-for-container/python-overrides.txt"),
        d.join("overrides.txt"),
    )
    .unwrap();
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{base}{}", venv_table(&d, "api", ""))).unwrap();

    let mut s = Sup::spawn(dir, port, config.clone(), &[], &[]);
    let e = wait_for("venv step", Duration::from_secs(600), || {
        let e = s.entry("venv");
        matches!(e["state"].as_str(), Some("done" | "failed")).then_some(e)
    });
    assert_eq!(e["state"], "done", "{e}\n{}", logs(&s, "venv"));
    assert!(logs(&s, "venv").contains("uv pip install"));
    let venv = d.join("venvs/api");
    // The overrides won over the checkout's pins; the other pins are as written.
    assert_eq!(
        py(&venv, "import cffi, greenlet, flask, sqlalchemy; print(cffi.__version__, greenlet.__version__, sqlalchemy.__version__)").unwrap(),
        "1.15.1 2.0.2 2.0.23"
    );
    // Isolated: Debian's chardet (which makes requests warn) is not visible.
    assert!(py(&venv, "import chardet").is_err());
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    assert!(
        cfg.contains("include-system-site-packages = false"),
        "{cfg}"
    );
    // The app's imports are warning-free (no RequestsDependencyWarning from a leaked chardet).
    let o = Command::new(venv.join("bin/python"))
        .args([
            "-W",
            "error",
            "-c",
            "import requests, flask, sqlalchemy, flask_migrate",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.stop(), 0);

    // Warm: cached, not run.
    let mut s = s.restart(&[]);
    s.wait_state("venv", "cached", Duration::from_secs(30));
    assert_eq!(s.stop(), 0);

    // The override file is part of the key: editing it re-runs the step.
    let mut ov = std::fs::read_to_string(d.join("overrides.txt")).unwrap();
    ov.push_str("# edited\n");
    std::fs::write(d.join("overrides.txt"), ov).unwrap();
    let mut s = s.restart(&[]);
    s.wait_state("venv", "done", Duration::from_secs(300));
    assert_eq!(s.stop(), 0);

    // A requirement that cannot be fetched fails the step, with the reason in status.
    std::fs::write(
        d.join("api/requirements.txt"),
        "dmp-unreachable @ git+https://127.0.0.1:9/nowhere/dmp-unreachable.git\n",
    )
    .unwrap();
    let s = s.restart(&[]);
    let e = s.wait_state("venv", "failed", Duration::from_secs(300));
    let tail = e["log_tail"].to_string();
    assert!(tail.contains("dmp-unreachable"), "{e}");
    assert!(tail.contains("make-venv: cannot install"), "{e}");
}

#[test]
fn make_venv_without_uv_uses_pip_with_the_same_overrides() {
    let (dir, port, config) = table("");
    let d = dir.path().to_path_buf();
    copy_dir(&fixture("buyer-frontend"), &d.join("buyer"));
    std::fs::copy(
        repo().join("resources-for-container/python-overrides.txt"),
        d.join("overrides.txt"),
    )
    .unwrap();
    let base = std::fs::read_to_string(&config).unwrap();
    let env = ", MAKE_VENV_INSTALLER = \"pip\"";
    std::fs::write(&config, format!("{base}{}", venv_table(&d, "buyer", env))).unwrap();
    let s = Sup::spawn(dir, port, config, &[], &[]);
    let e = wait_for("venv step", Duration::from_secs(600), || {
        let e = s.entry("venv");
        matches!(e["state"].as_str(), Some("done" | "failed")).then_some(e)
    });
    assert_eq!(e["state"], "done", "{e}\n{}", logs(&s, "venv"));
    assert!(logs(&s, "venv").contains("make-venv: pip install"));
    assert_eq!(
        py(
            &d.join("venvs/buyer"),
            "import cffi, flask; print(cffi.__version__, flask.__version__)"
        )
        .unwrap(),
        "1.15.1 2.2.5"
    );
}

// ---------------------------------------------------------------------------------------
// build-frontend: real npm, a `file:` dependency, no registry

fn frontend_table(d: &Path, env: &str) -> String {
    format!(
        r#"
[step.frontend]
command = ["{bf}", ".", "frontend-build:development"]
cwd = "{d}/buyer"
env = {{ PATH = "{d}/fakebin:/usr/local/bin:/usr/bin:/bin"{env} }}
cache = {{ inputs = ["package*.json", "app/assets/**"], outputs = ["node_modules", "app/static"] }}
timeout = "5m"
[process.idle]
command = "exec sleep 600"
"#,
        bf = bin("build-frontend"),
        d = d.display(),
    )
}

fn wait_finished(s: &Sup, name: &str) -> serde_json::Value {
    wait_for(name, Duration::from_secs(180), || {
        let e = s.entry(name);
        matches!(e["state"].as_str(), Some("done" | "failed" | "cached")).then_some(e)
    })
}

#[test]
fn build_frontend_runs_the_dmp_script_and_refuses_empty_or_half_failed_builds() {
    let (dir, port, config) = table("");
    let d = dir.path().to_path_buf();
    copy_dir(&fixture("buyer-frontend"), &d.join("buyer"));
    let _ = std::fs::remove_dir_all(d.join("buyer/node_modules"));
    let _ = std::fs::remove_dir_all(d.join("buyer/app/static"));
    std::fs::create_dir(d.join("fakebin")).unwrap();
    let base = std::fs::read_to_string(&config).unwrap();
    let set = |env: &str| std::fs::write(&config, format!("{base}{}", frontend_table(&d, env)));

    // 1. A build that "succeeds" with empty output: failed, nothing cached.
    set(", FRONTEND_BUILD_EMPTY = \"1\"").unwrap();
    let mut s = Sup::spawn(dir, port, config.clone(), &[], &[]);
    let e = wait_finished(&s, "frontend");
    assert_eq!(e["state"], "failed", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("app/static"), "{e}");
    assert!(logs(&s, "frontend").contains("build-frontend: npm ci"));
    assert_eq!(records(&d, "frontend"), 0);
    s.stop();

    // 2. The real build: `frontend-build:development` with the file: dependency; node_modules
    //    now exists (a developer's checkout), so npm install keeps it instead of npm ci.
    std::fs::write(d.join("buyer/node_modules/.developer-file"), "mine").unwrap();
    set("").unwrap();
    let mut s = s.restart(&[]);
    let e = wait_finished(&s, "frontend");
    assert_eq!(e["state"], "done", "{e}\n{}", logs(&s, "frontend"));
    let log = logs(&s, "frontend");
    assert!(log.contains("build-frontend: npm install"), "{log}");
    assert!(log.contains("npm run frontend-build:development"), "{log}");
    assert!(d.join("buyer/node_modules/.developer-file").is_file());
    let manifest = std::fs::read_to_string(d.join("buyer/app/static/manifest.json")).unwrap();
    assert!(manifest.contains("development"), "{manifest}");
    assert_eq!(s.stop(), 0);
    let mut s = s.restart(&[]);
    assert_eq!(wait_finished(&s, "frontend")["state"], "cached");
    assert_eq!(s.stop(), 0);

    // 3. npm exiting 0 after failing ("Exit handler never called!"): failed, not cached.
    script(
        &d.join("fakebin"),
        "npm",
        "echo 'npm error Exit handler never called!' >&2\nexit 0",
    );
    let mut pkg = std::fs::read_to_string(d.join("buyer/package.json")).unwrap();
    pkg = pkg.replace(
        "\"private\": true",
        "\"private\": true, \"license\": \"MIT\"",
    );
    std::fs::write(d.join("buyer/package.json"), pkg).unwrap();
    let s = s.restart(&[]);
    let e = wait_finished(&s, "frontend");
    assert_eq!(e["state"], "failed", "{e}");
    assert!(
        e["log_tail"]
            .to_string()
            .contains("exited 0 but reported an error"),
        "{e}"
    );
    assert_eq!(records(&d, "frontend"), 1);
}
