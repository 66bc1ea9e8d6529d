//! TLS trust, end to end: PostgreSQL's tools trust exactly what pgvault trusts, and an
//! untrusted storage certificate fails a backup at once, naming the problem.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{Cluster, ClusterOptions, TestCa};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A server whose CA is in the system store (`SSL_CERT_FILE`, which rustls-native-certs reads
/// for pgvault), with `PGVAULT_CA_FILE` holding an unrelated CA (the stack's, for Azurite):
/// pgvault's own connection trusts it, and so must pg_dump, which runs with a cleared
/// environment and gets the same roots as a bundle file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_trusts_the_system_roots_and_the_ca_file_like_pgvault() {
    let mut stack = Stack::start().await;
    let system_ca = TestCa::new();
    let cert = (system_ca.cert_path().to_path_buf(), system_ca.key_path().to_path_buf());
    let cluster =
        tokio::task::spawn_blocking(move || Cluster::start_with(ClusterOptions::tls_only(cert))).await.unwrap();
    tokio::task::block_in_place(|| cluster.psql("postgres", "CREATE DATABASE tlsdb"));
    tokio::task::block_in_place(|| cluster.psql("tlsdb", "CREATE TABLE t AS SELECT 1 AS x"));
    stack.set("SSL_CERT_FILE", system_ca.ca_pem_path().to_str().unwrap());
    let inventory = json!([{"name": "pub", "host": cluster.host, "port": cluster.port, "user": "postgres",
                            "tls": "verify-full", "include": ["tlsdb"]}]);
    stack.set("PGVAULT_INVENTORY", &inventory.to_string());
    let out = tokio::task::block_in_place(|| stack.cli(&["backup", "--server", "pub"]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("ok pub/tlsdb/"), "{t}");
    assert!(!t.contains("certificate verify failed"), "{t}");
}

/// The storage endpoint's certificate is not trusted (PGVAULT_CA_FILE names another CA): the
/// backup fails in seconds with production retry settings, the certificate problem named first,
/// instead of being retried for minutes as a transient error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_storage_certificate_fails_fast_and_says_so() {
    let mut stack = Stack::start().await;
    tokio::task::block_in_place(|| stack.pg.psql("postgres", "CREATE DATABASE small"));
    let other = TestCa::new();
    stack.set("PGVAULT_CA_FILE", other.ca_pem_path().to_str().unwrap());
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| stack.cli(&["backup", "--server", "main", "--database", "small"]));
    let took = started.elapsed();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    eprintln!("an untrusted storage certificate failed the backup in {took:?}");
    assert!(took < Duration::from_secs(10), "failed fast: {took:?}\n{t}");
    assert!(t.contains("TLS certificate rejected: invalid peer certificate: UnknownIssuer"), "the cause first: {t}");
    assert!(t.contains("HINT:") && t.contains("PGVAULT_CA_FILE"), "{t}");
    drop(other);
}
