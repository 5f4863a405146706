//! dmp-contained: a PID-1 supervisor for a whole development stack in one container.
//!
//! `up` runs the table: the process first becomes the init shim (`pid1`), which re-executes
//! itself as the supervisor proper. Every other subcommand is a client of a running supervisor
//! (over its Unix socket) or works on the table alone (`check`).

mod api;
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

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

/// Exit code for an invalid process table or bad usage.
const EXIT_CONFIG: i32 = 2;

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

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the process table (the default; as PID 1 it is also the container's init).
    Up {
        /// Service output as `name | line` text (colour on a TTY) or JSON lines.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Run only these entries and their dependencies (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Run the table without these entries (repeatable); what depends on them starts anyway.
        #[arg(long)]
        without: Vec<String>,
        /// Ignore cached oneshot results.
        #[arg(long)]
        fresh: bool,
        /// Run only this entry, its dependencies running elsewhere (an exported container):
        /// their loopback addresses become their service names.
        #[arg(long, conflicts_with_all = ["only", "without"])]
        as_service: Option<String>,
        /// Start-up progress on stderr: a block redrawn in place (tty), lines on change
        /// (plain), JSON lines (json) or nothing (quiet); auto = tty on a terminal.
        #[arg(long, value_enum, default_value = "auto")]
        progress: progress::Mode,
    },
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

#[derive(Subcommand)]
enum CacheOp {
    /// List cache records and chain snapshots.
    Ls,
    /// Remove the records of STEP (or every record and chain snapshot).
    Clear { step: Option<String> },
}

#[derive(Subcommand)]
enum SnapshotOp {
    /// Stop the services with a `data_dir` (and their dependents), copy, start again.
    Save { name: String },
    /// Stop them, replace their data with snapshot NAME, start again.
    Restore { name: String },
    /// List named snapshots (works on `cache_dir` directly).
    Ls,
    /// Remove a named snapshot (works on `cache_dir` directly).
    Rm { name: String },
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
    let cmd = cli.cmd.unwrap_or(Cmd::Up {
        log_format: LogFormat::Text,
        only: vec![],
        without: vec![],
        fresh: false,
        as_service: None,
        progress: progress::Mode::Auto,
    });
    let code = match cmd {
        Cmd::Up {
            log_format,
            only,
            without,
            fresh,
            as_service,
            progress,
        } => up(
            &cli.config,
            log_format,
            &only,
            &without,
            fresh,
            as_service.as_deref(),
            progress,
        ),
        Cmd::Check { json, expand } => match expand {
            true => check_expand(&cli.config),
            false => check(&cli.config, json),
        },
        Cmd::Export { target } => match load(&cli.config) {
            Ok(p) => export::run(&p, target, &invocation()),
            Err(c) => c,
        },
        Cmd::Probe(a) => export::probe_cmd::run(a),
        Cmd::Cache { op } => cache_cmd(&cli.config, op),
        Cmd::Snapshot {
            op: op @ (SnapshotOp::Ls | SnapshotOp::Rm { .. }),
        } => snapshot_local(&cli.config, op),
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

fn load(config: &std::path::Path) -> Result<plan::Plan, i32> {
    let environ = std::env::vars().collect();
    config::load(config, &environ).map_err(|e| {
        eprintln!("{e}");
        EXIT_CONFIG
    })
}

/// This command line, for the header of generated files.
fn invocation() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("dmp-contained {}", args.join(" "))
}

/// `check --expand`: the table with its presets expanded, after validating it.
fn check_expand(config: &std::path::Path) -> i32 {
    if let Err(c) = load(config) {
        return c;
    }
    let src = std::fs::read_to_string(config).unwrap_or_default();
    if !config::preset::uses_presets(&src) {
        print!("{src}");
        return 0;
    }
    match config::preset::expand(config, &src) {
        Ok(x) => {
            println!("# {} with its presets expanded", config.display());
            print!("{}", x.text);
            0
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_CONFIG
        }
    }
}

fn check(config: &std::path::Path, json: bool) -> i32 {
    match load(config) {
        Ok(p) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
            } else {
                print!("{}", p.describe());
                println!("ok");
            }
            0
        }
        Err(c) => c,
    }
}

/// The supervisor's own events on stderr. `DMP_CONTAINED_LOG` = error | warn | info (default) |
/// debug | trace.
/// The supervisor's own messages go to stderr through a thread of their own (lossy when
/// stderr is stuck, like service output), redacted; the guard flushes them at exit.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("DMP_CONTAINED_LOG")
        .ok()
        .and_then(|l| l.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(STDERR_QUEUE)
        .thread_name("stderr")
        .finish(redact::Writer(std::io::stderr()));
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_target(false);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.with_ansi(nix::unistd::isatty(2).unwrap_or(false)).init(),
    }
    guard
}

