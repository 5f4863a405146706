//! The commands that work without a running supervisor, and the wiring of the one that is
//! the supervisor: `up` (`up`: load, select, render templates, bind, start the loop, the API
//! and the progress thread), its stderr logging (`logging`), `check`, and `cache` /
//! `snapshot ls|rm` on the cache dir (`cache_cmd`).
//!
//! Owns only start-up and these local commands. It may not touch lifecycle state (that is
//! the loop's, src/supervisor.rs) nor talk to a running supervisor (that is src/cli.rs and
//! the other client modules); src/main.rs parses the command line and dispatches here.

pub mod cache_cmd;
mod logging;
pub mod up;

use std::path::Path;

/// Exit code for an invalid process table or bad usage.
pub const EXIT_CONFIG: i32 = 2;

/// The table at `config`, with the process environment; errors printed (exit code 2).
pub fn load(config: &Path) -> Result<crate::plan::Plan, i32> {
    let environ = std::env::vars().collect();
    crate::config::load(config, &environ).map_err(|e| {
        eprintln!("{e}");
        EXIT_CONFIG
    })
}

/// `check --expand`: the table with its presets expanded, after validating it.
pub fn check_expand(config: &Path) -> i32 {
    if let Err(c) = load(config) {
        return c;
    }
    let src = std::fs::read_to_string(config).unwrap_or_default();
    if !crate::config::preset::uses_presets(&src) {
        print!("{src}");
        return 0;
    }
    match crate::config::preset::expand(config, &src) {
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

/// `check`: validate the table and print the start plan by levels (or as JSON).
pub fn check(config: &Path, json: bool) -> i32 {
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
