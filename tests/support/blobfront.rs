//! Azure's archive tier and immutability (WORM) refusals, in front of Azurite.
//!
//! Azurite accepts Set Blob Tier `Archive` but keeps serving the blob, and answers 501 to every
//! immutability API (see `AZURE-LOCAL.md`). This HTTPS front forwards every request to Azurite
//! unchanged (same path, query, headers and body: bearer tokens and SAS keep working), and adds
//! what the Blob service documents for those two features:
//!
//! - **Archive.** After a successful `PUT ?comp=tier` with `x-ms-access-tier: Archive`, the blob
//!   is offline: Get Blob answers 409 `BlobArchived`. `PUT ?comp=tier` to an online tier starts a
//!   rehydration: 202 Accepted, and from then on Get Blob Properties says `x-ms-access-tier:
//!   Archive` with `x-ms-archive-status: rehydrate-pending-to-<tier>`; a second tier change
//!   while it is pending is 409 `BlobBeingRehydrated`. [`BlobFront::finish_rehydration`] is the
//!   service completing it (hours on Azure): the tier change is replayed to Azurite and the blob
//!   is online again.
//! - **Immutability.** Blobs under a prefix given to [`BlobFront::lock_prefix`] are under a
//!   time-based retention policy: Delete Blob answers 409 `BlobImmutableDueToPolicy`.
//!
//! Every request is logged (method, path and query, tier headers, status) for assertions.

use super::TestCa;
use super::server::LocalServer;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::TryStreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One request as the front saw it.
#[derive(Debug, Clone)]
pub struct FrontLogged {
    pub method: String,
    /// Path, without the query.
    pub path: String,
    pub query: String,
    /// `x-ms-access-tier`, `x-ms-rehydrate-priority` as sent.
    pub tier: Option<String>,
    pub priority: Option<String>,
    pub status: u16,
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
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    account_path: String,
    state: Mutex<State_>,
}

pub struct BlobFront {
    /// The blob endpoint to give pgvault: `https://127.0.0.1:<port>/devstoreaccount1`.
    pub blob_endpoint: String,
    inner: Arc<Inner>,
    _server: LocalServer,
}

impl BlobFront {
    /// Serve in front of `upstream_endpoint` (Azurite's blob endpoint, with the account path).
    pub fn start(ca: &TestCa, upstream_endpoint: &str) -> BlobFront {
        let url = url::Url::parse(upstream_endpoint).expect("upstream endpoint");
        let account_path = url.path().trim_end_matches('/').to_string();
        let upstream =
            format!("{}://{}", url.scheme(), url.host_str().zip(url.port()).map(|(h, p)| format!("{h}:{p}")).unwrap());
        let inner = Arc::new(Inner {
            upstream,
            client: ca.reqwest_client(),
            account_path: account_path.clone(),
            state: Mutex::new(State_::default()),
        });
        let state = inner.clone();
        let server = LocalServer::https("blob-front", ca.cert_path(), ca.key_path(), |_| {
            Router::new().fallback(handle).with_state(state)
        });
        BlobFront { blob_endpoint: format!("{}{account_path}", server.url), inner, _server: server }
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
        for (path, p) in &pending {
            let mut req = self.inner.client.put(format!("{}{}", self.inner.upstream, p.uri));
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

fn service_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{id}\nTime:{t}</Message></Error>",
        id = uuid::Uuid::new_v4(),
        t = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default(),
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .header("x-ms-error-code", code)
        .header("x-ms-request-id", uuid::Uuid::new_v4().to_string())
        .header("x-ms-version", "2025-11-05")
        .body(Body::from(body))
        .expect("error response")
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = decode_path(uri.path());
    let query = uri.query().unwrap_or("").to_string();
    let comp = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "comp").map(|(_, v)| v.into_owned());
    let headers = req.headers().clone();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let tier = header("x-ms-access-tier");
    let priority = header("x-ms-rehydrate-priority");
    let log = |status: u16| FrontLogged {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        tier: tier.clone(),
        priority: priority.clone(),
        status,
    };

    // What Azure decides before the request reaches the data.
    let refusal = {
        let mut st = inner.state.lock().unwrap();
        let archived = st.archived.get(&path);
        let answer = match (&method, comp.as_deref()) {
            (&Method::GET, None) if archived.is_some() => Some(service_error(
                StatusCode::CONFLICT,
                "BlobArchived",
                "This operation is not permitted on an archived blob.",
            )),
            (&Method::PUT, Some("tier")) if archived.is_some() => match (archived, tier.as_deref()) {
                (Some(Some(_)), _) => Some(service_error(
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
                    st.archived.insert(path.clone(), Some(pending));
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
            (&Method::DELETE, None) if st.locked.iter().any(|p| path.starts_with(p.as_str())) => Some(service_error(
                StatusCode::CONFLICT,
                "BlobImmutableDueToPolicy",
                "This operation is not permitted as the blob is immutable due to a policy.",
            )),
            _ => None,
        };
        if let Some(r) = &answer {
            st.log.push(log(r.status().as_u16()));
        }
        answer
    };
    if let Some(r) = refusal {
        return r;
    }

    // Forward to Azurite.
    let body: Bytes = match axum::body::to_bytes(req.into_body(), usize::MAX).await {
        Ok(b) => b,
        Err(e) => return service_error(StatusCode::BAD_REQUEST, "InvalidInput", &format!("request body: {e}")),
    };
    let mut fwd = inner.client.request(
        method.clone(),
        format!("{}{}", inner.upstream, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")),
    );
    for (k, v) in &headers {
        if forwardable(k) {
            fwd = fwd.header(k, v);
        }
    }
    let rsp = match fwd.body(body).send().await {
        Ok(r) => r,
        Err(e) => return service_error(StatusCode::BAD_GATEWAY, "InternalError", &format!("azurite: {e}")),
    };
    let status = rsp.status();
    let mut out_headers = HeaderMap::new();
    for (k, v) in rsp.headers() {
        if !matches!(k.as_str(), "connection" | "transfer-encoding") {
            out_headers.append(k, v.clone());
        }
    }
    {
        let mut st = inner.state.lock().unwrap();
        if method == Method::PUT
            && comp.as_deref() == Some("tier")
            && status.is_success()
            && tier.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("archive"))
        {
            st.archived.insert(path.clone(), None);
        }
        if method == Method::HEAD
            && let Some(archived) = st.archived.get(&path)
        {
            out_headers.insert("x-ms-access-tier", HeaderValue::from_static("Archive"));
            if let Some(p) = archived {
                let status = format!("rehydrate-pending-to-{}", p.tier);
                out_headers.insert("x-ms-archive-status", HeaderValue::from_str(&status).expect("header"));
            }
        }
        if method == Method::DELETE && status.is_success() {
            st.archived.remove(&path);
        }
        st.log.push(log(status.as_u16()));
    }
    let stream = rsp.bytes_stream().map_err(std::io::Error::other);
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    out
}
