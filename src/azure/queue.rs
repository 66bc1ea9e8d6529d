//! [`JobQueue`] on Azure Queue Storage, through `azure_storage_queue` with a token credential.
//!
//! Message text goes out verbatim: no base64 (`host.json` sets `messageEncoding: none`). The
//! Queue REST API carries the text inside XML (`<QueueMessage><MessageText>`); the SDK escapes
//! and unescapes it, so JSON with quotes, ampersands and non-ASCII text round-trips unchanged
//! (see the queue tests in `tests/store_contract.rs`).

use super::{Service, sdk_error};
use crate::domain::error::{Error, Result};
use crate::seams::queue::{JobQueue, Received};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RequestContent, StatusCode, Url};
use azure_storage_queue::models::{
    PeekedMessage, QueueClientPeekMessagesOptions, QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions,
    QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueServiceClient, QueueServiceClientOptions};
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The most messages one receive or peek may return.
const MAX_BATCH: u8 = 32;
/// The longest visibility timeout the service accepts (7 days).
const MAX_VISIBILITY_SECS: u32 = 7 * 24 * 3600;
/// The largest message text: 64 KiB of XML-escaped UTF-8.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The queues of one storage account.
pub struct AzureQueue {
    service: QueueServiceClient,
    /// The queue service URL, for messages. Never holds a credential.
    url: String,
}

impl fmt::Debug for AzureQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureQueue").field("url", &self.url).finish_non_exhaustive()
    }
}

impl AzureQueue {
    /// Queues of the queue service at `queue_service_endpoint`
    /// (`https://acct.queue.core.windows.net`, or `https://127.0.0.1:P/devstoreaccount1` for
    /// Azurite). A trailing slash is ignored. Nothing is sent yet.
    pub fn new(
        queue_service_endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
    ) -> Result<Self> {
        let shown = crate::domain::secret::redact(queue_service_endpoint);
        let url = Url::parse(queue_service_endpoint.trim_end_matches('/'))
            .map_err(|e| Error::permanent(format!("queue endpoint {shown:?} is not a url: {e}")))?;
        if url.scheme() != "https" {
            return Err(Error::permanent(format!(
                "queue endpoint {shown:?} must use https (token authentication needs it)"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::permanent(format!(
                "queue endpoint {shown:?} must not carry a query string: pgvault authenticates \
                 with a token, not a SAS"
            )));
        }
        let service = QueueServiceClient::new(
            url.clone(),
            Some(credential),
            Some(QueueServiceClientOptions { client_options: options, ..Default::default() }),
        )
        .map_err(|e| sdk_error(Service::Queue, format!("open queue service {url}"), e))?;
        Ok(Self { service, url: crate::domain::secret::redact(url.as_str()) })
    }

    fn queue(&self, queue: &str) -> Result<QueueClient> {
        if !valid_queue_name(queue) {
            return Err(Error::permanent(format!(
                "invalid queue name {queue:?}: 3-63 characters of lower-case letters, digits \
                 and single hyphens, starting and ending with a letter or digit"
            )));
        }
        self.service.queue_client(queue).map_err(|e| sdk_error(Service::Queue, format!("open queue {queue:?}"), e))
    }
}

impl AzureQueue {
    /// Up to `max` messages from the head of the queue, without taking them.
    async fn peeked(&self, queue: &str, max: u8) -> Result<Vec<PeekedMessage>> {
        let options = QueueClientPeekMessagesOptions {
            number_of_messages: Some(i32::from(max.clamp(1, MAX_BATCH))),
            ..Default::default()
        };
        let messages = self
            .queue(queue)?
            .peek_messages(Some(options))
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| sdk_error(Service::Queue, format!("peek at messages of queue {queue:?}"), e))?;
        Ok(messages.items.unwrap_or_default())
    }
}

/// Azure's queue naming rules.
fn valid_queue_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.and_then(|t| t.format(&Rfc3339).ok())
}

