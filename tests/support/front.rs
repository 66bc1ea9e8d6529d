//! The fault-injecting front of every remote dependency: one proxy in front of Azurite Blob,
//! Azurite Queue, the Key Vault test server and the identity endpoint.
//!
//! Each upstream gets a listener of its own (HTTPS with the test CA's leaf for the first three,
//! plain HTTP for the identity endpoint, as in production); pgvault is pointed at the front's
//! addresses instead of the upstreams' and talks to it with its real SDK clients. Every request
//! is forwarded unchanged (same path, query, headers and body: bearer tokens, SAS and the Key
//! Vault challenge keep working) unless a rule says otherwise.
//!
//! **Rules** ([`Rule`]) say which operation ([`Op`]: Put Block, Put Block List, Put Blob, Get
//! Blob with a range, Set Tags, List, Put Message, Delete Message, Get Secret, token, ...),
//! optionally only on paths containing a string, which calls ([`Calls`]: the n-th, the first n,
//! all from the n-th, a share of them), and what happens ([`Fault`]): a service error with the
//! service's own body (`503 ServerBusy`, `500 InternalError`, `429` with `Retry-After`, 408,
//! 409, 412), a connection reset before the response or in the middle of its body, a body cut
//! short with a Content-Length that matches the cut, a stall, a slow trickle. Errors are answered
//! without forwarding (the service refused); resets, truncation, stalls and trickles forward
//! first (the service did the work, the reply is what goes wrong: the harder case for writes).
//!
//! **Signals.** Each rule added returns a [`Fired`] handle: how often it fired, and an async wait
//! for the n-th firing, so tests never sleep to synchronise. [`Front::calls`] counts every
//! operation seen.
//!
//! **Archive and WORM** (blob only, from the former `blobfront`): Azurite accepts Set Blob Tier
//! `Archive` but keeps serving the blob, and answers 501 to every immutability API (see
//! `AZURE-LOCAL.md`). The front adds what the Blob service documents for both:
//! - After a successful `PUT ?comp=tier` with `x-ms-access-tier: Archive`, the blob is offline:
//!   Get Blob answers 409 `BlobArchived`. `PUT ?comp=tier` to an online tier starts a
//!   rehydration: 202 Accepted, and from then on Get Blob Properties says `x-ms-access-tier:
//!   Archive` with `x-ms-archive-status: rehydrate-pending-to-<tier>`; a second tier change while
//!   it is pending is 409 `BlobBeingRehydrated`. [`Front::finish_rehydration`] is the service
//!   completing it (hours on Azure): the tier change is replayed to Azurite.
//! - Blobs under a prefix given to [`Front::lock_prefix`] are under a time-based retention
//!   policy: Delete Blob answers 409 `BlobImmutableDueToPolicy`.
//!
//! Every request is logged (operation, method, path and query, tier headers, status, the fault
//! injected) for assertions.

use super::TestCa;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use futures::StreamExt;
use std::collections::HashMap;
use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Which remote dependency a listener fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Blob,
    Queue,
    KeyVault,
    Identity,
}

/// The operation a request performs, as the service's REST API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    PutBlock,
    PutBlockList,
    PutBlob,
    /// Get Blob of a byte range (`x-ms-range` / `Range`): the SDK's partitioned download.
    GetBlobRange,
    /// Get Blob of the whole blob.
    GetBlob,
    GetProperties,
    SetTags,
    GetTags,
    SetTier,
    /// List Blobs (and Find Blobs by Tags).
    List,
    DeleteBlob,
    CreateContainer,
    UserDelegationKey,
    PutMessage,
    GetMessages,
    PeekMessages,
    DeleteMessage,
    UpdateMessage,
    QueueOther,
    GetSecret,
    SetSecret,
    VaultOther,
    /// A token from the identity endpoint.
    Token,
    Other,
}

/// Which of the matching calls (counted per rule, from 1) a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// Only the n-th.
    Nth(usize),
    /// The first n.
    First(usize),
    /// Every call from the n-th on.
    From(usize),
    /// Every call.
    All,
    /// This percentage of the calls, spread evenly and deterministically (exactly `p` of every
    /// 100 consecutive calls).
    Share(u32),
}

