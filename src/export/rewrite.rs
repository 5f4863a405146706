//! The address rule: inside its own container an entry reaches a dependency by the dependency's
//! service name, not by `127.0.0.1`.
//!
//! For entry E, every loopback address (`127.0.0.1` or `localhost`) whose port is a `ports` entry
//! of one of E's dependencies (direct or transitive) becomes that dependency's name. Recognised
//! forms, in environment values, command arguments and rendered templates:
//!
//! - `127.0.0.1:PORT` / `localhost:PORT` (URLs, `host:port`);
//! - URLs without a port, at their scheme's default port: `postgres(ql)://` 5432, `redis://`
//!   6379, `http://` 80, `https://` 443;
//! - libpq keyword strings: `host=127.0.0.1 port=PORT`;
//! - command lines: `-h 127.0.0.1` / `--host 127.0.0.1` with `-p PORT` / `--port PORT` on the
//!   same line (psql, redis-cli, pg_isready).
//!
//! Everything else stays as written: E's own ports (it listens in its own container), the
//! supervisor's control API, and any loopback address it cannot attribute — those are reported by
//! [`Rewriter::unresolved`] so `export` can warn about them.

use crate::plan::Plan;
use regex::{Captures, Regex};
use std::collections::BTreeMap;
use std::sync::LazyLock;

const LOOPBACK: &str = r"(?:127\.0\.0\.1|localhost)";

static HOST_PORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"\b{LOOPBACK}:(\d+)\b")).unwrap());
static SCHEME_DEFAULT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\b(postgres|postgresql|redis|http|https)://([^@/\s]*@)?{LOOPBACK}(/|\s|$)"
    ))
    .unwrap()
});
static KEYWORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"\bhost={LOOPBACK}(\s+port=(\d+))")).unwrap());
static FLAG_HOST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"(?:^|\s)(?:-h|--host)[\s=]({LOOPBACK})\b")).unwrap());
static FLAG_PORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|\s)(?:-p|--port)[\s=](\d+)\b").unwrap());
static ANY_LOOPBACK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\b{LOOPBACK}(?::(\d+))?\b|\bhost={LOOPBACK}(?:\s+port=(\d+))?"
    ))
    .unwrap()
});

/// Port → service name for one entry's dependencies, plus the ports it may leave alone.
#[derive(Debug, Clone, Default)]
pub struct Rewriter {
    pub map: BTreeMap<u16, String>,
    /// The entry's own ports and the control API's: loopback is right for them.
    pub local: Vec<u16>,
}

impl Rewriter {
    /// The rule for entry `idx` of `plan`.
    pub fn for_entry(plan: &Plan, idx: usize) -> Rewriter {
        let mut map = BTreeMap::new();
        for d in dependencies(plan, idx) {
            for &p in &plan.entries[d].ports {
                map.entry(p).or_insert_with(|| plan.entries[d].name.clone());
            }
        }
        let mut local = plan.entries[idx].ports.clone();
        if let Some(p) = plan
            .settings
            .api_listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
        {
            local.push(p);
        }
        Rewriter { map, local }
    }

    /// `s` with every attributable loopback address replaced by its service name.
    pub fn apply(&self, s: &str) -> String {
        if self.map.is_empty() {
            return s.to_string();
        }
        let s = HOST_PORT.replace_all(s, |c: &Captures| match self.name(&c[1]) {
            Some(n) => format!("{n}:{}", &c[1]),
            None => c[0].to_string(),
        });
        let s = SCHEME_DEFAULT.replace_all(&s, |c: &Captures| {
            match self.name(&default_port(&c[1]).to_string()) {
                Some(n) => format!(
                    "{}://{}{n}{}",
                    &c[1],
                    c.get(2).map_or("", |m| m.as_str()),
                    &c[3]
                ),
                None => c[0].to_string(),
            }
        });
        let s = KEYWORD.replace_all(&s, |c: &Captures| match self.name(&c[2]) {
            Some(n) => format!("host={n}{}", &c[1]),
            None => c[0].to_string(),
        });
        s.lines()
            .map(|line| self.apply_flags(line))
            .collect::<Vec<_>>()
            .join("\n")
            + if s.ends_with('\n') { "\n" } else { "" }
    }

    /// An argv: flags may be separate arguments, so the rule sees the command as one line.
    pub fn apply_argv(&self, argv: &[String]) -> Vec<String> {
        let mut out: Vec<String> = argv.iter().map(|a| self.apply(a)).collect();
        let port = argv.windows(2).find_map(|w| {
            matches!(w[0].as_str(), "-p" | "--port")
                .then(|| self.name(&w[1]))
                .flatten()
        });
        if let Some(name) = port {
            for i in 1..out.len() {
                if matches!(argv[i - 1].as_str(), "-h" | "--host")
                    && matches!(argv[i].as_str(), "127.0.0.1" | "localhost")
                {
                    out[i] = name.to_string();
                }
            }
        }
        out
    }

