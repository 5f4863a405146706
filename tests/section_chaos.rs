//! Chaos (issue #17): bounded random SIGKILLs of entry leaders, of whole process groups and of
//! the Postgres postmaster, for `DMP_CHAOS_SECS` seconds (20 in CI; `bench/chaos.sh` runs the
//! long version). Afterwards every entry is ready again, restarts stayed proportional to the
//! kills (no storm), no zombie and no leaked process is left, the supervisor's fd count and
//! RSS stayed flat, and the status API answered every poll during the run.
//!
//! Real binary, real Postgres from Debian (left out of the table, with a message, where it is
//! not installed). Prints one `chaos-figures {json}` line for BENCHMARKS.md.
#![allow(unsafe_code)] // tests send signals and read process state through libc
mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// xorshift64*: a small seeded generator (the seed is printed, so a run can be replayed with
/// `DMP_CHAOS_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// GET status; None when it does not answer in 2 s (counted, never a panic).
fn try_status(port: u16) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        b"GET /_supervisor/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// (pid, ppid, state) of every process.
fn procs() -> Vec<(i32, i32, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut f = s[s.rfind(')')? + 2..].split(' ');
            let state = f.next()?.chars().next()?;
            Some((pid, f.next()?.parse().ok()?, state))
        })
        .collect()
}

/// Zombies among the children of the shim and of the supervisor.
fn zombies(shim: i32, sup: i32) -> usize {
    procs()
        .iter()
        .filter(|(_, pp, st)| *st == 'Z' && (*pp == shim || *pp == sup))
        .count()
}

