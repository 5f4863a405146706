//! Issue #10 (the DMp stack on the shipped table): the supervisor features it needs, on the
//! real binary with small tables. Optional edges, a fresh start once a dependency is ready
//! again, `[supervisor] env_file` interpolation and layered entry env files, the exit code of a
//! requested stop, the folded text `status`.
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::time::Duration;

#[test]
fn requested_stop_exits_0_even_when_an_entry_failed() {
    let mut s = Sup::start(
        r#"
[step.broken]
command = "echo 'cannot migrate'; exit 3"
[process.app]
command = ["sleep", "60"]
"#,
    );
    s.wait_state("broken", "failed", Duration::from_secs(10));
    s.wait_state("app", "ready", Duration::from_secs(10));
    // `docker stop`: a normal end, not an error.
    assert_eq!(s.stop(), 0, "{}", s.stderr_text());
}

#[test]
fn optional_edge_is_satisfied_by_a_skipped_or_absent_dependency() {
    let s = Sup::start(
        r#"
[process.es]
command = ["sleep", "60"]
when_exists = "/nonexistent/elasticsearch"
skip_hint = "Elasticsearch is not installed here"
optional = true
[process.search]
command = ["sleep", "60"]
after = ["es:ready?", "not-in-this-table:ready?"]
[step.index]
command = "true"
after = ["search", "es"]
"#,
    );
    let search = s.wait_state("search", "ready", Duration::from_secs(10));
    assert_eq!(search["after"], serde_json::json!(["es:ready?"]));
    let index = s.wait_state("index", "skipped", Duration::from_secs(10));
    // The skip names the root cause, not only "dependency is skipped".
    let why = index["reason"].as_str().unwrap();
    assert!(
        why.starts_with("dependency `es` is skipped: ")
            && why.contains("Elasticsearch is not installed here"),
        "{why}"
    );
}

#[test]
fn entry_failed_while_dependency_down_gets_a_fresh_start_when_it_is_ready() {
    let port = free_port();
    // The frontend checks the api at boot and every 100 ms, exiting 1 when it is down (as the
    // DMp frontends do at boot).
    let s = Sup::start(&format!(
        r#"
[process.api]
command = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}
[process.frontend]
command = ["python3", "-c", "import socket,time\nwhile True:\n    socket.create_connection(('127.0.0.1',{port}),1).close(); time.sleep(0.1)"]
after = ["api:ready"]
restart = {{ backoff = "50ms", max_restarts = 2, window = "60s" }}
"#
    ));
    s.wait_state("frontend", "ready", Duration::from_secs(10));
    assert!(s.cli(&["stop", "api"]).status.success());
    let f = s.wait_state("frontend", "failed", Duration::from_secs(15));
    assert!(f["reason"].as_str().unwrap().contains("crash loop"), "{f}");
    let restarts = f["restarts"].as_u64().unwrap();
    assert!(s.cli(&["start", "api"]).status.success());
    let f = s.wait_state("frontend", "ready", Duration::from_secs(15));
    assert!(f["restarts"].as_u64().unwrap() > restarts, "{f}");
    assert!(
        s.stderr_text()
            .contains("frontend: dependency `api` is ready again: fresh start"),
        "{}",
        s.stderr_text()
    );
    // A fresh budget: it survives another outage of the api just the same.
    assert!(s.cli(&["stop", "api"]).status.success());
    s.wait_state("frontend", "failed", Duration::from_secs(15));
    assert!(s.cli(&["start", "api"]).status.success());
    s.wait_state("frontend", "ready", Duration::from_secs(15));
}

#[test]
fn own_failure_with_dependencies_ready_stays_failed() {
    let s = Sup::start(
        r#"
[process.api]
command = ["sleep", "60"]
[process.frontend]
command = "echo broken; exit 1"
after = ["api:ready"]
restart = { backoff = "50ms", max_restarts = 1, window = "60s" }
"#,
    );
    s.wait_state("frontend", "failed", Duration::from_secs(10));
    // Restarting the api does not revive an entry that failed on its own.
    assert!(s.cli(&["restart", "api"]).status.success());
    s.wait_state("api", "ready", Duration::from_secs(10));
    wait_for("api restarted", Duration::from_secs(10), || {
        (s.entry("api")["restarts"] == 1).then_some(())
    });
    assert_eq!(s.state("frontend"), "failed");
}

