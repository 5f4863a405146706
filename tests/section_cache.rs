//! Oneshot steps, the step cache and data snapshots on the real binary; the seeding tests
//! run a real PostgreSQL 15 and a STAND-IN for Elasticsearch (tests/fixtures/search-standin.py).
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn wait_up(s: &Sup, timeout: Duration) {
    wait_for("the stack to be up", timeout, || {
        let st = s.status();
        if let Some(e) = st["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state"] == "failed")
        {
            panic!("{} failed: {e}\n{}", e["name"], s.stderr_text());
        }
        (st["supervisor"]["state"] == "running").then_some(())
    });
}

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn independent_steps_overlap_and_a_failure_stops_only_its_dependents() {
    let s = Sup::start(
        r#"
[step.a]
command = "sleep 0.6"
[step.b]
command = "sleep 0.6"
[step.bad]
command = "for i in $(seq 1 30); do echo line-$i; done; exit 3"
after = ["a"]
[step.after_bad]
command = "true"
after = ["bad"]
[step.after_b]
command = "true"
after = ["b"]
[process.web]
command = "exec sleep 60"
"#,
    );
    let bad = s.wait_state("bad", "failed", Duration::from_secs(10));
    s.wait_state("after_b", "done", Duration::from_secs(10));
    let (a, b) = (s.entry("a"), s.entry("b"));
    let end = |e: &serde_json::Value| e["last_exit"]["at"].as_u64().unwrap();
    let start = |e: &serde_json::Value| e["started_at"].as_u64().unwrap();
    assert!(
        start(&b) < end(&a) && start(&a) < end(&b),
        "a and b must overlap: {a} {b}"
    );
    assert_eq!(bad["last_exit"]["code"], 3);
    let tail: Vec<&str> = bad["log_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(tail.len(), 20, "{bad}");
    assert_eq!(*tail.last().unwrap(), "line-30");
    let ab = s.entry("after_bad");
    assert_eq!(ab["state"], "waiting");
    assert!(ab["reason"].as_str().unwrap().contains("blocked"), "{ab}");
    assert_eq!(s.state("web"), "ready");
    assert!(s.entry("after_b")["log_tail"].is_null());
    // `run STEP` exits with the step's own exit code.
    let o = s.cli(&["run", "bad"]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
}

#[test]
fn step_cache_hits_misses_and_degrades() {
    let (dir, port, config) = table(
        r#"
[step.gen]
command = "echo run >> gen.runs; cp in.txt out.txt"
cache = { inputs = ["in.txt", "extra/*.txt"], outputs = ["out.txt"] }
[step.use]
command = "echo run >> use.runs"
after = ["gen"]
cache = { key_extra = ["v1"] }
[step.plain]
command = "echo run >> plain.runs"
[process.web]
command = "exec sleep 60"
"#,
    );
    let dirp = dir.path().to_path_buf();
    let p = |n: &str| dirp.join(n);
    std::fs::write(p("in.txt"), "one").unwrap();
    std::fs::create_dir(p("extra")).unwrap();
    std::fs::write(p("extra/x.txt"), "x").unwrap();
    let runs2 = |n: &str| {
        std::fs::read_to_string(p(&format!("{n}.runs")))
            .unwrap_or_default()
            .lines()
            .count()
    };

    let mut s = Sup::spawn(dir, port, config, &[], &[]);
    wait_up(&s, Duration::from_secs(10));
    assert_eq!(s.state("gen"), "done");
    let key1 = s.entry("gen")["cache_key"].as_str().unwrap().to_string();
    assert_eq!(key1.len(), 64);
    assert_eq!(s.stop(), 0);

    // Same inputs: cached, with the same key; an uncached step runs again.
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(10));
    let g = s.entry("gen");
    assert_eq!(g["state"], "cached");
    assert_eq!(g["cache_key"], key1.as_str());
    assert_eq!(s.state("use"), "cached");
    assert_eq!((runs2("gen"), runs2("use"), runs2("plain")), (1, 1, 2));
    let ls = out(&s.cli(&["cache", "ls"]));
    assert!(ls.contains("gen") && ls.contains(&key1[..16]), "{ls}");
    // `run` of a cached step runs it for real.
    let o = s.cli(&["run", "gen"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(runs2("gen"), 2);
    assert_eq!(s.state("gen"), "done");
    assert_eq!(s.stop(), 0);

    // A new mtime alone changes nothing; a content edit re-runs the step and its dependent.
    let f = std::fs::File::options()
        .write(true)
        .open(s.path("extra/x.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    drop(f);
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(10));
    assert_eq!(s.state("gen"), "cached");
    assert_eq!(runs2("gen"), 2);
    assert_eq!(s.stop(), 0);
    std::fs::write(s.path("extra/x.txt"), "y").unwrap();
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(10));
    assert_eq!(s.state("gen"), "done");
    assert_eq!(s.state("use"), "done");
    assert_ne!(s.entry("gen")["cache_key"], key1.as_str());
    assert_eq!(s.stop(), 0);

    // A missing output is a miss; --fresh ignores the cache; `cache clear STEP` forgets it.
    std::fs::remove_file(s.path("out.txt")).unwrap();
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(10));
    assert_eq!(s.state("gen"), "done");
    assert_eq!(s.state("use"), "cached");
    assert_eq!(s.stop(), 0);
    let mut s = s.restart(&["--fresh"]);
    wait_up(&s, Duration::from_secs(10));
    assert_eq!(
        (s.state("gen"), s.state("use")),
        ("done".into(), "done".into())
    );
    assert_eq!(s.stop(), 0);
    let o = s.cli(&["cache", "clear", "use"]);
    assert!(o.status.success(), "{}", out(&o));
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(10));
    assert_eq!(
        (s.state("gen"), s.state("use")),
        ("cached".into(), "done".into())
    );
    assert_eq!(s.stop(), 0);

    // An unusable cache dir (a file where the directory should be) degrades to running.
    let cache = s.path("cache");
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::write(&cache, "not a dir").unwrap();
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(10));
    assert_eq!(
        (s.state("gen"), s.state("use")),
        ("done".into(), "done".into())
    );
    assert_eq!(s.stop(), 0);
    assert!(
        s.stderr_text().contains("cannot write cache record"),
        "{}",
        s.stderr_text()
    );
}

