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
//!
//! Slots ([`acquire_slot`]) are the same claims numbered `0..n` within a group: at most `n`
//! deliveries hold one of the group at once. `backup-worker` claims a dump slot of the job's
//! server before it dumps, which bounds the dumps one PostgreSQL server gets however far the
//! plan scales out.

use crate::domain::error::{Error, Result};
use crate::seams::store::{BlobStore, CreateOutcome};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const PREFIX: &str = "@claims/";

/// Longer than the host's `functionTimeout` (4 h in `host.json`).
pub const LEASE: time::Duration = time::Duration::minutes(4 * 60 + 10);

/// Who holds a claim: the delivery running the job, since when, and until when a claim left
/// behind (its holder died) may not be taken over by another delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub message_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// `None`: no lease (a CLI run, which no `functionTimeout` bounds): only the same delivery,
    /// an ended run (see [`crate::features::restore::execute_task`]) or `--take-over` replaces it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Who is asking for a claim.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue message (or a unique id for a CLI run).
    pub message_id: String,
    pub lease: Option<time::Duration>,
    /// Take the claim whoever holds it (the operator's `--take-over`).
    pub force: bool,
}

impl Delivery {
    /// A queue message delivered by the Functions host. Without an id (a payload that lacks it)
    /// the delivery is unique: it must never pass for another delivery's redelivery.
    pub fn queued(message_id: &str) -> Delivery {
        let message_id = if message_id.is_empty() {
            format!("anonymous-{}", uuid::Uuid::new_v4().simple())
        } else {
            message_id.to_string()
        };
        Delivery { message_id, lease: Some(LEASE), force: false }
    }

    /// A run of the CLI.
    pub fn cli(force: bool) -> Delivery {
        Delivery { message_id: format!("cli-{}", uuid::Uuid::new_v4().simple()), lease: None, force }
    }
}

/// What [`acquire_slot`] got.
#[derive(Debug)]
pub enum Slot {
    /// This delivery holds slot `index` of the group; release it when done.
    Owned { index: u32, claim: Claim },
    /// Every slot is held by another delivery.
    Full { holders: Vec<Holder> },
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
    found.message_id == message_id || found.expires_at.is_some_and(|e| now > e)
}

/// Claim the run of job `id` of `kind` for `delivery`.
pub async fn acquire(
    store: &dyn BlobStore,
    kind: &str,
    id: &str,
    delivery: &Delivery,
    now: OffsetDateTime,
) -> Result<Claimed> {
    let name = name(kind, id);
    let me =
        Holder { message_id: delivery.message_id.clone(), since: now, expires_at: delivery.lease.map(|l| now + l) };
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
            Some(h) if !delivery.force && !may_take_over(&h, &me.message_id, now) => return Ok(Claimed::HeldBy(h)),
            found => {
                tracing::warn!(claim = %name, holder = ?found, force = delivery.force, "taking over a claim");
                store.delete(&name).await?;
            }
        }
    }
    Err(Error::transient(format!("claim {name:?} changed hands while it was being taken; the delivery is retried")))
}

