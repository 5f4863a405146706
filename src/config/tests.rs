use super::*;

fn env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

fn errs(src: &str) -> Vec<String> {
    parse(Path::new("/tmp/t.toml"), src, &env())
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn valid_plan_levels() {
    let p = parse(
        Path::new("/tmp/t.toml"),
        r#"
[process.db]
command = ["sleep", "1"]
ready = { tcp = "127.0.0.1:1" }
[step.seed]
command = "true"
after = ["db"]
[process.app]
command = ["sleep", "1"]
after = ["seed", "db:started"]
"#,
        &env(),
    )
    .unwrap();
    let names: Vec<Vec<&str>> = p
        .levels
        .iter()
        .map(|l| l.iter().map(|&i| p.entries[i].name.as_str()).collect())
        .collect();
    assert_eq!(names, vec![vec!["db"], vec!["seed"], vec!["app"]]);
    let app = &p.entries[p.index("app").unwrap()];
    assert_eq!(app.after[0].cond, Cond::Done);
    assert_eq!(app.after[1].cond, Cond::Started);
    let seed = &p.entries[p.index("seed").unwrap()];
    assert_eq!(seed.command[0], "/bin/sh");
}

#[test]
fn every_error_at_once_with_lines() {
    let e = errs(
            "[process.a]\ncommand = [\"sleep\"]\ncomand = 1\n\n[process.b]\ncommand = [\"sleep\"]\nafter = [\"zz\"]\nstop_signal = \"SIGNOPE\"\nstop_timeout = \"ten\"\n",
        );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with("/tmp/t.toml:3:1:") && e[0].contains("unknown field `comand`"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("/tmp/t.toml:7:1:") && e[1].contains("unknown dependency `zz`"),
        "{}",
        e[1]
    );
    assert!(e[2].starts_with("/tmp/t.toml:8:1:") && e[2].contains("unknown signal"));
    assert!(e[3].starts_with("/tmp/t.toml:9:1:") && e[3].contains("bad duration"));
}

#[test]
fn cycle_is_printed() {
    let e = errs("[process.a]\ncommand=[\"sleep\"]\nafter=[\"b\"]\n[process.b]\ncommand=[\"sleep\"]\nafter=[\"c\"]\n[process.c]\ncommand=[\"sleep\"]\nafter=[\"a\"]\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("dependency cycle: a -> b -> c -> a"),
        "{}",
        e[0]
    );
}

#[test]
fn syntax_error_has_line() {
    let e = errs("[process.a]\ncommand = [\"x\"\nfoo = 1\n");
    assert!(
        e[0].starts_with("/tmp/t.toml:3:") && e[0].contains("invalid array"),
        "{}",
        e[0]
    );
}

#[test]
fn select_only_and_without() {
    let p = parse(
            Path::new("/tmp/t.toml"),
            "[process.db]\ncommand=[\"sleep\"]\n[process.api]\ncommand=[\"sleep\"]\nafter=[\"db\"]\n[process.web]\ncommand=[\"sleep\"]\nafter=[\"api\"]\n[process.other]\ncommand=[\"sleep\"]\n",
            &env(),
        )
        .unwrap();
    let only = p.clone().select(&["api".into()], &[]).unwrap();
    assert_eq!(only.names(), "api, db");
    let without = p.clone().select(&[], &["api".into()]).unwrap();
    assert_eq!(without.names(), "db, other, web");
    assert!(without.entries[without.index("web").unwrap()]
        .after
        .is_empty());
    assert!(p.select(&["nope".into()], &[]).is_err());
}

#[test]
fn signals_parse() {
    assert_eq!(
        parse_signal("quit"),
        Some(nix::sys::signal::Signal::SIGQUIT)
    );
    assert_eq!(
        parse_signal("SIGINT"),
        Some(nix::sys::signal::Signal::SIGINT)
    );
    assert_eq!(parse_signal("SIGFOO"), None);
}

/// `docs/CONFIG.md` states every default as the code has it (the constants on the `raw` types
/// and `plan::Restart::default`): in a table row `| `key` | `value` |`, or in prose as
/// `key` (`value` … or `key` = `value` (default).
#[test]
fn config_md_states_the_defaults() {
    use super::raw::{RawEntry, RawProbe, RawSettings, RawWatch};
    use std::time::Duration;
    let doc = include_str!("../../docs/CONFIG.md");
    let d = |d: Duration| match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{}ms", d.as_millis()),
    };
    let r = Restart::default();
    let policy = serde_json::to_value(r.policy).unwrap();
    let signal = RawEntry::STOP_SIGNAL.as_str().to_string();
    let defaults: Vec<(&str, String)> = vec![
        ("api_listen", RawSettings::API_LISTEN.into()),
        ("socket", RawSettings::SOCKET.into()),
        ("token_env", RawSettings::TOKEN_ENV.into()),
        ("cache_dir", RawSettings::CACHE_DIR.into()),
        ("shutdown_timeout", d(RawSettings::SHUTDOWN_TIMEOUT)),
        ("log_lines", RawSettings::LOG_LINES.to_string()),
        (
            "log_max_size",
            format!("{}M", RawSettings::LOG_MAX_SIZE >> 20),
        ),
        ("log_max_files", RawSettings::LOG_MAX_FILES.to_string()),
        ("watch_config", RawSettings::WATCH_CONFIG.to_string()),
        ("stop_signal", signal),
        ("stop_timeout", d(RawEntry::STOP_TIMEOUT)),
        ("progress", d(RawEntry::PROGRESS)),
        ("interval", d(RawProbe::INTERVAL)),
        ("timeout", d(RawProbe::TIMEOUT)),
        ("retries", RawProbe::RETRIES.to_string()),
        ("start_period", d(RawProbe::START_PERIOD)),
        ("policy", policy.as_str().unwrap().into()),
        ("backoff", d(r.backoff)),
        ("backoff_max", d(r.backoff_max)),
        ("max_restarts", r.max_restarts.to_string()),
        ("window", d(r.window)),
        ("stable_after", d(r.stable_after)),
        ("debounce", d(RawWatch::DEBOUNCE)),
        ("poll_interval", d(RawWatch::POLL_INTERVAL)),
        ("mode", RawWatch::MODE.into()),
        ("action", RawWatch::ACTION.into()),
    ];
    let mut wrong = Vec::new();
    for (key, value) in &defaults {
        let forms = [
            format!("| `{key}` | `{value}` |"),
            format!("`{key}` (`{value}`"),
            format!("`{key}` = `{value}` (default"),
        ];
        if !forms.iter().any(|f| doc.contains(f.as_str())) {
            wrong.push(format!("`{key}` = `{value}`"));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/CONFIG.md does not state these defaults: {wrong:?}"
    );
}
