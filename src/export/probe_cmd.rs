//! `dmp-contained probe tcp|http|postgres|redis|exec … [--wait]`: one of the supervisor's probes
//! from the command line. Exported manifests use it for the probes Kubernetes has no native form
//! for, and to wait for a dependency before a pod starts.

use crate::plan::{Probe, ProbeKind};
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub kind: ProbeArg,
    /// Retry every --interval until the probe passes (no limit: the caller's timeout rules).
    #[arg(long, global = true)]
    pub wait: bool,
    /// Time allowed for one check.
    #[arg(long, global = true, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Pause between checks with --wait.
    #[arg(long, global = true, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProbeArg {
    /// Connect to HOST:PORT.
    Tcp { addr: String },
    /// GET the URL; passes on 2xx/3xx (or exactly --status), with --body in the body.
    Http {
        url: String,
        #[arg(long)]
        status: Option<u16>,
        #[arg(long)]
        body: Option<String>,
    },
    /// `SELECT 1` over a libpq connection string.
    Postgres { conn: String },
    /// `PING` a redis:// URL.
    Redis { url: String },
    /// Run a command; passes when it exits 0.
    Exec {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

/// Exit code: 0 passed, 1 failed (the reason on stderr).
pub fn run(a: ProbeArgs) -> i32 {
    let kind = match a.kind {
        ProbeArg::Tcp { addr } => ProbeKind::Tcp(addr),
        ProbeArg::Http { url, status, body } => ProbeKind::Http { url, status, body },
        ProbeArg::Postgres { conn } => ProbeKind::Postgres(conn),
        ProbeArg::Redis { url } => ProbeKind::Redis(url),
        ProbeArg::Exec { argv } => ProbeKind::Exec(argv),
    };
    let p = Probe {
        kind,
        interval: a.interval,
        timeout: a.timeout,
        retries: if a.wait { u32::MAX } else { 0 },
        start_period: Duration::ZERO,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async {
        if a.wait {
            crate::probe::wait_ready(&p, None, |r| {
                if let Err(e) = r {
                    // A closed stderr (the caller stopped reading) must not end the wait.
                    let _ = writeln!(std::io::stderr(), "waiting: {e}");
                }
            })
            .await
        } else {
            crate::probe::check(&p, None).await
        }
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("probe failed: {e}");
            1
        }
    }
}
