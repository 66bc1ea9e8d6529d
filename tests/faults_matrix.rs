//! Storage and network faults, a test per cell: the real `pgvault` (serve and CLI) talks to
//! Azurite, the Key Vault test server and the identity endpoint through the fault-injecting
//! front (`support::front`), over TLS with the test CA, production code unchanged. Each area
//! shares one stack and runs its cells as a table; each cell states its invariant and checks
//! it, and that its fault really fired. The tables printed at the end of each area are the
//! ones in `docs/reliability.md`.
//!
//! The retry budget of every pgvault process here is cut through its settings, so a fault beyond
//! it fails within seconds: `PGVAULT_STORAGE_RETRIES=2`, `PGVAULT_HTTP_RETRIES=2`,
//! `PGVAULT_HTTP_TIMEOUT_SECONDS=3`. Within it means a fault on one call, or on the first few;
//! beyond it means a fault on every call from some point on.

#[path = "support/app.rs"]
mod app;
mod support;

use app::{CONTAINER, Stack};
use pgvault::azure::{AzureBlobStore, AzureQueue, RetrySettings, client_options};
use pgvault::cli::hostsim::{self, Form};
use pgvault::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::domain::manifest::Manifest;
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::{BlobStore, Tags};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};
use support::data::{blocking, databases_like, manifests, psql_blocking, table_sums};
use support::front::{Calls, Fault, Fired, Front, Op, Rule, Upstreams};
use support::test_credential;

/// The read timeout given to pgvault here; a stall is longer.
const TIMEOUT_SECS: u64 = 3;
/// How long a cell may wait for its fault to fire (a broken cell, not a slow one).
const FIRE_LIMIT: Duration = Duration::from_secs(60);

fn stall() -> Fault {
    Fault::Stall(Duration::from_secs(TIMEOUT_SECS + 2))
}

fn busy() -> Fault {
    Fault::ServerBusy
}

