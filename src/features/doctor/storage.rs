//! Doctor's check of the backup store: the identity can write a blob with tags, read the tags
//! back and delete it, as every backup and retention run does. The probe is
//! `@doctor/probe-<uuid>` (the `@` keeps it out of every backup listing), removed at once.
//! Immutability policies cannot be read through the store (Azurite has none, and the identity
//! has no management-plane rights); `docs/` and the deployment say what they are.

use super::from_error;
use crate::config::context::Ctx;
use crate::domain::doctor::{Finding, Severity};
use crate::seams::store::Tags;
use bytes::Bytes;

pub async fn check(ctx: &Ctx) -> Vec<Finding> {
    let object = ctx.store.describe();
    let name = crate::domain::layout::doctor_probe(&uuid::Uuid::new_v4().simple().to_string());
    let mut tags = Tags::new();
    tags.insert("pgvault-doctor".into(), "probe".into());
    if let Err(e) = ctx.store.put(&name, Bytes::from_static(b"pgvault doctor probe"), &tags).await {
        // Azure's code for it: the deployment (or `pgvault init`) creates the container.
        let missing = e.hint().is_none() && e.message().contains("ContainerNotFound");
        let f = from_error("storage", Severity::Error, object, &e.context("write a probe blob (backups write)"));
        return vec![if missing { f.hint("create it: `pgvault init`, or deploy infra/ again") } else { f }];
    }
    let mut out = Vec::new();
    match ctx.store.tags(&name).await {
        Ok(read) if read.get("pgvault-doctor").map(String::as_str) == Some("probe") => {}
        Ok(_) => out.push(
            Finding::error("storage", &object, format!("blob {name:?} was written with tags, but reads back without them"))
                .hint("backups find their data by index tags: the identity needs Storage Blob Data Owner, or tags are unsupported"),
        ),
        Err(e) => out.push(from_error("storage", Severity::Error, &object, &e.context("read a probe blob's tags"))),
    }
    if let Err(e) = ctx.store.delete(&name).await {
        out.push(from_error(
            "storage",
            Severity::Error,
            &object,
            &e.context(format!("delete the probe blob {name:?} (retention deletes)")),
        ));
    }
    out
}