/// Lines of the supervisor's own messages that may wait for stderr (then they are dropped).
/// Every slot is allocated and touched up front, so the queue is kept small.
const STDERR_QUEUE: usize = 512;

fn tty(fd: i32) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// TTY progress: the supervisor's own lines go above the block; only warnings by default
/// (the block shows what `info` would), unless `DMP_CONTAINED_LOG` asks for more. Redacted and
/// through a thread of their own, like `init_tracing`.
fn init_tracing_tty(term: Arc<progress::Terminal>) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("DMP_CONTAINED_LOG")
        .ok()
        .and_then(|l| l.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(STDERR_QUEUE)
        .thread_name("stderr")
        .finish(redact::Writer(progress::TtySink(term)));
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(true)
        .init();
    guard
}

fn cache_dir(config: &std::path::Path) -> Result<PathBuf, i32> {
    load(config).map(|p| p.settings.cache_dir)
}

fn cache_cmd(config: &std::path::Path, op: CacheOp) -> i32 {
    let dir = match cache_dir(config) {
        Ok(d) => d,
        Err(c) => return c,
    };
    match op {
        CacheOp::Ls => {
            let recs = cache::list_records(&dir);
            println!("cache dir {}", dir.display());
            println!("{:<28} {:<16} {:>9}  recorded", "STEP", "KEY", "TOOK(s)");
            for r in &recs {
                println!(
                    "{:<28} {:<16} {:>9.2}  {}",
                    r.step,
                    &r.key[..r.key.len().min(16)],
                    r.duration_s,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.at_ms)
                    )
                );
            }
            for (path, why) in cache::list_corrupt(&dir) {
                println!(
                    "corrupt {} (a miss: the step runs again): {why}",
                    path.display()
                );
            }
            for (svc, key, bytes) in cache::list_chain_snapshots(&dir) {
                println!(
                    "snapshot {svc:<19} {:<16} {:>9.1} MB",
                    &key[..key.len().min(16)],
                    bytes as f64 / 1e6
                );
            }
            0
        }
        CacheOp::Clear { step } => match cache::clear(&dir, step.as_deref()) {
            Ok(n) => {
                println!(
                    "removed {n} record(s){}",
                    if step.is_none() {
                        " and every chain snapshot"
                    } else {
                        ""
                    }
                );
                0
            }
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                1
            }
        },
    }
}

