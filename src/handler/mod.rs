//! The Azure Functions custom handler: an axum server the Functions host POSTs invocations to.
//!
//! One route per folder in `functions/` (checked by a test), one module per function. Handlers
//! are thin: decode the host's payload, call one domain function, encode the reply.
//!
//! The host's payload quirks (see DESIGN.md): string trigger data and string metadata may arrive
//! JSON-encoded twice, `Id`/`PopReceipt` with embedded quotes, `DequeueCount` as a number or a
//! string. [`Invocation`] accepts the clean form and all of those.

pub mod backup_now;
pub mod backup_parts;
pub mod backup_scheduler;
pub mod backup_worker;
pub mod doctor;
pub mod jobs;
pub mod restore_drill;
pub mod restore_requests;
pub mod restore_worker;
pub mod retention;
pub mod sas_rotator;
pub mod status;

use crate::config::context::Ctx;
use crate::seams::queue::JobQueue;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Function names: the folders under `functions/`, and the routes the host POSTs to.
pub const FUNCTIONS: &[&str] = &[
    "backup-scheduler",
    "backup-worker",
    "restore-requests",
    "restore-worker",
    "sas-rotator",
    "retention",
    "restore-drill",
    "jobs",
    "backup-now",
    "doctor",
    "status",
    "backup-parts",
];

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub ctx: Ctx,
    pub queue: Arc<dyn JobQueue>,
    /// `extensions.queues.maxDequeueCount` from host.json: after this many failed deliveries
    /// the host moves a message to the poison queue.
    pub max_dequeue_count: u32,
}

/// The largest invocation body the handler reads. A queue message holds at most 64 KiB, and
/// the host's double JSON encoding at most septuples that (a control character becomes
/// `\\u0001`), so a real queue invocation stays under half a MiB; timer payloads and the HTTP
/// functions' requests (`jobs`, `backup-now`) are a few hundred bytes. Anything larger is not a
/// real invocation: it gets a 413 in the host's reply shape (see [`HostBody`]).
pub const MAX_INVOCATION_BYTES: usize = 1 << 20;

/// The functions with an HTTP trigger: their replies carry the `res` output binding.
const HTTP_FUNCTIONS: &[&str] = &["jobs", "backup-now", "status"];

