//! Alerts: a structured error-level log record for every alert (Azure Monitor alert rules match
//! on `alert` and `alert_kind`), and optionally a POST to a webhook.
//!
//! The webhook body is generic JSON that Teams and Slack incoming webhooks both accept (`text`),
//! plus structured fields for other receivers. It is retried with backoff, its text passes
//! through [`crate::domain::secret::redact`], and its failure is logged but never changes the status of
//! the job it reports on.

use crate::domain::secret::redact;
use backon::{ExponentialBuilder, Retryable};
use serde::Serialize;
use std::time::Duration;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A job failed (backup, restore, rotation, retention, verify, drill).
    JobFailed,
    /// A database's last successful backup is older than its schedule allows (RPO breach).
    MissedSchedule,
    /// A restore drill could not prove a backup restorable.
    DrillFailed,
    /// A pgBackRest SAS token expires inside its alarm window, or a repository is stale.
    Pgbackrest,
    /// `pgvault doctor` (the `doctor` timer) found something that would make a job fail.
    Doctor,
}

impl AlertKind {
    /// The name in log records and webhook bodies: `job-failed`, `missed-schedule`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::JobFailed => "job-failed",
            AlertKind::MissedSchedule => "missed-schedule",
            AlertKind::DrillFailed => "drill-failed",
            AlertKind::Pgbackrest => "pgbackrest",
            AlertKind::Doctor => "doctor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// What it is about: `server/database`, a target name, a job id.
    pub subject: String,
    /// One line for a human.
    pub summary: String,
    pub job_id: Option<String>,
}

impl Alert {
    /// The webhook body: `text` for Teams and Slack, the rest for anything else.
    pub fn body(&self) -> serde_json::Value {
        let text = redact(&format!("pgvault: {} ({})", self.summary, self.subject));
        serde_json::json!({
            "text": text,
            "source": "pgvault",
            "kind": self.kind,
            "subject": redact(&self.subject),
            "summary": redact(&self.summary),
            "job_id": self.job_id,
        })
    }
}

/// Where alerts go besides the log.
#[derive(Debug, Clone)]
pub struct Alerter {
    webhook: Option<url::Url>,
    client: reqwest::Client,
    retry: ExponentialBuilder,
}

impl Alerter {
    /// `webhook` is the URL from `PGVAULT_ALERT_WEBHOOK`, if set. It is itself a secret (incoming
    /// webhook URLs carry their token in the path), so it is never logged.
    pub fn new(webhook: Option<url::Url>) -> Self {
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(20))
            .with_max_times(4)
            .with_jitter();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http client");
        Self { webhook, client, retry }
    }

    /// Shorter back-off, for tests.
    pub fn with_retry(mut self, retry: ExponentialBuilder) -> Self {
        self.retry = retry;
        self
    }

    /// Log the alert at error level and, if configured, send it to the webhook. Returns whether
    /// the webhook accepted it (or `None` when there is no webhook); never an error.
    pub async fn raise(&self, alert: &Alert) -> Option<bool> {
        tracing::error!(
            alert = true,
            alert_kind = alert.kind.as_str(),
            subject = %redact(&alert.subject),
            job_id = alert.job_id.as_deref().unwrap_or(""),
            "{}",
            redact(&alert.summary)
        );
        let url = self.webhook.clone()?;
        let body = alert.body();
        let send = || async {
            let resp =
                self.client.post(url.clone()).json(&body).send().await.map_err(|e| e.without_url().to_string())?;
            let status = resp.status();
            if status.is_success() { Ok(()) } else { Err(format!("webhook answered {status}")) }
        };
        let result = send
            .retry(self.retry)
            .notify(|e: &String, after| tracing::warn!(error = %e, retry_in = ?after, "alert webhook failed; retrying"))
            .await;
        match result {
            Ok(()) => Some(true),
            Err(e) => {
                tracing::warn!(error = %e, "alert webhook failed; the alert stays in the log");
                Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Receiver {
        bodies: Mutex<Vec<serde_json::Value>>,
        fail_first: Mutex<u32>,
    }

    async fn receive(State(r): State<Arc<Receiver>>, body: axum::Json<serde_json::Value>) -> axum::http::StatusCode {
        r.bodies.lock().unwrap().push(body.0);
        let mut fail = r.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        } else {
            axum::http::StatusCode::OK
        }
    }

    async fn receiver(fail_first: u32) -> (url::Url, Arc<Receiver>) {
        let r = Arc::new(Receiver { fail_first: Mutex::new(fail_first), ..Default::default() });
        let app = axum::Router::new().route("/hook/{token}", axum::routing::post(receive)).with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook/T0KEN").parse().unwrap(), r)
    }

    fn fast() -> ExponentialBuilder {
        ExponentialBuilder::default().with_min_delay(Duration::from_millis(1)).with_max_times(3)
    }

    #[tokio::test]
    async fn webhook_gets_teams_and_slack_shape_after_a_500() {
        let (url, r) = receiver(1).await;
        let alerter = Alerter::new(Some(url)).with_retry(fast());
        let alert = Alert {
            kind: AlertKind::JobFailed,
            subject: "prod/app".into(),
            summary: "backup failed: connect to postgres://u:hunter2@db/app failed; url ?sv=1&sig=S3CRET".into(),
            job_id: Some("j1".into()),
        };
        assert_eq!(alerter.raise(&alert).await, Some(true));
        let bodies = r.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 2, "one 500, then the retry");
        let b = &bodies[1];
        assert!(b["text"].as_str().unwrap().starts_with("pgvault: backup failed"), "{b}");
        assert_eq!(b["kind"], "job-failed");
        assert_eq!(b["job_id"], "j1");
        let all = serde_json::to_string(&bodies).unwrap();
        assert!(!all.contains("hunter2") && !all.contains("S3CRET"), "{all}");
    }

    #[tokio::test]
    async fn a_dead_webhook_does_not_fail_the_caller() {
        let (url, r) = receiver(100).await;
        let alerter = Alerter::new(Some(url)).with_retry(fast());
        let alert =
            Alert { kind: AlertKind::MissedSchedule, subject: "s/d".into(), summary: "late".into(), job_id: None };
        assert_eq!(alerter.raise(&alert).await, Some(false));
        assert_eq!(r.bodies.lock().unwrap().len(), 4, "first try and three retries");
        assert_eq!(Alerter::new(None).raise(&alert).await, None);
    }
}
