//! The code's layout, checked (issue #11; ARCHITECTURE.md): no source file over 450 lines of
//! non-test code, no function over 80 lines, and no import circle between the top-level
//! modules of `src/` (a folder counts as one module). Pure: it only reads `src/`.

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_CODE_LINES: usize = 450;
const MAX_FN_LINES: usize = 80;

struct Source {
    path: PathBuf,
    /// The top-level module it belongs to (`supervisor` for src/supervisor/cache/mod.rs).
    module: String,
    /// The file without its `#[cfg(test)] mod tests { ... }` part.
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for entry in ignore::WalkBuilder::new(&root).build() {
        let entry = entry.unwrap();
        let path = entry.path().to_path_buf();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(&root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        out.push(Source {
            path: rel.to_path_buf(),
            module,
            code: without_tests(&text),
        });
    }
    assert!(out.len() > 20, "found only {} files under src/", out.len());
    out
}

/// Cuts a trailing `#[cfg(test)]` followed by an inline `mod x {`.
fn without_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let cut = (0..lines.len().saturating_sub(1)).find(|&i| {
        let next = lines[i + 1].trim();
        lines[i].trim() == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{')
    });
    lines[..cut.unwrap_or(lines.len())].join("\n")
}

fn code_lines(code: &str) -> usize {
    code.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

/// Braces outside string and char literals.
fn brace_delta(line: &str) -> i64 {
    let strings = Regex::new(r#""(\\.|[^"\\])*"|'(\\.|[^'\\])'"#).unwrap();
    let line = strings.replace_all(line, "\"\"");
    let line = line.split("//").next().unwrap_or("");
    line.matches('{').count() as i64 - line.matches('}').count() as i64
}

/// (name, first line, length in lines) of every function with a body.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let sig = Regex::new(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
        .unwrap();
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(c) = sig.captures(l) else { continue };
        let (mut depth, mut opened) = (0i64, false);
        for (j, line) in lines.iter().enumerate().skip(i) {
            if !opened && line.trim_end().ends_with(';') && !line.contains('{') {
                break; // a declaration without a body
            }
            depth += brace_delta(line);
            opened |= line.contains('{');
            if opened && depth <= 0 {
                out.push((c[6].to_string(), i + 1, j - i + 1));
                break;
            }
        }
    }
    out
}

#[test]
fn no_file_over_450_lines_of_code() {
    let over: Vec<String> = sources()
        .iter()
        .map(|s| (code_lines(&s.code), &s.path))
        .filter(|(n, _)| *n > MAX_FILE_CODE_LINES)
        .map(|(n, p)| format!("src/{}: {n} lines of code", p.display()))
        .collect();
    assert!(
        over.is_empty(),
        "over {MAX_FILE_CODE_LINES}:\n{}",
        over.join("\n")
    );
}

#[test]
fn no_function_over_80_lines() {
    let over: Vec<String> = sources()
        .iter()
        .flat_map(|s| {
            functions(&s.code)
                .into_iter()
                .filter(|(_, _, n)| *n > MAX_FN_LINES)
                .map(move |(f, at, n)| format!("src/{}:{at} {f}: {n} lines", s.path.display()))
        })
        .collect();
    assert!(over.is_empty(), "over {MAX_FN_LINES}:\n{}", over.join("\n"));
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let uses = Regex::new(r"crate::([a-z_0-9]+)").unwrap();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let srcs = sources();
    let modules: BTreeSet<String> = srcs.iter().map(|s| s.module.clone()).collect();
    for s in &srcs {
        let deps = graph.entry(s.module.clone()).or_default();
        for c in uses.captures_iter(&s.code) {
            if c[1] != s.module && modules.contains(&c[1]) {
                deps.insert(c[1].to_string());
            }
        }
    }
    // A module on a circle reaches itself.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = graph[from].iter().cloned().collect();
        while let Some(m) = stack.pop() {
            if seen.insert(m.clone()) {
                stack.extend(graph.get(&m).into_iter().flatten().cloned());
            }
        }
        seen
    };
    let circles: Vec<String> = graph
        .keys()
        .filter(|m| reach(m).contains(*m))
        .map(|m| {
            let back: Vec<&String> = graph[m].iter().filter(|d| reach(d).contains(m)).collect();
            format!("{m} -> {back:?} -> ... -> {m}")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_count() {
    let code = "fn a() {\n    let s = \"{\";\n    if x { y(); }\n}\nfn b();\n#[cfg(test)]\nmod tests {\nfn t() {}\n}";
    let code = without_tests(code);
    assert_eq!(functions(&code), vec![("a".to_string(), 1, 4)]);
    assert_eq!(code_lines("// c\n\nx\n  y\n"), 2);
}
