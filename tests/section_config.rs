//! Bad input to the real binary: every case exits 2 with `file:line:col` and a clear message.
mod common;
use common::BIN;
use std::process::Command;

fn check(body: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("supervisor.toml");
    std::fs::write(&cfg, body).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .env_remove("UNSET_FOR_TEST")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).replace(&cfg.display().to_string(), "T");
    (out.status.code().unwrap_or(-1), text)
}

/// (table, expected line:col prefix, expected message fragment)
const CASES: &[(&str, &str, &str)] = &[
    ("[process.a]\ncommand = [\"sleep\"\n", "T:3:", "invalid array"),
    ("[process.a]\ncommand = [\"sleep\"]\ncomand = 1\n", "T:3:1", "unknown field `comand`"),
    ("[supervisor]\napi_listn = \"x\"\n", "T:2:1", "unknown field `api_listn`"),
    ("[proces.a]\ncommand = [\"sleep\"]\n", "T:1:", "unknown field `proces`"),
    ("[process.a]\ncommand = [\"sleep\"]\nafter = [\"dbb\"]\n[process.db]\ncommand = [\"sleep\"]\n", "T:3:1", "unknown dependency `dbb` (did you mean `db`?)"),
    ("[process.a]\ncommand = [\"sleep\"]\nafter = [\"b\"]\n[process.b]\ncommand = [\"sleep\"]\nafter = [\"a\"]\n", "T:3:1", "dependency cycle: a -> b -> a"),
    ("[process.a]\ncommand = [\"sleep\"]\nstop_timeout = \"5 parsecs\"\n", "T:3:1", "bad duration \"5 parsecs\""),
    ("[process.a]\ncommand = [\"sleep\"]\nstop_signal = \"SIGFOO\"\n", "T:3:1", "unknown signal `SIGFOO`"),
    ("[process.a]\ncommand = [\"sleep\"]\nuser = \"no-such-user-xyz\"\n", "T:3:1", "unknown user `no-such-user-xyz`"),
    ("[process.a]\ncommand = [\"/no/such/binary\"]\n", "T:2:1", "executable `/no/such/binary` not found"),
    ("[process.a]\ncommand = [\"no-such-cmd-xyz\"]\n", "T:2:1", "executable `no-such-cmd-xyz` not found"),
    ("[process.a]\ncommand = [\"sleep\"]\nready = { tcp = \"x:1\", http = \"http://x\" }\n", "T:3:1", "needs exactly one of"),
    ("[process.a]\ncommand = [\"sleep\"]\n[process.a.restart]\npolicy = \"sometimes\"\n", "T:4:1", "unknown restart policy `sometimes`"),
    ("[process.a]\ncommand = [\"sleep\"]\ncwd = \"/no/such/dir\"\n", "T:3:1", "is not a directory"),
    ("[process.a]\ncommand = [\"sleep\", \"${UNSET_FOR_TEST}\"]\n", "T:2:1", "variable `UNSET_FOR_TEST` is not set"),
    ("[process.a]\ncommand = [\"sleep\"]\n[step.b]\ncommand = [\"true\"]\nafter = [\"a:done\"]\n", "T:5:1", "bad condition `a:done`"),
    ("[step.a]\ncommand = [\"true\"]\nschedule = \"every tuesday\"\n", "T:3:1", "bad cron expression"),
    ("[step.a]\ncommand = [\"true\"]\nready = { tcp = \"127.0.0.1:1\" }\n", "T:3:1", "probes apply to [process] entries only"),
    ("[process.a]\ncommand = []\n", "T:2:1", "`command` is empty"),
    ("[process.\"a b\"]\ncommand = [\"sleep\"]\n", "T:1:1", "names may use only"),
    ("[process.a]\ncommand = [\"sleep\"]\n[step.a]\ncommand = [\"true\"]\n", "T:3:1", "defined both as"),
    ("[process.a]\ncommand = [\"sleep\"]\nports = [70000]\n", "T:", "invalid value"),
];

