//! Who may do what: the bearer token (where it is read from, how it is compared), the Host
//! check against DNS rebinding, and the Unix socket's ownership and 0600 mode.
//!
//! Decisions only: it answers yes/no (or the 403 that explains how to get a yes) and never
//! runs a route or talks to the loop.

use super::resp::{error, Resp};
use super::Api;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

impl Api {
    pub(super) fn forbidden(&self) -> Resp {
        let hint = if self.token.is_some() {
            "this route needs `Authorization: Bearer <token>`"
        } else {
            "mutations over HTTP are disabled: set a token (env DMP_CONTAINED_TOKEN or DMP_CONTAINED_TOKEN_FILE) and send `Authorization: Bearer <token>`, or use the CLI over the Unix socket (`dmp-contained restart NAME`)"
        };
        error(StatusCode::FORBIDDEN, hint)
    }

    pub(super) fn bearer_ok(&self, req: &Request<Incoming>) -> bool {
        let Some(tok) = &self.token else { return false };
        let Some(h) = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, given)) = h.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let given = given.trim();
        // Constant-time comparison.
        given.len() == tok.len()
            && given
                .bytes()
                .zip(tok.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Does the request's Host name this supervisor? An IP literal, `localhost` or any single-label
/// name always does (a DNS-rebinding page can only use a dotted name it controls); other names
/// must be listed in
/// `DMP_CONTAINED_API_HOSTS` (comma-separated).
pub(super) fn host_allowed(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get("host").and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |x| x.0),
    }
    .trim_end_matches('.')
    .to_ascii_lowercase();
    // A rebinding page needs a public, dotted name; a single label (`localhost`, a compose
    // service name) or an IP literal cannot be one.
    if name.parse::<std::net::Ipv4Addr>().is_ok()
        || !name.contains('.')
        || name.ends_with(".localhost")
    {
        return true;
    }
    static EXTRA: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    EXTRA
        .get_or_init(|| {
            std::env::var("DMP_CONTAINED_API_HOSTS")
                .unwrap_or_default()
                .split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        })
        .contains(&name)
}

/// A control socket must belong to us or to root: another local user could otherwise squat
/// the path (in `/tmp`, say) and have the CLI talk to an impostor, or keep the supervisor from
/// starting with a confusing error. Missing is fine (the caller reports it).
pub fn check_socket_owner(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to this user (uid {me}) or root: refusing to use it (someone else may have squatted the path; use a private directory such as /run or $XDG_RUNTIME_DIR)",
            path.display(),
            meta.uid()
        ));
    }
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{} is a symlink: refusing to use it",
            path.display()
        ));
    }
    Ok(())
}

/// Binds the Unix socket with mode 0600, replacing a stale socket file. The path must not
/// belong to another user, and a directory created for it is private (0700).
pub fn bind_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    check_socket_owner(path)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another running supervisor", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(path);
    umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Reads the HTTP mutation token from `$token_env` or `$DMP_CONTAINED_TOKEN_FILE`.
pub fn load_token(token_env: &str) -> Option<String> {
    if let Ok(t) = std::env::var(token_env) {
        if !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    let f = std::env::var("DMP_CONTAINED_TOKEN_FILE").ok()?;
    let t = std::fs::read_to_string(f).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}
