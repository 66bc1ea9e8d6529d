//! Doctor's check of Key Vault keys: each encryption key (`PGVAULT_ENCRYPTION_KEY` and the
//! servers' own) wraps a throwaway data key and unwraps it back, as every encrypted backup and
//! its restore will. The credential secrets are read by the server checks, exactly as a
//! backup reads them (see [`super::server`]).

use super::from_error;
use crate::config::context::Ctx;
use crate::domain::doctor::{Finding, Severity};
use crate::domain::envelope::DataKey;
use std::collections::BTreeSet;

/// The keys used by the servers in scope: what was checked, and what was found.
pub async fn check(ctx: &Ctx, only_server: Option<&str>) -> (Vec<String>, Vec<Finding>) {
    let keys: BTreeSet<&str> = ctx
        .settings
        .inventory
        .iter()
        .filter(|s| only_server.is_none_or(|o| o == s.name))
        .filter_map(|s| ctx.settings.encryption_key_for(s))
        .filter(|k| !k.is_empty())
        .collect();
    let mut checked = Vec::new();
    let mut out = Vec::new();
    for key in keys {
        let object = format!("encryption key {key}");
        checked.push(object.clone());
        if let Err(e) = wrap_and_unwrap(ctx, key).await {
            out.push(from_error("encryption-key", Severity::Error, object, &e));
        }
    }
    (checked, out)
}

async fn wrap_and_unwrap(ctx: &Ctx, key: &str) -> crate::domain::error::Result<()> {
    let keys = ctx.key_wrapper()?;
    let probe = DataKey::generate()?;
    let wrapped = keys.wrap(key, &probe).await.map_err(|e| e.context("wrap a data key (backups need it)"))?;
    let back = keys.unwrap(&wrapped).await.map_err(|e| e.context("unwrap the data key (restores need it)"))?;
    if back.expose() != probe.expose() {
        return Err(crate::domain::error::Error::permanent(format!(
            "key version {} unwrapped a different key than it wrapped",
            wrapped.key_id
        )));
    }
    Ok(())
}
