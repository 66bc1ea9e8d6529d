//! Claims: at most one running delivery per job, across workers.
//!
//! Queues deliver at least once, and a restore request that fails partway through enqueueing
//! is retried and enqueues some of its tasks again: two messages then carry one task. Whichever
//! runs first creates `@claims/<kind>/<id>` with create-if-absent (If-None-Match: `*`, atomic in
//! both stores). A second delivery finds the claim and stands down, while the first one's own
//! message keeps the task alive: it is retried if that delivery fails. The claim is removed when
//! the run ends, whatever the outcome.
//!
//! A claim is taken over (removed, then created again) when it is the same message's, which
//! means the host redelivered it because the earlier delivery died, or when it is older than the
//! lease, which is longer than any delivery may run (`functionTimeout`). Two takeovers racing
//! each other are not excluded: that needs a dead holder plus two more deliveries of the task
//! within moments.

use crate::error::Result;
use crate::store::{BlobStore, CreateOutcome};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const PREFIX: &str = "@claims/";

/// Longer than the host's `functionTimeout` (4 h in `host.json`).
pub const LEASE: time::Duration = time::Duration::minutes(4 * 60 + 10);

/// Who holds a claim: the queue message being run, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub message_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

#[derive(Debug)]
pub enum Claimed {
    /// This delivery runs the job; release the claim when done.
    Owned(Claim),
    /// Another delivery runs it now.
    HeldBy(Holder),
}

/// A claim held by this delivery.
#[derive(Debug)]
pub struct Claim {
    name: String,
}

pub fn name(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}/{id}")
}

/// Whether a found claim may be taken over by `message_id` at `now`. Pure.
pub fn may_take_over(found: &Holder, message_id: &str, now: OffsetDateTime) -> bool {
    found.message_id == message_id || now - found.since > LEASE
}

/// Claim the run of job `id` of `kind` for the queue message `message_id`.
pub async fn acquire(
    store: &dyn BlobStore,
    kind: &str,
    id: &str,
    message_id: &str,
    now: OffsetDateTime,
) -> Result<Claimed> {
    let name = name(kind, id);
    // Without a message id (a payload that lacks it), this delivery is unique: it must never
    // pass for another delivery's redelivery.
    let message_id = if message_id.is_empty() {
        format!("anonymous-{}", uuid::Uuid::new_v4().simple())
    } else {
        message_id.to_string()
    };
    let message_id = message_id.as_str();
    let me = Holder { message_id: message_id.to_string(), since: now };
    let body = Bytes::from(serde_json::to_vec(&me).expect("a claim serializes"));
    // Twice at most: once, and once more after removing a claim that may be taken over (or
    // that vanished between the create and the read).
    for _ in 0..2 {
        if store.create(&name, body.clone(), &Default::default()).await? == CreateOutcome::Created {
            return Ok(Claimed::Owned(Claim { name }));
        }
        let found = match store.get(&name).await {
            Ok(bytes) => serde_json::from_slice::<Holder>(&bytes).ok(),
            Err(e) if e.is_permanent() => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        match found {
            Some(h) if !may_take_over(&h, message_id, now) => return Ok(Claimed::HeldBy(h)),
            found => {
                tracing::warn!(claim = %name, holder = ?found, "taking over a claim whose delivery is gone");
                store.delete(&name).await?;
            }
        }
    }
    let bytes = store.get(&name).await?;
    let holder = serde_json::from_slice::<Holder>(&bytes).unwrap_or(me);
    Ok(Claimed::HeldBy(holder))
}

impl Claim {
    /// Remove the claim. Best effort: a claim left behind is taken over once its lease ends, or
    /// at once by a redelivery of the same message.
    pub async fn release(self, store: &dyn BlobStore) {
        if let Err(e) = store.delete(&self.name).await {
            tracing::warn!(claim = %self.name, error = %e, "could not remove a claim; it expires with its lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use time::macros::datetime;

    #[test]
    fn a_claim_is_taken_over_by_its_own_message_or_after_the_lease() {
        let since = datetime!(2026-11-21 10:00 UTC);
        let h = Holder { message_id: "m1".into(), since };
        assert!(may_take_over(&h, "m1", since + time::Duration::minutes(1)));
        assert!(!may_take_over(&h, "m2", since + time::Duration::hours(4)));
        assert!(may_take_over(&h, "m2", since + time::Duration::hours(5)));
    }

    #[tokio::test]
    async fn one_delivery_owns_a_job_until_it_releases() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let now = datetime!(2026-11-21 10:00 UTC);
        let Claimed::Owned(first) = acquire(&store, "restore-task", "r1-1", "m1", now).await.unwrap() else {
            panic!("the first delivery owns it")
        };
        match acquire(&store, "restore-task", "r1-1", "m2", now).await.unwrap() {
            Claimed::HeldBy(h) => assert_eq!(h.message_id, "m1"),
            Claimed::Owned(_) => panic!("a second message must stand down"),
        }
        assert!(matches!(acquire(&store, "restore-task", "r1-2", "m2", now).await.unwrap(), Claimed::Owned(_)));
        // Deliveries without a message id never take over each other.
        assert!(matches!(acquire(&store, "restore-task", "r1-3", "", now).await.unwrap(), Claimed::Owned(_)));
        assert!(matches!(acquire(&store, "restore-task", "r1-3", "", now).await.unwrap(), Claimed::HeldBy(_)));
        // The same message again (its delivery died): taken over.
        let Claimed::Owned(again) = acquire(&store, "restore-task", "r1-1", "m1", now).await.unwrap() else {
            panic!("a redelivery of the holder's message takes over")
        };
        drop(first);
        again.release(&store).await;
        assert!(matches!(acquire(&store, "restore-task", "r1-1", "m2", now).await.unwrap(), Claimed::Owned(_)));
        // Claims are not backups.
        assert!(crate::catalog::list(&store, None, None).await.unwrap().is_empty());
    }
}
