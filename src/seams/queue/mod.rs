//! The job-queue seam: sending work to the Functions queues, and, for the local host
//! simulator and tests, receiving it the way the Functions host does.
//!
//! Messages are JSON text, sent verbatim. `host.json` sets `messageEncoding: none` to match
//! (see DESIGN.md, "Queues").

use crate::domain::error::Result;
use async_trait::async_trait;

/// A message as a receiver sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub pop_receipt: String,
    pub dequeue_count: u32,
    pub text: String,
    pub inserted_at: Option<String>,
    pub expires_at: Option<String>,
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Create the queue if it does not exist. Idempotent.
    async fn ensure(&self, queue: &str) -> Result<()>;

    /// Append one message. `keep_forever` sets a time-to-live of "never expires" (used for the
    /// `-rejected` queues, whose messages wait for an operator); otherwise the service default.
    async fn send(&self, queue: &str, text: &str, keep_forever: bool) -> Result<()>;

    /// Append one message that stays invisible for `delay_secs` (Put Message's
    /// `visibilitytimeout`; Azure allows up to 7 days), e.g. a restore task that waits for its
    /// archived backup to be rehydrated. The service default time-to-live applies.
    async fn send_delayed(&self, queue: &str, text: &str, delay_secs: u32) -> Result<()>;

    /// Take up to `max` messages, hiding them for `visibility_secs`.
    async fn receive(&self, queue: &str, max: u8, visibility_secs: u32) -> Result<Vec<Received>>;

    /// Look at up to `max` messages without taking them.
    async fn peek(&self, queue: &str, max: u8) -> Result<Vec<String>>;

    /// When the message at the head of the queue (the oldest visible one: none is being
    /// processed or delayed) was inserted, or `None` for an empty queue. A read. A queue that
    /// cannot tell answers `None`.
    async fn oldest_waiting(&self, _queue: &str) -> Result<Option<time::OffsetDateTime>> {
        Ok(None)
    }

    /// Remove a received message. Idempotent on an already removed message.
    async fn delete(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<()>;

    /// Make a received message visible again after `visibility_secs` (what the host does with a
    /// message whose invocation failed).
    async fn release(&self, queue: &str, id: &str, pop_receipt: &str, visibility_secs: u32) -> Result<()>;
}
