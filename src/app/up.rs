//! `up`: the supervisor proper, after the init shim re-executed it. Each step is a function:
//! the table loaded and selected (with the loader a reload uses), templates rendered, the
//! control API bound, the loop and its companions (log files, progress thread, idle trim,
//! API servers) started, then the exit flushed.

use super::logging;
pub use super::logging::LogFormat;
use super::EXIT_CONFIG;
use crate::export::rewrite::Rewriter;
use crate::plan::Plan;
use crate::progress::{self, Mode, Terminal};
use crate::supervisor::Supervisor;
use crate::{api, config, export, logfile, logs, redact, reload, trim};
use std::path::Path;
use std::sync::Arc;

/// The `up` command line.
#[derive(clap::Args)]
pub struct Options {
    /// Service output as `name | line` text (colour on a TTY) or JSON lines.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Run only these entries and their dependencies (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Run the table without these entries (repeatable); what depends on them starts anyway.
    #[arg(long)]
    pub without: Vec<String>,
    /// Ignore cached oneshot results.
    #[arg(long)]
    pub fresh: bool,
    /// Run only this entry, its dependencies running elsewhere (an exported container):
    /// their loopback addresses become their service names.
    #[arg(long, conflicts_with_all = ["only", "without"])]
    pub as_service: Option<String>,
    /// Start-up progress on stderr: a block redrawn in place (tty), lines on change
    /// (plain), JSON lines (json) or nothing (quiet); auto = tty on a terminal.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: Mode,
}

/// `up` with no flags (the command line without a subcommand).
impl Default for Options {
    fn default() -> Options {
        Options {
            log_format: LogFormat::Text,
            only: vec![],
            without: vec![],
            fresh: false,
            as_service: None,
            progress: Mode::Auto,
        }
    }
}

/// Named timer: how long the exit waits for queued service output to reach stdout.
const OUTPUT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

fn tty(fd: i32) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// Runs the table until shutdown; returns the exit code.
pub fn up(config: &Path, o: Options) -> i32 {
    trim::tune_malloc();
    let progress = match o.progress {
        Mode::Auto if tty(1) && tty(2) => Mode::Tty,
        Mode::Auto => Mode::Plain,
        m => m,
    };
    let term = (progress == Mode::Tty).then(|| Terminal::new(Box::new(std::io::stdout())));
    // Dropped when `up` returns: flushes what is queued (bounded wait) before the exit.
    let _stderr = match &term {
        Some(t) => logging::init_tty(t.clone()),
        None => logging::init(o.log_format),
    };
    let (plan, loader) = match load_selected(config, &o) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let out_format = match o.log_format {
        LogFormat::Json => logs::Format::Json,
        LogFormat::Text => logs::Format::Text { color: tty(1) },
    };
    let nofile = api::raise_nofile();
    tracing::debug!("open-file limit {nofile}");
    // One thread: the work is I/O-bound, and log capture is faster without cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let start = Start {
        plan,
        loader,
        fresh: o.fresh,
        out_format,
        progress,
        term,
    };
    rt.block_on(start.run())
}

/// The table loaded and selected (`--only`, `--without`, `--as-service`), its templates
/// rendered, and the loader a reload uses to load it exactly the same way (same environment,
/// profiles, selection).
fn load_selected(config: &Path, o: &Options) -> Result<(Plan, reload::Loader), i32> {
    let plan = super::load(config)?;
    let select = {
        let (only, without) = (o.only.clone(), o.without.clone());
        let as_service = o.as_service.clone();
        move |plan: Plan| match &as_service {
            Some(name) => export::as_service(plan, name),
            None => plan
                .select(&only, &without)
                .map(|p| (p, Rewriter::default())),
        }
    };
    let selected = select(plan);
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
    let (plan, rewriter) = selected.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_CONFIG
    })?;
    render_templates(&plan, &rewriter)?;
    Ok((plan, loader))
}

/// Every `[[template]]` rendered (as a reload renders them) and written atomically to its
/// `dest`; the first failure is printed and ends `up` (exit code 2).
fn render_templates(plan: &Plan, rewriter: &Rewriter) -> Result<(), i32> {
    for t in &plan.templates {
        let written = reload::render_template(t, &plan.vars, rewriter).and_then(|text| {
            // Atomic: a service re-reading its config never sees half a file.
            crate::cache::write_atomic(&t.dest, text.as_bytes())
                .map_err(|e| format!("{}: {}: {e}", t.src.display(), t.dest.display()))
        });
        if let Err(e) = written {
            eprintln!("error: template {e}");
            return Err(EXIT_CONFIG);
        }
    }
    Ok(())
}

/// What the runtime part of `up` starts from.
struct Start {
    plan: Plan,
    loader: reload::Loader,
    fresh: bool,
    out_format: logs::Format,
    progress: Mode,
    term: Option<Arc<Terminal>>,
}

impl Start {
    async fn run(self) -> i32 {
        let Start {
            plan,
            loader,
            fresh,
            out_format,
            progress,
            term,
        } = self;
        let token = api::load_token(&plan.settings.token_env);
        redact::install(&plan, token.as_deref());
        let socket = plan.settings.socket.clone();
        let (tcp, unix) = match bind_api(&plan, token.is_some()).await {
            Ok(l) => l,
            Err(c) => return c,
        };
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
        let (mut sup, shared) = Supervisor::new(plan, out.clone());
        if let Some(dir) = log_files {
            if let Err(c) = open_log_files(&shared, &dir) {
                return c;
            }
        }
        sup.set_fresh(fresh);
        sup.set_loader(loader);
        sup.set_ready_url(url);
        spawn_progress(&shared, progress, term);
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
    }
}

/// The control API's TCP listener and Unix socket; a failure is printed (exit code 1).
async fn bind_api(
    plan: &Plan,
    with_token: bool,
) -> Result<(tokio::net::TcpListener, tokio::net::UnixListener), i32> {
    let listen = plan.settings.api_listen.clone();
    let socket = &plan.settings.socket;
    let tcp = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen} for the control API: {e}");
            return Err(1);
        }
    };
    let unix = match api::bind_socket(socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot bind control socket {}: {e}",
                socket.display()
            );
            return Err(1);
        }
    };
    tracing::info!(
        "control API on http://{} ({}), socket {}",
        tcp.local_addr().map(|a| a.to_string()).unwrap_or(listen),
        if with_token {
            "mutations with bearer token"
        } else {
            "read-only"
        },
        socket.display()
    );
    Ok((tcp, unix))
}

/// `log_dir`: one rotated file per entry, beside the in-memory ring.
fn open_log_files(shared: &crate::control::Shared, dir: &Path) -> Result<(), i32> {
    let view = shared.view();
    let s = &view.plan.settings;
    for log in &view.logs {
        match logfile::LogFile::open(dir, &log.name, s.log_max_size, s.log_max_files) {
            Ok(f) => {
                let _ = log.file.set(f);
            }
            Err(e) => {
                eprintln!("error: log_dir {}: {e}", dir.display());
                return Err(EXIT_CONFIG);
            }
        }
    }
    Ok(())
}

/// The progress view, on a thread of its own: its writes to stderr / the terminal block when
/// nobody reads them, and must never stall the control loop (it lags and catches up instead).
fn spawn_progress(shared: &crate::control::Shared, mode: Mode, term: Option<Arc<Terminal>>) {
    let renderer = progress::Renderer::new(
        mode,
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
}