#[test]
fn supervisor_env_file_is_interpolated_and_a_later_entry_env_file_wins() {
    let (dir, port, cfg) = table_with(
        r#"
[process.app]
command = "echo \"greeting=$GREETING from=${FROM_DOTENV}\"; exec sleep 60"
env_file = ["base.env", "${MOUNT}/.env?"]
[process.other]
command = "echo \"other=$GREETING\"; exec sleep 60"
env_file = ["base.env", "${MOUNT}/missing.env?"]
"#,
        "env_file = \"${MOUNT}/.env\"\nenv_file_optional = true\n",
    );
    let mount = dir.path().join("mount");
    std::fs::create_dir(&mount).unwrap();
    std::fs::write(mount.join(".env"), "GREETING=override\nFROM_DOTENV=yes\n").unwrap();
    std::fs::write(dir.path().join("base.env"), "GREETING=base\n").unwrap();
    let s = Sup::spawn(dir, port, cfg, &[], &[("MOUNT", mount.to_str().unwrap())]);
    s.wait_state("app", "ready", Duration::from_secs(10));
    s.wait_state("other", "ready", Duration::from_secs(10));
    let out = wait_for("both lines", Duration::from_secs(5), || {
        let t = s.stdout_text();
        (t.contains("greeting=") && t.contains("other=")).then_some(t)
    });
    assert!(out.contains("greeting=override from=yes"), "{out}");
    assert!(out.contains("other=base"), "{out}");
}

#[test]
fn text_status_folds_skipped_rows_and_shows_the_last_log_line_of_a_failure() {
    let s = Sup::start(
        r#"
[process.keep]
command = ["sleep", "60"]
[step.migrate]
command = "echo 'sqlalchemy.exc.OperationalError: role root does not exist'; exit 1"
[process.a]
command = ["sleep", "60"]
when_exists = "/nonexistent/a"
[process.b]
command = ["sleep", "60"]
when_exists = "/nonexistent/b"
[process.c]
command = ["sleep", "60"]
after = ["a"]
"#,
    );
    s.wait_state("migrate", "failed", Duration::from_secs(10));
    s.wait_state("c", "skipped", Duration::from_secs(10));
    let text = String::from_utf8(s.cli(&["status"]).stdout).unwrap();
    assert!(
        text.contains("3 skipped (`status --all` shows why): a, b, c"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("a ")), "{text}");
    assert!(
        text.contains("last log line: sqlalchemy.exc.OperationalError: role root does not exist"),
        "{text}"
    );
    let all = String::from_utf8(s.cli(&["status", "--all"]).stdout).unwrap();
    assert!(
        all.lines()
            .any(|l| l.starts_with("c ") && l.contains("dependency `a` is skipped")),
        "{all}"
    );
    assert!(!all.contains("skipped (`status --all`"), "{all}");
}

#[test]
fn unavailable_route_says_why_and_holds_a_request_during_a_restart() {
    let port = free_port();
    let s = Sup::start(&format!(
        r#"
[process.web]
command = "sleep 1; exec python3 -m http.server --bind 127.0.0.1 {port}"
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}
[process.broken]
command = "echo 'ModuleNotFoundError: No module named flask_login'; exit 1"
restart = {{ backoff = "50ms", max_restarts = 1, window = "60s" }}
[process.absent]
command = ["sleep", "60"]
when_exists = "/nonexistent/app"
"#
    ));
    s.wait_state("web", "ready", Duration::from_secs(10));
    s.wait_state("broken", "failed", Duration::from_secs(10));
    let orig = [("X-Dmp-Original-Uri", "/search?q=cloud")];

    // Being restarted: the request is held until it is ready, then retried with a 307.
    assert!(s.cli(&["restart", "web"]).status.success());
    let resp = raw_http(s.port, "/_supervisor/unavailable/web", &orig);
    assert!(resp.starts_with("HTTP/1.1 307"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: /search?q=cloud"),
        "{resp}"
    );
    assert_eq!(s.state("web"), "ready");

    // Failed: 503 with the reason and the last line it logged, refreshing itself.
    let resp = raw_http(s.port, "/_supervisor/unavailable/broken", &orig);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("refresh: 3"), "{resp}");
    assert!(resp.contains("broken is failed"), "{resp}");
    assert!(resp.contains("No module named flask_login"), "{resp}");

    // Stopped by request: 503 at once (not held), as JSON for the API proxies.
    assert!(s.cli(&["stop", "web"]).status.success());
    s.wait_state("web", "stopped", Duration::from_secs(10));
    let (code, body) = http(
        s.port,
        "GET",
        "/_supervisor/unavailable/web?format=json",
        &orig,
    );
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "stopped", "{v}");

    // Not mounted (skipped) or unknown: 404, so nginx shows the example app's page.
    assert_eq!(
        http(s.port, "GET", "/_supervisor/unavailable/absent", &[]).0,
        404
    );
    assert_eq!(
        http(s.port, "GET", "/_supervisor/unavailable/nope", &[]).0,
        404
    );
}

