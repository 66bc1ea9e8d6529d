//! A stand-in for the Functions host, for local stacks and tests: it POSTs the payloads the host
//! sends (in the host's real, double-encoded form) to a running `pgvault serve`, and moves queue
//! messages the way the host does: delete on 2xx, release on failure, poison after
//! `maxDequeueCount` failures.

use crate::domain::error::{Error, Result};
use crate::seams::queue::JobQueue;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The payload form to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    /// As the host really sends it: the message a JSON string inside a string, `Id` and
    /// `PopReceipt` with embedded quotes, `DequeueCount` a string.
    Host,
    /// As the documentation shows it.
    Clean,
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

fn sys(function: &str) -> Value {
    json!({ "MethodName": function, "UtcNow": now(), "RandGuid": uuid::Uuid::new_v4().to_string() })
}

/// The timer trigger's payload.
pub fn timer_payload(function: &str, past_due: bool) -> Value {
    json!({
        "Data": { "timer": { "Schedule": { "AdjustForDST": true }, "ScheduleStatus": null, "IsPastDue": past_due } },
        "Metadata": { "sys": sys(function) }
    })
}

/// A queue trigger's payload for one message.
pub fn queue_payload(
    function: &str,
    binding: &str,
    text: &str,
    id: &str,
    pop_receipt: &str,
    dequeue_count: u32,
    form: Form,
) -> Value {
    let quote = |s: &str| serde_json::to_string(s).expect("string serializes");
    match form {
        Form::Host => json!({
            "Data": { binding: quote(&quote(text)) },
            "Metadata": {
                "Id": quote(id), "PopReceipt": quote(pop_receipt), "DequeueCount": dequeue_count.to_string(),
                "InsertionTime": now(), "NextVisibleTime": now(), "ExpirationTime": now(),
                "sys": sys(function)
            }
        }),
        Form::Clean => json!({
            "Data": { binding: text },
            "Metadata": {
                "Id": id, "PopReceipt": pop_receipt, "DequeueCount": dequeue_count,
                "InsertionTime": now(), "NextVisibleTime": now(), "ExpirationTime": now(),
                "sys": sys(function)
            }
        }),
    }
}

/// POST one invocation; returns the status and the parsed reply.
pub async fn invoke(base_url: &str, function: &str, payload: &Value) -> Result<(u16, Value)> {
    let client = reqwest::Client::new();
    let url = format!("{}/{function}", base_url.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .header("X-Azure-Functions-InvocationId", uuid::Uuid::new_v4().to_string())
        .json(payload)
        .send()
        .await
        .map_err(|e| Error::transient(format!("POST {url}: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| Error::transient(format!("POST {url}: read reply: {e}")))?;
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, value))
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DrainReport {
    pub succeeded: usize,
    pub failed_attempts: usize,
    pub poisoned: usize,
    pub replies: Vec<Value>,
}

/// Deliver every message on `queue` to `function` until the queue is empty.
pub async fn drain(
    queue: &dyn JobQueue,
    queue_name: &str,
    base_url: &str,
    function: &str,
    binding: &str,
    max_dequeue_count: u32,
    form: Form,
) -> Result<DrainReport> {
    let mut report = DrainReport::default();
    loop {
        let batch = queue.receive(queue_name, 1, 3600).await?;
        let Some(msg) = batch.into_iter().next() else { break };
        let payload = queue_payload(function, binding, &msg.text, &msg.id, &msg.pop_receipt, msg.dequeue_count, form);
        let (status, reply) = invoke(base_url, function, &payload).await?;
        tracing::info!(queue = queue_name, id = %msg.id, status, "delivered");
        report.replies.push(json!({ "status": status, "reply": reply }));
        if (200..300).contains(&status) {
            queue.delete(queue_name, &msg.id, &msg.pop_receipt).await?;
            report.succeeded += 1;
        } else if msg.dequeue_count >= max_dequeue_count {
            queue.send(&format!("{queue_name}-poison"), &msg.text, true).await?;
            queue.delete(queue_name, &msg.id, &msg.pop_receipt).await?;
            report.poisoned += 1;
        } else {
            queue.release(queue_name, &msg.id, &msg.pop_receipt, 0).await?;
            report.failed_attempts += 1;
        }
    }
    Ok(report)
}