/// The router. `GET /` answers at once: the host polls it to learn that the handler is up.
/// Every other answer, refusals included, is in the host's reply shape
/// (`{"Outputs","Logs","ReturnValue"}`): an unknown function is a 404, a wrong method a 405,
/// an oversized body a 413.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { "pgvault" }))
        .route("/backup-scheduler", post(backup_scheduler::handle))
        .route("/backup-worker", post(backup_worker::handle))
        .route("/restore-requests", post(restore_requests::handle))
        .route("/restore-worker", post(restore_worker::handle))
        .route("/sas-rotator", post(sas_rotator::handle))
        .route("/retention", post(retention::handle))
        .route("/restore-drill", post(restore_drill::handle))
        .route("/jobs", post(jobs::handle))
        .route("/backup-now", post(backup_now::handle))
        .route("/doctor", post(doctor::handle))
        .route("/status", post(status::handle))
        .route("/backup-parts", post(backup_parts::handle))
        .fallback(|uri: Uri| async move {
            refusal(StatusCode::NOT_FOUND, format!("no function is served at {}", uri.path()))
        })
        .method_not_allowed_fallback(|uri: Uri| async move {
            refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} answers POST only (the host's invocations)", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_INVOCATION_BYTES))
        .with_state(state)
}

/// A refusal in the host's reply shape, logged.
fn refusal(status: StatusCode, msg: String) -> Reply {
    tracing::error!(status = status.as_u16(), "{msg}");
    Reply { status, logs: vec![msg.clone()], return_value: json!({ "error": msg }) }
}

/// An invocation's body, read whole up to [`MAX_INVOCATION_BYTES`]. A larger body is refused
/// with 413 in the host's shape, never axum's plain text: for a queue or timer function a failed
/// invocation (`{"Outputs":{},"Logs":[reason],"ReturnValue":{"error"}}`; a queue message cannot
/// be that large, so no real message is affected), for an HTTP function a 200 whose `res` output
/// is the 413 the caller sees.
pub struct HostBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for HostBody {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Response> {
        let function = req.uri().path().trim_start_matches('/').to_string();
        let (status, msg) = match read_limited(req.into_body()).await {
            Ok(body) => return Ok(HostBody(body)),
            Err(None) => {
                let msg = format!(
                    "invocation of {function} refused: its body is larger than {} bytes, more than any \
                     Functions host payload (a queue message holds at most 64 KiB)",
                    MAX_INVOCATION_BYTES
                );
                (StatusCode::PAYLOAD_TOO_LARGE, msg)
            }
            Err(Some(e)) => (StatusCode::BAD_REQUEST, format!("invocation of {function}: cannot read its body: {e}")),
        };
        if HTTP_FUNCTIONS.contains(&function.as_str()) {
            tracing::error!(function, status = status.as_u16(), "{msg}");
            return Err(jobs::http_reply(status.as_u16(), &json!({ "error": msg }), vec![msg.clone()]));
        }
        Err(refusal(status, msg).into_response())
    }
}

/// How much of a refused body is still read (and dropped) before the refusal is sent. A server
/// that answers while the client is still sending, and then closes, makes the kernel reset the
/// connection, and the client loses the reply it was sent (a broken pipe instead of the 413);
/// reading the rest first lets the caller see why. Past this, the connection is dropped.
const DRAIN_LIMIT_BYTES: usize = 64 << 20;

/// The body, whole, up to [`MAX_INVOCATION_BYTES`]: `Err(None)` when it is larger (read to its
/// end, up to [`DRAIN_LIMIT_BYTES`], and dropped), `Err(Some(_))` when it cannot be read.
async fn read_limited(body: axum::body::Body) -> Result<Bytes, Option<axum::Error>> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut refused = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Some)?;
        if refused > 0 || buf.len() + chunk.len() > MAX_INVOCATION_BYTES {
            refused += buf.len() + chunk.len();
            buf = bytes::BytesMut::new();
            if refused > DRAIN_LIMIT_BYTES {
                break;
            }
        } else {
            buf.extend_from_slice(&chunk);
        }
    }
    if refused > 0 { Err(None) } else { Ok(buf.freeze()) }
}

/// The body the host POSTs for a non-HTTP trigger.
#[derive(Debug, Deserialize)]
pub struct Invocation {
    #[serde(rename = "Data", default)]
    pub data: Map<String, Value>,
    #[serde(rename = "Metadata", default)]
    pub metadata: Map<String, Value>,
}

impl Invocation {
    /// A trigger value that should be text (a queue message): undo the host's extra JSON
    /// encoding. An object or array is re-serialised, so a host that parsed the JSON for us
    /// still hands over the message text.
    pub fn text(&self, binding: &str) -> Option<String> {
        let v = self.data.get(binding)?;
        Some(match v {
            Value::String(s) => unquote(s),
            Value::Null => return None,
            other => other.to_string(),
        })
    }