fn count_cmdline(needle: &str) -> usize {
    procs()
        .iter()
        .filter(|(p, _, st)| {
            *st != 'Z'
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
        })
        .count()
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const RESTART: &str =
    "restart = { backoff = \"50ms\", backoff_max = \"500ms\", max_restarts = 100000 }";

fn table_body(dir: &Path, pg: Option<u16>) -> String {
    let sleeper = dir.join("chaos-sleep");
    std::fs::copy("/bin/sleep", &sleeper).unwrap();
    let s = sleeper.display();
    let mut body = format!(
        r#"
[process.plain]
command = ["{s}", "100000"]
{RESTART}

[process.shell]
command = "while true; do {s} 100000 & wait; done"
{RESTART}

[process.workers]
command = "for i in 1 2 3; do {s} 100000 & done; (setsid {s} 100000 </dev/null >/dev/null 2>&1 &); wait"
{RESTART}

[process.app]
command = ["{s}", "100000"]
after = ["plain"]
{RESTART}
"#
    );
    if let Some(port) = pg {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.join("pg");
        std::fs::create_dir_all(&data).unwrap();
        Command::new("chown")
            .arg("postgres:postgres")
            .arg(&data)
            .status()
            .unwrap();
        body += &format!(
            r#"
[step.pg-init]
command = "test -f {d}/data/PG_VERSION || {b}/initdb -D {d}/data -U postgres --auth=trust >/dev/null"
user = "postgres"

[process.postgres]
command = ["{b}/postgres", "-D", "{d}/data", "-p", "{port}", "-k", "{d}", "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
user = "postgres"
after = ["pg-init"]
stop_signal = "SIGINT"
ready = {{ postgres = "host=127.0.0.1 port={port} user=postgres dbname=postgres", interval = "50ms" }}
{RESTART}
"#,
            d = data.display(),
            b = PG_BIN,
        );
    }
    body
}

/// Processes whose command line names the chaos sleeper when everything is ready: plain 1,
/// app 1, shell 2 (sh and its sleeper), workers 5 (sh, 3 in its group, 1 escaped).
const STEADY_SLEEPERS: usize = 9;

fn all_ready(st: &serde_json::Value) -> bool {
    st["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["state"] == "ready" || e["state"] == "done" || e["state"] == "cached")
}

#[test]
fn bounded_random_sigkills_all_recover_without_storms_or_leaks() {
    let secs = env_u64("DMP_CHAOS_SECS", 20);
    let seed = env_u64("DMP_CHAOS_SEED", crate_seed());
    let mut rng = Rng(seed | 1);
    let with_pg = Path::new(&format!("{PG_BIN}/postgres")).exists();
    if !with_pg {
        // A reduced run, said so; under CI=true (where it can be installed) a failure.
        assert!(!under_ci(), "postgresql-15 missing under CI=true");
        eprintln!("NOTE: postgresql-15 missing: chaos runs without Postgres");
    }
    let (dir, port, cfg) = table("");
    let sleeper = dir.path().join("chaos-sleep").display().to_string();
    let body = table_body(dir.path(), with_pg.then(free_port));
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &body).unwrap();
    let mut s = Sup::spawn(dir, port, cfg, &[], &[]);
    let shim = s.pid() as i32;
    let sup = wait_for("supervisor", Duration::from_secs(5), || {
        procs().iter().find(|(_, pp, _)| *pp == shim).map(|p| p.0)
    });
    wait_for("all ready", Duration::from_secs(60), || {
        try_status(port).filter(all_ready)
    });
    let (fd0, rss0) = (fds(sup), rss_kb(sup));

    let names: Vec<String> = s.status()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "longrun")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let (mut kills, mut group_kills, mut pg_kills, mut polls, mut answered) = (0, 0, 0, 0, 0);
    let mut max_zombies = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        polls += 1;
        let Some(st) = try_status(port) else {
            continue;
        };
        answered += 1;
        max_zombies = max_zombies.max(zombies(shim, sup));
        let name = &names[rng.below(names.len() as u64) as usize];
        let e = st["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| &e["name"] == name)
            .unwrap();
        if let Some(pid) = e["pid"].as_i64().filter(|_| e["state"] == "ready") {
            let group = rng.below(3) == 0;
            let target = if group { -(pid as i32) } else { pid as i32 };
            unsafe { libc::kill(target, libc::SIGKILL) };
            kills += 1;
            group_kills += u32::from(group);
            pg_kills += u32::from(name == "postgres");
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
    }

    let settle = Instant::now();
    let st = wait_for("every entry ready again", Duration::from_secs(30), || {
        try_status(port).filter(all_ready)
    });
    let recovered_in = settle.elapsed();
    let restarts: u64 = st["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["restarts"].as_u64().unwrap_or(0))
        .sum();
    let leak_check = Instant::now();
    while count_cmdline(&sleeper) != STEADY_SLEEPERS {
        let n = count_cmdline(&sleeper);
        let tree = Command::new("ps")
            .args(["-eo", "pid,ppid,pgid,sid,stat,args"])
            .output()
            .unwrap();
        let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
        let ours: Vec<&str> = tree.lines().filter(|l| l.contains(&sleeper)).collect();
        assert!(
            leak_check.elapsed() < Duration::from_secs(5),
            "{n} sleepers, want {STEADY_SLEEPERS}:\n{}\n{st}",
            ours.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for("no zombie", Duration::from_secs(2), || {
        (zombies(shim, sup) == 0).then_some(())
    });
    let (fd1, rss1) = (fds(sup), rss_kb(sup));
    eprintln!(
        "chaos-figures {}",
        serde_json::json!({
            "seconds": secs, "seed": seed, "postgres": with_pg, "kills": kills,
            "group_kills": group_kills, "postgres_kills": pg_kills, "restarts": restarts,
            "status_polls": polls, "status_answered": answered,
            "max_transient_zombies": max_zombies, "recovered_in_s": recovered_in.as_secs_f64(),
            "fd_before": fd0, "fd_after": fd1, "rss_kb_before": rss0, "rss_kb_after": rss1,
        })
    );
    assert!(kills > 0);
    assert_eq!(answered, polls, "the status API answered every poll");
    // No storm: each kill costs at most a couple of restarts (a Postgres killed during its
    // crash recovery may need one more).
    assert!(
        restarts <= 2 * kills as u64 + 2,
        "{restarts} restarts for {kills} kills"
    );
    assert!(fd1 <= fd0 + 4, "fd count {fd0} -> {fd1}");
    assert!(rss1 <= rss0 + 8 * 1024, "RSS {rss0} kB -> {rss1} kB");
    assert_eq!(s.stop(), 0);
    assert_eq!(count_cmdline(&sleeper), 0, "nothing left after the stop");
}

fn crate_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