impl Calls {
    fn hits(self, n: usize) -> bool {
        match self {
            Calls::Nth(k) => n == k,
            Calls::First(k) => n <= k,
            Calls::From(k) => n >= k,
            Calls::All => true,
            // 37 is coprime with 100: n*37 mod 100 runs through every residue once per 100 calls.
            Calls::Share(p) => (n * 37) % 100 < p as usize,
        }
    }
}

/// What happens to a call a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `503 ServerBusy` (the storage services' throttling answer), not forwarded.
    ServerBusy,
    /// `500 InternalError`, not forwarded.
    InternalError,
    /// `429` with `Retry-After` (Key Vault's and the identity endpoint's throttling), not
    /// forwarded.
    Throttled { retry_after_secs: u32 },
    /// Another status with the service's error code, e.g. 408 `RequestTimeout`, 409
    /// `LeaseAlreadyPresent`, 412 `ConditionNotMet`; not forwarded.
    Status { status: u16, code: &'static str },
    /// Forwarded, then the connection is reset (RST) before any byte of the response.
    ResetBeforeResponse,
    /// Forwarded; the status, the headers (with the full Content-Length) and this many bytes of
    /// the body are sent (at most half the body), then the connection is reset.
    ResetMidBody { after: usize },
    /// Forwarded; the body is cut to this many bytes (at most half of it) and Content-Length
    /// says exactly that: nothing at the HTTP level is wrong.
    Truncate { keep: usize },
    /// Forwarded, then the response is held back this long before it is sent.
    Stall(Duration),
    /// Forwarded; the body is sent in pieces of `chunk` bytes, one every `every`.
    Trickle { chunk: usize, every: Duration },
}

impl Fault {
    fn label(&self) -> String {
        match self {
            Fault::ServerBusy => "503 ServerBusy".into(),
            Fault::InternalError => "500 InternalError".into(),
            Fault::Throttled { .. } => "429 Retry-After".into(),
            Fault::Status { status, code } => format!("{status} {code}"),
            Fault::ResetBeforeResponse => "reset before response".into(),
            Fault::ResetMidBody { .. } => "reset mid-body".into(),
            Fault::Truncate { .. } => "truncated body".into(),
            Fault::Stall(_) => "stall".into(),
            Fault::Trickle { .. } => "trickle".into(),
        }
    }
}

/// One fault rule: an operation, optionally a path filter, the calls, the fault.
#[derive(Debug, Clone)]
pub struct Rule {
    pub op: Op,
    /// Only requests whose decoded path contains this.
    pub path_contains: Option<String>,
    pub calls: Calls,
    pub fault: Fault,
}

impl Rule {
    /// Every call of `op` gets `fault`; narrow it with [`Rule::calls`] and [`Rule::on`].
    pub fn new(op: Op, fault: Fault) -> Rule {
        Rule { op, path_contains: None, calls: Calls::All, fault }
    }

    pub fn calls(mut self, calls: Calls) -> Rule {
        self.calls = calls;
        self
    }

    pub fn on(mut self, path_contains: &str) -> Rule {
        self.path_contains = Some(path_contains.to_string());
        self
    }
}

/// A rule's signal: how often it fired, and a wait for the n-th time.
#[derive(Clone)]
pub struct Fired {
    rx: watch::Receiver<usize>,
}

impl Fired {
    pub fn count(&self) -> usize {
        *self.rx.borrow()
    }

    /// Wait until the rule has fired `n` times (at most `limit`, then panic naming the rule's
    /// count: a fault that never fires is a broken test).
    pub async fn wait(&self, n: usize, limit: Duration) {
        let mut rx = self.rx.clone();
        let got = tokio::time::timeout(limit, rx.wait_for(|c| *c >= n)).await;
        assert!(got.is_ok(), "the rule fired {} times, not {n}, within {limit:?}", self.count());
    }
}

struct ActiveRule {
    rule: Rule,
    matched: AtomicUsize,
    fired: watch::Sender<usize>,
}

/// One request as the front saw it.
#[derive(Debug, Clone)]
pub struct FrontLogged {
    pub service: Service,
    pub op: Op,
    pub method: String,
    /// Path, without the query, percent-decoded.
    pub path: String,
    pub query: String,
    /// `x-ms-access-tier`, `x-ms-rehydrate-priority` as sent.
    pub tier: Option<String>,
    pub priority: Option<String>,
    /// The status sent (or the upstream's, for a reset or a stall).
    pub status: u16,
    /// The fault injected, if any.
    pub fault: Option<String>,
}