fn internal() -> Fault {
    Fault::InternalError
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The short retry budget, and every Azure endpoint of `stack`'s processes through `front`.
fn through_front(stack: &mut Stack, front: &Front) {
    stack.set("PGVAULT_STORAGE_RETRIES", "2");
    stack.set("PGVAULT_HTTP_RETRIES", "2");
    stack.set("PGVAULT_HTTP_TIMEOUT_SECONDS", &TIMEOUT_SECS.to_string());
    if !front.blob_endpoint.is_empty() {
        stack.set("PGVAULT_BLOB_ENDPOINT", &front.blob_endpoint);
    }
    if !front.queue_endpoint.is_empty() {
        stack.set("JobsQueue__queueServiceUri", &front.queue_endpoint);
    }
    if !front.identity_endpoint.is_empty() {
        stack.set("IDENTITY_ENDPOINT", &front.identity_endpoint);
    }
}

/// The front of every service of `stack`.
fn front_of(stack: &Stack) -> Front {
    Front::start(
        &stack.ca,
        Upstreams {
            blob: Some(stack.azurite.blob_endpoint.clone()),
            queue: Some(stack.azurite.queue_endpoint.clone()),
            vault: None,
            identity: Some(stack.identity.endpoint.clone()),
        },
    )
}

/// One line of an area's table.
struct Row {
    cell: String,
    runs: usize,
    outcome: String,
    invariant: &'static str,
}

/// The cells of one area: their rows, and every check that failed (all cells run, then the test
/// fails naming each broken one).
struct Tally {
    area: &'static str,
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Tally {
    fn new(area: &'static str) -> Tally {
        Tally { area, rows: Vec::new(), failures: Vec::new() }
    }

    fn check(&mut self, cell: &str, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.failures.push(format!("[{}] {cell}: {}", self.area, what()));
        }
        ok
    }

    fn row(&mut self, cell: &str, runs: usize, outcome: impl Into<String>, invariant: &'static str) {
        self.rows.push(Row { cell: cell.to_string(), runs, outcome: outcome.into(), invariant });
    }

    /// Print the table (for docs/reliability.md) and fail if any check did.
    fn finish(self) {
        let mut table = format!("\n### {}\n\n| fault | runs | outcome | invariant checked |\n|---|---|---|---|\n", self.area);
        for r in &self.rows {
            table.push_str(&format!("| {} | {} | {} | {} |\n", r.cell, r.runs, r.outcome, r.invariant));
        }
        table.push_str(&format!("\n{} cells, {} failed checks\n", self.rows.len(), self.failures.len()));
        eprintln!("{table}");
        assert!(self.failures.is_empty(), "{} failed checks:\n{}", self.failures.len(), self.failures.join("\n"));
    }
}

/// Add `rules` to `front` (after clearing it) and return their signals.
fn arm(front: &Front, rules: &[Rule]) -> Vec<Fired> {
    front.clear();
    rules.iter().cloned().map(|r| front.add(r)).collect()
}

fn fired(signals: &[Fired]) -> usize {
    signals.iter().map(Fired::count).sum()
}

async fn direct_store(stack: &Stack) -> AzureBlobStore {
    stack.store().await
}

/// The stored bytes of a backup hash to its manifest's SHA-256 and size, block by block too.
async fn verifiable(store: &dyn BlobStore, m: &Manifest) -> Result<(), String> {
    use sha2::Digest;
    let bytes = store.get(&m.data_blob).await.map_err(|e| e.to_string())?;
    if bytes.len() as u64 != m.stored_bytes {
        return Err(format!("{} bytes stored, the manifest says {}", bytes.len(), m.stored_bytes));
    }
    if hex::encode(sha2::Sha256::digest(&bytes)) != m.sha256 {
        return Err("the stored bytes do not hash to the manifest's sha256".into());
    }
    let mut at = 0usize;
    for (i, b) in m.blocks.iter().enumerate() {
        let end = at + b.size as usize;
        if hex::encode(sha2::Sha256::digest(&bytes[at..end])) != b.sha256 {
            return Err(format!("block {i} does not hash to the manifest's"));
        }
        at = end;
    }
    Ok(())
}

/// Data blobs under `prefix` that no manifest names (what a failed attempt must not leave
/// committed).
async fn unpublished_data(store: &dyn BlobStore, prefix: &str) -> Vec<String> {
    let named: BTreeSet<String> = manifests(store, prefix).await.into_iter().map(|m| m.data_blob).collect();
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .filter(|n| !n.ends_with(".manifest.json") && !named.contains(n))
        .collect()
}

fn make_db(stack: &Stack, db: &str, rows: u32) {
    stack.pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    // md5 text compresses about 2:1, so this is a few 1 MiB blocks after zstd.
    stack.pg.psql(
        db,
        &format!(
            "CREATE TABLE t AS SELECT i, md5(i::text) || md5((i * 7)::text) AS h FROM generate_series(1, {rows}) i; \
             ALTER TABLE t ADD PRIMARY KEY (i)"
        ),
    );
}

// ---- the front's own tests ------------------------------------------------------------------

/// Each fault kind, as a plain HTTPS client sees it, and the rule machinery: call numbers,
/// shares, path filters, signals, and the service's own error bodies per service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_injects_each_fault_as_the_service_would() {
    let ca = support::TestCa::new();
    let azurite = support::Azurite::start(&ca).await;
    let identity = support::IdentityServer::start().await;
    let kv = support::KeyVault::start(&ca);
    let front = Front::start(
        &ca,
        Upstreams {
            blob: Some(azurite.blob_endpoint.clone()),
            queue: Some(azurite.queue_endpoint.clone()),
            vault: Some(kv.url.clone()),
            identity: Some(identity.endpoint.clone()),
        },
    );
    // A blob of 100 000 bytes, written through the front by the SDK.
    let options = client_options(Some(ca.ca_pem_path()), &RetrySettings::none()).unwrap();
    let store = AzureBlobStore::new(&front.blob_endpoint, "ccc", test_credential(), options).await.unwrap();
    store.ensure_container().await.unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    store.put("x", data.clone().into(), &Tags::new()).await.unwrap();
    assert_eq!(front.calls(Op::PutBlob), 1);
    assert_eq!(front.calls(Op::CreateContainer), 1);

    let token = support::mint_jwt("https://storage.azure.com");
    let client = ca.reqwest_client();
    let url = format!("{}/ccc/x", front.blob_endpoint);
    let get = |range: bool| {
        let mut r = client.get(&url).bearer_auth(&token).header("x-ms-version", "2025-11-05");
        if range {
            r = r.header("x-ms-range", "bytes=0-99999");
        }
        r
    };

    // 503 ServerBusy on the first call only, with Azure's XML body and error code header.
    let busy = front.add(Rule::new(Op::GetBlob, Fault::ServerBusy).calls(Calls::Nth(1)));
    let r = get(false).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-ms-error-code"], "ServerBusy");
    assert!(r.text().await.unwrap().contains("<Code>ServerBusy</Code>"));
    let r = get(false).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    busy.wait(1, FIRE_LIMIT).await;
    assert_eq!(busy.count(), 1);

    // 500, 429 with Retry-After, 412: a range read is its own operation.
    for (fault, status, code) in [
        (Fault::InternalError, 500, "InternalError"),
        (Fault::Throttled { retry_after_secs: 7 }, 429, "Throttled"),
        (Fault::Status { status: 412, code: "ConditionNotMet" }, 412, "ConditionNotMet"),
    ] {
        let f = arm(&front, &[Rule::new(Op::GetBlobRange, fault).calls(Calls::First(1))]);
        let r = get(true).send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["x-ms-error-code"], code);
        if status == 429 {
            assert_eq!(r.headers()["retry-after"], "7");
        }
        assert_eq!(fired(&f), 1);
        assert_eq!(get(true).send().await.unwrap().status(), 206, "only the first call");
    }

    // A reset before the response: no status at all.
    arm(&front, &[Rule::new(Op::GetBlob, Fault::ResetBeforeResponse).calls(Calls::Nth(1))]);
    let e = get(false).send().await.unwrap_err();
    assert!(!e.is_status() && !e.is_timeout(), "{e:?}");
    // A reset in the middle of the body: the status and the headers arrive, the body fails.
    arm(&front, &[Rule::new(Op::GetBlob, Fault::ResetMidBody { after: 1000 })]);
    let r = get(false).send().await.unwrap();
    assert_eq!((r.status(), r.content_length()), (reqwest::StatusCode::OK, Some(100_000)));
    assert!(r.bytes().await.is_err(), "the body is cut by a reset");
    // A truncated body whose Content-Length matches: HTTP sees nothing wrong.
    arm(&front, &[Rule::new(Op::GetBlob, Fault::Truncate { keep: 1000 })]);
    let r = get(false).send().await.unwrap();
    assert_eq!(r.content_length(), Some(1000));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..1000]);
    // A stall longer than the client's timeout.
    arm(&front, &[Rule::new(Op::GetBlob, Fault::Stall(Duration::from_secs(2)))]);
    let e = get(false).timeout(Duration::from_millis(300)).send().await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    // A slow trickle: all of it, in pieces.
    arm(&front, &[Rule::new(Op::GetBlob, Fault::Trickle { chunk: 20_000, every: Duration::from_millis(30) })]);
    let started = Instant::now();
    let r = get(false).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());

    // A share of the calls: exactly 25 of 100; a path filter that does not match never fires.
    let f = arm(
        &front,
        &[
            Rule::new(Op::GetProperties, Fault::ServerBusy).on("/ccc/other"),
            Rule::new(Op::GetProperties, Fault::ServerBusy).calls(Calls::Share(25)),
        ],
    );
    let mut refused = 0;
    for _ in 0..100 {
        let r = client.head(&url).bearer_auth(&token).header("x-ms-version", "2025-11-05").send().await.unwrap();
        refused += usize::from(r.status() == 503);
    }
    assert_eq!((refused, f[0].count(), f[1].count()), (25, 0, 25));
    front.clear();

    // Key Vault and the identity endpoint answer errors in their own JSON.
    front.add(Rule::new(Op::GetSecret, Fault::InternalError));
    let r = client.get(format!("{}/secrets/s/?api-version=2025-07-01", front.vault_url)).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InternalError");
    front.add(Rule::new(Op::Token, Fault::Throttled { retry_after_secs: 1 }));
    let r = client.get(&front.identity_endpoint).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "1"));
    front.clear();
    // Unfaulted, both forward: the vault's challenge, the identity endpoint's own refusal.
    let r = client.get(format!("{}/secrets/s/?api-version=2025-07-01", front.vault_url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = client.get(&front.identity_endpoint).send().await.unwrap();
    assert_eq!(r.status(), 401, "no x-identity-header");

    // The queue: Put Message is classified, and the SDK's retry rides out one 503.
    let options = client_options(Some(ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
    let queue = AzureQueue::new(&front.queue_endpoint, test_credential(), options).unwrap();
    queue.ensure("qqq").await.unwrap();
    let f = arm(&front, &[Rule::new(Op::PutMessage, Fault::ServerBusy).calls(Calls::Nth(1))]);
    queue.send("qqq", "hello", false).await.unwrap();
    assert_eq!(fired(&f), 1);
    assert_eq!(queue.peek("qqq", 8).await.unwrap(), ["hello"]);
    assert_eq!(front.calls(Op::PutMessage), 2);
    assert!(front.faulted().iter().all(|r| r.fault.is_some()));
}

// ---- backup (the worker under `pgvault serve`) ----------------------------------------------

/// What a cell must end in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Within the retry budget: success, with identical data.
    Success,
    /// Beyond it: a clean failure that names this text, and the host retries it (500).
    Failure(&'static str),
}

const NO_PARTIAL: &str = "no visible partial backup: a manifest only for a complete blob that hashes to it; no committed data without a manifest";
const IDENTICAL: &str = "success with identical data (hashes, block hashes and exact row counts match)";

/// A backup job delivered under each storage fault: within the budget it succeeds with
/// identical data; beyond it the reply is 500 naming the failure (the host retries), nothing is
/// published or left committed, the job record says failed and will retry, and the redelivery
/// succeeds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_storage_faults() {
    let mut stack = Stack::start().await;
    let front = front_of(&stack);
    through_front(&mut stack, &front);
    blocking(|| make_db(&stack, "app", 60_000));
    let rows: i64 = psql_blocking(&stack.pg, "app", "SELECT count(*) FROM t").parse().unwrap();
    let served = stack.serve();
    let store = direct_store(&stack).await;
    let manifest_blob = ".manifest.json";
    let t = TIMEOUT_SECS;
    let _ = t;
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        ("Put Block #2: 503 ServerBusy", vec![Rule::new(Op::PutBlock, busy()).calls(Calls::Nth(2))], Expect::Success),
        ("Put Block #2: 500 InternalError", vec![Rule::new(Op::PutBlock, internal()).calls(Calls::Nth(2))], Expect::Success),
        (
            "Put Block #2: reset before the response (block stored, reply lost)",
            vec![Rule::new(Op::PutBlock, Fault::ResetBeforeResponse).calls(Calls::Nth(2))],
            Expect::Success,
        ),
        ("Put Block #2: stall past the timeout", vec![Rule::new(Op::PutBlock, stall()).calls(Calls::Nth(2))], Expect::Success),
        ("Put Block: 25% of calls 503", vec![Rule::new(Op::PutBlock, busy()).calls(Calls::Share(25))], Expect::Success),
        ("Put Block List: 503 twice", vec![Rule::new(Op::PutBlockList, busy()).calls(Calls::First(2))], Expect::Success),
        (
            "Put Block List: reset before the response (committed, reply lost)",
            vec![Rule::new(Op::PutBlockList, Fault::ResetBeforeResponse).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Blob of the manifest: reset before the response (created, reply lost)",
            vec![Rule::new(Op::PutBlob, Fault::ResetBeforeResponse).on(manifest_blob).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Blob of the manifest: 500 once",
            vec![Rule::new(Op::PutBlob, internal()).on(manifest_blob).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        ("List: 503 once", vec![Rule::new(Op::List, busy()).calls(Calls::Nth(1))], Expect::Success),
        (
            "Put Block from #2 on: 503 on every call",
            vec![Rule::new(Op::PutBlock, busy()).calls(Calls::From(2))],
            Expect::Failure("ServerBusy"),
        ),
        (
            "Put Block from #2 on: reset before every response",
            vec![Rule::new(Op::PutBlock, Fault::ResetBeforeResponse).calls(Calls::From(2))],
            Expect::Failure("stage block"),
        ),
        (
            "Put Block from #2 on: every call stalls past the timeout",
            vec![Rule::new(Op::PutBlock, stall()).calls(Calls::From(2))],
            Expect::Failure("stage block"),
        ),
        (
            "Put Block List: 500 on every call",
            vec![Rule::new(Op::PutBlockList, internal())],
            Expect::Failure("InternalError"),
        ),
        (
            "Put Blob of the manifest: 503 on every call (data committed first)",
            vec![Rule::new(Op::PutBlob, busy()).on(manifest_blob)],
            Expect::Failure("ServerBusy"),
        ),
    ];
    let mut tally = Tally::new("backup (worker, `pgvault serve`)");
    for (i, (cell, rules, expect)) in cells.into_iter().enumerate() {
        let job = BackupJob::new(BackupKind::Database, "main", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
        let payload = |n: u32| hostsim::queue_payload("backup-worker", "job", &job.to_json(), &format!("b{i}"), "p", n, Form::Host);
        let signals = arm(&front, &rules);
        let (status, reply) = served.invoke("backup-worker", &payload(1)).await;
        front.clear();
        tally.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        let mine = |ms: Vec<Manifest>| ms.into_iter().filter(|m| m.job_id == job.job_id).collect::<Vec<_>>();
        let published = mine(manifests(&store, "main/app/").await);
        let leftover = unpublished_data(&store, "main/app/").await;
        let record = pgvault::monitor::records::get(&store, pgvault::monitor::records::JobKind::Backup, &job.job_id)
            .await
            .unwrap();
        let outcome = match expect {
            Expect::Success => {
                let ok = tally.check(cell, status == 200 && reply["ReturnValue"]["status"] == "succeeded", || {
                    format!("not a success: {status} {reply}")
                });
                tally.check(cell, published.len() == 1, || format!("{} manifests", published.len()));
                if let Some(m) = published.first() {
                    let v = verifiable(&store, m).await;
                    tally.check(cell, v.is_ok(), || format!("{v:?}"));
                    let counted = m.row_counts.as_ref().map(|c| c.tables.iter().map(|t| t.rows).sum::<i64>());
                    tally.check(cell, counted == Some(rows), || format!("row counts {counted:?}, source {rows}"));
                }
                tally.check(cell, record.as_ref().is_some_and(|r| r.status.as_str() == "succeeded"), || {
                    format!("job record {record:?}")
                });
                if ok { "succeeded, identical data" } else { "FAILED" }.to_string()
            }
            Expect::Failure(words) => {
                let error = reply["ReturnValue"]["error"].as_str().unwrap_or("").to_string();
                tally.check(cell, status == 500, || format!("not a retried failure: {status} {reply}"));
                tally.check(cell, error.contains(words), || format!("the error does not name {words:?}: {error}"));
                tally.check(cell, published.is_empty(), || "a backup was published".into());
                tally.check(
                    cell,
                    record.as_ref().is_some_and(|r| r.status.as_str() == "failed" && r.detail["will_retry"] == true),
                    || format!("job record {record:?}"),
                );
                // The host's next delivery, with the fault gone.
                let (status, reply) = served.invoke("backup-worker", &payload(2)).await;
                let published = mine(manifests(&store, "main/app/").await);
                tally.check(cell, status == 200 && reply["ReturnValue"]["status"] == "succeeded", || {
                    format!("the redelivery: {status} {reply}")
                });
                tally.check(cell, published.len() == 1, || format!("{} manifests after the redelivery", published.len()));
                format!("500 naming `{words}`, host retries; redelivery succeeded")
            }
        };
        tally.check(cell, leftover.is_empty(), || format!("committed data without a manifest: {leftover:?}"));
        tally.row(cell, 1, outcome, if expect == Expect::Success { IDENTICAL } else { NO_PARTIAL });
    }
    tally.finish();
    drop(served);
}
