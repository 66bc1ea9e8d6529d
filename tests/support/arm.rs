//! A local Azure Resource Manager for the VM managed Run Command, over HTTPS with the test CA's
//! leaf certificate. The contract it follows (api-version is required, any value):
//!
//! - Every request needs `Authorization: Bearer <jwt>` whose (unverified) `aud` is
//!   `https://management.azure.com`; otherwise 401 `InvalidAuthenticationToken`.
//! - `PUT {vm}/runCommands/{name}` with `{location, properties: {source: {script}, parameters,
//!   protectedParameters, ...}}`. What happens depends on the VM's [`VmMode`]:
//!   - unknown VM: 404 `ParentResourceNotFound`;
//!   - `Forbidden`: 403 `AuthorizationFailed` (the identity lacks runCommands/write);
//!   - `Conflict`: 409 `Conflict` (another operation is in progress on the VM);
//!   - `Run`: the script really runs here (`bash -c`, parameters and protected parameters as
//!     environment variables), then 200 with `provisioningState` `Succeeded`, or `Failed` when
//!     the script exits non-zero (as with `treatFailureAsDeploymentFailure`);
//!   - `Async`: the script runs, the answer is 201 `Creating` with an `Azure-AsyncOperation`
//!     URL; `GET /operations/{id}` says `InProgress` once, then the final status.
//! - `GET {vm}/runCommands/{name}?$expand=instanceView`: `properties.instanceView` with
//!   `executionState`, `exitCode`, `output`, `error`.
//! - `DELETE {vm}/runCommands/{name}`: 200.
//!
//! Every request is logged with its body (tests check where the SAS travelled).

use super::TestCa;
use super::server::LocalServer;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const ARM_AUDIENCE: &str = "https://management.azure.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmMode {
    Run,
    Async,
    Forbidden,
    Conflict,
}

#[derive(Debug, Clone)]
pub struct ArmLogged {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    base_url: String,
    vms: Mutex<HashMap<String, VmMode>>,
    /// Run command resource path -> (provisioning state, instance view).
    commands: Mutex<HashMap<String, (String, Value)>>,
    /// Operation id -> (polls so far, final status).
    operations: Mutex<HashMap<String, (u32, String)>>,
    log: Mutex<Vec<ArmLogged>>,
}

pub struct ArmServer {
    pub url: String,
    inner: Arc<Inner>,
    _server: LocalServer,
}

impl ArmServer {
    pub fn start(ca: &TestCa) -> ArmServer {
        let mut inner = None;
        let server = LocalServer::https("arm", ca.cert_path(), ca.key_path(), |url| {
            let state = Arc::new(Inner { base_url: url.to_string(), ..Inner::default() });
            inner = Some(state.clone());
            Router::new().fallback(handle).with_state(state)
        });
        ArmServer { url: server.url.clone(), inner: inner.expect("router built"), _server: server }
    }

    /// Register a VM (its full resource id) and how it answers.
    pub fn add_vm(&self, resource_id: &str, mode: VmMode) {
        self.inner.vms.lock().unwrap().insert(resource_id.to_ascii_lowercase(), mode);
    }