/// A rehydration under way: the target tier and the request that asked for it (replayed to
/// Azurite when it completes).
struct Pending {
    tier: String,
    uri: String,
    headers: HeaderMap,
}

#[derive(Default)]
struct State_ {
    /// Archived blobs (by request path), with their pending rehydration if any.
    archived: HashMap<String, Option<Pending>>,
    locked: Vec<String>,
    log: Vec<FrontLogged>,
    calls: HashMap<Op, usize>,
}

struct Inner {
    client: reqwest::Client,
    /// The blob account path (`/devstoreaccount1`), for naming blobs.
    account_path: String,
    blob_upstream: Option<String>,
    rules: Mutex<Vec<Arc<ActiveRule>>>,
    state: Mutex<State_>,
}

/// Where the front forwards to. Each given upstream gets a listener.
#[derive(Debug, Default, Clone)]
pub struct Upstreams {
    /// Azurite's blob endpoint, with the account path.
    pub blob: Option<String>,
    /// Azurite's queue endpoint, with the account path.
    pub queue: Option<String>,
    /// The Key Vault URL.
    pub vault: Option<String>,
    /// The identity endpoint (`IDENTITY_ENDPOINT`, with its path).
    pub identity: Option<String>,
}

pub struct Front {
    /// Give these to pgvault instead of the upstreams' (same form: account path, token path).
    pub blob_endpoint: String,
    pub queue_endpoint: String,
    pub vault_url: String,
    pub identity_endpoint: String,
    inner: Arc<Inner>,
    _servers: Vec<FrontServer>,
}

impl Front {
    /// A front of the blob service only (the archive/WORM front).
    pub fn blob(ca: &TestCa, blob_endpoint: &str) -> Front {
        Front::start(ca, Upstreams { blob: Some(blob_endpoint.to_string()), ..Upstreams::default() })
    }

    /// Serve in front of every upstream given.
    pub fn start(ca: &TestCa, up: Upstreams) -> Front {
        let split = |endpoint: &str| {
            let url = url::Url::parse(endpoint).expect("upstream endpoint");
            let origin =
                format!("{}://{}:{}", url.scheme(), url.host_str().unwrap(), url.port_or_known_default().unwrap());
            (origin, url.path().trim_end_matches('/').to_string(), url.scheme() == "https")
        };
        let account_path = up.blob.as_deref().map(|b| split(b).1).unwrap_or_default();
        let inner = Arc::new(Inner {
            client: ca.reqwest_client(),
            account_path,
            blob_upstream: up.blob.as_deref().map(|b| split(b).0),
            rules: Mutex::new(Vec::new()),
            state: Mutex::new(State_::default()),
        });
        let tls = Arc::new(super::server::server_config(ca.cert_path(), ca.key_path()));
        let mut servers = Vec::new();
        let mut endpoint = |service: Service, upstream: &Option<String>| -> String {
            let Some(upstream) = upstream else { return String::new() };
            let (origin, path, https) = split(upstream);
            let server = FrontServer::start(service, origin, https.then(|| tls.clone()), inner.clone());
            let url = format!("{}{path}", server.url);
            servers.push(server);
            url
        };
        let blob_endpoint = endpoint(Service::Blob, &up.blob);
        let queue_endpoint = endpoint(Service::Queue, &up.queue);
        let vault_url = endpoint(Service::KeyVault, &up.vault);
        let identity_endpoint = endpoint(Service::Identity, &up.identity);
        Front { blob_endpoint, queue_endpoint, vault_url, identity_endpoint, inner, _servers: servers }
    }

    /// Add a rule; rules are tried in the order added, the first that applies decides.
    pub fn add(&self, rule: Rule) -> Fired {
        let (tx, rx) = watch::channel(0);
        self.inner.rules.lock().unwrap().push(Arc::new(ActiveRule { rule, matched: AtomicUsize::new(0), fired: tx }));
        Fired { rx }
    }

