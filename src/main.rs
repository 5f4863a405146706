//! dmp-contained: a PID-1 supervisor for a whole development stack in one container.
//!
//! `up` runs the table: the process first becomes the init shim (`pid1`), which re-executes
//! itself as the supervisor proper. Every other subcommand is a client of a running supervisor
//! (over its Unix socket) or works on the table alone (`check`).

mod api;
mod app;
mod cache;
mod cli;
mod config;
mod control;
mod export;
mod graph;
mod interp;
mod logfile;
mod logs;
mod logview;
mod notify;
mod pid1;
mod plan;
mod probe;
mod process;
mod progress;
mod redact;
mod reload;
mod runner;
mod sockets;
mod state;
mod status;
mod supervisor;
mod trim;
mod wait;
mod watch;

use app::cache_cmd::{CacheOp, SnapshotOp};
use app::EXIT_CONFIG;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "dmp-contained",
    version,
    about = "PID-1 supervisor for a whole development stack in one container"
)]
struct Cli {
    /// The process table.
    #[arg(
        long,
        short,
        global = true,
        env = "DMP_CONTAINED_CONFIG",
        default_value = "supervisor.toml"
    )]
    config: PathBuf,
    /// Control socket (defaults to the table's `[supervisor] socket`).
    #[arg(long, global = true, env = "DMP_CONTAINED_SOCKET")]
    socket: Option<PathBuf>,
    /// Turn on the entries of these profiles (repeatable or comma-separated; default
    /// DMP_CONTAINED_PROFILES); entries in other profiles are `off` until started.
    #[arg(long = "profile", global = true, value_delimiter = ',')]
    profiles: Vec<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the process table (the default; as PID 1 it is also the container's init).
    Up(app::up::Options),
    /// Validate the table and print the start plan by levels.
    Check {
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Print the table with every preset expanded (the entries as `check` reads them).
        #[arg(long, conflicts_with = "json")]
        expand: bool,
    },
    /// Show every entry's state (skipped entries as one summary line).
    Status {
        #[arg(long)]
        json: bool,
        /// One row for every entry, skipped ones too, with their reasons.
        #[arg(long)]
        all: bool,
    },
    /// Exit 0 when every required entry is ready/done, 1 otherwise (for HEALTHCHECK).
    Health,
    /// Print entries' recent log lines (no names: every entry, interleaved by time).
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Lines per entry (from the in-memory ring).
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Only lines newer than this (`10m`, `90s`, `1h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Prefix each line with its capture time (RFC 3339, UTC).
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Only lines matching this regular expression.
        #[arg(long)]
        grep: Option<regex::Regex>,
        names: Vec<String>,
    },
    /// Restart entries (a oneshot runs again).
    Restart {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop entries (they stay stopped until started).
    Stop {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Start stopped entries.
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Hold hot reloads of watched entries (changes wait until `resume`).
    Pause {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Resume hot reloads; changes made while paused reload once.
    Resume {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a oneshot step now (no cache lookup) and wait for its result; exits with the
    /// step's exit code. While the step runs, this waits for the current run instead.
    Run { step: String },
    /// Inspect or clear the oneshot cache (works on `cache_dir` directly).
    Cache {
        #[command(subcommand)]
        op: CacheOp,
    },
    /// Named data snapshots of the services with a `data_dir`.
    Snapshot {
        #[command(subcommand)]
        op: SnapshotOp,
    },
    /// Block until entries (default: every required one) are ready/done; exit 0, 1 when one
    /// failed, 124 on timeout (naming what still waits, with its reason and last log lines).
    Wait {
        names: Vec<String>,
        /// `300`, `300s`, `5m`.
        #[arg(long, default_value = "5m", value_parser = wait::parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Stop the whole table gracefully.
    Shutdown,
    /// Load the edited table and apply only what changed (as SIGHUP does): removed entries
    /// stop, added ones start, changed ones restart; the rest keep running. An invalid table
    /// changes nothing: every error is printed and the exit code is 2.
    Reload,
    /// Write the table as a docker compose file or Kubernetes manifests, one container per entry.
    Export {
        #[command(subcommand)]
        target: export::Target,
    },
    /// Run one probe now (exit 0 when it passes); with --wait, until it passes.
    Probe(export::probe_cmd::ProbeArgs),
}

fn main() {
    // The init shim runs before any parsing, so PID 1 touches as little memory as possible;
    // the supervisor child parses (and reports usage errors, exit 2, passed through).
    if std::env::var_os(process::ROLE_ENV).is_none() && wants_up() {
        pid1::run_shim();
    }
    let cli = Cli::parse();
    if !cli.profiles.is_empty() {
        // config::parse reads the active profiles from the environment (one source of truth).
        std::env::set_var("DMP_CONTAINED_PROFILES", cli.profiles.join(","));
    }
    let cmd = cli.cmd.unwrap_or(Cmd::Up(app::up::Options::default()));
    let code = match cmd {
        Cmd::Up(o) => app::up::up(&cli.config, o),
        Cmd::Check { json, expand } => match expand {
            true => app::check_expand(&cli.config),
            false => app::check(&cli.config, json),
        },
        Cmd::Export { target } => match app::load(&cli.config) {
            Ok(p) => export::run(&p, target, &invocation()),
            Err(c) => c,
        },
        Cmd::Probe(a) => export::probe_cmd::run(a),
        Cmd::Cache { op } => app::cache_cmd::cache(&cli.config, op),
        Cmd::Snapshot {
            op: op @ (SnapshotOp::Ls | SnapshotOp::Rm { .. }),
        } => app::cache_cmd::snapshot(&cli.config, op),
        other => client(other, &cli.config, cli.socket.as_deref()),
    };
    std::process::exit(code);
}

/// Is this invocation `up` (explicit, or no subcommand at all)?
fn wants_up() -> bool {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "up" => return true,
            "-h" | "--help" | "-V" | "--version" => return false,
            "-c" | "--config" | "--socket" => {
                args.next();
            }
            s if s.starts_with('-') => {}
            s => return !CLIENT_SUBCOMMANDS.contains(&s),
        }
    }
    true
}

/// Every subcommand but `up` (kept in step with clap by a test).
const CLIENT_SUBCOMMANDS: &[&str] = &[
    "check", "status", "health", "logs", "restart", "stop", "start", "pause", "resume", "run",
    "cache", "snapshot", "shutdown", "reload", "wait", "export", "probe", "help",
];

/// This command line, for the header of generated files.
fn invocation() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("dmp-contained {}", args.join(" "))
}

fn client(cmd: Cmd, config: &std::path::Path, socket: Option<&std::path::Path>) -> i32 {
    let c = cli::Client {
        socket: cli::socket_path(socket, config),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        match cmd {
            Cmd::Status { json, all } => cli::status(&c, json, all).await,
            Cmd::Health => cli::health(&c).await,
            Cmd::Logs {
                follow,
                tail,
                since,
                timestamps,
                grep,
                names,
            } => {
                let f = logview::Filter::new(since, grep, timestamps);
                logview::logs(&c, &names, follow, tail, f).await
            }
            Cmd::Restart { names } => cli::act(&c, "restart", &names).await,
            Cmd::Stop { names } => cli::act(&c, "stop", &names).await,
            Cmd::Start { names } => cli::act(&c, "start", &names).await,
            Cmd::Pause { names } => cli::act(&c, "pause", &names).await,
            Cmd::Resume { names } => cli::act(&c, "resume", &names).await,
            Cmd::Run { step } => cli::act(&c, "run", &[step]).await,
            Cmd::Snapshot { op } => match op {
                SnapshotOp::Save { name } => cli::snapshot(&c, "save", &name).await,
                SnapshotOp::Restore { name } => cli::snapshot(&c, "restore", &name).await,
                _ => unreachable!(),
            },
            Cmd::Shutdown => cli::shutdown(&c).await,
            Cmd::Reload => cli::reload(&c, EXIT_CONFIG).await,
            Cmd::Wait { names, timeout } => wait::wait(&c, &names, timeout).await,
            Cmd::Up(_)
            | Cmd::Check { .. }
            | Cmd::Cache { .. }
            | Cmd::Export { .. }
            | Cmd::Probe(_) => unreachable!(),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_subcommands_match_clap() {
        use clap::CommandFactory;
        let mut names: Vec<String> = super::Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .filter(|n| n != "up")
            .collect();
        names.push("help".into());
        names.sort();
        let mut ours: Vec<String> = super::CLIENT_SUBCOMMANDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        ours.sort();
        assert_eq!(names, ours);
    }
}