#[async_trait]
impl JobQueue for AzureQueue {
    async fn ensure(&self, queue: &str) -> Result<()> {
        match self.queue(queue)?.create(None).await {
            Ok(_) => Ok(()),
            // Exists with other metadata: still the queue we want.
            Err(e) if e.http_status() == Some(StatusCode::Conflict) => {
                let being_deleted = matches!(
                    e.kind(),
                    ErrorKind::HttpResponse { error_code: Some(c), .. } if c == "QueueBeingDeleted"
                );
                if being_deleted {
                    Err(Error::transient(format!(
                        "create queue {queue:?}: the queue is being deleted; try again later"
                    )))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(sdk_error(Service::Queue, format!("create queue {queue:?}"), e)),
        }
    }

    async fn send_delayed(&self, queue: &str, text: &str, delay_secs: u32) -> Result<()> {
        let what = || format!("send a delayed message to queue {queue:?}");
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(Error::permanent(format!(
                "{}: the message is {} bytes, more than the 64 KiB a queue message may hold",
                what(),
                text.len()
            )));
        }
        // Azure's limit; the default time-to-live (7 days) must outlast the delay.
        let delay = delay_secs.min(6 * 24 * 3600);
        let body = RequestContent::try_from(QueueMessage { message_text: Some(text.to_string()) })
            .map_err(|e| sdk_error(Service::Queue, what(), e))?;
        let options = QueueClientSendMessageOptions { visibility_timeout: Some(delay as i32), ..Default::default() };
        self.queue(queue)?.send_message(body, Some(options)).await.map_err(|e| sdk_error(Service::Queue, what(), e))?;
        Ok(())
    }

    async fn send(&self, queue: &str, text: &str, keep_forever: bool) -> Result<()> {
        let what = || format!("send a message to queue {queue:?}");
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(Error::permanent(format!(
                "{}: the message is {} bytes, more than the 64 KiB a queue message may hold",
                what(),
                text.len()
            )));
        }
        let body = RequestContent::try_from(QueueMessage { message_text: Some(text.to_string()) })
            .map_err(|e| sdk_error(Service::Queue, what(), e))?;
        let options = QueueClientSendMessageOptions {
            // -1: the message never expires.
            message_time_to_live: keep_forever.then_some(-1),
            ..Default::default()
        };
        self.queue(queue)?.send_message(body, Some(options)).await.map_err(|e| sdk_error(Service::Queue, what(), e))?;
        Ok(())
    }

    async fn receive(&self, queue: &str, max: u8, visibility_secs: u32) -> Result<Vec<Received>> {
        let what = || format!("receive messages from queue {queue:?}");
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(i32::from(max.clamp(1, MAX_BATCH))),
            visibility_timeout: Some(visibility_secs.clamp(1, MAX_VISIBILITY_SECS) as i32),
            ..Default::default()
        };
        let messages = self
            .queue(queue)?
            .receive_messages(Some(options))
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| sdk_error(Service::Queue, what(), e))?;
        messages
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let (Some(id), Some(pop_receipt)) = (m.message_id, m.pop_receipt) else {
                    return Err(Error::transient(format!(
                        "{}: the service returned a message without id or pop receipt",
                        what()
                    )));
                };
                Ok(Received {
                    id,
                    pop_receipt,
                    dequeue_count: m.dequeue_count.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
                    text: m.message_text.unwrap_or_default(),
                    inserted_at: rfc3339(m.insertion_time),
                    expires_at: rfc3339(m.expiration_time),
                })
            })
            .collect()
    }

    async fn peek(&self, queue: &str, max: u8) -> Result<Vec<String>> {
        Ok(self.peeked(queue, max).await?.into_iter().map(|m| m.message_text.unwrap_or_default()).collect())
    }

    async fn oldest_waiting(&self, queue: &str) -> Result<Option<OffsetDateTime>> {
        Ok(self.peeked(queue, 1).await?.into_iter().next().and_then(|m| m.insertion_time))
    }

    async fn delete(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<()> {
        let what = || format!("delete message {id:?} from queue {queue:?}");
        check_message_id(id).map_err(|e| e.context(what()))?;
        match self.queue(queue)?.delete_message(id, pop_receipt, None).await {
            Ok(_) => Ok(()),
            // Already deleted (by us on an earlier try, or expired).
            Err(e) if is_message_gone(&e) => Ok(()),
            Err(e) => Err(sdk_error(Service::Queue, what(), e)),
        }
    }

    async fn release(&self, queue: &str, id: &str, pop_receipt: &str, visibility_secs: u32) -> Result<()> {
        let what = || format!("release message {id:?} of queue {queue:?}");
        check_message_id(id).map_err(|e| e.context(what()))?;
        // Update Message without a body keeps the text and only moves the visibility time.
        let visibility = visibility_secs.min(MAX_VISIBILITY_SECS) as i32;
        match self.queue(queue)?.update_message(id, pop_receipt, visibility, None).await {
            Ok(_) => Ok(()),
            // Deleted or expired meanwhile: there is nothing left to release.
            Err(e) if is_message_gone(&e) => Ok(()),
            Err(e) => Err(sdk_error(Service::Queue, what(), e)),
        }
    }
}

/// The SDK puts the message id into the URL path unescaped; ids are GUIDs, so refuse the rest.
fn check_message_id(id: &str) -> Result<()> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err(Error::permanent(format!("invalid message id {id:?}")))
    }
}

/// A 404 about the message (not about the queue, which is a configuration error).
fn is_message_gone(e: &azure_core::Error) -> bool {
    e.http_status() == Some(StatusCode::NotFound)
        && !matches!(
            e.kind(),
            ErrorKind::HttpResponse { error_code: Some(c), .. } if c == "QueueNotFound"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(valid_queue_name("pgvault-jobs"));
        assert!(valid_queue_name("pgvault-jobs-rejected"));
        for bad in ["ab", "Jobs", "-jobs", "jobs-", "a--b", "a_b"] {
            assert!(!valid_queue_name(bad), "{bad:?}");
        }
    }
}
