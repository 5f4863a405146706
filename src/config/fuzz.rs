//! Config fuzzer: mutated shipped tables never panic or hang `check`, and every error has a
//! place. Longer runs: `PROPTEST_CASES=20000 cargo test --release config::fuzz`.

use proptest::prelude::*;

const SHIPPED: [&str; 2] = [
    include_str!("../../supervisor.toml"),
    include_str!("../../examples/minimal.toml"),
];

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("1979-05-27".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("07:32:00".to_string()),
        Just("5".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("[]".to_string()),
        Just("[[]]".to_string()),
        Just("{}".to_string()),
        Just("{ exec = [] }".to_string()),
        Just("true".to_string()),
        Just("\"http://\"".to_string()),
        Just("\"localhost\"".to_string()),
        Just("\"${UNSET}\"".to_string()),
        Just(format!("\"{}\"", "x".repeat(200_000))),
        "[ -~]{0,40}".prop_map(|s| s),
        "[a-z0-9:/@.%]{0,30}".prop_map(|s| format!("{s:?}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
    ))]
    #[test]
    fn mutated_tables_never_panic(
        which in 0..SHIPPED.len(),
        muts in proptest::collection::vec((any::<prop::sample::Index>(), hostile()), 1..4),
    ) {
        let mut lines: Vec<String> = SHIPPED[which].lines().map(str::to_string).collect();
        let values: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains(" = ")).collect();
        for (idx, v) in muts {
            let i = values[idx.index(values.len())];
            let key = lines[i].split(" = ").next().unwrap().to_string();
            lines[i] = format!("{key} = {v}");
        }
        let src = lines.join("\n");
        let env = std::collections::BTreeMap::new();
        let start = std::time::Instant::now();
        if let Err(e) = super::parse(std::path::Path::new("/tmp/fuzz.toml"), &src, &env) {
            for err in &e.0 {
                prop_assert!(err.line >= 1, "{err}");
                prop_assert!(err.msg.len() < 2_000, "message not truncated: {}", err.msg.len());
            }
        }
        prop_assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}

#[test]
fn bad_values_are_refused_at_their_key() {
    let src = "[supervisor]\napi_listen = \"localhost\"\n\n[process.a]\ncommand = \"true\"\nstop_timeout = 5\n\n[process.b]\ncommand = \"true\"\nready = { tcp = \"x\", interval = \"0s\" }\nwatch = { paths = [\".\"], poll_interval = \"1ms\" }\n[process.c]\ncommand = \"true\"\nready = { redis = \"http://r\" }\nschedule = 1979-05-27\n";
    let env = std::collections::BTreeMap::new();
    let errs = super::parse(std::path::Path::new("/t/s.toml"), src, &env).unwrap_err();
    let got: Vec<String> = errs
        .0
        .iter()
        .map(|e| format!("{}:{} {}", e.line, e.col, e.msg))
        .collect();
    let want = [
        "2:1 `api_listen` must be IP:PORT",
        "6:1 [process.a]: invalid type: integer `5`, expected a string",
        "10:11 `b`: ready.tcp",
        "10:22 `b`: ready.interval must be at least 10ms",
        "11:26 `b`: watch.poll_interval must be at least 10ms",
        "14:11 `c`: ready.redis",
        "15:12 a TOML date/time is not a valid value here",
    ];
    for w in want {
        assert!(got.iter().any(|g| g.starts_with(w)), "{w} not in {got:#?}");
    }
    let empty = super::parse(std::path::Path::new("/t/e.toml"), "# nothing\n", &env).unwrap_err();
    assert!(empty.0[0].msg.contains("nothing to supervise"));
}