/// Claim one of the `slots` slots of `group` (`@claims/<kind>/<group>/<index>`) for `delivery`.
///
/// A slot this delivery's message already holds (the host redelivered it after the earlier
/// delivery died) is taken over first, so a redelivery never holds two; otherwise the lowest
/// free one, or one whose lease is over. Slots at or above `slots` (left from a larger setting)
/// are not counted: their holders release them when they end, or their leases run out.
pub async fn acquire_slot(
    store: &dyn BlobStore,
    kind: &str,
    group: &str,
    slots: u32,
    delivery: &Delivery,
    now: OffsetDateTime,
) -> Result<Slot> {
    let group_prefix = name(kind, &format!("{group}/"));
    let mut order: Vec<u32> = Vec::with_capacity(slots as usize);
    if !delivery.force {
        for blob in store.list(&group_prefix).await? {
            let Some(index) = blob.name[group_prefix.len()..].parse::<u32>().ok().filter(|i| *i < slots) else {
                continue;
            };
            let mine = match store.get(&blob.name).await {
                Ok(bytes) => {
                    serde_json::from_slice::<Holder>(&bytes).is_ok_and(|h| h.message_id == delivery.message_id)
                }
                Err(e) if e.is_permanent() => false, // released meanwhile
                Err(e) => return Err(e),
            };
            if mine {
                order.push(index);
            }
        }
    }
    let rest: Vec<u32> = (0..slots).filter(|i| !order.contains(i)).collect();
    order.extend(rest);
    let mut holders = Vec::new();
    for index in order {
        match acquire(store, kind, &format!("{group}/{index}"), delivery, now).await? {
            Claimed::Owned(claim) => return Ok(Slot::Owned { index, claim }),
            Claimed::HeldBy(h) => holders.push(h),
        }
    }
    Ok(Slot::Full { holders })
}

/// Take over a claim whose holder is known to have ended (its run is over, but removing the
/// claim failed), then hold it.
pub async fn take_over(
    store: &dyn BlobStore,
    kind: &str,
    id: &str,
    delivery: &Delivery,
    now: OffsetDateTime,
) -> Result<Claimed> {
    acquire(store, kind, id, &Delivery { force: true, ..delivery.clone() }, now).await
}

