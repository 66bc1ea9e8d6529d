//! A local Key Vault (secrets and RSA keys) over HTTPS with the test CA's leaf certificate, following
//! the REST contract the official `SecretClient` speaks (api-version 2025-07-01):
//!
//! - Every request without a valid bearer token gets 401 with the challenge
//!   `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
//!   resource="https://vault.azure.net"`; a token is valid when its (unverified) `aud` is
//!   `https://vault.azure.net` and `nbf <= now < exp`.
//! - `PUT /secrets/{name}` adds a version; `GET /secrets/{name}/` (or without the slash) reads
//!   the latest, `GET /secrets/{name}/{version}` one version.
//! - A missing secret or version: 404 `SecretNotFound`. A disabled one: 403 `Forbidden` with
//!   inner code `SecretDisabled`. Expired and not-yet-valid secrets are returned, with their
//!   `exp`/`nbf`, as the real service does: the client decides.
//! - Keys (RSA 2048, real RSA-OAEP-256 by aws-lc-rs): `POST /keys/{name}/create` and
//!   `POST /keys/{name}/rotate` add a version; `GET /keys/{name}/` (latest) and
//!   `GET /keys/{name}/{version}` return the key bundle (a disabled version too, with
//!   `enabled: false`, as the real service does); `PATCH /keys/{name}/{version}` sets
//!   `attributes.enabled`;
//!   `POST /keys/{name}/{version}/wrapkey` and `.../unwrapkey` take `{"alg","value"}` (base64url)
//!   and answer `{"kid","value"}`. A disabled version still wraps but refuses to unwrap: 403
//!   `Forbidden` with inner code `KeyDisabled`. A missing key or version: 404 `KeyNotFound`.
//! - [`KeyVault::set_forbidden`] makes every authorized request a 403 `ForbiddenByRbac`, as when
//!   the identity lacks the Key Vault Secrets User role.
//!
//! Like the identity server, it runs on its own thread and runtime, so it keeps answering while
//! a test blocks its own thread on a child process.

use super::TestCa;
use super::identity::TEST_TENANT_ID;
use super::server::LocalServer;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// The resource named in the challenge, and the audience tokens must carry.
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";

#[derive(Debug, Clone)]
struct Version {
    id: String,
    value: String,
    content_type: Option<String>,
    tags: HashMap<String, String>,
    enabled: bool,
    exp: Option<i64>,
    nbf: Option<i64>,
    created: i64,
    updated: i64,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
    /// Whether it carried a valid bearer token.
    pub authorized: bool,
}

#[derive(Clone)]
struct KeyVersion {
    id: String,
    private: aws_lc_rs::rsa::PrivateDecryptingKey,
    enabled: bool,
    created: i64,
    updated: i64,
}

#[derive(Default)]
struct Inner {
    base_url: String,
    secrets: Mutex<HashMap<String, Vec<Version>>>,
    keys: Mutex<HashMap<String, Vec<KeyVersion>>>,
    /// Every plain value a wrapKey was given (the data keys), for leak tests.
    wrapped_plain: Mutex<Vec<Vec<u8>>>,
    forbidden: AtomicBool,
    log: Mutex<Vec<Logged>>,
    tokens: Mutex<Vec<String>>,
}

pub struct KeyVault {
    /// The vault URL, `https://127.0.0.1:<port>` (no trailing slash).
    pub url: String,
    inner: Arc<Inner>,
    _server: LocalServer,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVault").field("url", &self.url).finish_non_exhaustive()
    }
}

impl KeyVault {
    /// Serve on 127.0.0.1 (a free port) with `ca`'s default leaf. Ready when this returns.
    pub fn start(ca: &TestCa) -> KeyVault {
        KeyVault::start_with_cert(ca.cert_path(), ca.key_path())
    }

    /// Serve with the given certificate and key (PEM files).
    pub fn start_with_cert(cert: &std::path::Path, key: &std::path::Path) -> KeyVault {
        let mut inner = None;
        let server = LocalServer::https("key-vault", cert, key, |url| {
            let state = Arc::new(Inner { base_url: url.to_string(), ..Inner::default() });
            inner = Some(state.clone());
            Router::new().fallback(handle).with_state(state)
        });
        KeyVault { url: server.url.clone(), inner: inner.expect("router built"), _server: server }
    }

