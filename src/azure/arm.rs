//! Azure Resource Manager: the VM **managed Run Command** (`Microsoft.Compute/virtualMachines/
//! runCommands`), hand-written REST because there is no ARM compute crate for Rust.
//!
//! Contract (api-version [`API_VERSION`]):
//! - `PUT {arm}{vm}/runCommands/{name}` with `{location, properties: {source: {script},
//!   parameters, protectedParameters, asyncExecution: false, treatFailureAsDeploymentFailure:
//!   true, timeoutInSeconds}}`. Protected parameters reach the script as environment variables
//!   and are never returned by ARM; the SAS travels only there.
//! - 200/201 with `properties.provisioningState`: `Succeeded` and `Failed` are final. 201/202
//!   with an `Azure-AsyncOperation` header (or a non-final state): poll that URL (`{status}`)
//!   until `Succeeded`, `Failed` or `Canceled`, then `GET ...?$expand=instanceView` for the exit
//!   code and output.
//! - Then `DELETE` of the run command (best effort), so the resource does not linger.
//! - 401/403 (`AuthorizationFailed`), 404 (`ResourceNotFound`, the VM or its resource group)
//!   and other 4xx are permanent; 409 (`Conflict`: another operation on the VM), 429 and 5xx
//!   are transient (the next timer run tries again).
//!
//! Role: the function's identity needs `Microsoft.Compute/virtualMachines/runCommands/write`,
//! `/read` and `/delete` on that VM only (the built-in *Virtual Machine Contributor* scoped to
//! the VM, or a custom role with just those actions).

use crate::domain::error::{Error, Result};
use crate::domain::secret::redact;
use crate::features::pgbackrest::run_command::{RunCommandRequest, RunCommandResult, RunCommands};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Context, Method, Request, Transport, Url};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

pub const API_VERSION: &str = "2024-07-01";
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
pub use crate::config::settings::DEFAULT_ARM_ENDPOINT;

pub struct ArmRunCommands {
    endpoint: Url,
    credential: Arc<dyn TokenCredential>,
    transport: Transport,
    poll_interval: Duration,
    poll_timeout: Duration,
}

impl ArmRunCommands {
    pub fn new(endpoint: &str, credential: Arc<dyn TokenCredential>, options: &ClientOptions) -> Result<Self> {
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| Error::permanent(format!("ARM endpoint {endpoint:?} is not a url: {e}")))?;
        Ok(Self {
            endpoint,
            credential,
            transport: options.transport.clone().unwrap_or_default(),
            poll_interval: Duration::from_secs(5),
            poll_timeout: Duration::from_secs(600),
        })
    }

    /// Poll faster (tests).
    pub fn with_polling(mut self, interval: Duration, timeout: Duration) -> Self {
        self.poll_interval = interval;
        self.poll_timeout = timeout;
        self
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<(u16, Vec<(String, String)>, Value)> {
        let token = self.credential.get_token(&[ARM_SCOPE], None).await.map_err(|e| {
            Error::transient(format!("{what}: no token for Azure Resource Manager: {}", redact(&super::describe(&e))))
                .with_hint("check the function's managed identity")
        })?;
        let mut req = Request::new(url, method);
        req.insert_header("authorization", format!("Bearer {}", token.token.secret()));
        req.insert_header("accept", "application/json");
        if let Some(b) = body {
            req.insert_header("content-type", "application/json");
            req.set_body(b);
        }
        let resp = self
            .transport
            .send(&Context::new(), &mut req)
            .await
            .map_err(|e| Error::transient(format!("{what}: {}", redact(&super::describe(&e)))))?;
        let status = u16::from(resp.status());
        let headers: Vec<(String, String)> =
            resp.headers().iter().map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.as_str().to_string())).collect();
        let bytes =
            resp.into_body().collect().await.map_err(|e| Error::transient(format!("{what}: read the answer: {e}")))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, headers, value))
    }

    fn url(&self, path: &str, extra: &[(&str, &str)]) -> Result<Url> {
        let mut url = Url::parse(&format!("{}{path}", self.endpoint.as_str().trim_end_matches('/')))
            .map_err(|e| Error::permanent(format!("ARM url for {path}: {e}")))?;
        url.query_pairs_mut().append_pair("api-version", API_VERSION);
        for (k, v) in extra {
            url.query_pairs_mut().append_pair(k, v);
        }
        Ok(url)
    }
}