#[test]
fn every_bad_input_case_is_reported_with_location_and_exit_2() {
    let mut failures = Vec::new();
    for (body, at, msg) in CASES {
        let (code, err) = check(body);
        if code != 2 || !err.contains(&format!("error: {at}")) || !err.contains(msg) {
            failures.push(format!(
                "case {body:?}: exit {code}, wanted `{at}` + `{msg}`, got:\n{err}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let (code, err) = check(
        "[process.a]\ncommand = [\"sleep\"]\nstop_signal = \"NOPE\"\nafter = [\"zz\"]\n\n[process.b]\ncommand = [\"/no/such\"]\nstop_timeout = \"x\"\nuser = \"no-such-user-xyz\"\n",
    );
    assert_eq!(code, 2);
    for m in [
        "unknown signal",
        "unknown dependency `zz`",
        "bad duration",
        "unknown user",
        "5 error(s)",
    ] {
        assert!(err.contains(m), "missing {m:?} in:\n{err}");
    }
}

#[test]
fn up_with_a_bad_table_exits_2_through_the_init_shim() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        "[process.a]\ncommand = [\"sleep\"]\nafter = [\"nope\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dependency `nope`"));
}

#[test]
fn check_prints_levels() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        "[process.db]\ncommand = [\"sleep\"]\n[step.seed]\ncommand = \"true\"\nafter = [\"db\"]\n[process.app]\ncommand = [\"sleep\"]\nafter = [\"seed\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("level 0:\n  db"), "{text}");
    assert!(
        text.contains("level 1:\n  seed") && text.contains("after db:ready"),
        "{text}"
    );
    assert!(
        text.contains("level 2:\n  app") && text.contains("after seed:done"),
        "{text}"
    );
}

