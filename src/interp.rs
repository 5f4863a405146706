//! `${VAR}` / `${VAR:-default}` / `$$` interpolation and `.env` parsing (pure).

use std::collections::BTreeMap;

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in `s` using `lookup`.
/// A lone `$` not followed by `{` or `$` is kept as is (so `$host` passes through).
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = matching_brace(body).ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad variable name `{name}` in {s:?}"));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(&expand(d, lookup)?),
                (None, None) => {
                    return Err(format!(
                        "variable `{name}` is not set (use `${{{name}:-default}}`)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` closing an already opened `{` (nested `${…}` in defaults allowed).
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Parses a `.env` file: `KEY=value`, `export KEY=value`, comments, optional quotes.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=value", n + 1))?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: bad variable name `{k}`", n + 1));
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

/// True for env names whose values must never be shown.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "KEY", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|w| n.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/root".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands() {
        let cases = [
            ("${HOME}/x", "/root/x"),
            ("${NOPE:-5432}", "5432"),
            ("${EMPTY:-d}", "d"),
            ("$$host $host", "$host $host"),
            ("a${NOPE:-${HOME}}b", "a/rootb"),
            ("plain", "plain"),
        ];
        for (i, o) in cases {
            assert_eq!(expand(i, &env).unwrap(), o, "{i}");
        }
    }

    #[test]
    fn errors() {
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("`NOPE` is not set"));
        assert!(expand("${HOME", &env).unwrap_err().contains("unterminated"));
        assert!(expand("${a-b}", &env).unwrap_err().contains("bad variable"));
    }

    #[test]
    fn env_file() {
        let m = parse_env_file("# c\nA=1\nexport B=\"two words\"\n\nC='x'\n").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "x");
        assert!(parse_env_file("oops").unwrap_err().contains("line 1"));
    }

    #[test]
    fn secrets() {
        assert!(is_secret("POSTGRES_PASSWORD"));
        assert!(is_secret("dm_api_auth_token"));
        assert!(!is_secret("PGPORT"));
    }
}