/// An ARM error answer in words.
fn arm_error(what: &str, status: u16, body: &Value) -> Error {
    let code = body["error"]["code"].as_str().unwrap_or("");
    let message = redact(body["error"]["message"].as_str().unwrap_or("").lines().next().unwrap_or(""));
    let text = format!("{what}: http {status} {code} ({message})");
    match status {
        401 | 403 => Error::permanent(text).with_hint(
            "give the function's identity runCommands write/read/delete on this VM (Virtual Machine \
             Contributor scoped to the VM, or a custom role); assignments take a few minutes to apply",
        ),
        404 => Error::permanent(text).with_hint("check vm_resource_id in PGVAULT_PGBACKREST_TARGETS"),
        409 => Error::transient(text).with_hint("another operation is running on the VM; the next run retries"),
        408 | 429 => Error::transient(text),
        s if s >= 500 => Error::transient(text),
        _ => Error::permanent(text),
    }
}

fn state(body: &Value) -> Option<&str> {
    body["properties"]["provisioningState"].as_str().or_else(|| body["status"].as_str())
}

fn is_final(s: &str) -> bool {
    matches!(s, "Succeeded" | "Failed" | "Canceled")
}

#[async_trait]
impl RunCommands for ArmRunCommands {
    async fn run(&self, req: &RunCommandRequest) -> Result<RunCommandResult> {
        let path = format!("{}/runCommands/{}", req.vm_resource_id.trim_end_matches('/'), req.name);
        let what = format!("run command {:?} on VM {}", req.name, req.vm_resource_id);
        let nv = |v: &[(String, String)]| v.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>();
        let protected: Vec<Value> =
            req.protected_parameters.iter().map(|(n, v)| json!({"name": n, "value": v.expose()})).collect();
        let body = json!({
            "location": req.location,
            "properties": {
                "source": {"script": req.script},
                "parameters": nv(&req.parameters),
                "protectedParameters": protected,
                "asyncExecution": false,
                "treatFailureAsDeploymentFailure": true,
                "timeoutInSeconds": req.timeout.as_secs(),
            }
        });
        let body = serde_json::to_vec(&body).expect("json");
        let (status, headers, answer) = self.send(Method::Put, self.url(&path, &[])?, Some(body), &what).await?;
        if !(200..300).contains(&status) {
            return Err(arm_error(&what, status, &answer));
        }
        let async_url = headers.iter().find(|(k, _)| k == "azure-asyncoperation").map(|(_, v)| v.clone());
        let mut current = state(&answer).map(str::to_string);
        let deadline = std::time::Instant::now() + self.poll_timeout;
        while current.as_deref().is_none_or(|s| !is_final(s)) {
            if std::time::Instant::now() > deadline {
                return Err(Error::transient(format!("{what}: still {current:?} after {:?}", self.poll_timeout)));
            }
            tokio::time::sleep(self.poll_interval).await;
            let (status, answer) = match &async_url {
                Some(u) => {
                    let u = Url::parse(u)
                        .map_err(|e| Error::permanent(format!("{what}: bad Azure-AsyncOperation url: {e}")))?;
                    let (s, _, a) = self.send(Method::Get, u, None, &what).await?;
                    (s, a)
                }
                None => {
                    let (s, _, a) = self.send(Method::Get, self.url(&path, &[])?, None, &what).await?;
                    (s, a)
                }
            };
            if !(200..300).contains(&status) {
                return Err(arm_error(&what, status, &answer));
            }
            current = state(&answer).map(str::to_string);
        }
        let (status, _, view) =
            self.send(Method::Get, self.url(&path, &[("$expand", "instanceView")])?, None, &what).await?;
        let iv = &view["properties"]["instanceView"];
        let result = RunCommandResult {
            exit_code: iv["exitCode"].as_i64(),
            output: redact(iv["output"].as_str().unwrap_or("")),
        };
        // Best effort: the resource holds nothing secret that ARM returns, but it need not linger.
        let _ = self.send(Method::Delete, self.url(&path, &[])?, None, &what).await;
        let final_state = current.unwrap_or_default();
        if final_state != "Succeeded" || result.exit_code.is_some_and(|c| c != 0) {
            let err = redact(iv["error"].as_str().unwrap_or(""));
            return Err(Error::permanent(format!(
                "{what}: {final_state}, exit code {:?}: {}",
                result.exit_code,
                if err.is_empty() { result.output.clone() } else { err }
            ))
            .with_hint("the include file on the VM was left as it was"));
        }
        if !(200..300).contains(&status) {
            return Err(arm_error(&what, status, &view));
        }
        Ok(result)
    }
}