    /// Remove every rule: from now on everything is forwarded unchanged.
    pub fn clear(&self) {
        self.inner.rules.lock().unwrap().clear();
    }

    /// Calls of `op` seen so far (faulted or not).
    pub fn calls(&self, op: Op) -> usize {
        self.inner.state.lock().unwrap().calls.get(&op).copied().unwrap_or(0)
    }

    fn path_of(&self, container: &str, blob: &str) -> String {
        format!("{}/{container}/{blob}", self.inner.account_path)
    }

    /// Refuse deletes of every blob of `container` whose name starts with `prefix`, as a
    /// time-based retention policy does.
    pub fn lock_prefix(&self, container: &str, prefix: &str) {
        let p = self.path_of(container, prefix);
        self.inner.state.lock().unwrap().locked.push(p);
    }

    /// Whether a blob is offline (archived, rehydrated or not yet).
    pub fn is_archived(&self, container: &str, blob: &str) -> bool {
        self.inner.state.lock().unwrap().archived.contains_key(&self.path_of(container, blob))
    }

    /// Complete every pending rehydration, as the service does after some hours: the tier
    /// change is made in Azurite and the blobs are online. Returns how many completed.
    pub async fn finish_rehydration(&self) -> usize {
        let pending: Vec<(String, Pending)> = {
            let mut st = self.inner.state.lock().unwrap();
            let done: Vec<String> =
                st.archived.iter().filter(|(_, p)| p.is_some()).map(|(path, _)| path.clone()).collect();
            done.into_iter().filter_map(|path| Some((path.clone(), st.archived.remove(&path)??))).collect()
        };
        let upstream = self.inner.blob_upstream.clone().expect("a blob front");
        for (path, p) in &pending {
            let mut req = self.inner.client.put(format!("{upstream}{}", p.uri));
            for (k, v) in &p.headers {
                if forwardable(k) {
                    req = req.header(k, v);
                }
            }
            let rsp = req.send().await.expect("replay set tier to azurite");
            assert!(
                rsp.status().is_success(),
                "azurite refused the tier change of {path} to {}: {}",
                p.tier,
                rsp.status()
            );
        }
        pending.len()
    }

    pub fn requests(&self) -> Vec<FrontLogged> {
        self.inner.state.lock().unwrap().log.clone()
    }

    /// The requests to one blob.
    pub fn requests_to(&self, container: &str, blob: &str) -> Vec<FrontLogged> {
        let path = self.path_of(container, blob);
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// The requests that got a fault.
    pub fn faulted(&self) -> Vec<FrontLogged> {
        self.requests().into_iter().filter(|r| r.fault.is_some()).collect()
    }
}

/// A request path with its percent-escapes decoded (the SDK sends `/` in names as `%2F`), so
/// blobs are known by their names.
fn decode_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn forwardable(name: &HeaderName) -> bool {
    !matches!(name.as_str(), "host" | "connection" | "transfer-encoding" | "content-length")
}

/// What the request does, from the service, method, path and query.
fn classify(service: Service, method: &Method, path: &str, query: &str, headers: &HeaderMap) -> Op {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let comp = q.get("comp").map(String::as_str);
    match service {
        Service::Identity => Op::Token,
        Service::KeyVault => match (method, path.starts_with("/secrets/")) {
            (&Method::GET, true) => Op::GetSecret,
            (&Method::PUT, true) => Op::SetSecret,
            _ => Op::VaultOther,
        },
        Service::Queue => {
            let messages = path.trim_end_matches('/').rsplit('/').next() == Some("messages");
            let one_message = path.contains("/messages/");
            match (method, messages, one_message) {
                (&Method::POST, true, _) => Op::PutMessage,
                (&Method::GET, true, _) if q.get("peekonly").is_some_and(|v| v == "true") => Op::PeekMessages,
                (&Method::GET, true, _) => Op::GetMessages,
                (&Method::DELETE, _, true) => Op::DeleteMessage,
                (&Method::PUT, _, true) => Op::UpdateMessage,
                _ => Op::QueueOther,
            }
        }
        Service::Blob => match (method, comp) {
            (&Method::PUT, Some("block")) => Op::PutBlock,
            (&Method::PUT, Some("blocklist")) => Op::PutBlockList,
            (&Method::PUT, Some("tags")) => Op::SetTags,
            (&Method::PUT, Some("tier")) => Op::SetTier,
            (&Method::PUT, None) if q.get("restype").is_some_and(|v| v == "container") => Op::CreateContainer,
            (&Method::PUT, None) => Op::PutBlob,
            (&Method::GET, Some("tags")) => Op::GetTags,
            (&Method::GET, Some("list" | "blobs")) => Op::List,
            (&Method::GET, None) if headers.contains_key("x-ms-range") || headers.contains_key("range") => {
                Op::GetBlobRange
            }
            (&Method::GET, None) => Op::GetBlob,
            (&Method::HEAD, _) => Op::GetProperties,
            (&Method::DELETE, None) => Op::DeleteBlob,
            (&Method::POST, Some("userdelegationkey")) => Op::UserDelegationKey,
            _ => Op::Other,
        },
    }
}

/// The service's own error answer: XML with `x-ms-error-code` for storage, JSON for Key Vault
/// and the identity endpoint.
fn service_error(service: Service, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let id = uuid::Uuid::new_v4();
    let b = Response::builder().status(status).header("x-ms-request-id", id.to_string());
    let b = match service {
        Service::Blob | Service::Queue => {
            let t = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc2822)
                .unwrap_or_default();
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{id}\nTime:{t}</Message></Error>"
            );
            b.header("content-type", "application/xml")
                .header("x-ms-error-code", code)
                .header("x-ms-version", "2025-11-05")
                .body(Body::from(body))
        }
        Service::KeyVault | Service::Identity => {
            let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
            b.header("content-type", "application/json; charset=utf-8").body(Body::from(body))
        }
    };
    b.expect("error response")
}