impl Claim {
    /// Remove the claim. On failure the claim stays behind: a redelivery of the same message
    /// takes it over at once, another delivery when the holder's run has ended or its lease is
    /// over. The caller decides whether that matters.
    pub async fn release(self, store: &dyn BlobStore) -> Result<()> {
        store.delete(&self.name).await.map_err(|e| {
            tracing::warn!(claim = %self.name, error = %e, "could not remove a claim");
            e.context(format!("remove claim {:?}", self.name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::store::local::LocalStore;
    use time::macros::datetime;

    fn queued(id: &str) -> Delivery {
        Delivery { message_id: id.into(), lease: Some(LEASE), force: false }
    }

    async fn slot(store: &LocalStore, slots: u32, message: &str, now: OffsetDateTime) -> Slot {
        acquire_slot(store, "dump-slot", "main", slots, &queued(message), now).await.unwrap()
    }

    fn owned(s: Slot) -> (u32, Claim) {
        match s {
            Slot::Owned { index, claim } => (index, claim),
            Slot::Full { holders } => panic!("expected a free slot, all held by {holders:?}"),
        }
    }

    #[tokio::test]
    async fn slots_bound_the_holders_of_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let now = datetime!(2026-11-21 02:00 UTC);
        let (i1, c1) = owned(slot(&store, 2, "m1", now).await);
        let (i2, c2) = owned(slot(&store, 2, "m2", now).await);
        assert_eq!((i1, i2), (0, 1));
        match slot(&store, 2, "m3", now).await {
            Slot::Full { holders } => {
                let ids: Vec<&str> = holders.iter().map(|h| h.message_id.as_str()).collect();
                assert_eq!(ids, ["m1", "m2"]);
            }
            Slot::Owned { index, .. } => panic!("a third delivery got slot {index} of 2"),
        }
        // Another group is not affected.
        assert!(matches!(
            acquire_slot(&store, "dump-slot", "other", 2, &queued("m3"), now).await.unwrap(),
            Slot::Owned { index: 0, .. }
        ));
        // A released slot is free again.
        c1.release(&store).await.unwrap();
        let (i3, c3) = owned(slot(&store, 2, "m3", now).await);
        assert_eq!(i3, 0);
        // A redelivery of a holder's message (its delivery died) takes its own slot back, even
        // when a lower one is free: it never holds two.
        c3.release(&store).await.unwrap();
        let (again, _c) = owned(slot(&store, 2, "m2", now).await);
        assert_eq!(again, 1, "m2's own slot");
        drop(c2);
        assert!(matches!(slot(&store, 2, "m4", now).await, Slot::Owned { index: 0, .. }));
        assert!(matches!(slot(&store, 2, "m5", now).await, Slot::Full { .. }));
        // A slot whose holder died and whose lease is over is taken.
        let later = now + LEASE + time::Duration::minutes(1);
        assert!(matches!(slot(&store, 2, "m5", later).await, Slot::Owned { .. }));
        // Fewer slots than before: slots above the new count do not count, and are not handed out.
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let _held: Vec<Claim> = [owned(slot(&store, 3, "a", now).await), owned(slot(&store, 3, "b", now).await)]
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let (i, _c) = owned(slot(&store, 3, "c", now).await);
        assert_eq!(i, 2);
        assert!(matches!(slot(&store, 1, "d", now).await, Slot::Full { .. }));
        assert!(matches!(slot(&store, 1, "c", now).await, Slot::Full { .. }), "c's slot 2 is beyond 1");
    }

    #[test]
    fn a_claim_is_taken_over_by_its_own_message_or_after_the_lease() {
        let since = datetime!(2026-11-21 10:00 UTC);
        let h = Holder { message_id: "m1".into(), since, expires_at: Some(since + LEASE) };
        assert!(may_take_over(&h, "m1", since + time::Duration::minutes(1)));
        assert!(!may_take_over(&h, "m2", since + time::Duration::hours(4)));
        assert!(may_take_over(&h, "m2", since + time::Duration::hours(5)));
        let cli = Holder { expires_at: None, ..h };
        assert!(!may_take_over(&cli, "m2", since + time::Duration::days(3)), "a CLI run has no lease");
    }

    #[tokio::test]
    async fn one_delivery_owns_a_job_until_it_releases() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let now = datetime!(2026-11-21 10:00 UTC);
        let Claimed::Owned(first) = acquire(&store, "restore-task", "r1-1", &queued("m1"), now).await.unwrap() else {
            panic!("the first delivery owns it")
        };
        match acquire(&store, "restore-task", "r1-1", &queued("m2"), now).await.unwrap() {
            Claimed::HeldBy(h) => assert_eq!(h.message_id, "m1"),
            Claimed::Owned(_) => panic!("a second message must stand down"),
        }
        assert!(matches!(
            acquire(&store, "restore-task", "r1-2", &queued("m2"), now).await.unwrap(),
            Claimed::Owned(_)
        ));
        // Deliveries without a message id never take over each other.
        let anonymous = || Delivery::queued("");
        assert!(matches!(acquire(&store, "restore-task", "r1-3", &anonymous(), now).await.unwrap(), Claimed::Owned(_)));
        assert!(matches!(
            acquire(&store, "restore-task", "r1-3", &anonymous(), now).await.unwrap(),
            Claimed::HeldBy(_)
        ));
        // The same message again (its delivery died): taken over.
        let Claimed::Owned(again) = acquire(&store, "restore-task", "r1-1", &queued("m1"), now).await.unwrap() else {
            panic!("a redelivery of the holder's message takes over")
        };
        drop(first);
        again.release(&store).await.unwrap();
        assert!(matches!(
            acquire(&store, "restore-task", "r1-1", &queued("m2"), now).await.unwrap(),
            Claimed::Owned(_)
        ));
        // A CLI run holds without a lease; forcing (or an ended run) takes it over.
        let cli = Delivery::cli(false);
        assert!(matches!(acquire(&store, "restore-task", "r1-4", &cli, now).await.unwrap(), Claimed::Owned(_)));
        let much_later = now + time::Duration::days(2);
        assert!(matches!(
            acquire(&store, "restore-task", "r1-4", &queued("m9"), much_later).await.unwrap(),
            Claimed::HeldBy(_)
        ));
        assert!(matches!(
            take_over(&store, "restore-task", "r1-4", &queued("m9"), much_later).await.unwrap(),
            Claimed::Owned(_)
        ));
        // Claims are not backups.
        assert!(crate::features::catalog::list(&store, None, None).await.unwrap().is_empty());
    }
}