#[test]
fn a_step_never_runs_concurrently_with_itself() {
    let s = Sup::start(
        r#"
[step.migrate]
command = "echo start >> runs.txt; sleep 1; echo end >> runs.txt; exit 4"
[process.web]
command = "exec sleep 60"
"#,
    );
    s.wait_state("migrate", "failed", Duration::from_secs(10));
    let sock = s.socket();
    let cfg = s.config.clone();
    let run = move || {
        Command::new(BIN)
            .args(["--config"])
            .arg(&cfg)
            .arg("--socket")
            .arg(&sock)
            .args(["run", "migrate"])
            .output()
            .unwrap()
    };
    let r1 = run.clone();
    let t1 = std::thread::spawn(r1);
    wait_for("migrate running", Duration::from_secs(5), || {
        (s.state("migrate") == "running").then_some(())
    });
    let t2 = std::thread::spawn(run);
    let restart = s.cli(&["restart", "migrate"]);
    assert_eq!(restart.status.code(), Some(1), "{}", out(&restart));
    assert!(out(&restart).contains("never runs concurrently"));
    let (o1, o2) = (t1.join().unwrap(), t2.join().unwrap());
    assert_eq!(o1.status.code(), Some(4), "{}", out(&o1));
    assert_eq!(o2.status.code(), Some(4), "{}", out(&o2));
    let log = std::fs::read_to_string(s.path("runs.txt")).unwrap();
    // Once at start, once for the two overlapping `run`s: never interleaved.
    assert_eq!(log, "start\nend\nstart\nend\n");
    assert_eq!(s.entry("migrate")["runs"], 2);
}

#[test]
fn schedule_runs_a_step_periodically_after_the_stack_is_up() {
    let s = Sup::start(
        r#"
[step.tick]
command = "date +%s >> ticks.txt"
schedule = "* * * * *"
[process.web]
command = "exec sleep 200"
"#,
    );
    s.wait_state("tick", "done", Duration::from_secs(10));
    // `runs` counts a run when it starts; the file shows when it has written.
    wait_for("a scheduled run", Duration::from_secs(75), || {
        let ticks = std::fs::read_to_string(s.path("ticks.txt")).unwrap_or_default();
        (ticks.lines().count() >= 2).then_some(())
    });
    assert!(s.entry("tick")["runs"].as_u64().unwrap() >= 2);
    assert!(s.stderr_text().contains("tick: scheduled run"));
}