fn fault_response(service: Service, fault: &Fault) -> Option<Response<Body>> {
    let busy = "The server is currently unable to receive requests. Please retry your request.";
    Some(match fault {
        Fault::ServerBusy => service_error(service, StatusCode::SERVICE_UNAVAILABLE, "ServerBusy", busy),
        Fault::InternalError => service_error(
            service,
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "The server encountered an internal error. Please retry the request.",
        ),
        Fault::Throttled { retry_after_secs } => {
            let mut r = service_error(
                service,
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                "Operations per second is over the account limit.",
            );
            r.headers_mut().insert("retry-after", HeaderValue::from_str(&retry_after_secs.to_string()).unwrap());
            r
        }
        Fault::Status { status, code } => {
            service_error(service, StatusCode::from_u16(*status).expect("status"), code, "Injected by the test front.")
        }
        _ => return None,
    })
}

impl Inner {
    /// Count the call, and find the fault for it (the first rule that applies).
    fn pick(&self, op: Op, path: &str) -> Option<Fault> {
        *self.state.lock().unwrap().calls.entry(op).or_default() += 1;
        let rules = self.rules.lock().unwrap().clone();
        for r in rules {
            if r.rule.op != op || r.rule.path_contains.as_deref().is_some_and(|p| !path.contains(p)) {
                continue;
            }
            let n = r.matched.fetch_add(1, Ordering::SeqCst) + 1;
            if r.rule.calls.hits(n) {
                r.fired.send_modify(|c| *c += 1);
                return Some(r.rule.fault.clone());
            }
        }
        None
    }
}

