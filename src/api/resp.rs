//! Responses and request parsing shared by every route: the `Resp` type (a full body or a
//! channel-fed stream), JSON and error answers, the path and query decoding.
//!
//! Plain helpers: nothing here reads the supervisor's state or talks to the loop.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A response body fed by a channel (log follow); ends when the sender is dropped.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub type Resp = Response<Either<Full<Bytes>, ChannelBody>>;

pub(super) fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("cache-control", "no-store")
        .body(Either::Left(Full::new(body.into())))
        .unwrap()
}

pub(super) fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    full(status, "application/json", s)
}

/// `v` as JSON after every string has passed the process-wide redactor.
pub(super) fn redacted_json(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    crate::redact::global().apply_json(&mut v);
    json_resp(status, &v)
}

pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json_resp(status, &json!({ "error": msg.into() }))
}

/// A 200 whose body is fed by `body_rx` (follow, events), never buffered by a proxy.
pub(super) fn stream_response(ctype: &'static str, body_rx: mpsc::Receiver<Bytes>) -> Resp {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", ctype)
        .header("cache-control", "no-store")
        .header("x-accel-buffering", "no")
        .body(Either::Right(ChannelBody { rx: body_rx }))
        .unwrap()
}

/// Decodes `%XX` escapes; anything else (a lone `%`, `%` before a multi-byte character) is
/// kept as it is. Never slices inside a character.
pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

pub(super) fn parse_query(q: &str) -> std::collections::HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod decode_tests {
    #[test]
    fn percent_decode_never_panics() {
        assert_eq!(super::percent_decode("a%20b"), "a b");
        assert_eq!(super::percent_decode("a%\u{20ac}"), "a%\u{20ac}");
        assert_eq!(super::percent_decode("%"), "%");
        assert_eq!(super::percent_decode("%e2%82"), "\u{fffd}");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
    }
}