    /// A metadata string (`Id`, `PopReceipt`), with embedded quotes removed.
    pub fn meta_str(&self, key: &str) -> Option<String> {
        match self.metadata.get(key)? {
            Value::String(s) => Some(unquote(s)),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// `DequeueCount`: a number, a string, or a JSON-encoded string.
    pub fn dequeue_count(&self) -> Option<u32> {
        match self.metadata.get("DequeueCount")? {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::String(s) => unquote(s).trim().parse().ok(),
            _ => None,
        }
    }

    /// The invocation id the host sends in `Metadata.sys` (for logs).
    pub fn method(&self) -> Option<String> {
        self.metadata.get("sys")?.get("MethodName")?.as_str().map(str::to_string)
    }
}

/// Peel JSON string encoding: `"\"{...}\""` -> `"{...}"` -> `{...}`, at most a few layers.
pub fn unquote(s: &str) -> String {
    let mut cur = s.to_string();
    for _ in 0..4 {
        let t = cur.trim();
        if !(t.starts_with('"') && t.ends_with('"') && t.len() >= 2) {
            break;
        }
        match serde_json::from_str::<String>(t) {
            Ok(inner) => cur = inner,
            Err(_) => break,
        }
    }
    cur
}

/// The reply the host expects: `{"Outputs", "Logs", "ReturnValue"}`.
pub struct Reply {
    pub status: StatusCode,
    pub logs: Vec<String>,
    pub return_value: Value,
}

impl Reply {
    pub fn ok(logs: Vec<String>, return_value: Value) -> Self {
        Reply { status: StatusCode::OK, logs, return_value }
    }

    /// Non-2xx: the host counts the invocation as failed and, for a queue trigger, releases the
    /// message for another try (and finally moves it to the poison queue).
    pub fn retry(logs: Vec<String>, return_value: Value) -> Self {
        Reply { status: StatusCode::INTERNAL_SERVER_ERROR, logs, return_value }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = json!({ "Outputs": {}, "Logs": self.logs, "ReturnValue": self.return_value });
        (self.status, axum::Json(body)).into_response()
    }
}

/// A request body that is not even the host's invocation shape: 400, with the reason.
pub fn bad_invocation(why: impl std::fmt::Display) -> Reply {
    let msg = format!("invocation body is not a Functions host payload: {why}");
    tracing::error!("{msg}");
    Reply { status: StatusCode::BAD_REQUEST, logs: vec![msg.clone()], return_value: json!({ "error": msg }) }
}

/// Parse the body ourselves so a malformed one gets a clear 400 with the reason. An invocation
/// is a JSON object: serde would also read an array as the struct's fields in order, so an
/// array (or any other JSON value) is refused first.
pub fn parse_invocation(body: &[u8]) -> Result<Invocation, Reply> {
    let value: Value = serde_json::from_slice(body).map_err(bad_invocation)?;
    let what = match &value {
        Value::Object(_) => return serde_json::from_value(value).map_err(bad_invocation),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(bad_invocation(format!("it is {what}, not an object with Data and Metadata")))
}

/// A queue-triggered invocation's message: its text (with the host's extra encoding undone),
/// its id and its dequeue count. A body that is not an invocation, or has no such binding, is
/// the 400 reply to send.
pub struct QueueMessage {
    pub text: String,
    pub id: String,
    pub dequeue_count: u32,
}

pub fn queue_message(body: &[u8], binding: &str) -> Result<QueueMessage, Reply> {
    let inv = parse_invocation(body)?;
    let text = inv.text(binding).ok_or_else(|| bad_invocation(format!("Data has no {binding:?} binding")))?;
    Ok(QueueMessage {
        text,
        id: inv.meta_str("Id").unwrap_or_default(),
        dequeue_count: inv.dequeue_count().unwrap_or(1),
    })
}

pub use crate::domain::jobs::{MAX_QUEUE_MESSAGE_BYTES, queue_size};

/// The longest reason kept in a rejected record; a longer one is cut (the logs hold it whole).
const MAX_REASON_CHARS: usize = 8 * 1024;

/// Keep a message that can never succeed, with its reason, on `<queue>-rejected` (time-to-live:
/// never expires), and reply 200 so the host does not retry it. If even keeping it fails, reply
/// 500 so the host keeps the message: nothing is lost.
///
/// The record is `{queue, message_id, dequeue_count, rejected_at, reason, message}`. A message
/// too large for that record to fit a queue message (its JSON escaping and XML escaping can
/// more than triple it) is kept whole as a blob, `@rejected/<queue>/<stamp>-<uuid>.txt`
/// ([`crate::domain::layout::rejected_message`]), and the record names it in `message_blob`
/// (with `message_bytes` and `message_sha256`) instead of carrying `message`.
pub async fn reject_and_keep(
    state: &AppState,
    queue: &str,
    msg: &QueueMessage,
    why: &crate::domain::error::Error,
) -> Reply {
    let kept_on = crate::domain::jobs::rejected_queue(queue);
    let now = time::OffsetDateTime::now_utc();
    let mut reason = why.to_string();
    if reason.chars().count() > MAX_REASON_CHARS {
        reason = reason.chars().take(MAX_REASON_CHARS).collect::<String>() + " … (cut; the log has it whole)";
    }
    let mut record = json!({
        "queue": queue,
        "message_id": msg.id,
        "dequeue_count": msg.dequeue_count,
        "rejected_at": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "reason": reason,
        "message": msg.text,
    });
    let message_id = if msg.id.is_empty() { "(without an id)" } else { msg.id.as_str() };
    let mut blob = None;
    if queue_size(&record.to_string()) > MAX_QUEUE_MESSAGE_BYTES {
        let name = crate::domain::layout::rejected_message(queue, now, &uuid::Uuid::new_v4().simple().to_string());
        let mut tags = crate::domain::layout::Tags::new();
        tags.insert("pgvault".into(), "rejected".into());
        let data = Bytes::from(msg.text.clone().into_bytes());
        if let Err(e) = state.ctx.store.put(&name, data, &tags).await {
            tracing::error!(message_id, reason = %why, error = %e, "cannot keep a large rejected message; leaving it to the host");
            return Reply::retry(
                vec![format!(
                    "message {message_id} cannot succeed ({why}), and keeping its text as blob {name} failed: {e}"
                )],
                json!({ "status": "failed", "error": e.to_string() }),
            );
        }
        let obj = record.as_object_mut().expect("an object");
        obj.remove("message");
        obj.insert("message_blob".into(), json!(name));
        obj.insert("message_bytes".into(), json!(msg.text.len()));
        obj.insert(
            "message_sha256".into(),
            json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(msg.text.as_bytes()))),
        );
        blob = Some(name);
    }
    match state.queue.send(&kept_on, &record.to_string(), true).await {
        Ok(()) => {
            tracing::error!(message_id, queue = %kept_on, message_blob = blob.as_deref().unwrap_or(""), reason = %why, "message rejected and kept");
            let mut logs = vec![format!("message {message_id} rejected and kept on {kept_on}: {why}")];
            let mut value = json!({ "status": "rejected", "reason": why.to_string(), "kept_on": kept_on });
            if let Some(name) = &blob {
                logs.push(format!("its text ({} bytes) is kept as blob {name}", msg.text.len()));
                value["message_blob"] = json!(name);
            }
            Reply::ok(logs, value)
        }
        Err(e) => {
            tracing::error!(message_id, reason = %why, error = %e, "cannot keep rejected message; leaving it to the host");
            Reply::retry(
                vec![format!("message {message_id} cannot succeed ({why}), and keeping it on {kept_on} failed: {e}")],
                json!({ "status": "failed", "error": e.to_string() }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_is_an_invocation() {
        // serde would read this array as the struct's two fields: it must be a 400.
        let body = br#"[{"job":"{}"},{"Id":"m","DequeueCount":1}]"#;
        let reply = parse_invocation(body).expect_err("an array is refused");
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.logs[0].contains("it is an array, not an object with Data and Metadata"), "{:?}", reply.logs);
        for other in [&b"\"text\""[..], b"3", b"null", b"true"] {
            assert_eq!(parse_invocation(other).expect_err("refused").status, StatusCode::BAD_REQUEST);
        }
        assert!(parse_invocation(br#"{"Data":{"job":"x"},"Metadata":{}}"#).is_ok());
    }

    #[test]
    fn unquote_peels_double_encoding() {
        assert_eq!(unquote(r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(unquote(r#""{\"a\":1}""#), r#"{"a":1}"#);
        assert_eq!(unquote(r#""\"{\\\"a\\\":1}\"""#), r#"{"a":1}"#);
        assert_eq!(unquote(r#""abc-123""#), "abc-123");
        assert_eq!(unquote("plain"), "plain");
    }

    #[test]
    fn invocation_accepts_clean_and_quirky_forms() {
        let clean: Invocation = serde_json::from_value(json!({
            "Data": {"job": "{\"x\":1}"},
            "Metadata": {"Id": "abc", "DequeueCount": 2, "PopReceipt": "pr"}
        }))
        .unwrap();
        let quirky: Invocation = serde_json::from_value(json!({
            "Data": {"job": "\"{\\\"x\\\":1}\""},
            "Metadata": {"Id": "\"abc\"", "DequeueCount": "2", "PopReceipt": "\"pr\""}
        }))
        .unwrap();
        let object: Invocation =
            serde_json::from_value(json!({"Data": {"job": {"x": 1}}, "Metadata": {"DequeueCount": "\"2\""}})).unwrap();
        for inv in [&clean, &quirky] {
            assert_eq!(inv.text("job").as_deref(), Some(r#"{"x":1}"#));
            assert_eq!(inv.meta_str("Id").as_deref(), Some("abc"));
            assert_eq!(inv.meta_str("PopReceipt").as_deref(), Some("pr"));
            assert_eq!(inv.dequeue_count(), Some(2));
        }
        assert_eq!(object.text("job").as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(object.dequeue_count(), Some(2));
        assert_eq!(clean.text("missing"), None);
    }
}
