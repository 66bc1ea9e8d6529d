//! Restore drills on the real local stack (PostgreSQL 15, Azurite over HTTPS with OAuth, the
//! identity endpoint): a good backup is proven restorable with its restore time; a corrupted one
//! makes the drill fail loudly, with a job record that says why, and leaves no database behind.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use bytes::Bytes;
use pgvault::seams::store::BlobStore;
use serde_json::Value;
use support::data::{blocking, databases_like, manifests};

fn jobs(stack: &Stack, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["jobs", "--json"];
    all.extend_from_slice(args);
    let out = stack.cli(&all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["jobs"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_prove_good_backups_and_fail_loudly_on_a_corrupted_one() {
    let mut stack = Stack::start().await;
    stack.set("PGVAULT_DRILL_SERVER", "main");
    blocking(|| {
        stack.pg.psql("postgres", "CREATE DATABASE app");
        stack.pg.psql("app", "CREATE TABLE t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 150000) i");
        stack.pg.psql("postgres", "COMMENT ON DATABASE app IS 'drilled'; ALTER DATABASE app SET work_mem = '7MB'");
    });
    for _ in 0..2 {
        let out = stack.cli(&["backup", "--server", "main", "--database", "app"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }

    let out = stack.cli(&["drill"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("2 drills, 0 failed"), "{text}");
    let drills = jobs(&stack, &["--kind", "drill"]);
    assert_eq!(drills.len(), 2, "{drills:?}");
    for d in &drills {
        assert_eq!(d["status"], "succeeded", "{d}");
        assert!(d["detail"]["restore_seconds"].as_f64().unwrap() > 0.0, "RTO evidence: {d}");
        // The database's own properties arrived, read back in the drill database.
        let props = &d["detail"]["report"]["database"]["properties"];
        assert_eq!(props["checked"], true, "{d}");
        let applied: Vec<&str> = props["applied"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(applied.contains(&"comment") && applied.contains(&"setting work_mem=7MB"), "{applied:?}");
    }
    assert_eq!(
        blocking(|| databases_like(&stack.pg, "pgvault_drill_%")),
        Vec::<String>::new(),
        "no drill database left"
    );

    // Corrupt the newest backup: one flipped byte in its second block, re-committed in place.
    let store = stack.store().await;
    let mut manifests = manifests(&store, "main/app/").await;
    manifests.sort_by_key(|m| m.requested_at);
    let newest = manifests.last().unwrap().clone();
    assert!(newest.blocks.len() >= 2, "{} blocks", newest.blocks.len());
    let mut data = store.get(&newest.data_blob).await.unwrap().to_vec();
    let at = newest.blocks[0].size as usize + 5;
    data[at] ^= 0x01;
    let id = pgvault::seams::store::block_id(0);
    store.stage_block(&newest.data_blob, &id, Bytes::from(data)).await.unwrap();
    store.commit_blocks(&newest.data_blob, &[id], &Default::default()).await.unwrap();

    let out = stack.cli(&["drill"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a corrupted backup must fail the drill: {text}");
    assert!(text.contains("2 drills, 1 failed"), "{text}");
    assert!(text.contains(&format!("backup {:?} is corrupt: block 1", newest.id)), "{text}");
    let failed = jobs(&stack, &["--kind", "drill", "--failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(reason.contains("is corrupt: block 1"), "the record says why: {reason}");
    assert_eq!(
        blocking(|| databases_like(&stack.pg, "pgvault_drill_%")),
        Vec::<String>::new(),
        "no drill database left"
    );
    let left = store.list(pgvault::features::claim::PREFIX).await.unwrap();
    assert!(left.is_empty(), "no claim or swap note left by the drills: {left:?}");
}