/// GET returning the whole response (status line and headers too).
fn raw_http(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

// --- The shipped supervisor.toml on the host, with the dmp-like stand-ins mounted ----------------

/// Ports of one run of the shipped table (this part's range: 23000-23999).
struct StackPorts {
    base: u16,
}

impl StackPorts {
    fn api_sup(&self) -> u16 {
        self.base
    }
    fn pg(&self) -> u16 {
        self.base + 1
    }
    fn redis(&self) -> u16 {
        self.base + 2
    }
    fn nginx(&self) -> u16 {
        self.base + 3
    }
    fn api(&self) -> u16 {
        self.base + 6
    }
    fn buyer(&self) -> u16 {
        self.base + 7
    }
    fn search(&self) -> u16 {
        self.base + 8
    }
    fn env(&self, root: &std::path::Path) -> Vec<(String, String)> {
        let repo = env!("CARGO_MANIFEST_DIR");
        let p = |n: u16| n.to_string();
        let d = |s: &str| root.join(s).display().to_string();
        let mut v = vec![
            ("DMP_ROOT", repo.to_string()),
            ("DMP_MOUNT", d("mount")),
            ("DMP_CACHE_DIR", d("cache")),
            ("DMP_VENVS", d("cache/venvs")),
            ("DMP_RUN_DIR", d("run")),
            ("DMP_CONTAINED_SOCKET", d("ctl.sock")),
            ("PGDATA", d("pgdata")),
            ("PG_SOCKET_DIR", "/tmp".into()),
            ("REDIS_DIR", d("redis")),
            ("REDIS_USER", "root".into()),
            ("NGINX_USER", "root".into()),
            ("SUPERVISOR_API_PORT", p(self.api_sup())),
            ("PG_PORT", p(self.pg())),
            ("REDIS_PORT", p(self.redis())),
            ("NGINX_PORT", p(self.nginx())),
            ("NGINX_API_PROXY_PORT", p(self.base + 4)),
            ("NGINX_SEARCH_API_PROXY_PORT", p(self.base + 5)),
            ("APP_PORT_API", p(self.api())),
            ("APP_PORT_BUYER_FRONTEND", p(self.buyer())),
            ("APP_PORT_SEARCH_API", p(self.search())),
            ("EXAMPLE_APP_PORT", p(self.base + 9)),
        ];
        for (i, app) in [
            "SUPPLIER_FRONTEND",
            "ADMIN_FRONTEND",
            "BRIEFS_FRONTEND",
            "BRIEF_RESPONSES_FRONTEND",
            "USER_FRONTEND",
        ]
        .iter()
        .enumerate()
        {
            v.push((
                Box::leak(format!("APP_PORT_{app}").into_boxed_str()),
                p(self.base + 10 + i as u16),
            ));
        }
        v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// A temp root with mount/apps-github-repos/ holding the stand-ins (as checkouts: app code,
/// requirement pins and npm files, whatever the fixture holds) and a mount/.env.
fn stack_root(ports: &StackPorts, dotenv_extra: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Postgres runs as `postgres` and must reach PGDATA inside.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repos = dir.path().join("mount/apps-github-repos");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dmp-like");
    for app in ["api", "buyer-frontend", "search-api"] {
        copy_tree(
            &fixtures.join(app),
            &repos.join(format!("digitalmarketplace-{app}")),
        );
    }
    for d in ["cache", "run", "redis"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::write(
        dir.path().join("mount/.env"),
        format!(
            "DM_DATA_API_URL=http://127.0.0.1:{}\nSQLALCHEMY_DATABASE_URI=postgresql://127.0.0.1:{}/digitalmarketplace\nDM_ELASTICSEARCH_URL=http://127.0.0.1:{}\nBUYER_GREETING=Hello from mount/.env\n{dotenv_extra}",
            ports.api(),
            ports.pg(),
            ports.base + 99,
        ),
    )
    .unwrap();
    dir
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        // Build products of an earlier local run are not part of the checkout.
        if ["__pycache__", "node_modules", "static"].contains(&n.as_ref()) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// `dmp-contained up` on the shipped supervisor.toml with the stack's environment.
fn up_shipped(dir: tempfile::TempDir, ports: &StackPorts) -> Sup {
    let env = ports.env(dir.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("supervisor.toml");
    Sup::spawn(dir, ports.api_sup(), config, &[], &env)
}

/// The CLI against a supervisor of the shipped table (it reads the table, so it needs the env).
fn shipped_cli(s: &Sup, ports: &StackPorts, args: &[&str]) -> String {
    let root = s.dir.path().to_path_buf();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .arg("--socket")
        .arg(s.socket())
        .args(args)
        .envs(ports.env(&root))
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn shipped_tools_missing() -> Option<&'static str> {
    let need = [
        "/usr/lib/postgresql/15/bin/postgres",
        "/usr/bin/redis-server",
        "/usr/sbin/nginx",
        "/usr/bin/psql",
    ];
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (postgres runs as its own user)");
    }
    need.iter()
        .find(|p| !std::path::Path::new(p).exists())
        .map(|_| "postgres 15, redis, nginx and psql are not installed")
}

#[test]
fn shipped_table_runs_the_dmp_like_stack_on_the_host() {
    if let Some(why) = shipped_tools_missing() {
        eprintln!("SKIP: {why}");
        return;
    }
    let ports = StackPorts { base: 23100 };
    let t0 = std::time::Instant::now();
    let mut s = up_shipped(stack_root(&ports, ""), &ports);
    let minute = Duration::from_secs(120);
    let buyer = s.wait_state("buyer-frontend", "ready", minute);
    let cold = t0.elapsed();
    s.wait_state("nginx", "ready", minute);
    // search-api runs without Elasticsearch (an optional edge; its probe is /healthcheck).
    let search = s.wait_state("search-api", "ready", minute);
    assert_eq!(search["after"][2], "elasticsearch:ready?", "{search}");
    let idx = s.entry("index-g-cloud-12");
    assert_eq!(idx["state"], "skipped");
    // The buyer waited for the api (it calls it at boot) and never crashed.
    let api = s.entry("api");
    assert!(
        api["ready_at"].as_u64().unwrap() <= buyer["started_at"].as_u64().unwrap(),
        "{api}\n{buyer}"
    );
    assert_eq!(buyer["restarts"], 0, "{buyer}");

    // nginx -> buyer -> api -> Postgres (migrated), with mount/.env winning over apps.env.
    let (code, page) = http(ports.nginx(), "GET", "/", &[]);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("G-Cloud 12"), "{page}");
    assert!(page.contains("Hello from mount/.env"), "{page}");
    assert_eq!(s.get("/_supervisor/health").0, 200);
    let text = shipped_cli(&s, &ports, &["status"]);
    assert!(
        text.contains("skipped (`status --all` shows why)"),
        "{text}"
    );

    // search-api's own /_status needs Elasticsearch (hence the /healthcheck probe); with the
    // clearly labelled fake ES listening, it is 200.
    let sapi = ports.search();
    assert_eq!(
        http(sapi, "GET", "/_status?ignore-dependencies", &[]).0,
        500
    );
    assert_eq!(http(sapi, "GET", "/healthcheck", &[]).0, 200);
    let fake_es = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dmp-like/elasticsearch/fake-elasticsearch.py");
    let mut es = std::process::Command::new("python3")
        .arg(fake_es)
        .arg((ports.base + 99).to_string())
        .spawn()
        .unwrap();
    wait_for(
        "search-api /_status with the fake ES",
        Duration::from_secs(10),
        || (http(sapi, "GET", "/_status", &[]).0 == 200).then_some(()),
    );
    let _ = es.kill();
    let _ = es.wait();

    // A restart behind nginx: the request is held and retried (307 to the same URI), never a
    // placeholder.
    assert!(shipped_cli(&s, &ports, &["restart", "buyer-frontend"]).contains("restarting"));
    let (code, _) = http(ports.nginx(), "GET", "/?during=restart", &[]);
    assert!(
        code == 307 || code == 200,
        "during a restart / answered {code}"
    );
    s.wait_state("buyer-frontend", "ready", minute);
    let buyer = s.entry("buyer-frontend");

    // A template-only edit: no restart (Flask debug mode reloads templates itself).
    let repo = s.path("mount/apps-github-repos/digitalmarketplace-buyer-frontend");
    let tpl = repo.join("app/templates/index.html");
    let html = std::fs::read_to_string(&tpl).unwrap();
    std::fs::write(&tpl, html.replace("<h1>", "<h1>Edited: ")).unwrap();
    wait_for("the edited template", Duration::from_secs(10), || {
        http(ports.nginx(), "GET", "/", &[])
            .1
            .contains("Edited: Hello")
            .then_some(())
    });
    let b = s.entry("buyer-frontend");
    assert_eq!(
        (b["runs"].clone(), b["pid"].clone()),
        (buyer["runs"].clone(), buyer["pid"].clone())
    );

    // A broken save: the page is a 503 naming the real error, never a placeholder that looks fine.
    let code_py = repo.join("application.py");
    let good = std::fs::read_to_string(&code_py).unwrap();
    std::fs::write(&code_py, format!("{good}\ndef broken(:\n")).unwrap();
    s.wait_state("buyer-frontend", "failed", minute);
    let (code, page) = http(ports.nginx(), "GET", "/", &[]);
    assert_eq!(code, 503, "{page}");
    assert!(page.contains("buyer-frontend is failed"), "{page}");
    assert!(page.contains("SyntaxError"), "{page}");
    assert_ne!(s.get("/_supervisor/health").0, 200);
    // The fixed save brings it back.
    std::fs::write(&code_py, &good).unwrap();
    s.wait_state("buyer-frontend", "ready", minute);
    assert_eq!(http(ports.nginx(), "GET", "/", &[]).0, 200);

    // `docker stop`: exit code 0.
    let t = std::time::Instant::now();
    assert_eq!(s.stop(), 0, "{}", s.stderr_text());
    let stop = t.elapsed();

    // Warm start, with the api late (a slow import): the buyer waits for it and never fails.
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let dotenv = dir.path().join("mount/.env");
    let mut env = std::fs::read_to_string(&dotenv).unwrap();
    env.push_str("API_BOOT_DELAY=3\n");
    std::fs::write(&dotenv, env).unwrap();
    let t1 = std::time::Instant::now();
    let mut w = up_shipped(dir, &ports);
    let b = w.wait_state("buyer-frontend", "ready", minute);
    let warm = t1.elapsed();
    assert_eq!(b["restarts"], 0, "{b}");
    // The venv in the cache dir is reused (cached, or re-checked without being re-created).
    let venv = shipped_cli(&w, &ports, &["logs", "venv-api"]);
    assert!(!venv.contains("creating venv"), "{venv}");
    let pg_init = shipped_cli(&w, &ports, &["logs", "pg-init"]);
    assert!(pg_init.contains("already initialised"), "{pg_init}");
    assert!(
        warm >= Duration::from_secs(3),
        "the api's 3 s boot delay is part of the warm start"
    );
    assert_eq!(w.stop(), 0);
    eprintln!(
        "FIGURES shipped table on the host: cold start to buyer ready {:.1}s, warm start (api 3 s late) {:.1}s, stop {:.2}s",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        stop.as_secs_f64()
    );
}