    /// Add a new version of `name` (enabled, no exp/nbf) and return its version id.
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        self.inner.put(name, value.to_string(), None, HashMap::new(), true, None, None)
    }

    /// Enable or disable the latest version of `name`.
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        self.inner.update_latest(name, |v| v.enabled = enabled);
    }

    /// Set or clear `exp` of the latest version of `name`.
    pub fn set_expires(&self, name: &str, exp: Option<OffsetDateTime>) {
        self.inner.update_latest(name, |v| v.exp = exp.map(|t| t.unix_timestamp()));
    }

    /// Set or clear `nbf` of the latest version of `name`.
    pub fn set_not_before(&self, name: &str, nbf: Option<OffsetDateTime>) {
        self.inner.update_latest(name, |v| v.nbf = nbf.map(|t| t.unix_timestamp()));
    }

    /// Create RSA key `name` (its first version) and return the version id.
    pub fn create_key(&self, name: &str) -> String {
        self.inner.add_key_version(name)
    }

    /// Rotate key `name`: a new current version. Returns its id.
    pub fn rotate_key(&self, name: &str) -> String {
        assert!(self.inner.keys.lock().unwrap().contains_key(name), "test key vault has no key {name:?}");
        self.inner.add_key_version(name)
    }

    /// Enable or disable one version of key `name`.
    pub fn set_key_enabled(&self, name: &str, version: &str, enabled: bool) {
        let mut keys = self.inner.keys.lock().unwrap_or_else(|e| e.into_inner());
        let v = keys
            .get_mut(name)
            .and_then(|vs| vs.iter_mut().find(|v| v.id == version))
            .unwrap_or_else(|| panic!("test key vault has no key {name:?} version {version:?}"));
        v.enabled = enabled;
        v.updated = OffsetDateTime::now_utc().unix_timestamp();
    }

    /// Delete key `name`, every version (as `DELETE /keys/<name>` does).
    pub fn delete_key(&self, name: &str) {
        assert!(self.inner.keys.lock().unwrap().remove(name).is_some(), "test key vault has no key {name:?}");
    }

    /// The key identifier `https://127.0.0.1:<port>/keys/<name>` (no version).
    pub fn key_id(&self, name: &str) -> String {
        format!("{}/keys/{name}", self.url)
    }

    /// Every plain value wrapKey was given so far (data keys): no output may contain them.
    pub fn wrapped_plain_values(&self) -> Vec<Vec<u8>> {
        self.inner.wrapped_plain.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// While true, every authorized request gets 403 ForbiddenByRbac.
    pub fn set_forbidden(&self, forbidden: bool) {
        self.inner.forbidden.store(forbidden, Ordering::SeqCst);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Successful reads (200 to an authorized GET) of secret `name`.
    pub fn reads(&self, name: &str) -> usize {
        let prefix = format!("/secrets/{name}");
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "GET"
                    && r.status == 200
                    && r.path.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with(['/', '?']))
            })
            .count()
    }

    /// The bearer tokens presented, valid or not, in order.
    pub fn tokens(&self) -> Vec<String> {
        self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Inner {
    fn add_key_version(&self, name: &str) -> String {
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("generate an RSA key");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let v = KeyVersion { id: id.clone(), private, enabled: true, created: now, updated: now };
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default().push(v);
        id
    }

    fn key_bundle(&self, name: &str, v: &KeyVersion) -> Value {
        json!({
            "key": {
                "kid": format!("{}/keys/{name}/{}", self.base_url, v.id),
                "kty": "RSA",
                "key_ops": ["wrapKey", "unwrapKey"],
            },
            "attributes": {
                "enabled": v.enabled, "created": v.created, "updated": v.updated,
                "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        name: &str,
        value: String,
        content_type: Option<String>,
        tags: HashMap<String, String>,
        enabled: bool,
        exp: Option<i64>,
        nbf: Option<i64>,
    ) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let version =
            Version { id: id.clone(), value, content_type, tags, enabled, exp, nbf, created: now, updated: now };
        self.secrets.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default().push(version);
        id
    }

    fn update_latest(&self, name: &str, f: impl FnOnce(&mut Version)) {
        let mut secrets = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        let v = secrets
            .get_mut(name)
            .and_then(|versions| versions.last_mut())
            .unwrap_or_else(|| panic!("test key vault has no secret {name:?}"));
        f(v);
        v.updated = OffsetDateTime::now_utc().unix_timestamp();
    }

    fn bundle(&self, name: &str, v: &Version) -> Value {
        let mut attributes = json!({
            "enabled": v.enabled,
            "created": v.created,
            "updated": v.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        });
        if let Some(exp) = v.exp {
            attributes["exp"] = json!(exp);
        }
        if let Some(nbf) = v.nbf {
            attributes["nbf"] = json!(nbf);
        }
        let mut bundle = json!({
            "value": v.value,
            "id": format!("{}/secrets/{name}/{}", self.base_url, v.id),
            "attributes": attributes,
            "tags": v.tags,
        });
        if let Some(ct) = &v.content_type {
            bundle["contentType"] = json!(ct);
        }
        bundle
    }
}

fn error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut body = json!({"error": {"code": code, "message": message}});
    if let Some(inner) = inner {
        body["error"]["innererror"] = json!({"code": inner});
    }
    (status, axum::Json(body)).into_response()
}

fn challenge(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let value = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{TEST_TENANT_ID}\", resource=\"{VAULT_RESOURCE}\""
    );
    r.headers_mut().insert("www-authenticate", value.parse().expect("header value"));
    r
}

/// Decode a JWT's claims without checking the signature (as Azurite does), and check audience
/// and times.
fn token_ok(token: &str) -> Result<(), &'static str> {
    let claims = token.split('.').nth(1).ok_or("AKV10000: the token is not a JWT")?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).map_err(|_| "AKV10000: bad JWT")?;
    let claims: Value = serde_json::from_slice(&claims).map_err(|_| "AKV10000: bad JWT")?;
    if claims["aud"].as_str().map(|a| a.trim_end_matches('/')) != Some(VAULT_RESOURCE) {
        return Err("AKV10022: Invalid audience.");
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now + 300) || claims["exp"].as_i64().is_none_or(|exp| exp <= now)
    {
        return Err("AKV10032: Invalid issuer or token lifetime.");
    }
    Ok(())
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if let Some(t) = &bearer {
        inner.tokens.lock().unwrap_or_else(|e| e.into_inner()).push(t.clone());
    }
    let authorized = bearer.as_deref().map(token_ok);
    let response = match authorized {
        None => challenge("AKV10000: Request is missing a Bearer or PoP token."),
        Some(Err(why)) => challenge(why),
        Some(Ok(())) => route(&inner, &method, &uri, &body),
    };
    inner.log.lock().unwrap_or_else(|e| e.into_inner()).push(Logged {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
        authorized: matches!(authorized, Some(Ok(()))),
    });
    response
}

