//! The storage contract (`pgvault::seams::store::BlobStore`), run against every implementation:
//! `LocalStore` on a temporary directory and `AzureBlobStore` on Azurite (HTTPS, OAuth).
//! Plus the Azure queue adapter on Azurite, and a TLS misconfiguration that must fail fast.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::TryStreamExt;
use pgvault::azure::{AzureBlobStore, AzureQueue, RetrySettings, client_options};
use pgvault::domain::error::Kind;
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::local::LocalStore;
use pgvault::seams::store::{BlobInfo, BlobStore, CreateOutcome, Tags, Tier};
use std::time::{Duration, Instant};

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Equal-length block ids that contain the awkward base64 characters `+` and `/`.
fn block_id(i: u32) -> String {
    let mut raw = [0xfb, 0xef, 0xbe, 0, 0, 0, 0, 0];
    raw[4..].copy_from_slice(&i.to_be_bytes());
    STANDARD.encode(raw)
}

/// Deterministic, incompressible-looking bytes (xorshift).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn commit_bytes(store: &dyn BlobStore, name: &str, parts: &[&[u8]], t: &Tags) {
    let ids: Vec<String> = (0..parts.len() as u32).map(block_id).collect();
    for (id, part) in ids.iter().zip(parts) {
        store
            .stage_block(name, id, Bytes::copy_from_slice(part))
            .await
            .unwrap_or_else(|e| panic!("stage {name} {id}: {e}"));
    }
    store.commit_blocks(name, &ids, t).await.unwrap_or_else(|e| panic!("commit {name}: {e}"));
}

async fn read_all(store: &dyn BlobStore, name: &str) -> Vec<u8> {
    let stream = store.read(name).await.unwrap_or_else(|e| panic!("read {name}: {e}"));
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap_or_else(|e| panic!("read stream {name}: {e}"));
    chunks.concat()
}

fn assert_permanent<T: std::fmt::Debug>(r: pgvault::domain::error::Result<T>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected a permanent error, got Ok({v:?})"),
        Err(e) => assert_eq!(e.kind(), Kind::Permanent, "{what}: {e}"),
    }
}

