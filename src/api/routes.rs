//! The routes that answer from the loop's published state or ask the loop to act: `/health`,
//! `/cache`, and the mutations (`/reload`, entry actions, snapshots, `/shutdown`), each mapped
//! from a `Control` request and its `Refused` answer to an HTTP status.
//!
//! It asks the loop only through `Control` (never writes lifecycle state) and does not decide
//! who may mutate: the router checks `authorized` before `Api::mutate`.

use super::resp::{error, json_resp, redacted_json, Resp};
use super::Api;
use crate::control::{Action, Control, Refused, SnapOp};
use hyper::StatusCode;
use serde_json::json;
use tokio::sync::oneshot;

/// A route that changes something (it needs `authorized`).
pub(super) enum Mutation<'a> {
    /// `POST /reload`.
    Reload,
    /// `POST /entries/NAME/ACTION` or `POST /ACTION/NAME`.
    Act(Action, &'a str),
    /// `POST /snapshots/NAME/{save,restore}`.
    Snapshot(SnapOp, &'a str),
    /// `POST /shutdown`.
    Shutdown,
}

impl<'a> Mutation<'a> {
    /// The mutation a POST to `parts` names, if any.
    pub(super) fn route(parts: &[&'a str]) -> Option<Mutation<'a>> {
        Some(match *parts {
            ["reload"] => Mutation::Reload,
            ["entries", name, action] | [action, name] if action.parse::<Action>().is_ok() => {
                Mutation::Act(action.parse().ok()?, name)
            }
            ["snapshots", name, "save"] => Mutation::Snapshot(SnapOp::Save, name),
            ["snapshots", name, "restore"] => Mutation::Snapshot(SnapOp::Restore, name),
            ["shutdown"] => Mutation::Shutdown,
            _ => return None,
        })
    }
}

/// The answer of `GET /_supervisor/cache`.
#[derive(serde::Serialize)]
struct CacheState {
    /// One per successful cached step run: `{step, key, at_ms, duration_s}`.
    records: Vec<crate::cache::Record>,
    /// Chain snapshots (a service's data dir after a cached step).
    snapshots: Vec<ChainSnapshot>,
    /// Snapshots saved by name (`snapshot save NAME`).
    named: Vec<NamedSnapshot>,
    /// Unreadable records (a miss: the step runs again).
    corrupt: Vec<String>,
}

#[derive(serde::Serialize)]
struct ChainSnapshot {
    service: String,
    key: String,
    bytes: u64,
}

#[derive(serde::Serialize)]
struct NamedSnapshot {
    name: String,
    services: Vec<String>,
    bytes: u64,
}

impl CacheState {
    fn read(dir: &std::path::Path) -> CacheState {
        use crate::cache;
        CacheState {
            records: cache::list_records(dir),
            snapshots: cache::list_chain_snapshots(dir)
                .into_iter()
                .map(|(service, key, bytes)| ChainSnapshot {
                    service,
                    key,
                    bytes,
                })
                .collect(),
            named: cache::list_named(dir)
                .into_iter()
                .map(|(name, services, bytes)| NamedSnapshot {
                    name,
                    services,
                    bytes,
                })
                .collect(),
            corrupt: cache::list_corrupt(dir)
                .into_iter()
                .map(|(p, why)| format!("{}: {why}", p.display()))
                .collect(),
        }
    }
}

impl Api {
    pub(super) fn health(&self) -> Resp {
        let h = self.status().health();
        let code = if h.healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        redacted_json(code, &h)
    }

    /// `GET /_supervisor/cache`: the step records and snapshots in `cache_dir` (for the
    /// dashboard; the same as `dmp-contained cache ls`). Read from disk off the runtime.
    pub(super) async fn cache(&self) -> Resp {
        let dir = self.shared.plan().settings.cache_dir.clone();
        match tokio::task::spawn_blocking(move || CacheState::read(&dir)).await {
            Ok(c) => redacted_json(StatusCode::OK, &c),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    pub(super) async fn mutate(&self, m: Mutation<'_>) -> Resp {
        match m {
            Mutation::Reload => self.config_reload().await,
            Mutation::Act(action, name) => self.act(action, name).await,
            Mutation::Snapshot(op, name) => {
                let name = name.to_string();
                match self
                    .ask(|reply| Control::Snapshot { op, name, reply })
                    .await
                {
                    Ok(Ok(m)) => ok_message(m),
                    Ok(Err(e)) => refused(e),
                    Err(resp) => resp,
                }
            }
            Mutation::Shutdown => {
                let (tx, rx) = oneshot::channel();
                let _ = self.shared.control.send(Control::Shutdown(tx)).await;
                drop(rx);
                json_resp(
                    StatusCode::ACCEPTED,
                    &json!({"ok": true, "message": "shutting down"}),
                )
            }
        }
    }

    /// Sends a request that answers with a message or an error; `Err` is the response to
    /// give when the loop is gone.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Control) -> Result<T, Resp> {
        let gone = || error(StatusCode::SERVICE_UNAVAILABLE, "supervisor is stopping");
        let (tx, rx) = oneshot::channel();
        if self.shared.control.send(make(tx)).await.is_err() {
            return Err(gone());
        }
        rx.await.map_err(|_| gone())
    }

    /// `POST /_supervisor/reload` (src/reload.rs): 200 with what changed, or 422 with every
    /// error of the edited table (nothing changed).
    async fn config_reload(&self) -> Resp {
        let trigger = crate::reload::Trigger::Api;
        match self
            .ask(|reply| Control::ConfigReload { trigger, reply })
            .await
        {
            Ok(r) => {
                let code = match r {
                    Ok(_) => StatusCode::OK,
                    Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
                };
                redacted_json(code, &r.unwrap_or_else(|e| e))
            }
            Err(resp) => resp,
        }
    }

    async fn act(&self, action: Action, name: &str) -> Resp {
        let owned = name.to_string();
        let answer = self
            .ask(|reply| Control::Act {
                action,
                name: owned,
                reply,
            })
            .await;
        match answer {
            Ok(Ok(m)) => ok_message(m),
            Ok(Err(e)) => refused(e),
            Err(resp) => resp,
        }
    }
}

/// A refusal's HTTP answer, chosen by its variant.
fn refused(e: Refused) -> Resp {
    let code = match &e {
        Refused::UnknownEntry { .. } | Refused::NoSnapshot { .. } => StatusCode::NOT_FOUND,
        Refused::BadName(_) => StatusCode::BAD_REQUEST,
        Refused::Conflict(_) => StatusCode::CONFLICT,
        Refused::CopyFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // The step's own exit code, for `dmp-contained run STEP`'s exit status.
        Refused::Failed { message, exit_code } => {
            let body = json!({ "error": message, "exit_code": exit_code });
            return json_resp(StatusCode::CONFLICT, &body);
        }
    };
    error(code, e.to_string())
}

/// `200 {"ok": true, "message": m}`.
fn ok_message(m: String) -> Resp {
    json_resp(StatusCode::OK, &json!({"ok": true, "message": m}))
}
