//! `jobs` (HTTP GET, function key): the job records and the summary as JSON, the same data as
//! `pgvault jobs --json [--summary]`. Query: `kind`, `failed`, `since` (RFC 3339 or `36h`/`7d`),
//! `server`, `id`, `summary`.
//!
//! Unlike the CLI, the reply never carries the read-only SAS URLs of files exported by as-files
//! restore tasks (bearer credentials valid up to 7 days): it is read as
//! [`crate::features::report::Reader::Others`], so each `url` is replaced by a note pointing to
//! `pgvault jobs --json --show-urls --id <task id>` (see `JobRecord::withhold_secrets`).
//!
//! HTTP triggers reach a custom handler (without request forwarding) as an invocation whose
//! `Data.req` is `{Url, Method, Query, Headers, Params, Body}`; the answer is the `res` output
//! binding `{"Outputs":{"res":{"statusCode","body","headers"}}}`, always in a 200 reply to the
//! host (a non-2xx reply would fail the invocation).

use super::{AppState, parse_invocation};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The HTTP trigger's binding name in `function.json`.
pub const BINDING: &str = "req";

/// The parts of `Data.req` the handlers use.
#[derive(Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub query: BTreeMap<String, String>,
    pub body: String,
}

/// Read `Data.req` (accepting a JSON-encoded string, as the host sometimes sends).
pub fn http_request(body: &[u8]) -> Result<HttpRequest, Box<Response>> {
    let inv = parse_invocation(body).map_err(|r| Box::new(r.into_response()))?;
    let req = match inv.data.get(BINDING) {
        Some(Value::String(s)) => serde_json::from_str(&super::unquote(s)).unwrap_or(Value::Null),
        Some(v) => v.clone(),
        None => Value::Null,
    };
    if !req.is_object() {
        return Err(Box::new(super::bad_invocation(format!("Data has no {BINDING:?} HTTP request")).into_response()));
    }
    let query = req["Query"]
        .as_object()
        .map(|q| {
            q.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let body = match &req["Body"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Ok(HttpRequest { method: req["Method"].as_str().unwrap_or("").to_ascii_uppercase(), query, body })
}

/// The host reply carrying an HTTP response in the `res` output binding.
pub fn http_reply(status: u16, body: &Value, logs: Vec<String>) -> Response {
    http_reply_with(status, body.to_string(), json!({ "Content-Type": "application/json" }), logs)
}

/// The host reply carrying an HTTP response of any type (`headers`: a JSON object of strings).
pub fn http_reply_with(status: u16, body: String, headers: Value, logs: Vec<String>) -> Response {
    let out = json!({
        "Outputs": { "res": { "statusCode": status, "body": body, "headers": headers } },
        "Logs": logs,
        "ReturnValue": null,
    });
    (axum::http::StatusCode::OK, axum::Json(out)).into_response()
}

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Response {
    let req = match http_request(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.method != "GET" {
        return http_reply(405, &json!({ "error": "jobs answers GET only" }), vec![]);
    }
    let now = time::OffsetDateTime::now_utc();
    let filter = match crate::features::report::Filter::from_query(&req.query, now) {
        Ok(f) => f,
        Err(e) => return http_reply(400, &json!({ "error": e.to_string() }), vec![e.to_string()]),
    };
    let summary = req.query.get("summary").is_some_and(|v| matches!(v.as_str(), "" | "1" | "true" | "yes"));
    match crate::features::report::query(&state.ctx, &filter, summary, now, crate::features::report::Reader::Others)
        .await
    {
        Ok(v) => http_reply(200, &v, vec![]),
        Err(e) => {
            tracing::error!(error = %e, "jobs query failed");
            http_reply(503, &json!({ "error": e.to_string() }), vec![e.to_string()])
        }
    }
}