/// A listener of the front: its own thread and runtime (so it keeps answering while a test
/// blocks its thread on a child process), its own accept loop (so it can reset a connection).
struct FrontServer {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A connection's way to be reset from inside a request: set `SO_LINGER` 0 on its socket
/// and drop it, so the kernel sends RST.
#[derive(Clone)]
struct Conn {
    abort: Arc<Notify>,
    fd: Arc<OwnedFd>,
}

impl Conn {
    fn reset(&self) {
        let _ = socket2::SockRef::from(self.fd.as_ref()).set_linger(Some(Duration::ZERO));
        self.abort.notify_one();
    }
}

impl FrontServer {
    fn start(service: Service, upstream: String, tls: Option<Arc<rustls::ServerConfig>>, inner: Arc<Inner>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind front");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let url = format!("{}://127.0.0.1:{port}", if tls.is_some() { "https" } else { "http" });
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let upstream = Arc::new(upstream);
        let thread = std::thread::Builder::new()
            .name(format!("front-{service:?}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("front runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                    let accept = async {
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else { continue };
                            let Ok(fd) = tcp.as_fd().try_clone_to_owned() else { continue };
                            let conn = Conn { abort: Arc::new(Notify::new()), fd: Arc::new(fd) };
                            let (acceptor, inner, upstream) = (acceptor.clone(), inner.clone(), upstream.clone());
                            tokio::spawn(async move {
                                let svc_conn = conn.clone();
                                let svc = hyper::service::service_fn(move |req| {
                                    let (inner, upstream, conn) = (inner.clone(), upstream.clone(), svc_conn.clone());
                                    async move {
                                        Ok::<_, Infallible>(handle(service, inner, &upstream, conn, req).await)
                                    }
                                });
                                let http = hyper::server::conn::http1::Builder::new();
                                match acceptor {
                                    Some(acceptor) => {
                                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                                        let served = http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                                        tokio::select! { _ = served => {}, _ = conn.abort.notified() => {} }
                                    }
                                    None => {
                                        let served = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                                        tokio::select! { _ = served => {}, _ = conn.abort.notified() => {} }
                                    }
                                }
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = shutdown_rx => {}
                    }
                });
            })
            .expect("spawn front thread");
        FrontServer { url, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }
}

impl Drop for FrontServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(
    service: Service,
    inner: Arc<Inner>,
    upstream: &str,
    conn: Conn,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = decode_path(uri.path());
    let query = uri.query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let op = classify(service, &method, &path, &query, &headers);
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let tier = header("x-ms-access-tier");
    let priority = header("x-ms-rehydrate-priority");
    let fault = inner.pick(op, &path);
    let log = |status: u16| FrontLogged {
        service,
        op,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        tier: tier.clone(),
        priority: priority.clone(),
        status,
        fault: fault.as_ref().map(Fault::label),
    };

    // The whole request first, as the service reads it before it answers (an early answer
    // would reach a client still sending its body as a broken pipe, not as the status).
    let body: Bytes = match axum::body::to_bytes(Body::new(req.into_body()), usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return service_error(service, StatusCode::BAD_REQUEST, "InvalidInput", &format!("request body: {e}"));
        }
    };
    // An injected error: the service refused, nothing was done.
    if let Some(r) = fault.as_ref().and_then(|f| fault_response(service, f)) {
        inner.state.lock().unwrap().log.push(log(r.status().as_u16()));
        return r;
    }
    // What Azure's archive tier and immutability decide before the request reaches the data.
    if service == Service::Blob
        && let Some(r) = blob_refusal(&inner, op, &method, &uri, &path, tier.as_deref(), &headers)
    {
        inner.state.lock().unwrap().log.push(log(r.status().as_u16()));
        return r;
    }

    // Forward.
    let mut fwd = inner
        .client
        .request(method.clone(), format!("{upstream}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")));
    for (k, v) in &headers {
        if forwardable(k) {
            fwd = fwd.header(k, v);
        }
    }
    let rsp = match fwd.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return service_error(service, StatusCode::BAD_GATEWAY, "InternalError", &format!("upstream: {e}"));
        }
    };
    let status = rsp.status();
    let mut out_headers = HeaderMap::new();
    for (k, v) in rsp.headers() {
        if !matches!(k.as_str(), "connection" | "transfer-encoding") {
            out_headers.append(k, v.clone());
        }
    }
    if service == Service::Blob {
        blob_after(&inner, &method, &op, &path, status, tier.as_deref(), &mut out_headers);
    }
    inner.state.lock().unwrap().log.push(log(status.as_u16()));

    let mut out = Response::builder().status(status);
    let body = match fault {
        None => {
            let stream = rsp.bytes_stream().map(|r| r.map_err(std::io::Error::other));
            Body::from_stream(stream)
        }
        Some(Fault::ResetBeforeResponse) => {
            conn.reset();
            return std::future::pending().await;
        }
        Some(Fault::Stall(d)) => {
            tokio::time::sleep(d).await;
            Body::from(rsp.bytes().await.unwrap_or_default())
        }
        Some(Fault::ResetMidBody { after }) => {
            let full = rsp.bytes().await.unwrap_or_default();
            if full.len() < 2 {
                conn.reset();
                return std::future::pending().await;
            }
            let part = full.slice(..after.clamp(1, full.len() / 2));
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(part) }).chain(
                futures::stream::once(async move {
                    // Let the part reach the client before the reset, so it is mid-body.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    conn.reset();
                    std::future::pending::<Result<Bytes, std::io::Error>>().await
                }),
            );
            Body::from_stream(stream)
        }
        Some(Fault::Truncate { keep }) => {
            let full = rsp.bytes().await.unwrap_or_default();
            let cut = full.slice(..keep.min(full.len() / 2));
            out_headers.insert("content-length", HeaderValue::from(cut.len()));
            Body::from(cut)
        }
        Some(Fault::Trickle { chunk, every }) => {
            let full = rsp.bytes().await.unwrap_or_default();
            let pieces: Vec<Bytes> = (0..full.len())
                .step_by(chunk.max(1))
                .map(|i| full.slice(i..(i + chunk.max(1)).min(full.len())))
                .collect();
            let stream = futures::stream::iter(pieces).then(move |p| async move {
                tokio::time::sleep(every).await;
                Ok::<_, std::io::Error>(p)
            });
            Body::from_stream(stream)
        }
        Some(other) => unreachable!("{other:?} is answered before forwarding"),
    };
    *out.headers_mut().expect("builder") = out_headers;
    out.body(body).expect("response")
}

