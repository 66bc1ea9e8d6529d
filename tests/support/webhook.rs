//! A local alert webhook receiver: records every body POSTed to it.

use std::sync::{Arc, Mutex};

pub struct Webhook {
    /// The URL to set as `PGVAULT_ALERT_WEBHOOK`.
    pub url: String,
    hits: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let hits: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let recorded = hits.clone();
        let app = axum::Router::new().route(
            "/hook/{token}",
            axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().unwrap().push(v);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/secret-webhook-token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhook { url, hits }
    }

    /// Every body received so far.
    pub fn hits(&self) -> Vec<serde_json::Value> {
        self.hits.lock().unwrap().clone()
    }
}