// ---------------------------------------------------------------------------------------
// Real PostgreSQL + search stand-in

struct Pg {
    pg: u16,
    es: u16,
}

fn psql(port: u16, db: &str, sql: &str) -> String {
    let o = Command::new(format!("{PG_BIN}/psql"))
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &port.to_string(), "-d", db, "-c", sql])
        .output()
        .unwrap();
    assert!(o.status.success(), "psql {sql}: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

const CHECKSUM: &str = "SELECT count(*) || ' ' || md5(string_agg(id || ':' || name || ':' || price || ':' || coalesce(slug, ''), ',' ORDER BY id)) FROM items";

fn search_count(es: u16) -> u64 {
    let (code, body) = http(es, "GET", "/items/_count", &[]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["count"]
        .as_u64()
        .unwrap()
}

/// ≥ 200,000 rows as one COPY; `variant` changes one row's price.
fn write_test_data(path: &Path, variant: u32) {
    use std::fmt::Write;
    let mut s = String::with_capacity(8 << 20);
    s.push_str("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL);\n");
    s.push_str("COPY items (id, name, price) FROM stdin;\n");
    for i in 1..=200_000u32 {
        let price = if i == 7 { variant } else { i % 1000 };
        writeln!(s, "{i}\titem-{i}\t{price}.{:02}", i % 100).unwrap();
    }
    s.push_str("\\.\n");
    std::fs::write(path, s).unwrap();
}

/// The seeded stack: postgres (data_dir) and the search stand-in (data_dir), two imports,
/// a migration that snapshots postgres, an index step that snapshots the stand-in.
fn seeded_table(d: &Path, p: &Pg) -> String {
    let pgdir = d.join("pg");
    let f = fixtures();
    let psql = format!(
        "{PG_BIN}/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {} -U postgres",
        p.pg
    );
    format!(
        r#"{postgres}
[process.search]
command = ["python3", "{f}/search-standin.py", "{es}", "{dir}/search"]
data_dir = "{dir}/search"
ready = {{ http = "http://127.0.0.1:{es}/", interval = "100ms" }}

[step.assets]
command = "echo built > assets.out"
cache = {{ inputs = ["assets.in"], outputs = ["assets.out"] }}

[step.createdbs]
command = "{psql} -c 'DROP DATABASE IF EXISTS app' -c 'DROP DATABASE IF EXISTS app_test' -c 'CREATE DATABASE app' -c 'CREATE DATABASE app_test'"
after = ["postgres"]

[step.import_app]
command = "{psql} -d app -f test_data.sql"
after = ["createdbs"]
cache = {{ inputs = ["test_data.sql"] }}

[step.import_test]
command = "{psql} -d app_test -f test_data.sql"
after = ["createdbs"]
cache = {{ inputs = ["test_data.sql"] }}

[step.migrate]
command = "{psql} -d app -f migrate.sql"
after = ["import_app", "import_test"]
cache = {{ inputs = ["migrate.sql"], snapshot = "postgres" }}

[step.index]
command = ["bash", "-o", "pipefail", "-c", "{psql} -At -d app -c 'SELECT id, slug FROM items WHERE id % 20 = 0 ORDER BY id' | python3 {f}/index-items.py http://127.0.0.1:{es} items"]
after = ["migrate", "search"]
cache = {{ key_extra = ["index-v1"], snapshot = "search" }}
"#,
        postgres = postgres_entry(&pgdir, p.pg, true),
        es = p.es,
        dir = d.display(),
        f = f.display(),
    )
}

fn prepare_seeded(variant: u32) -> (tempfile::TempDir, u16, PathBuf, Pg) {
    let p = Pg {
        pg: free_port(),
        es: free_port(),
    };
    let (dir, port, config) = table("");
    let d = dir.path();
    // postgres must traverse the temp dir and own its own dir.
    Command::new("chmod").arg("755").arg(d).status().unwrap();
    std::fs::create_dir(d.join("pg")).unwrap();
    Command::new("chown")
        .args(["postgres:postgres"])
        .arg(d.join("pg"))
        .status()
        .unwrap();
    write_test_data(&d.join("test_data.sql"), variant);
    std::fs::write(
        d.join("migrate.sql"),
        "ALTER TABLE items ADD COLUMN slug text;\nUPDATE items SET slug = 'item-' || id;\nCREATE INDEX items_slug ON items (slug);\n",
    )
    .unwrap();
    std::fs::write(d.join("assets.in"), "css").unwrap();
    let text = std::fs::read_to_string(&config).unwrap() + &seeded_table(d, &p);
    std::fs::write(&config, text).unwrap();
    (dir, port, config, p)
}

const CHAIN: [&str; 5] = ["createdbs", "import_app", "import_test", "migrate", "index"];

fn records(d: &Path, step: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.join("cache/steps").join(step))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn postgres_seed_is_cached_restored_invalidated_and_snapshotted() {
    if !require(&[Need::Bin("/usr/lib/postgresql/15/bin/postgres")]) {
        return;
    }
    let (dir, port, config, p) = prepare_seeded(7);

    // 1. Cold start: everything runs, the data of both services is snapshotted.
    let t = Instant::now();
    let mut s = Sup::spawn(dir, port, config, &[], &[]);
    wait_up(&s, Duration::from_secs(240));
    let cold = t.elapsed();
    for n in CHAIN.iter().chain(&["assets"]) {
        let e = s.entry(n);
        assert_eq!(
            (e["state"].as_str(), e["runs"].as_u64()),
            (Some("done"), Some(1)),
            "{e}"
        );
    }
    let sum = psql(p.pg, "app", CHECKSUM);
    assert!(sum.starts_with("200000 "), "{sum}");
    let sum_test = psql(p.pg, "app_test", "SELECT count(*) FROM items");
    assert_eq!(sum_test, "200000");
    assert_eq!(search_count(p.es), 10_000, "{}", s.stderr_text());
    let key = s.entry("migrate")["cache_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(s
        .path("cache/snapshots/postgres")
        .join(&key)
        .join("data/PG_VERSION")
        .is_file());
    assert!(
        s.stderr_text().contains("data snapshot"),
        "{}",
        s.stderr_text()
    );
    assert_eq!(s.stop(), 0);

    // 2. New container (empty data dirs), same cache dir: restored, chain steps cached.
    std::fs::remove_dir_all(s.path("pg/data")).unwrap();
    std::fs::remove_dir_all(s.path("search")).unwrap();
    let t = Instant::now();
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(120));
    let warm = t.elapsed();
    for n in CHAIN.iter().chain(&["assets"]) {
        assert_eq!(s.state(n), "cached", "{n}");
    }
    assert_eq!(s.entry("migrate")["cache_key"], key.as_str());
    assert_eq!(psql(p.pg, "app", CHECKSUM), sum, "restored rows differ");
    assert_eq!(
        psql(p.pg, "app_test", "SELECT count(*) FROM items"),
        "200000"
    );
    assert_eq!(search_count(p.es), 10_000);
    assert!(
        warm < cold,
        "cached start {warm:?} should beat the cold one {cold:?}"
    );
    eprintln!("cold start {cold:?}, cached start {warm:?}");

    // 3. Named snapshots round-trip data changed in between.
    let o = s.cli(&["snapshot", "save", "before"]);
    assert!(o.status.success(), "{}", out(&o));
    psql(p.pg, "app", "UPDATE items SET price = 0 WHERE id <= 1000");
    assert_ne!(psql(p.pg, "app", CHECKSUM), sum);
    let o = s.cli(&["snapshot", "restore", "before"]);
    assert!(o.status.success(), "{}", out(&o));
    s.wait_state("postgres", "ready", Duration::from_secs(60));
    assert_eq!(psql(p.pg, "app", CHECKSUM), sum, "named restore differs");
    let o = s.cli(&["snapshot", "ls"]);
    assert!(out(&o).contains("before"), "{}", out(&o));
    assert!(!s.cli(&["snapshot", "restore", "nope"]).status.success());
    assert_eq!(s.stop(), 0);

    // 4. Editing the SQL invalidates the imports and everything after them, nothing else.
    write_test_data(&s.path("test_data.sql"), 8);
    let mut s = s.restart(&[]);
    wait_up(&s, Duration::from_secs(240));
    for n in ["import_app", "import_test", "migrate", "index"] {
        assert_eq!(s.state(n), "done", "{n}");
    }
    assert_eq!(s.state("assets"), "cached");
    assert_ne!(s.entry("migrate")["cache_key"], key.as_str());
    let sum2 = psql(p.pg, "app", CHECKSUM);
    assert!(sum2.starts_with("200000 ") && sum2 != sum, "{sum2}");
    assert_eq!(
        psql(p.pg, "app", "SELECT price FROM items WHERE id = 7"),
        "8.07"
    );
    assert_eq!(s.stop(), 0);

    // 5. SIGKILL of the supervisor during an import: no record, no snapshot.
    write_test_data(&s.path("test_data.sql"), 9);
    let before = records(s.dir.path(), "import_app");
    let snaps = |d: &Path| -> usize {
        std::fs::read_dir(d.join("cache/snapshots/postgres"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count()
    };
    let snaps_before = snaps(s.dir.path());
    assert_eq!(snaps_before, 2);
    let mut s = s.restart(&[]);
    wait_for("import_app to run", Duration::from_secs(60), || {
        let e = s.entry("import_app");
        (e["state"] == "running" && e["pid"].is_u64()).then_some(())
    });
    let child = supervisor_child(s.pid());
    unsafe { libc::kill(child, libc::SIGKILL) };
    s.wait_exit(Duration::from_secs(30));
    assert_eq!(records(s.dir.path(), "import_app"), before);
    assert_eq!(snaps(s.dir.path()), snaps_before);
    let leftovers: Vec<_> = std::fs::read_dir(s.path("cache/steps/import_app"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The shim swept postgres away; nothing is left listening.
    wait_for("postgres gone", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", p.pg))
            .is_err()
            .then_some(())
    });
}

/// The supervisor proper is the shim's child running the same binary.
fn supervisor_child(shim: u32) -> i32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if ppid == shim && exe.as_deref() == Some(Path::new(BIN)) {
            return pid;
        }
    }
    panic!("no supervisor child of shim {shim}");
}

/// A snapshot holds its services and their dependents stopped; a user's `stop` that arrives
/// during the hold outlasts it (the hold is its own flag, not the user's), and the hold alone
/// never keeps an entry down after the copy.
#[test]
fn a_users_stop_during_a_snapshot_hold_outlasts_the_hold() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("rows"), "1\n2\n3\n").unwrap();
    let s = Sup::start(&format!(
        r#"
[process.db]
command = "exec sleep 600"
data_dir = "{}"
[process.web]
command = "trap 'echo web-term; sleep 1.5; exit 0' TERM; echo web-up; while true; do sleep 0.1; done"
after = ["db"]
stop_timeout = "10s"
[process.worker]
command = "exec sleep 600"
after = ["db"]
"#,
        data.path().display()
    ));
    for n in ["db", "web", "worker"] {
        s.wait_state(n, "ready", Duration::from_secs(10));
    }
    s.wait_stdout(&["web | web-up"], Duration::from_secs(10));
    std::thread::scope(|sc| {
        let save = sc.spawn(|| s.cli(&["snapshot", "save", "hold1"]));
        // The hold stops the dependents first; web takes 1.5 s to go.
        s.wait_state("web", "stopping", Duration::from_secs(10));
        let o = s.cli(&["stop", "web"]);
        assert!(o.status.success(), "{}", out(&o));
        let o = save.join().unwrap();
        assert!(o.status.success(), "{}", out(&o));
        assert!(out(&o).contains("snapshot `hold1` saved"), "{}", out(&o));
    });
    // The reply comes once the services are back: db and worker (held only) are up again,
    // web (stopped by the user during the hold) stays stopped.
    s.wait_state("db", "ready", Duration::from_secs(10));
    s.wait_state("worker", "ready", Duration::from_secs(10));
    let web = s.entry("web");
    assert_eq!(web["state"], "stopped", "{web}");
    assert_eq!(web["runs"], 1, "{web}");
    assert!(s
        .dir
        .path()
        .join("cache/named/hold1/db/data/rows")
        .is_file());
    // The user's start brings it back.
    let o = s.cli(&["start", "web"]);
    assert!(o.status.success(), "{}", out(&o));
    s.wait_state("web", "ready", Duration::from_secs(10));
}
