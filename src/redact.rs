//! Redaction by value: every secret the supervisor knows (secret-named variables, passwords
//! inside URLs and DSNs anywhere in the plan, the API token) is replaced by `<redacted>` in
//! every output — service logs (stdout, ring, `/logs`, followers, dashboard), status and the
//! supervisor's own stderr. One Aho-Corasick automaton, built at start and again when a config
//! reload swaps the plan.

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock, RwLock};

pub const REDACTED: &str = "<redacted>";

/// Values shorter than this are not treated as secrets (they would redact common words).
const MIN_SECRET: usize = 4;

static GLOBAL: RwLock<Option<Arc<Redactor>>> = RwLock::new(None);
/// The API token, kept for the redactor of a reloaded plan.
static EXTRA: OnceLock<Option<String>> = OnceLock::new();

pub struct Redactor {
    ac: Option<AhoCorasick>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut v: Vec<String> = values.into_iter().filter(|s| plausible(s)).collect();
        v.sort();
        v.dedup();
        let ac = (!v.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&v)
                .expect("secret automaton")
        });
        Redactor { ac }
    }

    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// Does `s` contain a known secret?
    pub fn found(&self, s: &str) -> bool {
        self.ac.as_ref().is_some_and(|ac| ac.is_match(s))
    }

    pub fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        match &self.ac {
            Some(ac) if ac.is_match(s) => {
                let mut out = String::with_capacity(s.len());
                ac.replace_all_with(s, &mut out, |_, _, dst| {
                    dst.push_str(REDACTED);
                    true
                });
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(s),
        }
    }

    /// Redacts every string inside a JSON value, in place.
    pub fn apply_json(&self, v: &mut Value) {
        if self.is_empty() {
            return;
        }
        match v {
            Value::String(s) => {
                if let Cow::Owned(r) = self.apply(s) {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.apply_json(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.apply_json(x)),
            _ => {}
        }
    }
}

/// Could this value be a secret? Short values, booleans and plain numbers (`AUTH_ENABLED =
/// "true"`, a port) are not redacted: they would blank out ordinary words in every log line.
fn plausible(s: &str) -> bool {
    s.len() >= MIN_SECRET
        && !s.bytes().all(|b| b.is_ascii_digit())
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "none" | "null" | "enabled" | "disabled"
        )
}

/// Installs the process-wide redactor for `plan` plus `extra` (the API token), at start.
pub fn install(plan: &crate::plan::Plan, extra: Option<&str>) {
    let _ = EXTRA.set(extra.map(str::to_string));
    replace(for_plan(plan, extra));
}

/// A config reload swapped the plan: its secrets (an added entry's too) are redacted from now on.
pub fn reinstall(plan: &crate::plan::Plan) {
    let extra = EXTRA.get().cloned().flatten();
    replace(for_plan(plan, extra.as_deref()));
}

fn replace(r: Redactor) {
    *GLOBAL.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(r));
}

/// The process-wide redactor (empty until `install`).
pub fn global() -> Arc<Redactor> {
    static EMPTY: OnceLock<Arc<Redactor>> = OnceLock::new();
    GLOBAL
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| {
            EMPTY
                .get_or_init(|| Arc::new(Redactor { ac: None }))
                .clone()
        })
}

/// Does a variable name look like it holds a secret? (`KEY_FILE`, `TOKEN_PATH`, … name where a
/// secret is, not the secret.)
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    if ["_FILE", "_PATH", "_DIR", "_ENV"]
        .iter()
        .any(|s| n.ends_with(s))
    {
        return false;
    }
    [
        "PASS",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "PRIVATE",
        "AUTH",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Every secret value found in `v` (a serialised plan or entry): values of secret-named keys
/// (objects and `[name, value]` pairs), and passwords inside URLs and `password=` pairs in any
/// string.
pub fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => from_text(s, out),
        Value::Array(a) => {
            if let [Value::String(k), Value::String(val)] = a.as_slice() {
                if is_secret_name(k) {
                    out.push(val.clone());
                }
            }
            a.iter().for_each(|x| collect(x, out));
        }
        Value::Object(o) => {
            for (k, x) in o {
                if let Value::String(val) = x {
                    // `token_env = "NAME"` names a secret, it is not one.
                    if is_secret_name(k) && !k.ends_with("_env") && !k.ends_with("_file") {
                        out.push(val.clone());
                    }
                }
                collect(x, out);
            }
        }
        _ => {}
    }
}