/// Archive and immutability refusals (see the module doc).
fn blob_refusal(
    inner: &Inner,
    op: Op,
    method: &Method,
    uri: &axum::http::Uri,
    path: &str,
    tier: Option<&str>,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let mut st = inner.state.lock().unwrap();
    let archived = st.archived.get(path);
    match op {
        Op::GetBlob | Op::GetBlobRange if archived.is_some() => Some(service_error(
            Service::Blob,
            StatusCode::CONFLICT,
            "BlobArchived",
            "This operation is not permitted on an archived blob.",
        )),
        Op::SetTier if archived.is_some() => match (archived, tier) {
            (Some(Some(_)), _) => Some(service_error(
                Service::Blob,
                StatusCode::CONFLICT,
                "BlobBeingRehydrated",
                "This operation is not permitted because the blob is being rehydrated.",
            )),
            (_, Some(t)) if !t.eq_ignore_ascii_case("archive") => {
                let pending = Pending {
                    tier: t.to_ascii_lowercase(),
                    uri: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    headers: headers.clone(),
                };
                st.archived.insert(path.to_string(), Some(pending));
                Some(
                    Response::builder()
                        .status(StatusCode::ACCEPTED)
                        .header("x-ms-request-id", uuid::Uuid::new_v4().to_string())
                        .header("x-ms-version", "2025-11-05")
                        .body(Body::empty())
                        .expect("202"),
                )
            }
            _ => None,
        },
        Op::DeleteBlob if *method == Method::DELETE && st.locked.iter().any(|p| path.starts_with(p.as_str())) => {
            Some(service_error(
                Service::Blob,
                StatusCode::CONFLICT,
                "BlobImmutableDueToPolicy",
                "This operation is not permitted as the blob is immutable due to a policy.",
            ))
        }
        _ => None,
    }
}

/// The archive state after a forwarded blob request, and the headers that show it.
fn blob_after(
    inner: &Inner,
    method: &Method,
    op: &Op,
    path: &str,
    status: StatusCode,
    tier: Option<&str>,
    out_headers: &mut HeaderMap,
) {
    let mut st = inner.state.lock().unwrap();
    if *op == Op::SetTier && status.is_success() && tier.is_some_and(|t| t.eq_ignore_ascii_case("archive")) {
        st.archived.insert(path.to_string(), None);
    }
    if *method == Method::HEAD
        && let Some(archived) = st.archived.get(path)
    {
        out_headers.insert("x-ms-access-tier", HeaderValue::from_static("Archive"));
        if let Some(p) = archived {
            let status = format!("rehydrate-pending-to-{}", p.tier);
            out_headers.insert("x-ms-archive-status", HeaderValue::from_str(&status).expect("header"));
        }
    }
    if *op == Op::DeleteBlob && status.is_success() {
        st.archived.remove(path);
    }
}
