//! The scaffolding of the local Azure test servers (the identity endpoint over HTTP; Key Vault,
//! ARM over HTTPS with the test CA's leaf certificate): a
//! loopback listener serving an axum router on its own thread and runtime, so it keeps answering
//! while a test blocks its own thread on a child process. Stopped and joined on drop.

use axum::Router;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub struct LocalServer {
    /// `https://127.0.0.1:<port>` or `http://...` (no trailing slash).
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalServer {
    /// Serve HTTPS on 127.0.0.1 (a free port) with the given leaf certificate and key (PEM
    /// files). `app` receives the server's URL (some answers name it). Ready when this returns.
    pub fn https(name: &str, cert: &Path, key: &Path, app: impl FnOnce(&str) -> Router) -> LocalServer {
        LocalServer::start(name, Some(Arc::new(server_config(cert, key))), app)
    }

    /// Serve plain HTTP on 127.0.0.1 (a free port).
    pub fn http(name: &str, app: impl FnOnce(&str) -> Router) -> LocalServer {
        LocalServer::start(name, None, app)
    }

    fn start(name: &str, tls: Option<Arc<rustls::ServerConfig>>, app: impl FnOnce(&str) -> Router) -> LocalServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {name}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}", addr.port());
        let app = app(&url);
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let label = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let served = async {
                        match tls {
                            Some(tls) => axum::serve(TlsListener::spawn(listener, tls, addr), app).await,
                            None => axum::serve(listener, app).await,
                        }
                    };
                    tokio::select! {
                        res = served => {
                            if let Err(e) = res { eprintln!("{label} stopped: {e}"); }
                        }
                        _ = shutdown_rx => {}
                    }
                });
                // Dropping the runtime cancels any open keep-alive connections.
            })
            .unwrap_or_else(|e| panic!("spawn {name} thread: {e}"));
        LocalServer { url, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn server_config(cert: &Path, key: &Path) -> rustls::ServerConfig {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::fs::read(cert).expect("read leaf cert").as_slice())
        .collect::<Result<_, _>>()
        .expect("parse leaf cert");
    let key = rustls_pemfile::private_key(&mut std::fs::read(key).expect("read leaf key").as_slice())
        .expect("parse leaf key")
        .expect("a private key");
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Accepts TCP connections and hands TLS streams to axum; handshakes run in their own tasks,
/// so a client that stalls or fails the handshake (untrusted CA) blocks nobody.
pub(crate) struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    pub(crate) fn spawn(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        addr: SocketAddr,
    ) -> TlsListener {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = tx.send((stream, peer)).await;
                    }
                });
            }
        });
        TlsListener { rx, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The acceptor task never ends while the runtime runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