/// Passwords written inside a string: `scheme://user:PASS@host` (the password may contain
/// `/`, `:` or `@`: it runs to the last `@` of the token) and `password=PASS` pairs.
pub fn from_text(s: &str, out: &mut Vec<String>) {
    for token in s.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>')) {
        if let Some(p) = token.find("://") {
            let rest = &token[p + 3..];
            if let Some(at) = rest.rfind('@') {
                if let Some((_, pw)) = rest[..at].split_once(':') {
                    if !pw.is_empty() {
                        out.push(pw.to_string());
                        out.push(percent_decoded(pw));
                    }
                }
            }
        }
        if let Some((k, v)) = token.split_once('=') {
            let v = v.trim_end_matches([';', ',', '&']);
            if is_secret_name(k.rsplit(['&', '?', ';']).next().unwrap_or(k)) && !v.is_empty() {
                out.push(v.to_string());
            }
        }
    }
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The redactor for a plan: secrets in every entry, the settings and the interpolation
/// variables, plus `extra` (the API token).
pub fn for_plan(plan: &crate::plan::Plan, extra: Option<&str>) -> Redactor {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(plan) {
        collect(&v, &mut out);
    }
    for (k, v) in &plan.vars {
        if is_secret_name(k) {
            out.push(v.clone());
        }
    }
    out.extend(extra.map(str::to_string));
    Redactor::new(out)
}

/// A writer that redacts what passes through it (the supervisor's own stderr). Each tracing
/// event is one `write` of a whole formatted line, so a secret is never split.
pub struct Writer<W>(pub W);

impl<W: std::io::Write> std::io::Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = global();
        match std::str::from_utf8(buf) {
            Ok(s) if r.found(s) => {
                self.0.write_all(r.apply(s).as_bytes())?;
                Ok(buf.len())
            }
            _ => self.0.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Per entry (in plan order), the values of its secret-looking variables: computed once, not
/// on every status request.
pub fn secret_values(plan: &crate::plan::Plan) -> Vec<Vec<String>> {
    plan.entries
        .iter()
        .map(|entry| {
            let mut v: Vec<String> = entry
                .env
                .iter()
                .chain(entry.declared_env.iter())
                .filter(|(k, v)| crate::interp::is_secret(k) && v.len() >= 3)
                .map(|(_, v)| v.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        })
        .collect()
}

/// Replaces known secret values, URL passwords (`scheme://user:PASS@`) and `password=…`-style
/// pairs with `<redacted>`.
pub fn scrub(s: &str, secrets: &[&str]) -> String {
    const R: &str = "<redacted>";
    let mut out = s.to_string();
    for sec in secrets {
        if !sec.is_empty() && out.contains(sec) {
            out = out.replace(sec, R);
        }
    }
    // URL userinfo passwords.
    let mut from = 0;
    while let Some(p) = out[from..].find("://") {
        let auth_start = from + p + 3;
        let auth_end = out[auth_start..]
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                let pw_start = auth_start + colon + 1;
                let pw_end = auth_start + at;
                if &out[pw_start..pw_end] != R {
                    out.replace_range(pw_start..pw_end, R);
                }
            }
        }
        from = auth_start.min(out.len());
    }
    // key=value pairs whose key looks secret (DSNs, flags).
    for word in ["password", "passwd", "secret", "token", "key"] {
        let mut from = 0;
        loop {
            let lower = out.to_ascii_lowercase();
            let Some(p) = lower[from..].find(&format!("{word}=")) else {
                break;
            };
            let v_start = from + p + word.len() + 1;
            let v_end = out[v_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | ',' | '"' | '\''))
                .map_or(out.len(), |i| v_start + i);
            if v_end > v_start && &out[v_start..v_end] != R {
                out.replace_range(v_start..v_end, R);
            }
            from = v_start;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_with_slashes_and_dsn_pairs() {
        let mut v = Vec::new();
        from_text("http://admin:pa/ss:w@rd@db:5432/x?y=1", &mut v);
        assert_eq!(v[0], "pa/ss:w@rd");
        v.clear();
        from_text("host=db password=hunter22 user=x", &mut v);
        assert_eq!(v, vec!["hunter22"]);
        v.clear();
        from_text("redis://:s%2Fcret@r:6379", &mut v);
        assert_eq!(v, vec!["s%2Fcret", "s/cret"]);
    }

    #[test]
    fn redacts_every_known_value_longest_first() {
        let r = Redactor::new(["hunter22".into(), "hunter22x".into(), "ab".into()]);
        assert_eq!(
            r.apply("a hunter22x b hunter22 ab"),
            "a <redacted> b <redacted> ab"
        );
        let mut j = serde_json::json!({"a": ["x hunter22"], "b": {"c": "hunter22"}});
        r.apply_json(&mut j);
        assert_eq!(j["a"][0], "x <redacted>");
        assert_eq!(j["b"]["c"], "<redacted>");
        assert!(matches!(r.apply("clean"), Cow::Borrowed(_)));
        let r = Redactor::new(["true".into(), "8080".into(), "False".into()]);
        assert!(r.is_empty());
        assert!(!is_secret_name("SSH_KEY_FILE"));
        assert!(is_secret_name("DB_PASS"));
    }

    #[test]
    fn collects_secret_names_and_pairs() {
        let v = serde_json::json!({
            "env": [["DB_PASS", "p4ss"], ["HOME", "/root"]],
            "ready": {"url": "http://u:urlpw@h/"},
            "api_key": "k3y-value",
        });
        let mut out = Vec::new();
        collect(&v, &mut out);
        for want in ["p4ss", "urlpw", "k3y-value"] {
            assert!(out.iter().any(|s| s == want), "{want} in {out:?}");
        }
        assert!(!out.iter().any(|s| s == "/root"));
    }
}
