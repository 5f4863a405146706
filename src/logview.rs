//! `dmp-contained logs [NAMES...]`: every entry interleaved by time when no name is given,
//! `--since 10m`, `-t/--timestamps`, `--grep REGEX`, `-f`. Reads `/logs/NAME?format=json`.

use crate::cli::{Client, EXIT_NEGATIVE, EXIT_UNKNOWN, EXIT_UNREACHABLE};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::io::Write;
use std::time::Duration;

pub struct Filter {
    /// Unix milliseconds: older lines are left out.
    pub since_ms: Option<u64>,
    pub grep: Option<regex::Regex>,
    pub timestamps: bool,
    /// `name | ` before each line (more than one entry).
    pub prefix: bool,
}

/// One captured line, as `/logs?format=json` sends it.
#[derive(Debug, serde::Deserialize)]
pub struct Line {
    pub seq: u64,
    pub ts: u64,
    pub entry: String,
    pub text: String,
}

impl Filter {
    pub fn new(since: Option<Duration>, grep: Option<regex::Regex>, timestamps: bool) -> Filter {
        let now = crate::logs::now_ms();
        Filter {
            since_ms: since.map(|d| now.saturating_sub(d.as_millis() as u64)),
            grep,
            timestamps,
            prefix: false,
        }
    }

    /// The text to print for `l`, or None when it is filtered out.
    pub fn render(&self, l: &Line) -> Option<String> {
        if self.since_ms.is_some_and(|s| l.ts < s) {
            return None;
        }
        if self.grep.as_ref().is_some_and(|g| !g.is_match(&l.text)) {
            return None;
        }
        let mut s = String::new();
        if self.timestamps {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(l.ts);
            s.push_str(&humantime::format_rfc3339_millis(t).to_string());
            s.push(' ');
        }
        if self.prefix {
            s.push_str(&l.entry);
            s.push_str(" | ");
        }
        s.push_str(&l.text);
        s.push('\n');
        Some(s)
    }
}

/// Merges per-entry lines by time (stable: an entry's own order is kept).
pub fn interleave(mut per_entry: Vec<Vec<Line>>) -> Vec<Line> {
    let mut all: Vec<(usize, Line)> = per_entry
        .drain(..)
        .enumerate()
        .flat_map(|(i, v)| v.into_iter().map(move |l| (i, l)))
        .collect();
    all.sort_by_key(|(i, l)| (l.ts, *i, l.seq));
    all.into_iter().map(|(_, l)| l).collect()
}

fn parse_lines(pending: &mut Vec<u8>) -> Vec<Line> {
    let mut out = Vec::new();
    while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
        let raw: Vec<u8> = pending.drain(..=nl).collect();
        if raw.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(&raw) {
            Ok(l) => out.push(l),
            // A follower's "too slow, N lines skipped" note arrives as a plain line.
            Err(_) => out.push(Line {
                seq: 0,
                ts: crate::logs::now_ms(),
                entry: String::from("dmp-contained"),
                text: String::from_utf8_lossy(&raw).trim_end().to_string(),
            }),
        }
    }
    out
}

async fn entry_names(c: &Client) -> Result<Vec<String>, i32> {
    let r = c.request("GET", "/status").await.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_UNREACHABLE
    })?;
    let b = r
        .body
        .collect()
        .await
        .map_err(|_| EXIT_UNREACHABLE)?
        .to_bytes();
    let st: crate::status::Status = serde_json::from_slice(&b).map_err(|_| EXIT_NEGATIVE)?;
    Ok(st
        .entries
        .into_iter()
        .filter(|e| e.state != crate::state::State::Skipped)
        .map(|e| e.name)
        .collect())
}

pub async fn logs(c: &Client, names: &[String], follow: bool, tail: usize, mut f: Filter) -> i32 {
    let names = if names.is_empty() {
        match entry_names(c).await {
            Ok(n) => n,
            Err(code) => return code,
        }
    } else {
        names.to_vec()
    };
    f.prefix = names.len() > 1;
    // With --since, the whole ring is read and the filter decides.
    let tail = if f.since_ms.is_some() {
        usize::MAX >> 1
    } else {
        tail
    };
    let bodies = match open(c, &names, follow, tail).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    if follow {
        stream(bodies, &f).await
    } else {
        read_all(bodies, &f).await
    }
}

/// One `/logs/NAME` response body per name, or the exit code when one is refused.
async fn open(
    c: &Client,
    names: &[String],
    follow: bool,
    tail: usize,
) -> Result<Vec<Incoming>, i32> {
    let mut bodies = Vec::new();
    for n in names {
        let path = format!(
            "/logs/{}?format=json&tail={tail}{}",
            crate::cli::urlencode(n),
            if follow { "&follow=1" } else { "" }
        );
        let r = c.request("GET", &path).await.map_err(|e| {
            eprintln!("error: {e}");
            EXIT_UNREACHABLE
        })?;
        match r.status {
            200 => bodies.push(r.body),
            404 => {
                eprintln!("error: unknown entry `{n}`");
                return Err(EXIT_UNKNOWN);
            }
            code => {
                eprintln!("error: the supervisor answered HTTP {code} for {n}");
                return Err(EXIT_NEGATIVE);
            }
        }
    }
    Ok(bodies)
}

/// Prints what `f` lets through; false when stdout is closed (`| head`), which ends the command.
fn print(f: &Filter, lines: &[Line]) -> bool {
    let mut out = std::io::stdout().lock();
    let text: String = lines.iter().filter_map(|l| f.render(l)).collect();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_ok()
}

/// Without `-f`: every body to its end, then all lines merged by time.
async fn read_all(bodies: Vec<Incoming>, f: &Filter) -> i32 {
    let mut per_entry = Vec::new();
    for b in bodies {
        let Ok(all) = b.collect().await else {
            return EXIT_UNREACHABLE;
        };
        let mut pending = all.to_bytes().to_vec();
        pending.push(b'\n');
        per_entry.push(parse_lines(&mut pending));
    }
    print(f, &interleave(per_entry));
    0
}

/// `-f`: lines as they arrive on any body, until every body ends or stdout is closed.
async fn stream(bodies: Vec<Incoming>, f: &Filter) -> i32 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Line>>(64);
    for mut body in bodies {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    pending.extend_from_slice(d);
                    if tx.send(parse_lines(&mut pending)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    while let Some(lines) = rx.recv().await {
        if !print(f, &lines) {
            return 0;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(entry: &str, ts: u64, seq: u64, text: &str) -> Line {
        Line {
            seq,
            ts,
            entry: entry.into(),
            text: text.into(),
        }
    }

    #[test]
    fn interleaves_by_time_and_filters() {
        let merged = interleave(vec![
            vec![line("a", 10, 0, "a1"), line("a", 30, 1, "a2")],
            vec![line("b", 20, 0, "b1 error"), line("b", 30, 1, "b2")],
        ]);
        let texts: Vec<&str> = merged.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a1", "b1 error", "a2", "b2"]);
        let f = Filter {
            since_ms: Some(15),
            grep: Some(regex::Regex::new("err").unwrap()),
            timestamps: true,
            prefix: true,
        };
        let out: Vec<String> = merged.iter().filter_map(|l| f.render(l)).collect();
        assert_eq!(out, ["1970-01-01T00:00:00.020Z b | b1 error\n"]);
    }
}
