//! A local App Service / Functions managed-identity endpoint (`IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER`, api-version 2019-08-01), issuing unsigned JWTs that Azurite's
//! `--oauth basic` accepts (it decodes the token without checking the signature).
//!
//! The server runs on its own thread with its own Tokio runtime, so it keeps answering even
//! while a test blocks its own thread (e.g. waiting synchronously on a child process).

use super::server::LocalServer;
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Tenant id in every minted token (`tid`, and the issuer `https://sts.windows.net/<tid>/`).
pub const TEST_TENANT_ID: &str = "7e57e57e-0000-4000-8000-000000000001";
/// Object id (`oid`, `sub`) of the test identity.
pub const TEST_OBJECT_ID: &str = "5e4c1a0e-3f5b-4b8e-9d2a-6c7f0b1e2d3a";
/// Client id (`appid`) of the system-assigned test identity; a `client_id` query parameter
/// (user-assigned identity) replaces it in the token and the reply.
pub const TEST_CLIENT_ID: &str = "0d6f4c8b-9a2e-4f1d-8b3c-7e5a2d1f6c9b";
/// Path of the token endpoint on the server.
pub const TOKEN_PATH: &str = "/msi/token";

#[derive(Default)]
struct Inner {
    header: String,
    failing: AtomicBool,
    attempts: AtomicUsize,
    served: AtomicUsize,
    resources: Mutex<Vec<String>>,
    client_ids: Mutex<Vec<Option<String>>>,
    /// resource -> the token always issued for it (see `pin_token`).
    pinned: Mutex<HashMap<String, String>>,
    issued: Mutex<Vec<String>>,
}

pub struct IdentityServer {
    /// Value for `IDENTITY_ENDPOINT`, e.g. `http://127.0.0.1:PORT/msi/token`.
    pub endpoint: String,
    /// Value for `IDENTITY_HEADER` (the secret the client must send as `x-identity-header`).
    pub header: String,
    inner: Arc<Inner>,
    _server: LocalServer,
}

impl std::fmt::Debug for IdentityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityServer").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl IdentityServer {
    /// Bind 127.0.0.1 on a free port and serve. Ready when this returns (the socket is bound).
    pub async fn start() -> IdentityServer {
        let header = format!("test-identity-header-{}", uuid::Uuid::new_v4().simple());
        let inner = Arc::new(Inner { header: header.clone(), ..Inner::default() });
        let state = inner.clone();
        let server =
            LocalServer::http("identity-server", |_| Router::new().route(TOKEN_PATH, get(token)).with_state(state));
        IdentityServer { endpoint: format!("{}{TOKEN_PATH}", server.url), header, inner, _server: server }
    }

    /// `[("IDENTITY_ENDPOINT", ..), ("IDENTITY_HEADER", ..)]` for child processes.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("IDENTITY_ENDPOINT".to_string(), self.endpoint.clone()),
            ("IDENTITY_HEADER".to_string(), self.header.clone()),
        ]
    }

    /// Tokens issued (successful 200 answers).
    pub fn requests(&self) -> usize {
        self.inner.served.load(Ordering::SeqCst)
    }

    /// All requests to the token path, including rejected (401/400) and failed (500) ones.
    pub fn attempts(&self) -> usize {
        self.inner.attempts.load(Ordering::SeqCst)
    }

    /// Resources of the issued tokens, in order (e.g. `https://storage.azure.com`).
    pub fn resources(&self) -> Vec<String> {
        self.inner.resources.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `client_id` query parameter of each issued token (None for system-assigned), in order.
    pub fn client_ids(&self) -> Vec<Option<String>> {
        self.inner.client_ids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// While true, every token request gets a 500.
    pub fn set_failing(&self, fail: bool) {
        self.inner.failing.store(fail, Ordering::SeqCst);
    }

    /// From now on, answer every request for `resource` (e.g.
    /// `https://ossrdbms-aad.database.windows.net`) with `token`, so a test can make it a role's
    /// password. Expiry is still an hour from each request.
    pub fn pin_token(&self, resource: &str, token: &str) {
        self.inner.pinned.lock().unwrap_or_else(|e| e.into_inner()).insert(resource.to_string(), token.to_string());
    }

    /// Every access token issued so far, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.issued.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn token(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    inner.attempts.fetch_add(1, Ordering::SeqCst);
    let presented = headers.get("x-identity-header").and_then(|v| v.to_str().ok());
    if presented != Some(inner.header.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized", "missing or wrong x-identity-header");
    }
    if inner.failing.load(Ordering::SeqCst) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "test identity server set to fail");
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "api-version must be 2019-08-01");
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "resource query parameter is required");
    };
    let client_id = query.get("client_id").cloned();
    let appid = client_id.clone().unwrap_or_else(|| TEST_CLIENT_ID.to_string());
    let (mut access_token, expires_on) = mint(resource, &appid);
    if let Some(pinned) = inner.pinned.lock().unwrap_or_else(|e| e.into_inner()).get(scope_to_resource(resource)) {
        access_token = pinned.clone();
    }
    inner.issued.lock().unwrap_or_else(|e| e.into_inner()).push(access_token.clone());

    inner.resources.lock().unwrap_or_else(|e| e.into_inner()).push(resource.clone());
    inner.client_ids.lock().unwrap_or_else(|e| e.into_inner()).push(client_id);
    inner.served.fetch_add(1, Ordering::SeqCst);

    Json(json!({
        "access_token": access_token,
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": appid,
    }))
    .into_response()
}

/// Strip a trailing `/.default` (scope to resource).
fn scope_to_resource(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

/// Mint (jwt, exp) for `resource` and client id `appid`.
fn mint(resource: &str, appid: &str) -> (String, i64) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let exp = now + 3600;
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "pgvault-test"});
    let claims = json!({
        "aud": scope_to_resource(resource),
        "iss": format!("https://sts.windows.net/{TEST_TENANT_ID}/"),
        "iat": now - 60,
        "nbf": now - 60,
        "exp": exp,
        "oid": TEST_OBJECT_ID,
        "sub": TEST_OBJECT_ID,
        "tid": TEST_TENANT_ID,
        "appid": appid,
        "appidacr": "2",
        "idtyp": "app",
        "ver": "1.0",
    });
    let jwt = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"pgvault-test-signature-not-verified")
    );
    (jwt, exp)
}

/// An unsigned JWT for `resource` (a trailing `/.default` is stripped), valid for an hour,
/// with the claims Azurite `--oauth basic` checks.
pub fn mint_jwt(resource: &str) -> String {
    mint(resource, TEST_CLIENT_ID).0
}

/// For in-process tests: a `TokenCredential` minting the same JWTs directly (no env vars, no
/// HTTP). Tests must not set `IDENTITY_ENDPOINT` in their own process environment.
pub fn test_credential() -> Arc<dyn TokenCredential> {
    Arc::new(TestCredential::default())
}

/// The credential behind [`test_credential`]; `calls()` counts `get_token` calls.
#[derive(Debug, Default)]
pub struct TestCredential {
    calls: AtomicUsize,
}

impl TestCredential {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl TokenCredential for TestCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let [scope] = scopes else {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "test credential supports exactly one scope",
            ));
        };
        let (jwt, exp) = mint(scope, TEST_CLIENT_ID);
        let expires_on = time::OffsetDateTime::from_unix_timestamp(exp).expect("valid exp");
        Ok(AccessToken::new(jwt, expires_on))
    }
}