    fn apply_flags(&self, line: &str) -> String {
        let Some(name) = FLAG_PORT
            .captures(line)
            .and_then(|c| self.name(&c[1]).map(String::from))
        else {
            return line.to_string();
        };
        FLAG_HOST
            .replace_all(line, |c: &Captures| {
                let m = c.get(1).unwrap();
                let start = m.start() - c.get(0).unwrap().start();
                format!("{}{name}", &c[0][..start])
            })
            .into_owned()
    }

    fn name(&self, port: &str) -> Option<&str> {
        port.parse::<u16>()
            .ok()
            .and_then(|p| self.map.get(&p))
            .map(String::as_str)
    }

    /// Loopback addresses left in `s` (after [`apply`](Self::apply)) that point at no port of
    /// the entry itself: inside a container of its own they reach nothing.
    pub fn unresolved(&self, s: &str) -> Vec<String> {
        let flag_port = FLAG_PORT.captures(s).map(|c| c[1].to_string());
        ANY_LOOPBACK
            .captures_iter(s)
            .filter_map(|c| {
                let port = c
                    .get(1)
                    .or(c.get(2))
                    .map(|m| m.as_str().to_string())
                    .or_else(|| flag_port.clone());
                match port.as_deref().and_then(|p| p.parse::<u16>().ok()) {
                    Some(p) if self.local.contains(&p) => None,
                    _ => Some(c[0].to_string()),
                }
            })
            .collect()
    }
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "postgres" | "postgresql" => 5432,
        "redis" => 6379,
        "https" => 443,
        _ => 80,
    }
}

/// Every entry `idx` depends on, directly or through others, in table order.
pub fn dependencies(plan: &Plan, idx: usize) -> Vec<usize> {
    let mut seen = vec![false; plan.entries.len()];
    let mut stack: Vec<usize> = plan.entries[idx].after.iter().map(|d| d.idx).collect();
    while let Some(i) = stack.pop() {
        if !seen[i] {
            seen[i] = true;
            stack.extend(plan.entries[i].after.iter().map(|d| d.idx));
        }
    }
    (0..seen.len()).filter(|&i| seen[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw() -> Rewriter {
        Rewriter {
            map: [(5432, "postgres".to_string()), (6379, "redis".to_string())].into(),
            local: vec![5100, 8089],
        }
    }

    #[test]
    fn host_port_forms() {
        let r = rw();
        assert_eq!(r.apply("redis://127.0.0.1:6379/0"), "redis://redis:6379/0");
        assert_eq!(r.apply("http://localhost:5432"), "http://postgres:5432");
        assert_eq!(
            r.apply("postgresql://u:pw@localhost/db redis://127.0.0.1"),
            "postgresql://u:pw@postgres/db redis://redis"
        );
        // No dependency on the default port: unchanged, and reported.
        assert_eq!(r.apply("http://127.0.0.1/x"), "http://127.0.0.1/x");
        assert_eq!(r.unresolved("http://127.0.0.1/x"), ["127.0.0.1"]);
        assert_eq!(
            r.apply("host=127.0.0.1 port=5432 user=postgres"),
            "host=postgres port=5432 user=postgres"
        );
        // Not a dependency's port: unchanged, and reported.
        assert_eq!(r.apply("http://127.0.0.1:5002/"), "http://127.0.0.1:5002/");
        assert_eq!(r.unresolved("http://127.0.0.1:5002/"), ["127.0.0.1:5002"]);
        // Own ports and the control API are fine on loopback.
        assert!(r.unresolved("--host 127.0.0.1 --port 5100").is_empty());
        assert!(r.unresolved("http://127.0.0.1:8089").is_empty());
        // 127.0.0.10 is another address.
        assert_eq!(r.apply("127.0.0.10:5432"), "127.0.0.10:5432");
    }

    #[test]
    fn command_lines() {
        let r = rw();
        assert_eq!(
            r.apply("psql -X -h 127.0.0.1 -p 5432 -U postgres\nredis-cli -h localhost"),
            "psql -X -h postgres -p 5432 -U postgres\nredis-cli -h localhost"
        );
        let argv: Vec<String> = ["psql", "-h", "127.0.0.1", "-p", "5432"]
            .map(String::from)
            .into();
        assert_eq!(
            r.apply_argv(&argv),
            ["psql", "-h", "postgres", "-p", "5432"]
        );
        // A host without a port cannot be attributed.
        assert_eq!(r.unresolved("psql -h 127.0.0.1 -U x"), ["127.0.0.1"]);
    }
}