    pub fn requests(&self) -> Vec<ArmLogged> {
        self.inner.log.lock().unwrap().clone()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn audience_ok(headers: &HeaderMap) -> bool {
    let Some(token) =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let Some(claims) = token.split('.').nth(1) else { return false };
    let Ok(claims) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims) else { return false };
    let claims: Value = serde_json::from_slice(&claims).unwrap_or_default();
    claims["aud"].as_str().map(|a| a.trim_end_matches('/')) == Some(ARM_AUDIENCE)
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = route(&inner, &method, &uri, &headers, &body);
    inner.log.lock().unwrap().push(ArmLogged {
        method: method.to_string(),
        path: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        status: response.status().as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    response
}

fn route(inner: &Inner, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    if !audience_ok(headers) {
        return error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "The access token is invalid.");
    }
    if !uri.query().unwrap_or("").contains("api-version=") {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter is required.",
        );
    }
    let path = uri.path();
    if let Some(op) = path.strip_prefix("/operations/") {
        let mut ops = inner.operations.lock().unwrap();
        let Some((polls, status)) = ops.get_mut(op) else {
            return error(StatusCode::NOT_FOUND, "NotFound", "no such operation");
        };
        *polls += 1;
        let s = if *polls == 1 { "InProgress".to_string() } else { status.clone() };
        return (StatusCode::OK, axum::Json(json!({"status": s}))).into_response();
    }
    let Some((vm, name)) = path.split_once("/runCommands/") else {
        return error(StatusCode::NOT_FOUND, "NotFound", "no such operation in the test ARM");
    };
    let mode = inner.vms.lock().unwrap().get(&vm.to_ascii_lowercase()).copied();
    let Some(mode) = mode else {
        return error(
            StatusCode::NOT_FOUND,
            "ParentResourceNotFound",
            &format!("Can not perform requested operation on nested resource. Parent resource '{vm}' not found."),
        );
    };
    let key = path.to_ascii_lowercase();
    match method.as_str() {
        "PUT" => {
            match mode {
                VmMode::Forbidden => {
                    return error(
                        StatusCode::FORBIDDEN,
                        "AuthorizationFailed",
                        &format!(
                            "The client does not have authorization to perform action \
                             'Microsoft.Compute/virtualMachines/runCommands/write' over scope '{vm}/runCommands/{name}'."
                        ),
                    );
                }
                VmMode::Conflict => {
                    return error(StatusCode::CONFLICT, "Conflict", "Run command extension execution is in progress.");
                }
                _ => {}
            }
            let Ok(req) = serde_json::from_slice::<Value>(body) else {
                return error(StatusCode::BAD_REQUEST, "InvalidRequestContent", "body is not JSON");
            };
            if req["location"].as_str().is_none_or(str::is_empty) {
                return error(StatusCode::BAD_REQUEST, "LocationRequired", "The location property is required.");
            }
            let props = &req["properties"];
            let script = props["source"]["script"].as_str().unwrap_or("").to_string();
            let mut cmd = std::process::Command::new("bash");
            cmd.arg("-c").arg(&script).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
            for list in ["parameters", "protectedParameters"] {
                for p in props[list].as_array().into_iter().flatten() {
                    cmd.env(p["name"].as_str().unwrap_or(""), p["value"].as_str().unwrap_or(""));
                }
            }
            let out = cmd.output().expect("run script");
            let code = out.status.code().unwrap_or(-1);
            let state = if code == 0 { "Succeeded" } else { "Failed" };
            let view = json!({
                "executionState": state,
                "exitCode": code,
                "output": String::from_utf8_lossy(&out.stdout),
                "error": String::from_utf8_lossy(&out.stderr),
            });
            inner.commands.lock().unwrap().insert(key, (state.to_string(), view));
            if mode == VmMode::Async {
                let op = uuid::Uuid::new_v4().simple().to_string();
                inner.operations.lock().unwrap().insert(op.clone(), (0, state.to_string()));
                let mut r = (
                    StatusCode::CREATED,
                    axum::Json(json!({"name": name, "properties": {"provisioningState": "Creating"}})),
                )
                    .into_response();
                let url = format!("{}/operations/{op}?api-version=2024-07-01", inner.base_url);
                r.headers_mut().insert("azure-asyncoperation", url.parse().unwrap());
                return r;
            }
            (StatusCode::OK, axum::Json(json!({"name": name, "properties": {"provisioningState": state}})))
                .into_response()
        }
        "GET" => match inner.commands.lock().unwrap().get(&key) {
            Some((state, view)) => {
                let mut props = json!({"provisioningState": state});
                if uri.query().unwrap_or("").contains("instanceView") {
                    props["instanceView"] = view.clone();
                }
                (StatusCode::OK, axum::Json(json!({"name": name, "properties": props}))).into_response()
            }
            None => error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such run command"),
        },
        "DELETE" => {
            inner.commands.lock().unwrap().remove(&key);
            StatusCode::OK.into_response()
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported"),
    }
}