fn snapshot_local(config: &std::path::Path, op: SnapshotOp) -> i32 {
    let dir = match cache_dir(config) {
        Ok(d) => d,
        Err(c) => return c,
    };
    match op {
        SnapshotOp::Rm { name } => match cache::remove_named(&dir, &name) {
            Ok(true) => {
                println!("removed snapshot `{name}`");
                0
            }
            Ok(false) => {
                eprintln!("error: no snapshot `{name}`");
                cli::EXIT_UNKNOWN
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        _ => {
            println!("{:<24} {:>10}  services", "NAME", "SIZE(MB)");
            for (n, svcs, bytes) in cache::list_named(&dir) {
                println!("{n:<24} {:>10.1}  {}", bytes as f64 / 1e6, svcs.join(", "));
            }
            0
        }
    }
}

fn up(
    config: &std::path::Path,
    format: LogFormat,
    only: &[String],
    without: &[String],
    fresh: bool,
    as_service: Option<&str>,
    progress: progress::Mode,
) -> i32 {
    trim::tune_malloc();
    let progress = match progress {
        progress::Mode::Auto if tty(1) && tty(2) => progress::Mode::Tty,
        progress::Mode::Auto => progress::Mode::Plain,
        m => m,
    };
    let term = (progress == progress::Mode::Tty)
        .then(|| progress::Terminal::new(Box::new(std::io::stdout())));
    // Dropped when `up` returns: flushes what is queued (bounded wait) before the exit.
    let _stderr = match &term {
        Some(t) => init_tracing_tty(t.clone()),
        None => init_tracing(format),
    };
    let plan = match load(config) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let select = {
        let (only, without) = (only.to_vec(), without.to_vec());
        let as_service = as_service.map(String::from);
        move |plan: plan::Plan| match &as_service {
            Some(name) => export::as_service(plan, name),
            None => plan
                .select(&only, &without)
                .map(|p| (p, Default::default())),
        }
    };
    let selected = select(plan);
    // A reload loads the table exactly like this (same environment, profiles, selection).
    let loader: reload::Loader = {
        let config = config.to_path_buf();
        Box::new(move || {
            let environ = std::env::vars().collect();
            let plan = config::load(&config, &environ)
                .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            let (plan, rewriter) = select(plan).map_err(|e| vec![e])?;
            Ok(reload::Loaded { plan, rewriter })
        })
    };
    let (plan, rewriter) = match selected {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    for t in &plan.templates {
        if let Err(e) = render_template(t, &plan.vars, &rewriter) {
            eprintln!("error: template {}: {e}", t.src.display());
            return EXIT_CONFIG;
        }
    }
    let out_format = match format {
        LogFormat::Json => logs::Format::Json,
        LogFormat::Text => logs::Format::Text {
            color: nix::unistd::isatty(1).unwrap_or(false),
        },
    };
    let nofile = api::raise_nofile();
    tracing::debug!("open-file limit {nofile}");
    // One thread: the work is I/O-bound, and log capture is faster without cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let token = api::load_token(&plan.settings.token_env);
        redact::install(&plan, token.as_deref());
        let listen = plan.settings.api_listen.clone();
        let socket = plan.settings.socket.clone();
        let tcp = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen} for the control API: {e}");
                return 1;
            }
        };
        let unix = match api::bind_socket(&socket) {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "error: cannot bind control socket {}: {e}",
                    socket.display()
                );
                return 1;
            }
        };
        tracing::info!(
            "control API on http://{} ({}), socket {}",
            tcp.local_addr().map(|a| a.to_string()).unwrap_or(listen),
            if token.is_some() {
                "mutations with bearer token"
            } else {
                "read-only"
            },
            socket.display()
        );
        let out = match &term {
            Some(t) => logs::Output::spawn(out_format, Box::new(progress::TtySink(t.clone()))),
            None => logs::Output::stdout(out_format),
        };
        let url = format!(
            "http://{}{}/",
            tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            api::PREFIX
        );
        let log_files = plan.settings.log_dir.clone();
        let (mut sup, shared) = supervisor::Supervisor::new(plan, out.clone());
        if let Some(dir) = log_files {
            let view = shared.view();
            let s = &view.plan.settings;
            for log in &view.logs {
                match logfile::LogFile::open(&dir, &log.name, s.log_max_size, s.log_max_files) {
                    Ok(f) => {
                        let _ = log.file.set(f);
                    }
                    Err(e) => {
                        eprintln!("error: log_dir {}: {e}", dir.display());
                        return EXIT_CONFIG;
                    }
                }
            }
        }
        sup.set_fresh(fresh);
        sup.set_loader(loader);
        sup.set_ready_url(url);
        let renderer = progress::Renderer::new(
            progress,
            shared
                .plan()
                .entries
                .iter()
                .map(|e| {
                    (
                        e.name.clone(),
                        !e.optional,
                        e.after.iter().map(|d| d.idx).collect(),
                    )
                })
                .collect(),
        );
        // On a thread of its own: its writes to stderr / the terminal block when nobody reads
        // them, and must never stall the control loop (it lags and catches up instead).
        let events = shared.events.subscribe();
        let started = std::time::Instant::now();
        let progress_rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("progress runtime");
        std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || progress_rt.block_on(progress::run(renderer, events, started, term)))
            .expect("spawn the progress thread");
        tokio::spawn(trim::when_idle(shared.events.subscribe()));
        let api = Arc::new(api::Api::new(shared, token));
        tokio::spawn(api::serve_tcp(api.clone(), tcp));
        tokio::spawn(api::serve_unix(api, unix));
        let code = sup.run().await;
        let _ = std::fs::remove_file(&socket);
        // A stdout nobody reads must not hold up the exit: what is still queued after this
        // is lost (it is counted in status while running).
        if !out.flush(OUTPUT_FLUSH) {
            tracing::warn!("stdout is not being read; exiting with output still queued");
        }
        code
    })
}

/// Named timer: how long the exit waits for queued service output to reach stdout.
const OUTPUT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

fn render_template(
    t: &plan::Template,
    vars: &std::collections::BTreeMap<String, String>,
    rewriter: &export::rewrite::Rewriter,
) -> Result<(), String> {
    let src = std::fs::read_to_string(&t.src).map_err(|e| e.to_string())?;
    let out = rewriter.apply(&interp::expand(&src, &|n| vars.get(n).cloned())?);
    // Atomic: a service re-reading its config never sees half a file.
    cache::write_atomic(&t.dest, out.as_bytes()).map_err(|e| format!("{}: {e}", t.dest.display()))
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
            Cmd::Up { .. }
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