#[test]
fn unknown_only_or_without_name_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!("[supervisor]\nsocket = \"{}/s.sock\"\napi_listen = \"127.0.0.1:0\"\n[process.db]\ncommand = [\"sleep\", \"5\"]\n", dir.path().display()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["up", "--only", "dbx", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown entry `dbx`"));
}

#[test]
fn shipped_tables_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for table in ["supervisor.toml", "examples/minimal.toml"] {
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(format!("{root}/{table}"))
            .env("DMP_ROOT", root)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{table}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `check`, `check --expand` and `check --json` of the shipped tables equal their goldens
/// (tests/golden/config; UPDATE_GOLDEN=1 rewrites them): the loader's refactors change no plan.
/// The mount points at a path that does not exist, so every app is skipped the same way on
/// every host; the checkout's path is written as `$ROOT`.
#[test]
fn check_of_the_shipped_tables_matches_goldens() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cases: &[(&str, &[&str], &str)] = &[
        ("supervisor.toml", &["check"], "supervisor.check"),
        (
            "supervisor.toml",
            &["check", "--expand"],
            "supervisor.expand.toml",
        ),
        (
            "supervisor.toml",
            &["check", "--json"],
            "supervisor.check.json",
        ),
        ("examples/minimal.toml", &["check"], "minimal.check"),
        (
            "examples/minimal.toml",
            &["check", "--expand"],
            "minimal.expand.toml",
        ),
        (
            "examples/minimal.toml",
            &["check", "--json"],
            "minimal.check.json",
        ),
    ];
    for (table, args, name) in cases {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(root).args(["-c", table]).args(*args);
        for var in [
            "DMP_VENVS",
            "DMP_RESOURCES",
            "DMP_REPOS",
            "DMP_CACHE_DIR",
            "DMP_CONTAINED_SOCKET",
            "DMP_CONTAINED_PROFILES",
            "SUPERVISOR_API_PORT",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd
            .env("DMP_ROOT", root)
            .env("DMP_MOUNT", "/nonexistent-dmp-mount")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).replace(root, "$ROOT");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{table} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = std::path::Path::new(root)
            .join("tests/golden/config")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert!(
            want == text,
            "{} differs from `{table} {args:?}` (UPDATE_GOLDEN=1 rewrites it):\n{text}",
            path.display()
        );
    }
}

/// Errors of `check` on `body`, without the file name: `line:col: message` each.
fn errors_of(body: &str) -> Vec<String> {
    let (code, err) = check(body);
    assert_eq!(code, 2, "{err}");
    err.lines()
        .filter_map(|l| l.strip_prefix("error: T:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_entry_with_three_bad_keys_reports_all_three_at_their_own_line_and_column() {
    let errs = errors_of(
        "[process.a]\ncommand = [\"sleep\"]\n  foo = 1\nstop_timeout = 5\n[process.a.restart]\npolicy = \"always\"\n    bar = 2\n",
    );
    let at = |pos: &str, what: &str| {
        assert!(
            errs.iter().any(|e| e.starts_with(pos) && e.contains(what)),
            "no `{what}` at {pos} in {errs:#?}"
        );
    };
    at("3:3: [process.a]: ", "unknown field `foo`");
    at(
        "4:1: [process.a]: ",
        "invalid type: integer `5`, expected a string",
    );
    at("7:5: [process.a]: ", "unknown field `bar`");
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn a_dependency_on_an_entry_with_a_bad_key_is_not_unknown() {
    let errs = errors_of(
        "[process.a]\ncommand = [\"sleep\"]\ncomand = 1\n[process.b]\ncommand = [\"sleep\"]\nafter = [\"a\"]\n[step.c]\ncommand = \"true\"\nafter = [\"a:started\"]\n",
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("3:1: [process.a]: unknown field `comand`"));
}

#[test]
fn a_cycle_through_an_entry_with_a_bad_key_is_reported() {
    let errs = errors_of(
        "[process.a]\ncommand = [\"sleep\"]\nafter = [\"b\"]\nstop_signal = 15\n[process.b]\ncommand = [\"sleep\"]\nafter = [\"a\"]\n",
    );
    assert!(
        errs.iter()
            .any(|e| e == "3:1: dependency cycle: a -> b -> a"),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("4:1: [process.a]: invalid type: integer `15`")),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn a_type_error_points_at_its_key() {
    // In a sub-table, an inline table, a dotted key and an array of tables: each at the key
    // (or array element) itself, never at the table's header.
    let errs = errors_of(
        "[process.a]\ncommand = [\"sleep\"]\nwatch = { debounce = \"1s\", mode = 1 }\nready.tcp = 5\n[process.a.restart]\n\nbackoff = 3\n[[template]]\ndest = \"/tmp/x\"\n  src = 5\n",
    );
    for (pos, what) in [
        (
            "3:28: [process.a]: ",
            "invalid type: integer `1`, expected a string",
        ),
        (
            "4:7: [process.a]: ",
            "invalid type: integer `5`, expected a string",
        ),
        (
            "7:1: [process.a]: ",
            "invalid type: integer `3`, expected a string",
        ),
        (
            "10:3: [[template]]: ",
            "invalid type: integer `5`, expected a string",
        ),
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(pos) && e.contains(what)),
            "no `{what}` at {pos} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn value_errors_of_nested_keys_point_at_the_key() {
    let errs = errors_of(
        "[process.a]\ncommand = [\"sleep\"]\nready = { interval = \"1s\", http = \"ftp://x\" }\n[process.a.watch]\npaths = [\".\"]\n  mode = \"sometimes\"\n",
    );
    for pos in [
        "3:28: `a`: ready.http must be",
        "6:3: `a`: unknown watch mode",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(pos)),
            "no {pos} in {errs:#?}"
        );
    }
}

#[test]
fn a_bad_value_is_reported_once_without_errors_it_would_cause() {
    // Not a table: one error, not also "missing field `command`".
    let errs = errors_of("[process]\na = 5\n[process.b]\ncommand = [\"sleep\"]\nafter = [\"a\"]\n");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("2:1: [process.a]: invalid type: integer `5`"));
    // A rule whose required `files` is bad: that error and the other rule's, nothing more.
    let errs = errors_of(
        "[process.a]\ncommand = [\"sleep\"]\nwatch = { on = [{ files = [\"*.py\"], action = 5 }, { files = 3 }] }\n",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].starts_with("3:37: [process.a]: invalid type: integer `5`"));
    assert!(errs[1].starts_with("3:53: [process.a]: invalid type: integer `3`"));
    // A probe whose only target is bad is not also "needs exactly one of …".
    let errs = errors_of("[process.a]\ncommand = [\"sleep\"]\nready = { tcp = 5 }\n");
    assert_eq!(
        errs,
        ["3:11: [process.a]: invalid type: integer `5`, expected a string"]
    );
}