/// Every promise of the `BlobStore` trait.
async fn contract(store: &dyn BlobStore) {
    let d = store.describe();
    assert!(!d.is_empty());

    // --- stage + commit round trip: several blocks, staged out of order, one re-staged.
    let name = "servers/pg1/app/2026/dump.zst";
    let a = pseudo_random(100 * 1024, 1);
    let b = pseudo_random(1024 * 1024 + 7, 2);
    let c = b"tail".to_vec();
    let ids: Vec<String> = (0..3).map(block_id).collect();
    assert!(ids.iter().all(|id| id.len() == ids[0].len()));
    assert!(ids.iter().any(|id| id.contains('+') || id.contains('/')));
    store.stage_block(name, &ids[2], Bytes::from(c.clone())).await.unwrap();
    store.stage_block(name, &ids[0], Bytes::from_static(b"to be replaced")).await.unwrap();
    store.stage_block(name, &ids[1], Bytes::from(b.clone())).await.unwrap();
    // Staging the same id again replaces the block.
    store.stage_block(name, &ids[0], Bytes::from(a.clone())).await.unwrap();

    // --- uncommitted blocks are invisible.
    assert!(!store.exists(name).await.unwrap(), "{d}: staged blob visible");
    assert!(store.list("servers/").await.unwrap().is_empty());
    assert_permanent(store.get(name).await, "get of a staged-only blob");

    let t1 = tags(&[("kind", "dump"), ("db", "app"), ("ts", "2026-01-02T03:04:05Z")]);
    store.commit_blocks(name, &ids, &t1).await.unwrap();
    let want = [a.as_slice(), b.as_slice(), c.as_slice()].concat();
    assert!(store.exists(name).await.unwrap());
    assert_eq!(store.get(name).await.unwrap(), want, "{d}: committed content");
    assert_eq!(store.tags(name).await.unwrap(), t1, "{d}: tags on commit");
    let listed = store.list("servers/").await.unwrap();
    assert_eq!(
        listed.iter().map(|b| (b.name.as_str(), b.size)).collect::<Vec<_>>(),
        [(name, want.len() as u64)],
        "{d}: listing"
    );
    // The listing says when the blob was written (job-record pruning relies on it).
    let written = listed[0].last_modified.expect("last modified in the listing");
    let age = time::OffsetDateTime::now_utc() - written;
    assert!(age < time::Duration::minutes(1) && age > time::Duration::seconds(-5), "{d}: last modified {written}");

    // --- ranged reads: exactly the bytes asked for, across block boundaries; past the end, what
    // there is.
    for range in [0..10u64, 100 * 1024 - 3..100 * 1024 + 5, 5000..want.len() as u64, want.len() as u64 - 2..u64::MAX] {
        let stream = store.read_range(name, range.clone()).await.unwrap();
        let got: Vec<Bytes> = stream.try_collect().await.unwrap();
        let end = range.end.min(want.len() as u64) as usize;
        assert_eq!(got.concat(), &want[range.start as usize..end], "{d}: read_range {range:?}");
    }

    // --- re-commit replaces content and tags; staging alone does not change what readers see.
    let new_ids: Vec<String> = (10..12).map(block_id).collect();
    store.stage_block(name, &new_ids[0], Bytes::from_static(b"second ")).await.unwrap();
    store.stage_block(name, &new_ids[1], Bytes::from_static(b"version")).await.unwrap();
    assert_eq!(store.get(name).await.unwrap(), want, "{d}: staging changed the committed content");
    let t2 = tags(&[("kind", "dump"), ("note", "a b=c/d:e_f+g-h.i")]);
    store.commit_blocks(name, &new_ids, &t2).await.unwrap();
    assert_eq!(store.get(name).await.unwrap(), &b"second version"[..]);
    assert_eq!(store.tags(name).await.unwrap(), t2);

    // --- a commit naming a block that was never staged fails permanently, changing nothing.
    let r = store.commit_blocks(name, &[block_id(99)], &Tags::new()).await;
    assert_permanent(r, "commit of a never-staged block");
    assert_eq!(store.get(name).await.unwrap(), &b"second version"[..]);
    let r = store.commit_blocks("servers/pg1/never/x", &[block_id(98)], &Tags::new()).await;
    assert_permanent(r, "commit of a never-staged block of a new blob");
    assert!(!store.exists("servers/pg1/never/x").await.unwrap());

    // --- an empty commit makes an empty blob.
    store.commit_blocks("servers/empty", &[], &Tags::new()).await.unwrap();
    assert_eq!(store.get("servers/empty").await.unwrap().len(), 0);
    assert!(read_all(store, "servers/empty").await.is_empty());
    assert_eq!(store.tags("servers/empty").await.unwrap(), Tags::new());

    // --- discard_staged: whatever a store does, nothing becomes visible.
    store.stage_block("servers/abandoned", &block_id(0), Bytes::from_static(b"x")).await.unwrap();
    store.discard_staged("servers/abandoned").await.unwrap();
    store.discard_staged("servers/never-staged").await.unwrap();
    assert!(!store.exists("servers/abandoned").await.unwrap());

    // --- create-if-absent.
    let m = "manifests/pg1/app/2026.json";
    let mt = tags(&[("kind", "manifest")]);
    let first = Bytes::from_static(br#"{"v":1,"attempt":"first"}"#);
    assert_eq!(store.create(m, first.clone(), &mt).await.unwrap(), CreateOutcome::Created);
    assert_eq!(
        store.create(m, Bytes::from_static(b"second"), &tags(&[("kind", "other")])).await.unwrap(),
        CreateOutcome::AlreadyExists
    );
    assert_eq!(store.get(m).await.unwrap(), first, "{d}: create overwrote");
    assert_eq!(store.tags(m).await.unwrap(), mt, "{d}: create changed tags");
    // Also refused over a blob written with blocks.
    assert_eq!(store.create(name, Bytes::from_static(b"x"), &Tags::new()).await.unwrap(), CreateOutcome::AlreadyExists);
    assert_eq!(store.get(name).await.unwrap(), &b"second version"[..]);
    // An empty blob can be created too.
    assert_eq!(store.create("manifests/empty", Bytes::new(), &Tags::new()).await.unwrap(), CreateOutcome::Created);
    assert_eq!(store.get("manifests/empty").await.unwrap().len(), 0);

    // --- put: a whole small blob at once, replacing content and tags; idempotent.
    let r = "@jobs/backup/put.json";
    let rt1 = tags(&[("pgvault", "job"), ("status", "running")]);
    store.put(r, Bytes::from_static(br#"{"status":"running"}"#), &rt1).await.unwrap();
    assert!(store.exists(r).await.unwrap());
    assert_eq!(store.get(r).await.unwrap(), &br#"{"status":"running"}"#[..], "{d}: put content");
    assert_eq!(store.tags(r).await.unwrap(), rt1, "{d}: put tags");
    let rt2 = tags(&[("pgvault", "job"), ("status", "succeeded")]);
    let second = Bytes::from_static(br#"{"status":"succeeded","summary":"a longer document than before"}"#);
    store.put(r, second.clone(), &rt2).await.unwrap();
    store.put(r, second.clone(), &rt2).await.unwrap(); // the same put again (a retry)
    assert_eq!(store.get(r).await.unwrap(), second, "{d}: put did not replace the content");
    assert_eq!(read_all(store, r).await, second, "{d}: read after put");
    assert_eq!(store.tags(r).await.unwrap(), rt2, "{d}: put did not replace the tags");
    let listed = store.list("@jobs/backup/").await.unwrap();
    assert_eq!(
        listed.iter().map(|b| (b.name.as_str(), b.size)).collect::<Vec<_>>(),
        [(r, second.len() as u64)],
        "{d}: listing after put"
    );
    // Over a blob written with blocks, and over one created: both replaced.
    store.put(name, Bytes::from_static(b"put over blocks"), &Tags::new()).await.unwrap();
    assert_eq!(store.get(name).await.unwrap(), &b"put over blocks"[..]);
    assert_eq!(store.tags(name).await.unwrap(), Tags::new(), "{d}: put kept the old tags");
    commit_bytes(store, name, &[b"second ", b"version"], &t2).await;
    store.put("manifests/empty", Bytes::from_static(b"now full"), &Tags::new()).await.unwrap();
    assert_eq!(store.get("manifests/empty").await.unwrap(), &b"now full"[..]);
    // An empty put makes an empty blob; a put blob refuses create like any other.
    store.put("@jobs/empty.json", Bytes::new(), &Tags::new()).await.unwrap();
    assert_eq!(store.get("@jobs/empty.json").await.unwrap().len(), 0);
    assert_eq!(store.create(r, Bytes::from_static(b"x"), &Tags::new()).await.unwrap(), CreateOutcome::AlreadyExists);
    assert_eq!(store.get(r).await.unwrap(), second);
    // Atomic: concurrent readers of a blob being replaced see one whole version, never a mix.
    let v1 = Bytes::from(pseudo_random(3 * 1024 * 1024, 11));
    let v2 = Bytes::from(pseudo_random(3 * 1024 * 1024 + 5, 12));
    let swap = "@jobs/swap.json";
    store.put(swap, v1.clone(), &Tags::new()).await.unwrap();
    let writer = async {
        for i in 0..4 {
            let v = if i % 2 == 0 { v2.clone() } else { v1.clone() };
            store.put(swap, v, &Tags::new()).await.unwrap();
        }
    };
    let reader = async {
        for _ in 0..4 {
            let got = store.get(swap).await.unwrap();
            assert!(got == v1 || got == v2, "{d}: a reader saw a mix of two puts ({} bytes)", got.len());
        }
    };
    tokio::join!(writer, reader);
    store.delete(swap).await.unwrap();
    store.delete("@jobs/empty.json").await.unwrap();

    // --- missing blobs: permanent errors for get, read and tags; exists is false.
    let missing = "servers/pg1/app/missing.zst";
    assert_permanent(store.get(missing).await, "get of a missing blob");
    assert_permanent(store.read(missing).await.map(|_| ()), "read of a missing blob");
    assert_permanent(store.tags(missing).await, "tags of a missing blob");
    assert!(!store.exists(missing).await.unwrap());

    // --- read streams the exact bytes of a multi-MiB blob, in order.
    let big_name = "servers/pg1/big/dump.zst";
    let block = 4 * 1024 * 1024;
    let big = pseudo_random(17 * 1024 * 1024 + 123, 3);
    let parts: Vec<&[u8]> = big.chunks(block).collect();
    commit_bytes(store, big_name, &parts, &Tags::new()).await;
    let got = read_all(store, big_name).await;
    assert_eq!(got.len(), big.len(), "{d}: read length");
    assert!(got == big, "{d}: read returned different bytes");

    // --- list: by prefix, sorted, committed blobs only, other prefixes excluded.
    for n in ["list/b/d", "list/a", "lister/x", "list/b/c", "other/y"] {
        commit_bytes(store, n, &[n.as_bytes()], &Tags::new()).await;
    }
    store.stage_block("list/staged-only", &block_id(0), Bytes::from_static(b"x")).await.unwrap();
    let names = |v: Vec<BlobInfo>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
    assert_eq!(names(store.list("list/").await.unwrap()), ["list/a", "list/b/c", "list/b/d"]);
    assert_eq!(names(store.list("list").await.unwrap()), ["list/a", "list/b/c", "list/b/d", "lister/x"]);
    assert_eq!(names(store.list("list/b/").await.unwrap()), ["list/b/c", "list/b/d"]);
    assert!(store.list("nothing/").await.unwrap().is_empty());
    let sizes = store.list("list/b/").await.unwrap();
    assert_eq!(sizes[0].size, "list/b/c".len() as u64);
    let all = names(store.list("").await.unwrap());
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "{d}: list is not sorted");
    for n in [name, m, big_name, "other/y", "list/a", "servers/empty"] {
        assert!(all.iter().any(|x| x == n), "{d}: {n} missing from {all:?}");
    }
    assert!(!all.iter().any(|x| x.contains("staged-only") || x.contains("never")));

    // --- names with spaces, '=', unicode.
    let odd = "odd names/db=app one/ünïcødé 日本 + 100%.zst";
    let odd_tags = tags(&[("db", "app one")]);
    assert_eq!(store.create(odd, Bytes::from_static("ü".as_bytes()), &odd_tags).await.unwrap(), CreateOutcome::Created);
    assert!(store.exists(odd).await.unwrap());
    assert_eq!(store.get(odd).await.unwrap(), "ü".as_bytes());
    assert_eq!(store.tags(odd).await.unwrap(), odd_tags);
    assert_eq!(names(store.list("odd names/").await.unwrap()), [odd]);
    assert_eq!(names(store.list("odd names/db=app one/ü").await.unwrap()), [odd]);
    let odd2 = "odd names/db=x/a b=c ünï.zst";
    commit_bytes(store, odd2, &[b"12", b"34"], &Tags::new()).await;
    assert_eq!(read_all(store, odd2).await, b"1234");
    assert_eq!(names(store.list("odd names/").await.unwrap()), [odd, odd2], "sorted by bytes: 'db=a' < 'db=x'");

    // --- delete: removes, and is idempotent.
    store.delete(odd).await.unwrap();
    assert!(!store.exists(odd).await.unwrap());
    assert_permanent(store.get(odd).await, "get after delete");
    store.delete(odd).await.unwrap();
    store.delete("never/existed").await.unwrap();
    store.delete(big_name).await.unwrap();
    assert!(!store.exists(big_name).await.unwrap());
    assert_eq!(names(store.list("odd names/").await.unwrap()), [odd2]);
    // A deleted name can be created again.
    assert_eq!(store.create(odd, Bytes::from_static(b"again"), &Tags::new()).await.unwrap(), CreateOutcome::Created);
    assert_eq!(store.get(odd).await.unwrap(), &b"again"[..]);
}

#[tokio::test]
async fn local_store_honours_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    contract(&store).await;

    // No access tiers: a clear, permanent "not supported", recognisable without the text.
    commit_bytes(&store, "tiers/data", &[b"x"], &Tags::new()).await;
    let e = store.set_tier("tiers/data", Tier::Cool).await.unwrap_err();
    assert!(e.is_unsupported() && e.is_permanent(), "{e}");
    assert!(e.to_string().contains("not supported by the local store"), "{e}");
    let e = store.properties("tiers/data").await.unwrap_err();
    assert!(e.is_unsupported() && !e.is_immutable(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blob_store_honours_the_contract_on_azurite() {
    let ca = support::TestCa::new();
    let az = support::Azurite::start(&ca).await;
    let options = client_options(Some(ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
    let store = AzureBlobStore::new(&az.blob_endpoint, "pgvault-contract", support::test_credential(), options.clone())
        .await
        .unwrap();
    store.ensure_container().await.unwrap();
    store.ensure_container().await.unwrap(); // idempotent

    // Debug never shows a token, only the container URL.
    let debug = format!("{store:?}");
    assert!(debug.contains("pgvault-contract") && !debug.contains("eyJ"), "{debug}");
    assert!(store.describe().starts_with("azure:https://127.0.0.1:"));

    contract(&store).await;

    // Access tiers: Azurite keeps Hot and Cool (archive is accepted but not emulated).
    commit_bytes(&store, "tiers/data", &[b"tiered bytes"], &Tags::new()).await;
    let before = time::OffsetDateTime::now_utc();
    store.set_tier("tiers/data", Tier::Cool).await.unwrap();
    let p = store.properties("tiers/data").await.unwrap();
    assert_eq!((p.size, p.tier, p.archive_status.as_deref()), (12, Some(Tier::Cool), None), "{p:?}");
    // The last tier change (x-ms-access-tier-change-time, which retention reads so as not to
    // archive again a blob a restore just rehydrated): Azurite reports it, to the second.
    let changed = p.tier_changed_at.expect("Azurite reports x-ms-access-tier-change-time after Set Blob Tier");
    let skew = time::Duration::seconds(5);
    assert!(changed >= before - skew && changed <= time::OffsetDateTime::now_utc() + skew, "{changed} vs {before}");
    store.set_tier("tiers/data", Tier::Hot).await.unwrap();
    assert_eq!(store.properties("tiers/data").await.unwrap().tier, Some(Tier::Hot));
    let e = store.properties("tiers/missing").await.unwrap_err();
    assert!(e.is_permanent() && !e.is_unsupported(), "{e}");

    // A trailing slash on the endpoint is tolerated.
    let slash = AzureBlobStore::new(
        &format!("{}/", az.blob_endpoint),
        "pgvault-contract",
        support::test_credential(),
        options.clone(),
    )
    .await
    .unwrap();
    assert!(slash.exists("servers/empty").await.unwrap());

    // A container that does not exist: a permanent error naming the blob.
    let nowhere =
        AzureBlobStore::new(&az.blob_endpoint, "no-such-container", support::test_credential(), options).await.unwrap();
    let e = nowhere.get("a/b").await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().starts_with("read blob \"a/b\": http 404"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_queue_on_azurite() {
    let ca = support::TestCa::new();
    let az = support::Azurite::start(&ca).await;
    let options = client_options(Some(ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
    let q = AzureQueue::new(&az.queue_endpoint, support::test_credential(), options).unwrap();
    let queue = "pgvault-jobs";
    q.ensure(queue).await.unwrap();
    q.ensure(queue).await.unwrap(); // idempotent

    // JSON with quotes, apostrophes, ampersands, angle brackets, unicode and an emoji goes
    // through the XML envelope unchanged.
    let json = r#"{"kind":"dump","db":"a \"quoted\" & <tagged> 'name'","note":"ünïcødé 日本 🎉","n":1}"#;
    assert_eq!(q.oldest_waiting(queue).await.unwrap(), None, "an empty queue");
    let before = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - time::Duration::seconds(1);
    q.send(queue, json, false).await.unwrap();
    assert_eq!(q.peek(queue, 32).await.unwrap(), [json]);
    let since = q.oldest_waiting(queue).await.unwrap().expect("the message waits");
    assert!(since >= before && since <= time::OffsetDateTime::now_utc(), "{since}");

    let got = q.receive(queue, 1, 30).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.text, json);
    assert_eq!(m.dequeue_count, 1);
    assert!(!m.id.is_empty() && !m.pop_receipt.is_empty());
    assert!(m.inserted_at.is_some() && m.expires_at.is_some(), "{m:?}");
    // Received messages are hidden from peek, and none waits at the head any more.
    assert!(q.peek(queue, 32).await.unwrap().is_empty());
    assert_eq!(q.oldest_waiting(queue).await.unwrap(), None);
    q.delete(queue, &m.id, &m.pop_receipt).await.unwrap();
    q.delete(queue, &m.id, &m.pop_receipt).await.unwrap(); // idempotent
    assert!(q.receive(queue, 32, 30).await.unwrap().is_empty());

    // Text that is valid base64 is still sent verbatim (no encoding either way).
    q.send(queue, "aGVsbG8=", false).await.unwrap();
    assert_eq!(q.peek(queue, 1).await.unwrap(), ["aGVsbG8="]);
    let got = q.receive(queue, 1, 1).await.unwrap();
    assert_eq!(got[0].text, "aGVsbG8=");
    // After the visibility timeout, the message is back, with a higher dequeue count.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = q.receive(queue, 1, 30).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].dequeue_count, 2);
    q.delete(queue, &again[0].id, &again[0].pop_receipt).await.unwrap();

    // A delayed message is there but invisible until its delay has passed.
    let delayed = "pgvault-delayed";
    q.ensure(delayed).await.unwrap();
    q.send_delayed(delayed, "later", 3600).await.unwrap();
    q.send(delayed, "now", false).await.unwrap();
    assert_eq!(q.peek(delayed, 32).await.unwrap(), ["now"]);
    let got = q.receive(delayed, 32, 30).await.unwrap();
    assert_eq!(got.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["now"]);

    // release: a received message comes back after the given delay (0 = at once), text intact.
    q.send(queue, json, false).await.unwrap();
    let got = q.receive(queue, 1, 300).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(q.receive(queue, 1, 300).await.unwrap().is_empty());
    q.release(queue, &got[0].id, &got[0].pop_receipt, 0).await.unwrap();
    let back = q.receive(queue, 1, 300).await.unwrap();
    assert_eq!(back.len(), 1, "released message not visible again");
    assert_eq!(back[0].id, got[0].id);
    assert_eq!(back[0].text, json);
    assert_eq!(back[0].dequeue_count, 2);
    q.release(queue, &back[0].id, &back[0].pop_receipt, 3).await.unwrap();
    assert!(q.receive(queue, 1, 300).await.unwrap().is_empty(), "released too early");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let last = q.receive(queue, 1, 300).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].dequeue_count, 3);
    q.delete(queue, &last[0].id, &last[0].pop_receipt).await.unwrap();
    // Releasing a message that is gone is a no-op.
    q.release(queue, &last[0].id, &last[0].pop_receipt, 0).await.unwrap();
    assert!(q.peek(queue, 32).await.unwrap().is_empty());

    // keep_forever: time-to-live -1 is accepted and the message never expires.
    let rejected = "pgvault-jobs-rejected";
    q.ensure(rejected).await.unwrap();
    q.send(rejected, r#"{"reason":"kept"}"#, true).await.unwrap();
    q.send(rejected, r#"{"reason":"default ttl"}"#, false).await.unwrap();
    let got = q.receive(rejected, 32, 30).await.unwrap();
    assert_eq!(got.len(), 2);
    let kept = got.iter().find(|m| m.text.contains("kept")).unwrap();
    let default = got.iter().find(|m| m.text.contains("default")).unwrap();
    let kept_exp = kept.expires_at.clone().unwrap();
    assert!(kept_exp.starts_with("9999-"), "{kept_exp}");
    assert!(!default.expires_at.clone().unwrap().starts_with("9999-"));

    // Batches: up to `max`.
    for i in 0..5 {
        q.send(queue, &format!("{{\"i\":{i}}}"), false).await.unwrap();
    }
    assert_eq!(q.peek(queue, 3).await.unwrap().len(), 3);
    assert_eq!(q.receive(queue, 4, 30).await.unwrap().len(), 4);

    // Errors: a missing queue is permanent and names the queue; bad names are refused early.
    let e = q.send("no-such-queue", "{}", false).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains("no-such-queue"), "{e}");
    assert!(q.ensure("Bad_Name").await.unwrap_err().is_permanent());
}

/// A store pointed at Azurite without trusting its CA fails within seconds (not the SDK's
/// default minute of retries), with a permanent error that says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_fast_and_clearly() {
    let ca = support::TestCa::new();
    let other = support::TestCa::new();
    let az = support::Azurite::start(&ca).await;

    for extra_ca in [None, Some(other.ca_pem_path())] {
        let options = client_options(extra_ca, &RetrySettings::fast()).unwrap();
        let store =
            AzureBlobStore::new(&az.blob_endpoint, "pgvault-tls", support::test_credential(), options).await.unwrap();
        let start = Instant::now();
        let e = store.exists("a/b").await.unwrap_err();
        let took = start.elapsed();
        let text = e.to_string();
        eprintln!("untrusted CA ({extra_ca:?}) after {took:?}: {text}");
        assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
        assert!(e.is_permanent(), "{text}");
        assert!(text.starts_with("check blob \"a/b\": "), "{text}");
        assert!(text.contains("invalid peer certificate") && text.contains("UnknownIssuer"), "{text}");
        assert!(text.contains("HINT:") && text.contains("CA"), "{text}");
        assert!(!text.contains("eyJ"), "a token leaked: {text}");
    }
}
