//! Storage and network faults, a test per cell: the real `pgvault` (serve and CLI) talks to
//! Azurite, the Key Vault test server and the identity endpoint through the fault-injecting
//! front (`support::front`), over TLS with the test CA, production code unchanged. Each area
//! shares one stack and runs its cells as a table; each cell states its invariant and checks
//! it, and that its fault really fired. The tables printed at the end of each area are the
//! ones in `docs/reliability.md`.
//!
//! The retry budget of every pgvault process here is cut through its settings, so a fault beyond
//! it fails within seconds: `PGVAULT_STORAGE_RETRIES=1`, `PGVAULT_HTTP_RETRIES=2`,
//! `PGVAULT_HTTP_TIMEOUT_SECONDS=2`. Within it means a fault on one call, or on the first few;
//! beyond it means a fault on every call from some point on.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
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
const TIMEOUT_SECS: u64 = 2;
/// How long a cell may wait for its fault to fire (a broken cell, not a slow one).
const FIRE_LIMIT: Duration = Duration::from_secs(60);

fn stall() -> Fault {
    Fault::Stall(Duration::from_secs(TIMEOUT_SECS + 1))
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
    stack.set("PGVAULT_STORAGE_RETRIES", "1");
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
        finish_all(vec![self]);
    }
}

/// Print every table (for docs/reliability.md), then fail naming every check that failed.
fn finish_all(tallies: Vec<Tally>) {
    let mut failures = Vec::new();
    for t in tallies {
        let mut table =
            format!("\n### {}\n\n| fault | runs | outcome | invariant checked |\n|---|---|---|---|\n", t.area);
        for r in &t.rows {
            table.push_str(&format!("| {} | {} | {} | {} |\n", r.cell, r.runs, r.outcome, r.invariant));
        }
        table.push_str(&format!("\n{} cells, {} failed checks\n", t.rows.len(), t.failures.len()));
        eprintln!("{table}");
        failures.extend(t.failures);
    }
    assert!(failures.is_empty(), "{} failed checks:\n{}", failures.len(), failures.join("\n"));
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
        (
            "Put Block #2: 500 InternalError",
            vec![Rule::new(Op::PutBlock, internal()).calls(Calls::Nth(2))],
            Expect::Success,
        ),
        (
            "Put Block #2: reset before the response (block stored, reply lost)",
            vec![Rule::new(Op::PutBlock, Fault::ResetBeforeResponse).calls(Calls::Nth(2))],
            Expect::Success,
        ),
        (
            "Put Block #2: stall past the timeout",
            vec![Rule::new(Op::PutBlock, stall()).calls(Calls::Nth(2))],
            Expect::Success,
        ),
        ("Put Block: 25% of calls 503", vec![Rule::new(Op::PutBlock, busy()).calls(Calls::Share(25))], Expect::Success),
        (
            "Put Block List: 503 twice",
            vec![Rule::new(Op::PutBlockList, busy()).calls(Calls::First(2))],
            Expect::Success,
        ),
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
        let job =
            BackupJob::new(BackupKind::Database, "main", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
        let payload = |n: u32| {
            hostsim::queue_payload("backup-worker", "job", &job.to_json(), &format!("b{i}"), "p", n, Form::Host)
        };
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
                    record
                        .as_ref()
                        .is_some_and(|r| r.status.as_str() == "failed" && r.detail.will_retry() == Some(true)),
                    || format!("job record {record:?}"),
                );
                // The host's next delivery, with the fault gone.
                let (status, reply) = served.invoke("backup-worker", &payload(2)).await;
                let published = mine(manifests(&store, "main/app/").await);
                tally.check(cell, status == 200 && reply["ReturnValue"]["status"] == "succeeded", || {
                    format!("the redelivery: {status} {reply}")
                });
                tally.check(cell, published.len() == 1, || {
                    format!("{} manifests after the redelivery", published.len())
                });
                format!("500 naming `{words}`, host retries; redelivery succeeded")
            }
        };
        tally.check(cell, leftover.is_empty(), || format!("committed data without a manifest: {leftover:?}"));
        tally.row(cell, 1, outcome, if expect == Expect::Success { IDENTICAL } else { NO_PARTIAL });
    }

    // Job records: the record of every delivery survives storage faults.
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        (
            "Put Blob of the job record: 503 twice",
            vec![Rule::new(Op::PutBlob, busy()).on("@jobs/").calls(Calls::First(2))],
            Expect::Success,
        ),
        (
            "Put Blob of the job record: reset before the response",
            vec![Rule::new(Op::PutBlob, Fault::ResetBeforeResponse).on("@jobs/").calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Blob of the job record: 503 on every call",
            vec![Rule::new(Op::PutBlob, busy()).on("@jobs/")],
            Expect::Failure("job record"),
        ),
    ];
    let mut records = Tally::new("job records (backup worker)");
    for (i, (cell, rules, expect)) in cells.into_iter().enumerate() {
        let job =
            BackupJob::new(BackupKind::Database, "main", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
        let payload = |n: u32| {
            hostsim::queue_payload("backup-worker", "job", &job.to_json(), &format!("j{i}"), "p", n, Form::Host)
        };
        let signals = arm(&front, &rules);
        let (status, reply) = served.invoke("backup-worker", &payload(1)).await;
        front.clear();
        records.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        let get = || pgvault::monitor::records::get(&store, pgvault::monitor::records::JobKind::Backup, &job.job_id);
        let outcome = match expect {
            Expect::Success => {
                let record = get().await.unwrap();
                records.check(cell, status == 200, || format!("{status} {reply}"));
                records.check(cell, record.as_ref().is_some_and(|r| r.status.as_str() == "succeeded"), || {
                    format!("{record:?}")
                });
                "succeeded; the record says so".to_string()
            }
            Expect::Failure(words) => {
                // The record could not be written: the delivery must not end as if all were
                // well (the host would delete the message, and the record would be lost).
                let error = reply["ReturnValue"]["error"].as_str().unwrap_or("").to_string();
                records.check(cell, status == 500 && error.contains(words), || format!("{status} {reply}"));
                let (status, reply) = served.invoke("backup-worker", &payload(2)).await;
                let record = get().await.unwrap();
                let published: Vec<Manifest> =
                    manifests(&store, "main/app/").await.into_iter().filter(|m| m.job_id == job.job_id).collect();
                records.check(cell, status == 200 && published.len() == 1, || format!("redelivery {status} {reply}"));
                records.check(
                    cell,
                    record.as_ref().is_some_and(|r| {
                        r.status.as_str() == "succeeded"
                            && published.first().is_some_and(|m| {
                                r.detail.backup().and_then(|b| b.backup.as_deref()) == Some(m.id.as_str())
                            })
                    }),
                    || format!("{record:?}"),
                );
                format!("500 naming `{words}`; the redelivery writes the record of the published backup")
            }
        };
        records.row(
            cell,
            1,
            outcome,
            "no lost job record: after the deliveries the host makes, the record exists and says what was published",
        );
    }

    // Dump-slot claims (`@claims/dump-slot/`): taken before the dump, removed after it.
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        (
            "Put Blob of the dump-slot claim: reset before the response (created, reply lost)",
            vec![Rule::new(Op::PutBlob, Fault::ResetBeforeResponse).on("@claims/").calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Blob of the dump-slot claim: 503 once",
            vec![Rule::new(Op::PutBlob, busy()).on("@claims/").calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Delete Blob of the dump-slot claim: 503 on every call (the claim stays)",
            vec![Rule::new(Op::DeleteBlob, busy()).on("@claims/")],
            Expect::Success,
        ),
    ];
    let mut claims = Tally::new("claims (dump slots of the backup worker)");
    for (i, (cell, rules, _)) in cells.into_iter().enumerate() {
        let job =
            BackupJob::new(BackupKind::Database, "main", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
        let payload =
            hostsim::queue_payload("backup-worker", "job", &job.to_json(), &format!("c{i}"), "p", 1, Form::Host);
        let signals = arm(&front, &rules);
        let (status, reply) = served.invoke("backup-worker", &payload).await;
        front.clear();
        claims.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        claims.check(cell, status == 200 && reply["ReturnValue"]["status"] == "succeeded", || {
            format!("{status} {reply}")
        });
        // Whatever claim was left, the next job of the server still gets a slot and runs.
        let next =
            BackupJob::new(BackupKind::Database, "main", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
        let payload =
            hostsim::queue_payload("backup-worker", "job", &next.to_json(), &format!("n{i}"), "p", 1, Form::Host);
        let (status, reply) = served.invoke("backup-worker", &payload).await;
        claims.check(cell, status == 200 && reply["ReturnValue"]["status"] == "succeeded", || {
            format!("next job: {status} {reply}")
        });
        let left = store.list("@claims/").await.unwrap().len();
        claims.row(
            cell,
            1,
            format!("succeeded; the next job ran too ({left} claim(s) left, each held until its lease or its message's redelivery)"),
            "no claim blocks work: a claim taken twice is one claim; a claim that cannot be removed blocks only its own slot, until its lease",
        );
    }

    // Queue messages pgvault writes itself: rejected messages, and the scheduler's jobs.
    let queue = stack.queue();
    let drain_all = |name: &'static str| {
        let queue = &queue;
        async move {
            let mut texts = Vec::new();
            loop {
                let got = queue.receive(name, 32, 60).await.unwrap();
                if got.is_empty() {
                    break texts;
                }
                for m in got {
                    queue.delete(name, &m.id, &m.pop_receipt).await.unwrap();
                    texts.push(m.text);
                }
            }
        }
    };
    drain_all(BACKUP_JOBS_QUEUE).await;
    drain_all("backup-jobs-rejected").await;
    let mut queued = Tally::new("queue messages (`pgvault serve`)");
    let bad =
        BackupJob::new(BackupKind::Database, "nowhere", Some("x"), time::OffsetDateTime::now_utc(), Trigger::Queue)
            .to_json();
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        (
            "Put Message of a rejected job: 503 once",
            vec![Rule::new(Op::PutMessage, busy()).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Message of a rejected job: reset before the response (stored, reply lost)",
            vec![Rule::new(Op::PutMessage, Fault::ResetBeforeResponse).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Message of a rejected job: 503 on every call",
            vec![Rule::new(Op::PutMessage, busy())],
            Expect::Failure("ServerBusy"),
        ),
    ];
    for (i, (cell, rules, expect)) in cells.into_iter().enumerate() {
        let signals = arm(&front, &rules);
        let payload = hostsim::queue_payload("backup-worker", "job", &bad, &format!("q{i}"), "p", 1, Form::Host);
        let (status, reply) = served.invoke("backup-worker", &payload).await;
        front.clear();
        queued.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        let kept = drain_all("backup-jobs-rejected").await;
        let outcome = match expect {
            Expect::Success => {
                queued.check(cell, status == 200 && reply["ReturnValue"]["status"] == "rejected", || {
                    format!("{status} {reply}")
                });
                queued.check(cell, !kept.is_empty() && kept.iter().all(|k| k.contains("unknown server")), || {
                    format!("{kept:?}")
                });
                format!("200 rejected; kept {} time(s) with its reason", kept.len())
            }
            Expect::Failure(_) => {
                queued.check(cell, status == 500, || format!("not left to the host: {status} {reply}"));
                queued.check(cell, kept.is_empty(), || format!("{kept:?}"));
                "500: the host keeps the message and retries".to_string()
            }
        };
        queued.row(cell, 1, outcome, "no lost queue message: kept with its reason, or left on its queue for the host");
    }
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        (
            "Put Message of the scheduler: 503 once",
            vec![Rule::new(Op::PutMessage, busy()).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Message of the scheduler: 503 on every call",
            vec![Rule::new(Op::PutMessage, busy())],
            Expect::Failure("ServerBusy"),
        ),
    ];
    for (cell, rules, expect) in cells {
        let signals = arm(&front, &rules);
        let (status, reply) =
            served.invoke("backup-scheduler", &hostsim::timer_payload("backup-scheduler", false)).await;
        front.clear();
        queued.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        let jobs = drain_all(BACKUP_JOBS_QUEUE).await;
        let outcome = match expect {
            Expect::Success => {
                let enqueued = reply["ReturnValue"]["enqueued"].as_array().map(Vec::len);
                queued.check(cell, status == 200 && enqueued == Some(jobs.len()) && jobs.len() == 2, || {
                    format!("{status} {reply}; queued {jobs:?}")
                });
                "200; every job enqueued once (the database and the globals)".to_string()
            }
            Expect::Failure(words) => {
                queued.check(cell, status == 500 && reply.to_string().contains(words), || format!("{status} {reply}"));
                format!("500 naming `{words}`; the run fails loudly")
            }
        };
        queued.row(cell, 1, outcome, "no silently missing job: every job enqueued, or a failed run");
    }

    // The identity endpoint: a fresh process fetches its tokens (`pgvault backup`).
    let mut tokens = Tally::new("token (identity endpoint, `pgvault backup`)");
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        ("token: 500 once", vec![Rule::new(Op::Token, internal()).calls(Calls::Nth(1))], Expect::Success),
        (
            "token: 429 with Retry-After 1",
            vec![Rule::new(Op::Token, Fault::Throttled { retry_after_secs: 1 }).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "token: reset before the response",
            vec![Rule::new(Op::Token, Fault::ResetBeforeResponse).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "token: truncated body once",
            vec![Rule::new(Op::Token, Fault::Truncate { keep: 30 }).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        ("token: 503 on every call", vec![Rule::new(Op::Token, busy())], Expect::Failure("token")),
    ];
    for (cell, rules, expect) in cells {
        let before: BTreeSet<String> = manifests(&store, "main/app/").await.into_iter().map(|m| m.id).collect();
        let signals = arm(&front, &rules);
        let out = cli(&stack, &["backup", "--server", "main", "--database", "app"]);
        front.clear();
        let said = text(&out);
        tokens.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        let new: Vec<Manifest> =
            manifests(&store, "main/app/").await.into_iter().filter(|m| !before.contains(&m.id)).collect();
        let outcome = match expect {
            Expect::Success => {
                tokens.check(cell, out.status.success() && new.len() == 1, || said.clone());
                for m in &new {
                    let v = verifiable(&store, m).await;
                    tokens.check(cell, v.is_ok(), || format!("{v:?}"));
                }
                "succeeded, identical data".to_string()
            }
            Expect::Failure(words) => {
                tokens.check(cell, !out.status.success() && said.contains(words) && new.is_empty(), || said.clone());
                format!("exit 1 naming `{words}`; nothing published")
            }
        };
        tokens.row(cell, 1, outcome, if expect == Expect::Success { IDENTICAL } else { NO_PARTIAL });
    }
    let leftover = unpublished_data(&store, "main/app/").await;
    tokens.check("all", leftover.is_empty(), || format!("{leftover:?}"));
    finish_all(vec![tally, records, claims, queued, tokens]);
    drop(served);
}

// ---- restore (stream and parallel) and as-files: `pgvault restore` ---------------------------

const TARGET_UNCHANGED: &str = "no changed target database on a failed restore (`replace` of a live database: same content, no `pgvault_restore_*` left, no `_pre_restore_` copy); the task's record says failed with the reason";

fn cli(stack: &Stack, args: &[&str]) -> Output {
    blocking(|| stack.cli(args))
}

/// Restores under storage faults. Within the budget: `create` of a new database succeeds with
/// the source's exact content, streamed and with `--jobs 2` (parallel from a scratch copy).
/// Beyond it: `replace` of a live database fails, naming the failure, and the database is as it
/// was. As files: a verified copy and URLs, or a failure that leaves no exported manifest
/// without its complete data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_as_files_under_storage_faults() {
    let mut stack = Stack::start().await;
    blocking(|| make_db(&stack, "app", 60_000));
    let out = cli(&stack, &["backup", "--server", "main", "--database", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let front = front_of(&stack);
    through_front(&mut stack, &front);
    // Room for a parallel restore's scratch copy whatever the disk.
    stack.set("PGVAULT_RESTORE_SCRATCH_RESERVE_MIB", "0");
    blocking(|| {
        stack.pg.psql("postgres", "CREATE DATABASE keep");
        stack.pg.psql("keep", "CREATE TABLE live AS SELECT i, 'live ' || i AS v FROM generate_series(1, 500) i");
    });
    let source = blocking(|| table_sums(&stack.pg, "app"));
    let keep = blocking(|| table_sums(&stack.pg, "keep"));
    let store = direct_store(&stack).await;
    let data = ".dump.zst";
    let manifest = ".manifest.json";
    // (cell, rules, expectation, whether it runs both streamed and parallel)
    let cells: Vec<(&str, Vec<Rule>, Expect, bool)> = vec![
        (
            "Get Blob range of the data: 503 once",
            vec![Rule::new(Op::GetBlobRange, busy()).on(data).calls(Calls::Nth(1))],
            Expect::Success,
            true,
        ),
        (
            "Get Blob range of the data: 500 once",
            vec![Rule::new(Op::GetBlobRange, internal()).on(data).calls(Calls::Nth(1))],
            Expect::Success,
            true,
        ),
        (
            "Get Blob range of the data: reset before the response",
            vec![Rule::new(Op::GetBlobRange, Fault::ResetBeforeResponse).on(data).calls(Calls::Nth(1))],
            Expect::Success,
            true,
        ),
        (
            "Get Blob range of the data: stall past the timeout",
            vec![Rule::new(Op::GetBlobRange, stall()).on(data).calls(Calls::Nth(1))],
            Expect::Success,
            true,
        ),
        (
            "Get Blob range of the data: slow trickle (64 KiB / 20 ms)",
            vec![
                Rule::new(Op::GetBlobRange, Fault::Trickle { chunk: 64 << 10, every: Duration::from_millis(20) })
                    .on(data),
            ],
            Expect::Success,
            true,
        ),
        (
            "Get Blob range of the data: reset mid-body once",
            vec![Rule::new(Op::GetBlobRange, Fault::ResetMidBody { after: 300_000 }).on(data).calls(Calls::Nth(1))],
            Expect::Success,
            true,
        ),
        (
            "Get Blob range of the data: truncated once (Content-Length matches the cut)",
            vec![Rule::new(Op::GetBlobRange, Fault::Truncate { keep: 300_000 }).on(data).calls(Calls::Nth(1))],
            Expect::Success,
            true,
        ),
        (
            "Get Blob of the manifest: 503 once",
            vec![Rule::new(Op::GetBlobRange, busy()).on(manifest).calls(Calls::Nth(1))],
            Expect::Success,
            false,
        ),
        (
            "Get Blob of the manifest: truncated once",
            vec![Rule::new(Op::GetBlobRange, Fault::Truncate { keep: 100 }).on(manifest).calls(Calls::Nth(1))],
            Expect::Success,
            false,
        ),
        ("List: 503 once", vec![Rule::new(Op::List, busy()).calls(Calls::Nth(1))], Expect::Success, false),
        (
            "List: truncated once",
            vec![Rule::new(Op::List, Fault::Truncate { keep: 200 }).calls(Calls::Nth(1))],
            Expect::Success,
            false,
        ),
        (
            "Get Blob Properties: 503 once",
            vec![Rule::new(Op::GetProperties, busy()).calls(Calls::Nth(1))],
            Expect::Success,
            false,
        ),
        (
            "Put Blob of the claim: reset before the response (created, reply lost)",
            vec![Rule::new(Op::PutBlob, Fault::ResetBeforeResponse).on("@claims/").calls(Calls::Nth(1))],
            Expect::Success,
            false,
        ),
        (
            "Put Blob of a job record: 503 twice",
            vec![Rule::new(Op::PutBlob, busy()).on("@jobs/").calls(Calls::First(2))],
            Expect::Success,
            false,
        ),
        (
            "Delete Blob of the claim: 500 once",
            vec![Rule::new(Op::DeleteBlob, internal()).on("@claims/").calls(Calls::Nth(1))],
            Expect::Success,
            false,
        ),
        (
            "Get Blob range of the data: 503 on every call",
            vec![Rule::new(Op::GetBlobRange, busy()).on(data)],
            Expect::Failure("ServerBusy"),
            true,
        ),
        (
            "Get Blob range of the data: reset mid-body on every call",
            vec![Rule::new(Op::GetBlobRange, Fault::ResetMidBody { after: 300_000 }).on(data)],
            Expect::Failure("read blob"),
            true,
        ),
        (
            "Get Blob range of the data: every call stalls past the timeout",
            vec![Rule::new(Op::GetBlobRange, stall()).on(data)],
            Expect::Failure("read blob"),
            false,
        ),
        (
            "Get Blob range of the data: truncated on every call",
            vec![Rule::new(Op::GetBlobRange, Fault::Truncate { keep: 300_000 }).on(data)],
            Expect::Failure("read blob"),
            false,
        ),
        (
            "Get Blob range of the data: 412 ConditionNotMet (the blob changed mid-read)",
            vec![Rule::new(Op::GetBlobRange, Fault::Status { status: 412, code: "ConditionNotMet" }).on(data)],
            Expect::Failure("ConditionNotMet"),
            false,
        ),
        ("List: 500 on every call", vec![Rule::new(Op::List, internal())], Expect::Failure("InternalError"), false),
    ];
    let mut tally = Tally::new("restore (`pgvault restore`, create / replace)");
    for (i, (cell, rules, expect, both)) in cells.into_iter().enumerate() {
        let methods: &[Option<&str>] = if both { &[None, Some("2")] } else { &[None] };
        for jobs in methods {
            let name = match jobs {
                None if both => format!("{cell} (stream)"),
                None => cell.to_string(),
                Some(_) => format!("{cell} (parallel, --jobs 2)"),
            };
            let request = format!("r{i}{}", if jobs.is_some() { "p" } else { "s" });
            let (mode, target) = match expect {
                Expect::Success => ("create", request.clone()),
                Expect::Failure(_) => ("replace", "keep".to_string()),
            };
            let mut args = vec![
                "restore",
                "--server",
                "main",
                "--database",
                "app",
                "--mode",
                mode,
                "--target-database",
                &target,
                "--request-id",
                &request,
            ];
            if let Some(j) = jobs {
                args.extend(["--jobs", j]);
            }
            let signals = arm(&front, &rules);
            let out = cli(&stack, &args);
            front.clear();
            let said = text(&out);
            tally.check(&name, fired(&signals) > 0, || "the fault never fired".into());
            let method = if jobs.is_some() { ": parallel" } else { ": stream" };
            let task = pgvault::monitor::records::get(
                &store,
                pgvault::monitor::records::JobKind::RestoreTask,
                &format!("{request}-1"),
            )
            .await
            .unwrap();
            let outcome = match expect {
                Expect::Success => {
                    let ok = tally
                        .check(&name, out.status.success() && said.contains("1 restored, 0 failed"), || said.clone());
                    if ok {
                        tally.check(&name, said.contains(method), || format!("not restored by {method}: {said}"));
                        let got = blocking(|| table_sums(&stack.pg, &target));
                        tally.check(&name, got == source, || format!("restored {got:?}, source {source:?}"));
                        blocking(|| stack.pg.psql("postgres", &format!("DROP DATABASE {target}")));
                    }
                    tally.check(&name, task.as_ref().is_some_and(|r| r.status.as_str() == "succeeded"), || {
                        format!("task record {task:?}")
                    });
                    if ok { "succeeded, identical content" } else { "FAILED" }.to_string()
                }
                Expect::Failure(words) => {
                    tally.check(&name, !out.status.success(), || said.clone());
                    tally.check(&name, said.contains(words), || format!("does not name {words:?}: {said}"));
                    let now = blocking(|| table_sums(&stack.pg, "keep"));
                    tally.check(&name, now == keep, || format!("keep changed: {now:?}"));
                    let left = blocking(|| databases_like(&stack.pg, "pgvault\\_restore\\_%"));
                    tally.check(&name, left.is_empty(), || format!("left behind: {left:?}"));
                    let copies = blocking(|| databases_like(&stack.pg, "keep%"));
                    tally.check(&name, copies == ["keep"], || format!("{copies:?}"));
                    // A failure while planning comes before any task exists (nothing to record).
                    let planned = said.contains(&format!("FAILED {request}-1"));
                    tally.check(
                        &name,
                        !planned || task.as_ref().is_some_and(|r| r.status.as_str() == "failed" && r.reason.is_some()),
                        || format!("task record {task:?}"),
                    );
                    format!("failed naming `{words}`; target unchanged")
                }
            };
            let invariant = if expect == Expect::Success { IDENTICAL } else { TARGET_UNCHANGED };
            tally.row(&name, 1, outcome, invariant);
        }
    }

    // As files: a verified copy into another container, then its manifest, then signed URLs.
    let exports = AzureBlobStore::new(
        &stack.azurite.blob_endpoint,
        "exports",
        test_credential(),
        client_options(Some(stack.ca.ca_pem_path()), &RetrySettings::fast()).unwrap(),
    )
    .await
    .unwrap();
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        (
            "Get User Delegation Key: 503 once",
            vec![Rule::new(Op::UserDelegationKey, busy()).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Block of the copy: 503 once",
            vec![Rule::new(Op::PutBlock, busy()).on("/exports/").calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Blob of the exported manifest: reset before the response",
            vec![Rule::new(Op::PutBlob, Fault::ResetBeforeResponse).on("/exports/").calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Get Blob range of the source: reset mid-body once",
            vec![Rule::new(Op::GetBlobRange, Fault::ResetMidBody { after: 300_000 }).on(data).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Put Block of the copy: 503 on every call",
            vec![Rule::new(Op::PutBlock, busy()).on("/exports/")],
            Expect::Failure("ServerBusy"),
        ),
        (
            "Get User Delegation Key: 500 on every call",
            vec![Rule::new(Op::UserDelegationKey, internal())],
            Expect::Failure("InternalError"),
        ),
    ];
    let mut files_tally = Tally::new("as-files (`pgvault restore --mode as-files`)");
    for (i, (cell, rules, expect)) in cells.into_iter().enumerate() {
        let prefix = format!("f{i}");
        let signals = arm(&front, &rules);
        let out = cli(
            &stack,
            &[
                "restore",
                "--server",
                "main",
                "--database",
                "app",
                "--mode",
                "as-files",
                "--container",
                "exports",
                "--prefix",
                &prefix,
            ],
        );
        front.clear();
        let said = text(&out);
        files_tally.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        // Whatever happened: an exported manifest only next to the complete, verifiable copy.
        let exported = manifests(&exports, &format!("{prefix}/")).await;
        for m in &exported {
            let copy = Manifest { data_blob: format!("{prefix}/{}", m.data_blob), ..m.clone() };
            let v = verifiable(&exports, &copy).await;
            files_tally.check(cell, v.is_ok(), || format!("exported manifest without its data: {v:?}"));
        }
        let outcome = match expect {
            Expect::Success => {
                files_tally.check(cell, out.status.success() && exported.len() == 1, || said.clone());
                "succeeded, verified copy".to_string()
            }
            Expect::Failure(words) => {
                files_tally.check(cell, !out.status.success() && said.contains(words), || said.clone());
                // Signing comes after the copy: a verified copy may be there, unsigned.
                let copy =
                    if exported.is_empty() { "no exported manifest" } else { "the verified copy stays, unsigned" };
                format!("failed naming `{words}`; {copy}")
            }
        };
        files_tally.row(cell, 1, outcome, "an exported manifest only next to its complete copy, which hashes to it");
    }
    // Retention of database `ret` (daily 1: of two backups today, the older goes): the manifest
    // is deleted first, then the data.
    let mut inventory: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    inventory[0]["databases"] = json!({ "ret": { "retention": { "daily": 1, "min_keep": 1 } } });
    stack.set("PGVAULT_INVENTORY", &Value::Array(inventory).to_string());
    blocking(|| make_db(&stack, "ret", 2_000));
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        (
            "Delete Blob of the manifest: 503 once",
            vec![Rule::new(Op::DeleteBlob, busy()).on(manifest).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Delete Blob of the data: 500 once",
            vec![Rule::new(Op::DeleteBlob, internal()).on(data).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Delete Blob of the data: reset before the response (deleted, reply lost)",
            vec![Rule::new(Op::DeleteBlob, Fault::ResetBeforeResponse).on(data).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        ("List: 503 once", vec![Rule::new(Op::List, busy()).calls(Calls::Nth(1))], Expect::Success),
        (
            "List: truncated once",
            vec![Rule::new(Op::List, Fault::Truncate { keep: 200 }).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Get Blob of a manifest: truncated once",
            vec![Rule::new(Op::GetBlobRange, Fault::Truncate { keep: 100 }).on(manifest).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Delete Blob of the manifest: 503 on every call",
            vec![Rule::new(Op::DeleteBlob, busy()).on(manifest)],
            Expect::Failure("ServerBusy"),
        ),
        (
            "Delete Blob of the data: 503 on every call (after its manifest)",
            vec![Rule::new(Op::DeleteBlob, busy()).on(data)],
            Expect::Failure("orphan"),
        ),
    ];
    let mut retention = Tally::new("retention (`pgvault retention`)");
    for (cell, rules, expect) in cells {
        for _ in 0..2 {
            let out = cli(&stack, &["backup", "--server", "main", "--database", "ret"]);
            assert!(out.status.success(), "{}", text(&out));
        }
        let mut before = manifests(&store, "main/ret/").await;
        before.sort_by_key(|m| m.requested_at);
        let (old, newest) = (before[before.len() - 2].clone(), before[before.len() - 1].clone());
        let signals = arm(&front, &rules);
        let out = cli(&stack, &["retention"]);
        front.clear();
        let said = text(&out);
        retention.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        // Never a manifest naming missing data; the newest backup intact.
        let after = manifests(&store, "main/ret/").await;
        for m in &after {
            let v = verifiable(&store, m).await;
            retention.check(cell, v.is_ok(), || format!("manifest {} without its data: {v:?}", m.id));
        }
        retention.check(cell, after.iter().any(|m| m.id == newest.id), || "the newest backup was removed".into());
        let outcome = match expect {
            Expect::Success => {
                retention.check(cell, out.status.success(), || said.clone());
                retention
                    .check(cell, !store.exists(&old.data_blob).await.unwrap(), || "the old data is still there".into());
                retention.check(cell, after.len() == 1, || format!("{} backups left", after.len()));
                "the older backup removed, manifest then data".to_string()
            }
            Expect::Failure(words) => {
                retention.check(cell, !out.status.success() && said.contains(words), || said.clone());
                let orphans = unpublished_data(&store, "main/ret/").await;
                let cleaned = cli(&stack, &["verify", "--all", "--clean-orphans"]);
                let left = unpublished_data(&store, "main/ret/").await;
                retention.check(cell, cleaned.status.success() && left.is_empty(), || text(&cleaned));
                if orphans.is_empty() {
                    format!("exit 1 naming `{words}`; the backup kept whole")
                } else {
                    format!(
                        "exit 1 naming `{words}`; the data left as an orphan, which `verify --all --clean-orphans` removed"
                    )
                }
            }
        };
        // Leave only the newest for the next cell.
        let out = cli(&stack, &["retention"]);
        retention.check(cell, out.status.success(), || text(&out));
        retention.row(cell, 1, outcome, "retention removes the manifest before the data: never a manifest naming missing data; the newest backup kept");
    }
    finish_all(vec![tally, files_tally, retention]);
}

// ---- SAS rotation and the VM's sync -----------------------------------------------------------

const NO_TOKEN_GAP: &str = "no token gap for a VM: the include file is whole (the old token or the new one) and the token it holds is still valid; the vault keeps a valid, enabled version";

fn fake_sas(expiry: time::OffsetDateTime, tag: &str) -> String {
    use pgvault::features::pgbackrest::token;
    format!(
        "sv=2025-07-05&sr=c&st=2026-01-01T00%3A00%3A00Z&se={}&sp=racwdl&spr=https&skoid=oid&sktid=tid&sig={tag}%2Bsig%3D",
        token::sas_time(expiry).replace(':', "%3A")
    )
}

/// The VM side (`pgvault pgbackrest-sas sync`) and the rotator (`pgvault pgbackrest-sas
/// rotate`) under Key Vault, identity and storage faults: a token is never lost or cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_rotation_and_sync_under_faults() {
    use pgvault::domain::secret::Secret;
    use pgvault::features::pgbackrest::{TokenVault, include};
    let ca = support::TestCa::new();
    let azurite = support::Azurite::start(&ca).await;
    let identity = support::IdentityServer::start().await;
    let kv = support::KeyVault::start(&ca);
    let front = Front::start(
        &ca,
        Upstreams {
            blob: Some(azurite.blob_endpoint.clone()),
            queue: None,
            vault: Some(kv.url.clone()),
            identity: Some(identity.endpoint.clone()),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgvault-sas.conf");
    let store_dir = dir.path().join("store");
    let base_env = |extra: &[(&str, String)]| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("PGVAULT_CA_FILE".into(), ca.ca_pem_path().display().to_string()),
            ("PGVAULT_LOG_FORMAT".into(), "text".into()),
            ("PGVAULT_STORAGE".into(), "local".into()),
            ("PGVAULT_LOCAL_DIR".into(), store_dir.display().to_string()),
            ("PGVAULT_STORAGE_RETRIES".into(), "1".into()),
            ("PGVAULT_HTTP_RETRIES".into(), "2".into()),
            ("PGVAULT_HTTP_TIMEOUT_SECONDS".into(), TIMEOUT_SECS.to_string()),
            ("IDENTITY_ENDPOINT".into(), front.identity_endpoint.clone()),
            ("IDENTITY_HEADER".into(), identity.header.clone()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };
    let run = |args: &[&str], env: Vec<(String, String)>| -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgvault"));
        cmd.env_clear().envs(env).args(args).stdin(std::process::Stdio::null());
        blocking(|| cmd.output().expect("run pgvault"))
    };
    let file_arg = file.display().to_string();
    let group = if support::is_root() { "postgres" } else { "0" };
    let sync_args = [
        "pgbackrest-sas",
        "sync",
        "--vault",
        &front.vault_url,
        "--secret",
        "pgbackrest-sas-vm1",
        "--file",
        &file_arg,
        "--owner",
        "root",
        "--group",
        group,
    ];

    // Sync: the old token is in the file, a new one in the vault.
    let busy_vault = || Fault::ServerBusy;
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        ("Get Secret: 503 once", vec![Rule::new(Op::GetSecret, busy_vault()).calls(Calls::Nth(1))], Expect::Success),
        ("Get Secret: 500 once", vec![Rule::new(Op::GetSecret, internal()).calls(Calls::Nth(1))], Expect::Success),
        (
            "Get Secret: 429 with Retry-After 1",
            vec![Rule::new(Op::GetSecret, Fault::Throttled { retry_after_secs: 1 }).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Get Secret: 408 RequestTimeout once",
            vec![Rule::new(Op::GetSecret, Fault::Status { status: 408, code: "RequestTimeout" }).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Get Secret: reset before the response",
            vec![Rule::new(Op::GetSecret, Fault::ResetBeforeResponse).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Get Secret: stall past the timeout",
            vec![Rule::new(Op::GetSecret, stall()).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        (
            "Get Secret: slow trickle",
            vec![Rule::new(Op::GetSecret, Fault::Trickle { chunk: 64, every: Duration::from_millis(20) })],
            Expect::Success,
        ),
        ("token: 500 once", vec![Rule::new(Op::Token, internal()).calls(Calls::Nth(1))], Expect::Success),
        (
            "token: 429 with Retry-After 1",
            vec![Rule::new(Op::Token, Fault::Throttled { retry_after_secs: 1 }).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        ("Get Secret: 503 on every call", vec![Rule::new(Op::GetSecret, busy_vault())], Expect::Failure("Key Vault")),
        (
            "Get Secret: reset mid-body on every call",
            vec![Rule::new(Op::GetSecret, Fault::ResetMidBody { after: 40 })],
            Expect::Failure("Key Vault"),
        ),
        (
            "Get Secret: truncated on every call",
            vec![Rule::new(Op::GetSecret, Fault::Truncate { keep: 40 })],
            Expect::Failure("Key Vault"),
        ),
        (
            "Get Secret: every call stalls past the timeout",
            vec![Rule::new(Op::GetSecret, stall())],
            Expect::Failure("Key Vault"),
        ),
        ("token: 503 on every call", vec![Rule::new(Op::Token, busy_vault())], Expect::Failure("Key Vault")),
    ];
    let future = time::OffsetDateTime::now_utc() + time::Duration::hours(6);
    let mut tally = Tally::new("SAS sync on the VM (`pgvault pgbackrest-sas sync`)");
    for (i, (cell, rules, expect)) in cells.into_iter().enumerate() {
        let old = include::render(1, &Secret::new(fake_sas(future, &format!("old{i}"))));
        std::fs::write(&file, old.expose()).unwrap();
        let new = include::render(1, &Secret::new(fake_sas(future, &format!("new{i}"))));
        kv.set_secret("pgbackrest-sas-vm1", &fake_sas(future, &format!("new{i}")));
        let signals = arm(&front, &rules);
        let out = run(&sync_args, base_env(&[]));
        front.clear();
        let said = text(&out);
        tally.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        let now = std::fs::read_to_string(&file).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        tally.check(cell, !names.iter().any(|n| n.contains(".tmp")), || format!("a temp file is left: {names:?}"));
        let outcome = match expect {
            Expect::Success => {
                tally.check(cell, out.status.success() && now == new.expose(), || said.clone());
                "new token written".to_string()
            }
            Expect::Failure(words) => {
                tally.check(cell, !out.status.success() && said.contains(words), || said.clone());
                tally.check(cell, now == old.expose(), || "the include file changed".into());
                format!("exit 1 naming `{words}`; the old, valid token stays")
            }
        };
        tally.check(cell, !said.contains("sig=new") && !said.contains("%2Bsig"), || "a token in the output".into());
        tally.row(cell, 1, outcome, NO_TOKEN_GAP);
    }
    tally.finish();

    // Rotation: the current token is due for renewal (30 minutes left).
    let vm = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/db/providers/Microsoft.Compute/virtualMachines/vm1";
    let targets = json!([{
        "name": "vm1", "vm_resource_id": vm, "blob_endpoint": front.blob_endpoint, "container": "pgbr",
        "vault": front.vault_url, "include_file": file,
    }])
    .to_string();
    let reader = pgvault::azure::pgbackrest::AzureTokenVault::new(
        test_credential(),
        client_options(Some(ca.ca_pem_path()), &RetrySettings::fast()).unwrap(),
    );
    let current = || async { reader.current(&kv.url, "pgbackrest-sas-vm1").await.unwrap().expect("a token") };
    let cells: Vec<(&str, Vec<Rule>, Expect)> = vec![
        (
            "Get User Delegation Key: 503 once",
            vec![Rule::new(Op::UserDelegationKey, busy()).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        ("Set Secret: 503 once", vec![Rule::new(Op::SetSecret, busy()).calls(Calls::Nth(1))], Expect::Success),
        (
            "Set Secret: reset before the response (stored, reply lost)",
            vec![Rule::new(Op::SetSecret, Fault::ResetBeforeResponse).calls(Calls::Nth(1))],
            Expect::Success,
        ),
        ("Get Secret: 500 once", vec![Rule::new(Op::GetSecret, internal()).calls(Calls::Nth(1))], Expect::Success),
        ("token: 500 once", vec![Rule::new(Op::Token, internal()).calls(Calls::Nth(1))], Expect::Success),
        ("Set Secret: 503 on every call", vec![Rule::new(Op::SetSecret, busy())], Expect::Failure("ServerBusy")),
        (
            "Get User Delegation Key: 500 on every call",
            vec![Rule::new(Op::UserDelegationKey, internal())],
            Expect::Failure("delegation key"),
        ),
        (
            "Get Secret: truncated on every call",
            vec![Rule::new(Op::GetSecret, Fault::Truncate { keep: 40 })],
            Expect::Failure(""),
        ),
    ];
    let mut tally = Tally::new("SAS rotation (`pgvault pgbackrest-sas rotate`)");
    for (cell, rules, expect) in cells {
        kv.set_secret(
            "pgbackrest-sas-vm1",
            &fake_sas(time::OffsetDateTime::now_utc() + time::Duration::minutes(30), "due"),
        );
        kv.set_expires("pgbackrest-sas-vm1", Some(time::OffsetDateTime::now_utc() + time::Duration::minutes(30)));
        let before = current().await;
        let signals = arm(&front, &rules);
        let out = run(&["pgbackrest-sas", "rotate"], base_env(&[("PGVAULT_PGBACKREST_TARGETS", targets.clone())]));
        front.clear();
        let said = text(&out);
        tally.check(cell, fired(&signals) > 0, || "the fault never fired".into());
        let after = current().await;
        let soon = time::OffsetDateTime::now_utc() + time::Duration::minutes(20);
        tally.check(cell, after.state.enabled && after.state.expires.is_some_and(|e| e > soon), || {
            format!("the newest token is not valid for long: {:?}", after.state)
        });
        let outcome = match expect {
            Expect::Success => {
                tally.check(cell, out.status.success() && after.version != before.version, || said.clone());
                let long = time::OffsetDateTime::now_utc() + time::Duration::hours(11);
                tally.check(cell, after.state.expires.is_some_and(|e| e > long), || format!("{:?}", after.state));
                "rotated: a new 12 h token".to_string()
            }
            Expect::Failure(words) => {
                tally.check(cell, !out.status.success() && said.contains(words), || said.clone());
                tally.check(cell, after.version == before.version, || "a new version anyway".into());
                format!(
                    "target failed (exit 1{}); the current token kept",
                    if words.is_empty() { String::new() } else { format!(", naming `{words}`") }
                )
            }
        };
        tally.row(cell, 1, outcome, NO_TOKEN_GAP);
    }
    tally.finish();
}
