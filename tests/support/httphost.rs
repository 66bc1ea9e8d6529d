//! The Functions host's HTTP side, for a browser: `GET /api/<function>?<query>` becomes the
//! invocation the host POSTs to the custom handler (`Data.req` with `Url`, `Method`, `Query`,
//! `Headers`, `Params`, `Body`), and the handler's `res` output binding (`statusCode`, `body`,
//! `headers`) becomes the HTTP response, as the host builds it. No Functions host can be
//! installed here (see AZURE-LOCAL.md), so this is the part of it a browser test needs.

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

pub struct HttpHost {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpHost {
    /// Serve `/api/<function>` on a free port, forwarding to the handler at `handler_url`.
    pub async fn start(handler_url: &str) -> HttpHost {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handler = handler_url.trim_end_matches('/').to_string();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let handler = handler.clone();
            async move { forward(&handler, req).await }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        HttpHost { url, task }
    }
}

async fn forward(handler: &str, req: Request<Body>) -> Response<Body> {
    let Some(function) = req.uri().path().strip_prefix("/api/").map(str::to_string) else {
        return Response::builder().status(StatusCode::NOT_FOUND).body(Body::from("not a function")).unwrap();
    };
    let query: Map<String, Value> = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let headers: Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), Value::String(v.to_str().unwrap_or("").to_string())))
        .collect();
    let payload = json!({
        "Data": { "req": {
            "Url": format!("https://localhost{}", req.uri()),
            "Method": req.method().as_str(),
            "Query": query,
            "Headers": headers,
            "Params": {},
            "Body": "",
        }},
        "Metadata": { "sys": { "MethodName": function, "UtcNow": "", "RandGuid": "" } },
    });
    let (status, reply) = pgvault::cli::hostsim::invoke(handler, &function, &payload).await.expect("invoke");
    let res = &reply["Outputs"]["res"];
    if status != 200 || !res.is_object() {
        // The host answers 500 when the invocation failed.
        return Response::builder()
            .status(500)
            .body(Body::from(format!("invocation failed: {status} {reply}")))
            .unwrap();
    }
    let mut out = Response::builder().status(res["statusCode"].as_u64().unwrap_or(500) as u16);
    for (k, v) in res["headers"].as_object().into_iter().flatten() {
        out = out.header(k.as_str(), v.as_str().unwrap_or(""));
    }
    out.body(Body::from(res["body"].as_str().unwrap_or("").to_string())).unwrap()
}
