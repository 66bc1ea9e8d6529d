//! Retries of transient store errors: one wrapper around any [`BlobStore`], configured once (in
//! `runtime`), so that no caller retries by hand. restic's `backend/retry` is the model.
//!
//! Each method retries only what the trait's contract says is safe to retry:
//! - `stage_block`, `commit_blocks`, `put`, `delete`, `discard_staged`, `set_tier`: idempotent
//!   writes, retried as they are (their data is a `Bytes`, which can be sent again).
//! - `get`, `tags`, `list`, `exists`, `properties`: reads, retried as they are.
//! - `read`: only the opening is retried. An error in the middle of the stream reaches the
//!   caller, who has consumed the bytes before it; the whole read is the caller's to repeat.
//! - `create`: retried, but an attempt that failed transiently may have written the blob. A
//!   retry that then finds a blob reads it: [`CreateOutcome::Created`] if it holds exactly the
//!   bytes this create meant to write (the earlier attempt landed; another writer of the very same
//!   bytes is indistinguishable, and the same), [`CreateOutcome::AlreadyExists`] otherwise.
//!
//! Permanent errors are never retried. Every retry is a debug log line naming the operation and
//! the blob (never data, tags or a URL); the error texts are the adapters', already redacted.

use super::{BlobInfo, BlobProps, BlobStore, ByteStream, CreateOutcome, FileExport, Tags, Tier};
use crate::domain::error::{Error, Kind, Result};
use crate::domain::secret::Secret;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How the store retries: exponential back-off with jitter, a bounded number of times.
///
/// This sits above the Azure SDK's own HTTP retries (`azure::RetrySettings`), which ride out
/// throttling per request; this one retries what still fails transiently after them (a dropped
/// connection mid-body, a token fetch) and every store alike, the local one included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: usize,
    /// The first back-off; it doubles with every retry, plus up to as much again of jitter.
    pub min_delay: Duration,
    /// The longest back-off, before jitter.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six retries from 0.5 s, doubling up to 30 s: about half a minute to a minute in all
    /// before the error reaches the job, which the queue then retries. (What the backup uploader
    /// used per block before this wrapper existed.)
    fn default() -> Self {
        Self { max_retries: 6, min_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// A [`BlobStore`] that retries the transient errors of another.
pub struct RetryingStore {
    inner: Arc<dyn BlobStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn BlobStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// Run `attempt` until it succeeds, fails permanently, or the retries are used up.
    async fn retry<T, F, Fut>(&self, op: &'static str, blob: &str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retries = 0u32;
        let result = attempt
            .retry(self.policy.backoff())
            .when(|e: &Error| e.kind() == Kind::Transient)
            .notify(|e: &Error, after: Duration| {
                retries += 1;
                tracing::debug!(op, blob, retry = retries, retry_in = ?after, error = %e, "transient store error; retrying");
            })
            .await;
        if retries > 0 {
            match &result {
                Ok(_) => tracing::debug!(op, blob, retries, "store operation succeeded after retries"),
                Err(e) => tracing::debug!(op, blob, retries, error = %e, "store operation failed after retries"),
            }
        }
        result
    }

    /// A retried create found a blob after an attempt whose outcome is unknown: whose is it?
    async fn settle_create(&self, name: &str, data: &Bytes) -> Result<CreateOutcome> {
        match self.get(name).await {
            Ok(found) if found == *data => {
                tracing::debug!(
                    op = "create",
                    blob = name,
                    "a retried create found the bytes an earlier attempt wrote"
                );
                Ok(CreateOutcome::Created)
            }
            Ok(_) => Ok(CreateOutcome::AlreadyExists),
            Err(e) => Err(Error::transient(format!(
                "create blob {name:?}: an attempt failed with an unknown outcome, and the blob found \
                 after it cannot be read to tell whether that attempt wrote it: {}",
                e.message()
            ))),
        }
    }
}

#[async_trait]
impl BlobStore for RetryingStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn stage_block(&self, name: &str, block_id: &str, data: Bytes) -> Result<()> {
        self.retry("stage_block", name, || self.inner.stage_block(name, block_id, data.clone())).await
    }

    async fn commit_blocks(&self, name: &str, block_ids: &[String], tags: &Tags) -> Result<()> {
        self.retry("commit_blocks", name, || self.inner.commit_blocks(name, block_ids, tags)).await
    }

    async fn put(&self, name: &str, data: Bytes, tags: &Tags) -> Result<()> {
        self.retry("put", name, || self.inner.put(name, data.clone(), tags)).await
    }

    async fn create(&self, name: &str, data: Bytes, tags: &Tags) -> Result<CreateOutcome> {
        let unknown_outcome = AtomicBool::new(false);
        let outcome = self
            .retry("create", name, || async {
                let r = self.inner.create(name, data.clone(), tags).await;
                if matches!(&r, Err(e) if e.kind() == Kind::Transient) {
                    unknown_outcome.store(true, Ordering::Relaxed);
                }
                r
            })
            .await?;
        if outcome == CreateOutcome::AlreadyExists && unknown_outcome.load(Ordering::Relaxed) {
            return self.settle_create(name, &data).await;
        }
        Ok(outcome)
    }

    async fn get(&self, name: &str) -> Result<Bytes> {
        self.retry("get", name, || self.inner.get(name)).await
    }

    async fn read(&self, name: &str) -> Result<ByteStream> {
        // The opening only: the stream itself is passed on untouched.
        self.retry("read", name, || self.inner.read(name)).await
    }

    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        // The opening only, as `read`.
        self.retry("read_range", name, || self.inner.read_range(name, range.clone())).await
    }

    async fn tags(&self, name: &str) -> Result<Tags> {
        self.retry("tags", name, || self.inner.tags(name)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>> {
        self.retry("list", prefix, || self.inner.list(prefix)).await
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        self.retry("exists", name, || self.inner.exists(name)).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.retry("delete", name, || self.inner.delete(name)).await
    }

    async fn discard_staged(&self, name: &str) -> Result<()> {
        self.retry("discard_staged", name, || self.inner.discard_staged(name)).await
    }

    async fn set_tier(&self, name: &str, tier: Tier) -> Result<()> {
        self.retry("set_tier", name, || self.inner.set_tier(name, tier)).await
    }

    async fn properties(&self, name: &str) -> Result<BlobProps> {
        self.retry("properties", name, || self.inner.properties(name)).await
    }

    fn file_export(&self) -> Option<&dyn FileExport> {
        self.inner.file_export().map(|_| self as &dyn FileExport)
    }
}

/// The export capability of the inner store, with its calls retried and the stores it opens on
/// other containers wrapped the same way.
#[async_trait]
impl FileExport for RetryingStore {
    async fn container(&self, name: &str) -> Result<Arc<dyn BlobStore>> {
        let export = self.inner_export()?;
        let store = self.retry("container", name, || export.container(name)).await?;
        Ok(Arc::new(RetryingStore::new(store, self.policy.clone())))
    }

    async fn read_only_url(&self, container: &str, blob: &str, expires_at: time::OffsetDateTime) -> Result<Secret> {
        let export = self.inner_export()?;
        self.retry("read_only_url", blob, || export.read_only_url(container, blob, expires_at)).await
    }
}

impl RetryingStore {
    fn inner_export(&self) -> Result<&dyn FileExport> {
        self.inner.file_export().ok_or_else(|| {
            Error::unsupported(format!("export blobs as files: not supported by {}", self.inner.describe()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::store::local::LocalStore;
    use futures::{StreamExt, TryStreamExt};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// These tests run one at a time: tracing caches per call site whether anyone listens, and a
    /// retry logged by one test's thread while another test holds its capturing subscriber can
    /// leave that test's lines unrecorded.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// What the fault-injecting store does to the first calls of one operation.
    #[derive(Clone, Copy)]
    enum Fault {
        /// Fail transiently without calling the inner store (the request never arrived).
        Transient,
        /// Call the inner store, then fail transiently anyway (the reply was lost).
        LostReply,
        /// Fail permanently without calling the inner store.
        Permanent,
    }

    /// A local store whose operations fail as planned: `fail(op, n, fault)` makes the first `n`
    /// calls of `op` fail. Counts every call per operation.
    struct Faulty {
        inner: LocalStore,
        plan: Mutex<HashMap<&'static str, (u32, Fault)>>,
        calls: Mutex<HashMap<&'static str, u32>>,
        /// `read` streams yield one chunk, then this transient error.
        break_streams: AtomicBool,
    }

    impl Faulty {
        fn new(dir: &std::path::Path) -> Arc<Faulty> {
            Arc::new(Faulty {
                inner: LocalStore::new(dir),
                plan: Default::default(),
                calls: Default::default(),
                break_streams: AtomicBool::new(false),
            })
        }

        fn fail(&self, op: &'static str, times: u32, fault: Fault) {
            self.plan.lock().unwrap().insert(op, (times, fault));
        }

        fn calls(&self, op: &str) -> u32 {
            self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
        }

        /// Count the call, and say what to do with it.
        fn enter(&self, op: &'static str) -> Option<Fault> {
            *self.calls.lock().unwrap().entry(op).or_default() += 1;
            let mut plan = self.plan.lock().unwrap();
            let (left, fault) = plan.get_mut(op)?;
            if *left == 0 {
                return None;
            }
            *left -= 1;
            Some(*fault)
        }

        async fn run<T>(&self, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
            match self.enter(op) {
                None => call.await,
                Some(Fault::Transient) => Err(Error::transient(format!("{op}: injected: connection reset"))),
                Some(Fault::Permanent) => Err(Error::permanent(format!("{op}: injected: http 403"))),
                Some(Fault::LostReply) => {
                    call.await?;
                    Err(Error::transient(format!("{op}: injected: reply lost after the request")))
                }
            }
        }
    }

    #[async_trait]
    impl BlobStore for Faulty {
        fn describe(&self) -> String {
            format!("faulty {}", self.inner.describe())
        }
        async fn stage_block(&self, n: &str, id: &str, d: Bytes) -> Result<()> {
            self.run("stage_block", self.inner.stage_block(n, id, d)).await
        }
        async fn commit_blocks(&self, n: &str, ids: &[String], t: &Tags) -> Result<()> {
            self.run("commit_blocks", self.inner.commit_blocks(n, ids, t)).await
        }
        async fn put(&self, n: &str, d: Bytes, t: &Tags) -> Result<()> {
            self.run("put", self.inner.put(n, d, t)).await
        }
        async fn create(&self, n: &str, d: Bytes, t: &Tags) -> Result<CreateOutcome> {
            self.run("create", self.inner.create(n, d, t)).await
        }
        async fn get(&self, n: &str) -> Result<Bytes> {
            self.run("get", self.inner.get(n)).await
        }
        async fn read(&self, n: &str) -> Result<ByteStream> {
            let stream = self.run("read", self.inner.read(n)).await?;
            if !self.break_streams.load(Ordering::SeqCst) {
                return Ok(stream);
            }
            let broken = futures::stream::iter([
                Ok(Bytes::from_static(b"first chunk")),
                Err(Error::transient("read: injected: connection reset mid-body")),
            ]);
            Ok(broken.boxed())
        }
        async fn tags(&self, n: &str) -> Result<Tags> {
            self.run("tags", self.inner.tags(n)).await
        }
        async fn list(&self, p: &str) -> Result<Vec<BlobInfo>> {
            self.run("list", self.inner.list(p)).await
        }
        async fn exists(&self, n: &str) -> Result<bool> {
            self.run("exists", self.inner.exists(n)).await
        }
        async fn delete(&self, n: &str) -> Result<()> {
            self.run("delete", self.inner.delete(n)).await
        }
    }

    fn policy(max_retries: usize) -> RetryPolicy {
        RetryPolicy { max_retries, ..RetryPolicy::default() }
    }

    fn setup(max_retries: usize) -> (tempfile::TempDir, Arc<Faulty>, RetryingStore) {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(dir.path());
        let store = RetryingStore::new(faulty.clone(), policy(max_retries));
        (dir, faulty, store)
    }

    fn tags(kind: &str) -> Tags {
        [("kind".to_string(), kind.to_string())].into_iter().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_backoff_until_success() {
        let _serial = SERIAL.lock().await;
        let (_dir, faulty, store) = setup(6);
        let id = crate::seams::store::block_id(0);
        faulty.fail("stage_block", 2, Fault::Transient);
        faulty.fail("commit_blocks", 1, Fault::Transient);
        let start = tokio::time::Instant::now();
        store.stage_block("a/blob", &id, Bytes::from_static(b"block")).await.unwrap();
        // Two back-offs, of at least 0.5 s and 1 s: waited on the paused clock, not for real.
        assert!(start.elapsed() >= Duration::from_millis(1500), "{:?}", start.elapsed());
        assert_eq!(faulty.calls("stage_block"), 3);
        store.commit_blocks("a/blob", std::slice::from_ref(&id), &tags("data")).await.unwrap();
        assert_eq!(faulty.calls("commit_blocks"), 2);
        assert_eq!(store.get("a/blob").await.unwrap(), &b"block"[..]);
        assert_eq!(faulty.calls("get"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_policy_allows() {
        let _serial = SERIAL.lock().await;
        let (_dir, faulty, store) = setup(3);
        faulty.fail("list", u32::MAX, Fault::Transient);
        let e = store.list("a/").await.unwrap_err();
        assert_eq!(e.kind(), Kind::Transient, "{e}");
        assert!(e.message().contains("injected: connection reset"), "{e}");
        assert_eq!(faulty.calls("list"), 4, "the first attempt and three retries");

        let (_dir, faulty, store) = setup(0);
        faulty.fail("exists", 1, Fault::Transient);
        assert!(store.exists("a/b").await.is_err());
        assert_eq!(faulty.calls("exists"), 1, "max_retries 0: no retry");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_never_retried() {
        let _serial = SERIAL.lock().await;
        let (_dir, faulty, store) = setup(6);
        // A missing blob, as the inner store reports it.
        let e = store.get("missing/blob").await.unwrap_err();
        assert_eq!(e.kind(), Kind::Permanent, "{e}");
        assert_eq!(faulty.calls("get"), 1);
        // An injected refusal.
        faulty.fail("put", 1, Fault::Permanent);
        let start = tokio::time::Instant::now();
        let e = store.put("a/record.json", Bytes::from_static(b"{}"), &Tags::new()).await.unwrap_err();
        assert_eq!(e.kind(), Kind::Permanent, "{e}");
        assert_eq!(faulty.calls("put"), 1);
        assert_eq!(start.elapsed(), Duration::ZERO, "no back-off before a permanent error");
        assert!(!store.exists("a/record.json").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_put_whose_reply_was_lost_is_written_again() {
        let _serial = SERIAL.lock().await;
        let (_dir, faulty, store) = setup(6);
        store.put("@jobs/x.json", Bytes::from_static(b"old"), &tags("old")).await.unwrap();
        faulty.fail("put", 2, Fault::LostReply);
        store.put("@jobs/x.json", Bytes::from_static(b"new"), &tags("new")).await.unwrap();
        assert_eq!(faulty.calls("put"), 4);
        assert_eq!(store.get("@jobs/x.json").await.unwrap(), &b"new"[..]);
        assert_eq!(store.tags("@jobs/x.json").await.unwrap(), tags("new"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_retried_after_an_unknown_outcome_reports_its_own_write() {
        let _serial = SERIAL.lock().await;
        let (_dir, faulty, store) = setup(6);
        let body = Bytes::from_static(br#"{"attempt":"mine"}"#);

        // The first attempt wrote the blob but its reply was lost: the retry finds the blob,
        // reads it, sees its own bytes, and reports Created, not a loss to someone else.
        faulty.fail("create", 1, Fault::LostReply);
        assert_eq!(store.create("m/1.json", body.clone(), &tags("m")).await.unwrap(), CreateOutcome::Created);
        assert_eq!(faulty.calls("create"), 2);
        assert_eq!(faulty.calls("get"), 1);

        // The first attempt never arrived and another writer was first: AlreadyExists, and the
        // other writer's blob is untouched.
        faulty.inner.create("m/2.json", Bytes::from_static(b"theirs"), &tags("other")).await.unwrap();
        faulty.fail("create", 1, Fault::Transient);
        assert_eq!(store.create("m/2.json", body.clone(), &tags("m")).await.unwrap(), CreateOutcome::AlreadyExists);
        assert_eq!(store.get("m/2.json").await.unwrap(), &b"theirs"[..]);
        assert_eq!(store.tags("m/2.json").await.unwrap(), tags("other"));

        // Without a failed attempt, AlreadyExists is certain and nothing is read to check it.
        let gets = faulty.calls("get");
        assert_eq!(store.create("m/1.json", body.clone(), &tags("m")).await.unwrap(), CreateOutcome::AlreadyExists);
        assert_eq!(faulty.calls("get"), gets);

        // When the blob cannot be read to settle it, the outcome stays unknown: transient.
        faulty.fail("create", 1, Fault::LostReply);
        faulty.fail("get", u32::MAX, Fault::Permanent);
        let e = store.create("m/3.json", body.clone(), &tags("m")).await.unwrap_err();
        assert_eq!(e.kind(), Kind::Transient, "{e}");
        assert!(e.message().starts_with("create blob \"m/3.json\": an attempt failed with an unknown outcome"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_retries_its_opening_but_never_mid_stream() {
        let _serial = SERIAL.lock().await;
        let (_dir, faulty, store) = setup(6);
        store.put("d/dump", Bytes::from_static(b"whole content"), &Tags::new()).await.unwrap();
        faulty.fail("read", 2, Fault::Transient);
        let got: Vec<Bytes> = store.read("d/dump").await.unwrap().try_collect().await.unwrap();
        assert_eq!(got.concat(), b"whole content");
        assert_eq!(faulty.calls("read"), 3);

        faulty.break_streams.store(true, Ordering::SeqCst);
        let mut stream = store.read("d/dump").await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), &b"first chunk"[..]);
        let e = stream.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), Kind::Transient, "{e}");
        assert!(stream.next().await.is_none());
        assert_eq!(faulty.calls("read"), 4, "the broken stream was not reopened");
    }

    #[tokio::test(start_paused = true)]
    async fn deletes_and_reads_are_retried_and_capabilities_pass_through() {
        let _serial = SERIAL.lock().await;
        let (_dir, faulty, store) = setup(6);
        store.put("x/y", Bytes::from_static(b"1"), &tags("t")).await.unwrap();
        faulty.fail("tags", 1, Fault::Transient);
        assert_eq!(store.tags("x/y").await.unwrap(), tags("t"));
        assert_eq!(faulty.calls("tags"), 2);
        faulty.fail("delete", 1, Fault::LostReply);
        store.delete("x/y").await.unwrap();
        assert_eq!(faulty.calls("delete"), 2, "the retried delete finds nothing, and succeeds");
        assert!(!store.exists("x/y").await.unwrap());
        // The local store has neither tiers nor exports: the same answers through the wrapper,
        // and "unsupported" is permanent, so it is not retried.
        assert!(store.set_tier("x/y", Tier::Cool).await.unwrap_err().is_unsupported());
        assert!(store.file_export().is_none());
        assert!(store.describe().starts_with("faulty local:"));
    }

    /// A writer that keeps what the log subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_retry_is_a_debug_line_naming_the_operation_and_the_blob() {
        let _serial = SERIAL.lock().await;
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let (_dir, faulty, store) = setup(6);
        faulty.fail("put", 2, Fault::Transient);
        let secret_body = Bytes::from_static(b"sig=SECRETSIG");
        store.put("@holds/prod/app/x.json", secret_body, &Tags::new()).await.unwrap();

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let retries: Vec<&str> = text.lines().filter(|l| l.contains("transient store error; retrying")).collect();
        assert_eq!(retries.len(), 2, "{text}");
        for (n, line) in retries.iter().enumerate() {
            assert!(line.contains("DEBUG"), "{line}");
            assert!(line.contains(r#"op="put""#) && line.contains(r#"blob="@holds/prod/app/x.json""#), "{line}");
            assert!(line.contains(&format!("retry={}", n + 1)), "{line}");
        }
        assert!(text.contains("succeeded after retries") && text.contains("retries=2"), "{text}");
        assert!(!text.contains("SECRETSIG"), "data reached the log: {text}");
    }
}
