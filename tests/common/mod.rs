//! Shared helpers for tests that run the real binary on temporary tables.
#![allow(unsafe_code)] // tests send signals and read process state through libc
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dmp-contained");

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns Some or the deadline passes (test-side waiting only).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A supervisor running on a temp table, with its own API port and socket.
pub struct Sup {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub config: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Writes `body` after a generated `[supervisor]` section into a temp dir.
pub fn table(body: &str) -> (tempfile::TempDir, u16, PathBuf) {
    table_with(body, "")
}

pub fn table_with(body: &str, extra_settings: &str) -> (tempfile::TempDir, u16, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("supervisor.toml");
    let text = format!(
        "[supervisor]\napi_listen = \"127.0.0.1:{port}\"\nsocket = \"{}\"\ncache_dir = \"{}\"\n{extra_settings}\n{body}",
        dir.path().join("ctl.sock").display(),
        dir.path().join("cache").display(),
    );
    std::fs::write(&cfg, text).unwrap();
    (dir, port, cfg)
}

impl Sup {
    pub fn start(body: &str) -> Sup {
        Sup::start_args(body, &[])
    }

    pub fn start_args(body: &str, args: &[&str]) -> Sup {
        let (dir, port, config) = table(body);
        Sup::spawn(dir, port, config, args, &[])
    }

    pub fn spawn(
        dir: tempfile::TempDir,
        port: u16,
        config: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Sup {
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("up").arg("--config").arg(&config).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let s = Sup {
            dir,
            port,
            child: Some(child),
            config,
            stdout,
            stderr,
        };
        // Ready when the API answers, or when the supervisor already exited (short tables).
        wait_for("control API", Duration::from_secs(10), || {
            s.try_exit_code_peek()
                .map(|_| ())
                .or_else(|| TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()))
        });
        s
    }

    /// Starts a new supervisor on the same directory (same table, cache and data) after this
    /// one has exited.
    pub fn restart(&mut self, args: &[&str]) -> Sup {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Sup::spawn(dir, self.port, self.config.clone(), args, &[])
    }

    fn try_exit_code_peek(&self) -> Option<i32> {
        // Non-consuming check through /proc: a zombie or missing pid means it exited.
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        match stat {
            None => Some(-1),
            Some(s) if s.contains(") Z ") => Some(-1),
            _ => None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// GET on the API; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, &[])
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/_supervisor/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn entry(&self, name: &str) -> serde_json::Value {
        let st = self.status();
        st["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no entry {name} in {st}"))
    }

    pub fn state(&self, name: &str) -> String {
        self.entry(name)["state"].as_str().unwrap().to_string()
    }

    pub fn wait_state(&self, name: &str, want: &str, timeout: Duration) -> serde_json::Value {
        wait_for(&format!("{name} to be {want}"), timeout, || {
            let e = self.entry(name);
            (e["state"] == want).then_some(e)
        })
    }

    /// Waits until the supervisor's stdout (the entries' prefixed output) contains each of
    /// `lines`, e.g. `"svc | up"` printed by a script once its trap is set: a process is
    /// "ready" as soon as it started, before its first line ran.
    pub fn wait_stdout(&self, lines: &[&str], timeout: Duration) {
        wait_for(&format!("stdout lines {lines:?}"), timeout, || {
            let out = self.stdout_text();
            lines.iter().all(|l| out.contains(l)).then_some(())
        })
    }

    /// Runs the CLI against this supervisor.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the supervisor to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                panic!(
                    "supervisor did not exit within {timeout:?}\nstderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(15))
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            let mut exited = false;
            while !exited && start.elapsed() < Duration::from_secs(10) {
                exited = matches!(c.try_wait(), Ok(Some(_)));
                if !exited {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // The transition table (src/state.rs) holds in every test that runs the binary: the
        // loop logs any transition outside it.
        if !std::thread::panicking() {
            let err = self.stderr_text();
            if let Some(l) = err.lines().find(|l| l.contains("unexpected transition")) {
                panic!("a lifecycle transition outside the table: {l}");
            }
        }
    }
}

/// Minimal HTTP/1.1 client for tests (Connection: close).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Writes an executable shell script fixture.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Is a process alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.contains(") Z "),
        Err(_) => false,
    }
}

/// A prerequisite a test needs from the machine (see [`require`]).
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Effective uid 0.
    Root,
    /// A fresh PID namespace can be made: `unshare --pid --fork --mount-proc true` succeeds.
    Unshare,
    /// An executable: an absolute path, or a name looked up on PATH.
    Bin(&'a str),
    /// A Docker engine answers `docker info`.
    Docker,
}

impl Need<'_> {
    /// None when present, else why not.
    fn missing(self) -> Option<String> {
        match self {
            Need::Root => (unsafe { libc::geteuid() } != 0).then(|| "needs root".to_string()),
            Need::Unshare => (!succeeds("unshare", &["--pid", "--fork", "--mount-proc", "true"]))
                .then(|| {
                    "cannot create a PID namespace (needs root and util-linux unshare)".into()
                }),
            Need::Bin(b) => {
                (!on_path(b)).then(|| format!("{b} is not installed (scripts/install-deps.sh)"))
            }
            Need::Docker => (!succeeds("docker", &["info"])).then(|| "no Docker engine".into()),
        }
    }
}

fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn on_path(bin: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.contains('/') {
        return executable(Path::new(bin));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(bin))))
}

/// Is this a CI run (`CI=true`), where every prerequisite can be installed and a skip is a failure?
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks a test's prerequisites. All present: true. One missing: prints
/// `SKIP <test>: <reason>` to stderr (past libtest's capture, so it is always seen), appends
/// the same line to the file named by `DMP_SKIP_LOG` (scripts/test.sh counts them as skipped)
/// and returns false, so the test returns early. Under `CI=true` it panics instead.
///
/// ```ignore
/// if !require(&[Need::Unshare, Need::Bin("/usr/lib/postgresql/15/bin/postgres")]) { return; }
/// ```
pub fn require(needs: &[Need]) -> bool {
    let Some(reason) = needs.iter().find_map(|n| n.missing()) else {
        return true;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<test>");
    if under_ci() {
        panic!("{test}: prerequisite missing under CI=true: {reason}");
    }
    let line = format!("SKIP {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("DMP_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
    false
}

/// Debian's PostgreSQL 15 binaries (scripts/install-deps.sh).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A `[process.postgres]` entry (run as user postgres, cluster in `<pgdir>/data`, initdb on
/// first start, fast shutdown), with `data_dir` set when `snapshot` (cached steps copy it).
pub fn postgres_entry(pgdir: &Path, port: u16, snapshot: bool) -> String {
    let pgdir = pgdir.display();
    let data_dir = if snapshot {
        format!("data_dir = \"{pgdir}/data\"\n")
    } else {
        String::new()
    };
    format!(
        r#"
[process.postgres]
command = "[ -f data/PG_VERSION ] || {PG_BIN}/initdb -D data -U postgres -A trust >/dev/null; exec {PG_BIN}/postgres -D data -p {port} -k {pgdir} -c listen_addresses=127.0.0.1 -c fsync=off"
cwd = "{pgdir}"
user = "postgres"
stop_signal = "SIGINT"
stop_timeout = "20s"
{data_dir}ready = {{ postgres = "host=127.0.0.1 port={port} user=postgres dbname=postgres", interval = "100ms", start_period = "60s" }}
"#
    )
}
