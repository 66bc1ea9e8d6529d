//! `status` (HTTP GET, function key): the status page, one server-rendered HTML document
//! ([`crate::features::status`]); `?format=json` gives the same view as JSON, like
//! `pgvault status --json`.
//!
//! The page carries a Content-Security-Policy that allows no script and no remote resource at
//! all: the page needs none, and should escaping ever fail, nothing injected could run or load.

use super::AppState;
use super::jobs::{http_reply, http_reply_with, http_request};
use axum::extract::State;
use axum::response::Response;
use serde_json::json;

/// No script, no remote resource: inline styles only (the SVG sparklines are inline markup).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Response {
    let req = match http_request(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.method != "GET" {
        return http_reply(405, &json!({ "error": "status answers GET only" }), vec![]);
    }
    let format = req.query.get("format").map(String::as_str).unwrap_or("html");
    if !matches!(format, "html" | "json") {
        let msg = format!("status: unknown format {format:?}; use html or json");
        return http_reply(400, &json!({ "error": msg }), vec![msg.clone()]);
    }
    let view = match crate::features::status::gather(&state.ctx, time::OffsetDateTime::now_utc()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "status: gathering the view failed");
            return http_reply(503, &json!({ "error": e.to_string() }), vec![e.to_string()]);
        }
    };
    if format == "json" {
        return http_reply(200, &serde_json::to_value(&view).expect("the view serializes"), vec![]);
    }
    let headers = json!({
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    });
    http_reply_with(200, crate::features::status::html::render(&view), headers, vec![])
}
