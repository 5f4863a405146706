//! The real binary on temp tables: ordering, readiness gating, restarts, exit codes,
//! selection, shutdown.
mod common;
use common::*;
use std::time::Duration;

#[test]
fn starts_in_dependency_order_after_readiness() {
    let s = Sup::start(
        r#"
[process.db]
command = "sleep 0.3; exec python3 -m http.server --bind 127.0.0.1 ${DB_PORT}"
ready = { tcp = "127.0.0.1:${DB_PORT}", interval = "50ms" }
[step.seed]
command = "echo seeded"
after = ["db"]
[process.app]
command = "echo app-started; exec sleep 60"
after = ["seed"]
"#
        .replace("${DB_PORT}", &free_port().to_string())
        .as_str(),
    );
    let app = s.wait_state("app", "ready", Duration::from_secs(10));
    let db = s.entry("db");
    let seed = s.entry("seed");
    assert_eq!(seed["state"], "done");
    assert!(db["ready_at"].as_u64().unwrap() <= seed["started_at"].as_u64().unwrap());
    assert!(seed["started_at"].as_u64().unwrap() <= app["started_at"].as_u64().unwrap());
    assert!(db["time_to_ready_s"].as_f64().unwrap() >= 0.25);
}
