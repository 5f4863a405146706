//! The control plane over HTTP: a TCP listener (read-only unless a bearer token is set) and a
//! Unix socket (mode 0600, trusted: mutations allowed) serving the same routes.
//!
//! This module owns the `Api` type (the published view, the token, the secrets to scrub) and
//! the router, `Api::handle`. The routes live by concern: `auth` (token, Host check, socket
//! permissions), `routes` (health, cache, the mutations), `follow` (log and event streams),
//! `metrics` (Prometheus), `unavailable` (nginx's "app is down" page); `serve` runs the
//! listeners and `resp` builds the answers.
//!
//! The API reads the loop's published `Status` and asks the loop through `Control`; it never
//! writes lifecycle state, and nothing outside this folder reaches into its submodules (the
//! client imports only `PREFIX` and `check_socket_owner`).

mod auth;
mod follow;
mod metrics;
mod resp;
mod routes;
mod serve;
mod unavailable;

pub use auth::{bind_socket, check_socket_owner, load_token};
pub use resp::Resp;
pub use serve::{raise_nofile, serve_tcp, serve_unix};

use crate::control::Shared;
use crate::redact::secret_values;
use crate::status::Status;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use resp::{error, full, percent_decode, redacted_json};
use routes::Mutation;
use std::sync::Arc;

pub const PREFIX: &str = "/_supervisor";
const DASHBOARD: &str = include_str!("../dashboard.html");

pub struct Api {
    pub shared: Arc<Shared>,
    pub token: Option<String>,
    /// Secret values per entry name (`secret_values`, plus the token), to scrub from status;
    /// computed once per plan (a config reload swaps the plan).
    secrets: std::sync::Mutex<(Option<Arc<crate::plan::Plan>>, Arc<Secrets>)>,
}

type Secrets = std::collections::HashMap<String, Vec<String>>;

impl Api {
    pub fn new(shared: Arc<Shared>, token: Option<String>) -> Api {
        Api {
            shared,
            token,
            secrets: Default::default(),
        }
    }

    fn secrets(&self) -> Arc<Secrets> {
        let plan = self.shared.plan();
        let mut cached = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if !cached.0.as_ref().is_some_and(|p| Arc::ptr_eq(p, &plan)) {
            let by_name = plan
                .entries
                .iter()
                .zip(secret_values(&plan))
                .map(|(e, mut v)| {
                    v.extend(self.token.clone());
                    (e.name.clone(), v)
                })
                .collect();
            *cached = (Some(plan), Arc::new(by_name));
        }
        cached.1.clone()
    }

    /// The loop's latest status snapshot, with secrets scrubbed.
    pub fn status(&self) -> Status {
        let mut st = self.shared.status();
        st.scrub(&self.secrets());
        st
    }

    /// Routes one request. `trusted`: it came over the Unix socket (no Host check, mutations
    /// allowed without a token).
    pub async fn handle(&self, req: Request<Incoming>, trusted: bool) -> Resp {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("");
        let rel = path.strip_prefix(PREFIX).unwrap_or(&path);
        let decoded: Vec<String> = rel
            .trim_start_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .map(percent_decode)
            .collect();
        let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let method = req.method();
        if !trusted && !auth::host_allowed(&req) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "Host not allowed: use an IP address or localhost, or list the name in DMP_CONTAINED_API_HOSTS (comma-separated)",
            );
        }
        if method == Method::POST {
            if let Some(m) = Mutation::route(&parts) {
                return match trusted || self.bearer_ok(&req) {
                    true => self.mutate(m).await,
                    false => self.forbidden(),
                };
            }
        }
        match (method, parts.as_slice()) {
            (&Method::GET, []) => full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
            // Every string of the status also passes the process-wide redactor.
            (&Method::GET, ["status"]) => redacted_json(StatusCode::OK, &self.status()),
            (&Method::GET, ["health"]) => self.health(),
            // Any method: nginx forwards the request that found the app down (unavailable.rs).
            (_, ["unavailable", name]) => {
                let uri = req
                    .headers()
                    .get("x-dmp-original-uri")
                    .and_then(|h| h.to_str().ok());
                let as_json = query.split('&').any(|q| q == "format=json");
                unavailable::respond(self, name, uri, as_json).await
            }
            (&Method::GET, ["metrics"]) => self.metrics(),
            (&Method::GET, ["events"]) => self.events(),
            (&Method::GET, ["cache"]) => self.cache().await,
            (&Method::GET, ["logs", name]) => self.logs(name, query),
            (_, ["status"] | ["health"] | ["metrics"] | ["cache"] | ["logs", _] | []) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed on {path}"),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }
}