fn route(inner: &Inner, method: &Method, uri: &Uri, body: &[u8]) -> Response {
    let query: HashMap<String, String> =
        uri.query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    if !query.contains_key("api-version") {
        return error(StatusCode::BAD_REQUEST, "BadParameter", "The api-version query parameter is required.", None);
    }
    if inner.forbidden.load(Ordering::SeqCst) {
        let message = format!(
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or \
             role definitions were changed recently, please observe propagation time.\r\nCaller: appid={};oid={}\r\n\
             Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\nAssignment: (not found)\r\n",
            super::identity::TEST_CLIENT_ID,
            super::identity::TEST_OBJECT_ID
        );
        return error(StatusCode::FORBIDDEN, "Forbidden", &message, Some("ForbiddenByRbac"));
    }
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    if segments.first() == Some(&"keys") {
        return route_keys(inner, method, &segments[1..], body);
    }
    let (name, version) = match segments.as_slice() {
        ["secrets", name] | ["secrets", name, ""] => (*name, None),
        ["secrets", name, version] => (*name, Some(*version)),
        _ => return error(StatusCode::NOT_FOUND, "NotFound", "no such operation in the test key vault", None),
    };
    if name.is_empty() || name.len() > 127 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return error(StatusCode::BAD_REQUEST, "BadParameter", "The secret name is invalid.", None);
    }
    match (method.as_str(), version) {
        ("PUT", None) => {
            let Ok(req) = serde_json::from_slice::<Value>(body) else {
                return error(StatusCode::BAD_REQUEST, "BadParameter", "The request body is not JSON.", None);
            };
            let Some(value) = req["value"].as_str() else {
                return error(StatusCode::BAD_REQUEST, "BadParameter", "Property value is required.", None);
            };
            let attrs = &req["attributes"];
            let tags = req["tags"]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            inner.put(
                name,
                value.to_string(),
                req["contentType"].as_str().map(str::to_string),
                tags,
                attrs["enabled"].as_bool().unwrap_or(true),
                attrs["exp"].as_i64(),
                attrs["nbf"].as_i64(),
            );
            let secrets = inner.secrets.lock().unwrap_or_else(|e| e.into_inner());
            let latest = secrets[name].last().expect("just added");
            (StatusCode::OK, axum::Json(inner.bundle(name, latest))).into_response()
        }
        ("GET", version) => {
            let secrets = inner.secrets.lock().unwrap_or_else(|e| e.into_inner());
            let found = secrets.get(name).and_then(|versions| match version {
                None => versions.last(),
                Some(v) => versions.iter().find(|x| x.id == v),
            });
            let Some(v) = found else {
                let id = match version {
                    Some(v) => format!("{name}/{v}"),
                    None => name.to_string(),
                };
                return error(
                    StatusCode::NOT_FOUND,
                    "SecretNotFound",
                    &format!(
                        "A secret with (name/id) {id} was not found in this key vault. If you recently deleted \
                         this secret you may be able to recover it using the correct recovery command."
                    ),
                    None,
                );
            };
            if !v.enabled {
                return error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                    Some("SecretDisabled"),
                );
            }
            (StatusCode::OK, axum::Json(inner.bundle(name, v))).into_response()
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "BadParameter", "method not supported by the test key vault", None),
    }
}

