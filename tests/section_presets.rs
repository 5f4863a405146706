//! Presets and `[vars]` on the real binary: `check --expand` of a preset chain with overrides
//! equals its golden file, bad presets are located errors (at the preset and the entry), the
//! shipped table expands to the same entries as before presets.
mod common;
use common::BIN;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("PRESET_TEST_ROOT")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` on a table written to a temp dir as `t.toml`: (exit code, stderr).
fn check(body: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.toml"), body).unwrap();
    let (code, _, err) = run(dir.path(), &["-c", "t.toml", "check"], &[]);
    (code, err)
}

#[test]
fn chain_with_overrides_expands_to_golden() {
    let (code, out, err) = run(
        Path::new(ROOT),
        &[
            "-c",
            "tests/fixtures/presets/chain.toml",
            "check",
            "--expand",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let golden =
        std::fs::read_to_string(Path::new(ROOT).join("tests/golden/presets/chain.expanded.toml"))
            .unwrap();
    assert_eq!(out, golden);
    // The expansion is itself a valid table that plans the same way.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.toml"), &out).unwrap();
    let a = run(
        Path::new(ROOT),
        &["-c", "tests/fixtures/presets/chain.toml", "check", "--json"],
        &[],
    );
    let b = run(dir.path(), &["-c", "x.toml", "check", "--json"], &[]);
    assert_eq!((a.0, b.0), (0, 0), "{} {}", a.2, b.2);
    let entries =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["entries"].clone();
    assert_eq!(entries(&a.1), entries(&b.1));
}

const PRESET: &str =
    "[preset.app]\ncommand = [\"sleep\", \"{{port}}\"]\nstop_timeout = \"{{stop}}\"\n";

#[test]
fn bad_presets_are_located_errors() {
    // (table, every expected "line:col: fragment")
    let cases: &[(String, &[&str])] = &[
        (
            "[process.a]\npreset = \"nope\"\ncommand = [\"sleep\"]\n".into(),
            &["t.toml:2:1: [process.a]: unknown preset `nope`"],
        ),
        (
            "[preset.x]\npreset = \"y\"\n[preset.y]\npreset = \"x\"\n[process.a]\npreset = \"x\"\ncommand = [\"sleep\"]\n".into(),
            &["t.toml:4:1: preset cycle: x -> y -> x (used by [process.a] at t.toml:6:1)"],
        ),
        (
            format!("{PRESET}[process.a]\npreset = \"app\"\nwith = {{ port = 1, stop = \"1s\", colour = \"red\" }}\n"),
            &["t.toml:6:1: [process.a]: parameter `colour` is not used by preset `app`"],
        ),
        (
            format!("{PRESET}[process.a]\npreset = \"app\"\nwith = {{ port = 1 }}\n"),
            &["t.toml:3:1: [process.a]: parameter `stop` is not given (add it to `with`) (in preset `app`, used by [process.a] at t.toml:5:1)"],
        ),
        // A bad value that came from the preset: the preset's line, naming the entry's.
        (
            format!("{PRESET}[process.a]\npreset = \"app\"\nwith = {{ port = 1, stop = \"ten\" }}\n[process.b]\npreset = \"app\"\nwith = {{ port = 2, stop = \"2s\" }}\nstop_signal = \"SIGNOPE\"\n"),
            &[
                "t.toml:3:1: bad duration \"ten\" for `stop_timeout`",
                "(in preset `app`, used by [process.a] at t.toml:5:1)",
                "t.toml:10:1: `b`: unknown signal `SIGNOPE`",
            ],
        ),
        // Preset errors and value errors together.
        (
            format!("{PRESET}[process.a]\npreset = \"app\"\nwith = {{ port = 1 }}\nafter = [\"zz\"]\n[process.b]\npreset = \"app\"\nwith = {{ port = 2, stop = \"ten\" }}\n"),
            &[
                "t.toml:3:1: [process.a]: parameter `stop` is not given",
                "t.toml:3:1: bad duration \"ten\" for `stop_timeout`",
                "t.toml:7:1: `a`: unknown dependency `zz`",
                "3 error(s)",
            ],
        ),
        (
            "[vars]\nA = \"${B}\"\n[process.a]\ncommand = [\"sleep\", \"${A}\"]\n".into(),
            &["t.toml:2:1: [vars] A: variable `B` is not set"],
        ),
    ];
    for (table, want) in cases {
        let (code, err) = check(table);
        assert_eq!(code, 2, "{table}\n{err}");
        for w in *want {
            assert!(err.contains(w), "{table}\nwant {w:?} in\n{err}");
        }
    }
}

#[test]
fn vars_are_defaults_the_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        "[vars]\nPORT = \"28010\"\nADDR = \"127.0.0.1:${PORT}\"\n[process.a]\ncommand = [\"sleep\", \"${ADDR}\"]\n",
    )
    .unwrap();
    let cmd = |env: &[(&str, &str)]| {
        let (code, out, err) = run(dir.path(), &["-c", "t.toml", "check", "--json"], env);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["entries"][0]["command"][1].as_str().unwrap().to_string()
    };
    assert_eq!(cmd(&[]), "127.0.0.1:28010");
    assert_eq!(cmd(&[("PORT", "28011")]), "127.0.0.1:28011");
    assert_eq!(cmd(&[("ADDR", "elsewhere:1")]), "elsewhere:1");
}

/// Watch ignores the shipped table used to repeat, now among the defaults (src/watch/).
const NOW_DEFAULT_IGNORES: &[&str] = &["venv/**", "*.log", ".pytest_cache/**"];

/// The shipped table, rewritten with presets, plans exactly the entries it planned before
/// (tests/fixtures/supervisor.before-presets.toml): every name, command, cwd, probe, dependency,
/// environment, cache and watch (less the ignores that became defaults).
#[test]
fn shipped_table_expands_to_the_same_entries_as_before_presets() {
    // Both in one directory: an entry without a `cwd` (or a skipped one) runs in the table's.
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        (
            "tests/fixtures/supervisor.before-presets.toml",
            "before.toml",
        ),
        ("supervisor.toml", "now.toml"),
    ] {
        std::fs::copy(Path::new(ROOT).join(from), dir.path().join(to)).unwrap();
    }
    let entries = |table: &str| {
        let (code, out, err) = run(
            dir.path(),
            &["-c", table, "check", "--json"],
            &[("DMP_ROOT", ROOT)],
        );
        assert_eq!(code, 0, "{table}: {err}");
        let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut entries = v["entries"].take();
        for e in entries.as_array_mut().unwrap() {
            if let Some(ig) = e["watch"]["ignore"].as_array_mut() {
                ig.retain(|g| !NOW_DEFAULT_IGNORES.contains(&g.as_str().unwrap()));
            }
        }
        (entries, v["levels"].take())
    };
    let before = entries("before.toml");
    let now = entries("now.toml");
    let names = |e: &serde_json::Value| -> Vec<String> {
        e.as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&now.0), names(&before.0));
    assert_eq!(names(&now.0).len(), 34);
    for (a, b) in now
        .0
        .as_array()
        .unwrap()
        .iter()
        .zip(before.0.as_array().unwrap())
    {
        assert_eq!(a, b, "entry `{}` differs", b["name"]);
    }
    assert_eq!(now.1, before.1, "start levels differ");
    let lines = std::fs::read_to_string(Path::new(ROOT).join("supervisor.toml")).unwrap();
    assert!(lines.lines().count() <= 220, "{}", lines.lines().count());
}

// --- Profiles: entries off unless their profile is active; `start NAME` turns one on ---------

const PROFILED: &str = r#"
[process.base]
command = ["sleep", "300"]
[process.es]
command = ["sleep", "300"]
profiles = ["search"]
[process.search-app]
command = ["sleep", "300"]
after = ["es"]
[process.opt-app]
command = ["sleep", "300"]
after = ["es:ready?"]
"#;

#[test]
fn profiles_off_by_default_and_started_on_demand() {
    use common::Sup;
    use std::time::Duration;
    let t = Duration::from_secs(10);
    let sup = Sup::start(PROFILED);
    sup.wait_state("base", "ready", t);
    // An optional edge to an off entry is satisfied; a required one turns the dependent off.
    sup.wait_state("opt-app", "ready", t);
    let es = sup.wait_state("es", "off", t);
    assert!(
        es["reason"].as_str().unwrap().contains("in profile search"),
        "{es}"
    );
    let app = sup.wait_state("search-app", "off", t);
    assert!(
        app["reason"]
            .as_str()
            .unwrap()
            .contains("dependency `es` is off"),
        "{app}"
    );
    let out = sup.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("es") && l.contains("off")),
        "{text}"
    );
    // `health` counts off entries as fine.
    assert!(sup.cli(&["health"]).status.success());
    let base_pid = sup.entry("base")["pid"].clone();

    // `start search-app` starts it and the off entry it needs.
    let out = sup.cli(&["start", "search-app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sup.wait_state("es", "ready", t);
    sup.wait_state("search-app", "ready", t);
    assert_eq!(sup.entry("base")["pid"], base_pid, "base restarted");
}

#[test]
fn starting_an_off_dependency_brings_back_what_was_off_only_through_it() {
    use common::Sup;
    use std::time::Duration;
    let t = Duration::from_secs(10);
    let sup = Sup::start(PROFILED);
    sup.wait_state("search-app", "off", t);
    let out = sup.cli(&["start", "es"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sup.wait_state("es", "ready", t);
    sup.wait_state("search-app", "ready", t);
}

#[test]
fn profiles_on_by_flag_or_environment() {
    use common::{table, Sup};
    use std::time::Duration;
    let t = Duration::from_secs(10);
    for (args, env) in [
        (&["--profile", "search"][..], &[][..]),
        (&[][..], &[("DMP_CONTAINED_PROFILES", "other,search")][..]),
    ] {
        let (dir, port, cfg) = table(PROFILED);
        let sup = Sup::spawn(dir, port, cfg, args, env);
        sup.wait_state("es", "ready", t);
        sup.wait_state("search-app", "ready", t);
    }
}