fn key_not_found(name: &str, version: Option<&str>) -> Response {
    let id = match version {
        Some(v) => format!("{name}/{v}"),
        None => name.to_string(),
    };
    error(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        &format!("A key with (name/id) {id} was not found in this key vault."),
        None,
    )
}

fn route_keys(inner: &Inner, method: &Method, segments: &[&str], body: &[u8]) -> Response {
    use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let name = segments.first().copied().unwrap_or_default();
    if name.is_empty() || name.len() > 127 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return error(StatusCode::BAD_REQUEST, "BadParameter", "The key name is invalid.", None);
    }
    let find = |version: Option<&str>| -> Option<KeyVersion> {
        let keys = inner.keys.lock().unwrap_or_else(|e| e.into_inner());
        let versions = keys.get(name)?;
        match version.filter(|v| !v.is_empty()) {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|x| x.id == v).cloned(),
        }
    };
    let json_body = || serde_json::from_slice::<Value>(body).ok();
    match (method.as_str(), &segments[1..]) {
        ("POST", ["create"]) => {
            if json_body().is_none_or(|b| b["kty"] != "RSA") {
                return error(StatusCode::BAD_REQUEST, "BadParameter", "The test key vault makes RSA keys only.", None);
            }
            inner.add_key_version(name);
            let v = find(None).expect("just added");
            (StatusCode::OK, axum::Json(inner.key_bundle(name, &v))).into_response()
        }
        ("POST", ["rotate"]) => {
            if find(None).is_none() {
                return key_not_found(name, None);
            }
            inner.add_key_version(name);
            let v = find(None).expect("just added");
            (StatusCode::OK, axum::Json(inner.key_bundle(name, &v))).into_response()
        }
        ("GET", []) | ("GET", [""]) | ("GET", [_]) => {
            let version = segments.get(1).copied();
            match find(version) {
                Some(v) => (StatusCode::OK, axum::Json(inner.key_bundle(name, &v))).into_response(),
                None => key_not_found(name, version),
            }
        }
        ("PATCH", [version]) => {
            let Some(enabled) = json_body().and_then(|b| b["attributes"]["enabled"].as_bool()) else {
                return error(StatusCode::BAD_REQUEST, "BadParameter", "attributes.enabled is required.", None);
            };
            let mut keys = inner.keys.lock().unwrap_or_else(|e| e.into_inner());
            let Some(v) = keys.get_mut(name).and_then(|vs| vs.iter_mut().find(|v| v.id == *version)) else {
                return key_not_found(name, Some(version));
            };
            v.enabled = enabled;
            let v = v.clone();
            drop(keys);
            (StatusCode::OK, axum::Json(inner.key_bundle(name, &v))).into_response()
        }
        ("POST", [version, op @ ("wrapkey" | "unwrapkey")]) => {
            let Some(v) = find(Some(version)) else { return key_not_found(name, Some(version)) };
            let req = json_body().unwrap_or_default();
            if req["alg"] != "RSA-OAEP-256" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "The test key vault knows RSA-OAEP-256 only.",
                    None,
                );
            }
            let Some(value) = req["value"].as_str().and_then(|s| b64.decode(s.trim_end_matches('=')).ok()) else {
                return error(StatusCode::BAD_REQUEST, "BadParameter", "Property value is required (base64url).", None);
            };
            let out = if *op == "wrapkey" {
                inner.wrapped_plain.lock().unwrap_or_else(|e| e.into_inner()).push(value.clone());
                let public = OaepPublicEncryptingKey::new(v.private.public_key()).expect("oaep key");
                let mut ct = vec![0u8; public.ciphertext_size()];
                public.encrypt(&OAEP_SHA256_MGF1SHA256, &value, &mut ct, None).expect("encrypt").to_vec()
            } else {
                if !v.enabled {
                    return error(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        "Operation unwrapKey is not allowed on a disabled key.",
                        Some("KeyDisabled"),
                    );
                }
                let private = OaepPrivateDecryptingKey::new(v.private.clone()).expect("oaep key");
                let mut pt = vec![0u8; private.min_output_size()];
                match private.decrypt(&OAEP_SHA256_MGF1SHA256, &value, &mut pt, None) {
                    Ok(p) => p.to_vec(),
                    Err(_) => {
                        return error(StatusCode::BAD_REQUEST, "BadParameter", "Error unwrapping the key.", None);
                    }
                }
            };
            let kid = format!("{}/keys/{name}/{}", inner.base_url, v.id);
            (StatusCode::OK, axum::Json(json!({"kid": kid, "value": b64.encode(out)}))).into_response()
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "BadParameter", "method not supported by the test key vault", None),
    }
}
