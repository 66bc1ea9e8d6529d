//! SAS rotation for VM-hosted pgBackRest (`sas-rotator`, `pgvault pgbackrest-sas`).
//!
//! - [`target`]: the inventory (`PGVAULT_PGBACKREST_TARGETS`).
//! - [`plan`]: when to rotate, pure (tested over many lifetimes with a controlled clock).
//! - [`token`]: the container-scoped user-delegation SAS.
//! - [`include`]: the include file on the VM and its atomic replacement.
//! - [`vm`]: what runs on the VM: `sync` (pull delivery) and `doctor`.
//! - [`freshness`]: newest full/diff/incr per stanza from `backup.info`.
//! - this module: the rotator ([`rotate_all`]) over three seams: [`SasSigner`],
//!   [`TokenVault`] and, for push delivery, [`crate::azure::arm::RunCommands`].
//!
//! Data flow: function identity → user delegation key → signed SAS → Key Vault secret (one per
//! target) → VM (pull: `sync` with the VM's identity; push: Run Command) → include file →
//! pgBackRest. See DESIGN.md for failure modes and the threat model.

pub mod freshness;
pub mod include;
pub mod plan;
pub mod run_command;
/// The targets' model lives in the domain (the settings parse it).
pub use crate::domain::pgbackrest_target as target;
pub mod token;
pub mod vm;

use crate::domain::error::Result;
use crate::domain::secret::Secret;
use crate::monitor::records::{DeliveryResult, JobKind, JobRecord, RotationAction, RotationDetail};
use crate::monitor::tracked::{Alerting, Monitor, conclude};
use crate::seams::alerts::AlertKind;
use async_trait::async_trait;
use plan::{Action, TokenState, rfc3339};
use run_command::{RunCommandRequest, RunCommands};
use std::collections::HashMap;
use target::{Delivery, Target};
use time::OffsetDateTime;

/// The content type of a token secret.
pub const CONTENT_TYPE: &str = "application/vnd.pgvault.pgbackrest-sas";

/// A container SAS, freshly signed, and what the user delegation key that signed it says.
#[derive(Debug, Clone)]
pub struct SignedSas {
    /// The query string (no leading `?`).
    pub token: Secret,
    /// The key's `signedVersion` (`skv`).
    pub key_version: String,
    /// The key's `signedExpiry` (`ske`): the token dies with it at the latest.
    pub key_expiry: OffsetDateTime,
}

/// Signs the tokens: a user delegation key from the storage account (with the function's
/// identity, so a token grants at most what that identity may do, and dies with the key), and
/// the container SAS signed with it.
#[async_trait]
pub trait SasSigner: Send + Sync {
    /// An HTTPS-only, container-scoped (`sr=c`) user-delegation SAS for `container` of the
    /// account behind `blob_endpoint`, with `permissions` (letters of `racwdl`, in that order),
    /// valid from `start` to `expiry`, signed with a key valid over exactly that span.
    async fn container_sas(
        &self,
        blob_endpoint: &str,
        container: &str,
        permissions: &str,
        start: OffsetDateTime,
        expiry: OffsetDateTime,
    ) -> Result<SignedSas>;
}

/// The newest version of a token secret.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub state: TokenState,
    pub version: String,
    pub tags: HashMap<String, String>,
    pub value: Option<Secret>,
}

/// A token to store as a new secret version.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub value: Secret,
    pub start: OffsetDateTime,
    pub expiry: OffsetDateTime,
    pub content_type: String,
    pub tags: HashMap<String, String>,
}

/// Where tokens are kept (Key Vault). Adding a version never disables the previous one.
#[async_trait]
pub trait TokenVault: Send + Sync {
    /// The newest version, or `None` if the secret does not exist.
    async fn current(&self, vault: &str, secret: &str) -> Result<Option<StoredToken>>;
    /// Add a version; returns its id.
    async fn store(&self, vault: &str, secret: &str, token: &NewToken) -> Result<String>;
}

/// The seams the rotator uses.
pub struct Rotator<'a> {
    pub signer: &'a dyn SasSigner,
    pub vault: &'a dyn TokenVault,
    pub run_commands: Option<&'a dyn RunCommands>,
    /// Where job records (the backup store, if any) and alerts go.
    pub monitor: Monitor<'a>,
}

/// The shell script the push delivery runs on the VM: the same atomic write as `sync` (temp
/// file in the directory, fsync, owner/mode, rename, directory fsync), only when changed. The
/// SAS arrives as the protected parameter `PGVAULT_SAS` (an environment variable).
pub const PUSH_SCRIPT: &str = r#"set -eu
f="$PGVAULT_FILE"; d=$(dirname "$f")
mkdir -p "$d"
tmp=$(mktemp "$d/.pgvault-push.XXXXXX")
trap 'rm -f "$tmp"' EXIT
printf '# Written by pgvault (pgbackrest-sas); replaced whole on every rotation. Do not edit.\n[global]\nrepo%s-azure-key-type=sas\nrepo%s-azure-key=%s\n' "$PGVAULT_REPO" "$PGVAULT_REPO" "$PGVAULT_SAS" > "$tmp"
if [ -f "$f" ] && cmp -s "$tmp" "$f"; then echo "pgvault: include file unchanged"; exit 0; fi
sync "$tmp"
chown "$PGVAULT_OWNER:$PGVAULT_GROUP" "$tmp"
chmod "$PGVAULT_MODE" "$tmp"
mv -f "$tmp" "$f"
sync "$d"
echo "pgvault: include file written"
"#;

/// What a run of the rotator did: each target's rotation, and (when asked) each target's
/// freshness check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RotatorRun {
    pub rotation: Vec<RotationDetail>,
    pub freshness: Vec<crate::monitor::records::FreshnessDetail>,
}

impl RotatorRun {
    /// Every target rotated (or kept, or skipped) and delivered without an alarm, and every
    /// checked repository fresh.
    pub fn ok(&self) -> bool {
        self.rotation.iter().all(|r| r.ok == Some(true) || r.action == Some(RotationAction::Skip))
            && self.freshness.iter().all(|f| f.ok)
    }
}

/// Rotate (and push) every target; one outcome per target. Never fails as a whole: each
/// target's error is in its outcome.
pub async fn rotate_all(r: &Rotator<'_>, targets: &[Target], now: OffsetDateTime) -> Vec<RotationDetail> {
    let mut out = Vec::new();
    for t in targets {
        out.push(rotate_one(r, t, now).await);
    }
    out
}

/// Rotate one target if its plan says so, deliver by push, check the alarm, record. The outcome
/// is also the job record's detail.
pub async fn rotate_one(r: &Rotator<'_>, t: &Target, now: OffsetDateTime) -> RotationDetail {
    let mut rec = RotationDetail {
        target: t.name.clone(),
        delivery: t.delivery.as_str().to_string(),
        vault: t.vault.clone(),
        secret: t.secret.clone(),
        ..Default::default()
    };
    if t.delivery == Delivery::Auto {
        rec.action = Some(RotationAction::Skip);
        rec.reason = Some("delivery auto: pgBackRest 2.58+ uses the VM's managed identity".into());
        tracing::info!(target_name = %t.name, "pgbackrest target uses auto key type; skipped");
        return rec;
    }
    let mut ok = true;
    let current = match r.vault.current(&t.vault, &t.secret).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target_name = %t.name, error = %e, "cannot read the current token");
            rec.error = Some(e.to_string());
            finish(r, t, &mut rec, None, now, false).await;
            return rec;
        }
    };
    let old_expiry = current.as_ref().and_then(|c| c.state.expires);
    rec.old_expiry = old_expiry;
    let p = plan::plan(current.as_ref().map(|c| &c.state), &t.policy, now);
    rec.reason = Some(p.reason.clone());
    let mut newest = current.as_ref().map(|c| c.state);
    let mut newest_value = current.as_ref().and_then(|c| c.value.clone());
    match p.action {
        Action::Keep { renew_at } => {
            rec.action = Some(RotationAction::Keep);
            rec.renew_at = Some(renew_at);
        }
        Action::Rotate { start, expiry } => {
            rec.action = Some(RotationAction::Rotate);
            match mint(r, t, start, expiry).await {
                Ok((value, version, key_version)) => {
                    rec.new_expiry = Some(expiry);
                    tracing::info!(
                        target_name = %t.name,
                        old_expiry = old_expiry.map(rfc3339),
                        new_expiry = %rfc3339(expiry),
                        secret_version = %version,
                        "pgbackrest sas rotated"
                    );
                    rec.secret_version = Some(version);
                    rec.key_version = Some(key_version);
                    newest = Some(TokenState { enabled: true, not_before: Some(start), expires: Some(expiry) });
                    newest_value = Some(value);
                }
                Err(e) => {
                    ok = false;
                    tracing::error!(target_name = %t.name, error = %e, "pgbackrest sas rotation failed");
                    rec.error = Some(e.to_string());
                }
            }
        }
    }
    if t.delivery == Delivery::Push {
        let result = match (r.run_commands, &newest_value) {
            (None, _) => Err("push delivery is not configured in this process".to_string()),
            (_, None) => Err("no token to push".to_string()),
            (Some(rc), Some(v)) => push(rc, t, v).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(out) => {
                tracing::info!(target_name = %t.name, "pgbackrest sas pushed to the VM");
                rec.delivery_result = Some(DeliveryResult { ok: true, output: Some(out), ..Default::default() });
            }
            Err(e) => {
                ok = false;
                tracing::error!(target_name = %t.name, error = %e, "pgbackrest sas push failed");
                rec.delivery_result = Some(DeliveryResult { ok: false, error: Some(e), ..Default::default() });
            }
        }
    } else {
        let note = "pull: the VM's sync timer reads the secret".to_string();
        rec.delivery_result = Some(DeliveryResult { ok: true, note: Some(note), ..Default::default() });
    }
    finish(r, t, &mut rec, newest, now, ok).await;
    rec
}

async fn mint(
    r: &Rotator<'_>,
    t: &Target,
    start: OffsetDateTime,
    expiry: OffsetDateTime,
) -> Result<(Secret, String, String)> {
    let signed = r.signer.container_sas(&t.blob_endpoint, &t.container, &t.permissions, start, expiry).await?;
    let sas = signed.token;
    let mut tags = HashMap::new();
    tags.insert("pgvault".into(), "pgbackrest-sas".into());
    tags.insert("target".into(), t.name.clone());
    tags.insert("expiry".into(), rfc3339(expiry));
    tags.insert("key-version".into(), signed.key_version.clone());
    tags.insert("key-expiry".into(), token::sas_time(signed.key_expiry));
    tags.insert("repo".into(), t.repo.to_string());
    let new = NewToken { value: sas.clone(), start, expiry, content_type: CONTENT_TYPE.into(), tags };
    let version = r.vault.store(&t.vault, &t.secret, &new).await?;
    Ok((sas, version, signed.key_version))
}

/// Write the include file on the VM through its managed Run Command.
pub async fn push(rc: &dyn RunCommands, t: &Target, sas: &Secret) -> Result<String> {
    let vm_resource_id = t.vm_resource_id.clone().ok_or_else(|| {
        crate::domain::error::Error::permanent(format!(
            "pgBackRest target {:?}: push delivery needs vm_resource_id",
            t.name
        ))
    })?;
    let req = RunCommandRequest {
        vm_resource_id,
        location: t.location.clone().unwrap_or_default(),
        name: "pgvault-pgbackrest-sas".into(),
        script: PUSH_SCRIPT.into(),
        parameters: vec![
            ("PGVAULT_FILE".into(), t.include_file.display().to_string()),
            ("PGVAULT_REPO".into(), t.repo.to_string()),
            ("PGVAULT_OWNER".into(), t.owner.clone()),
            ("PGVAULT_GROUP".into(), t.group.clone()),
            ("PGVAULT_MODE".into(), format!("{:04o}", t.mode)),
        ],
        protected_parameters: vec![("PGVAULT_SAS".into(), sas.clone())],
        timeout: std::time::Duration::from_secs(120),
    };
    Ok(rc.run(&req).await?.output.trim().to_string())
}

/// Alarm check and job record.
async fn finish(
    r: &Rotator<'_>,
    t: &Target,
    rec: &mut RotationDetail,
    newest: Option<TokenState>,
    now: OffsetDateTime,
    ok: bool,
) {
    let alarm = plan::alarm(newest.as_ref(), &t.policy, now);
    if let Some(why) = &alarm {
        rec.alarm = Some(why.clone());
        tracing::warn!(
            target_name = %t.name,
            alarm = %why,
            newest_expiry = newest.and_then(|n| n.expires).map(rfc3339),
            alarm_window_secs = t.policy.alarm_window.whole_seconds(),
            "pgbackrest sas alarm: no token with margin for this target"
        );
    }
    rec.ok = Some(ok && alarm.is_none());
    let id = format!("{}-{}-{}", t.name, now.unix_timestamp(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut job =
        JobRecord::new(JobKind::PgbackrestSas, &id, format!("sas rotation for pgBackRest target {}", t.name), now);
    job.target = Some(t.name.clone());
    job.server = Some(t.name.clone());
    job.started_at = Some(now);
    job.attempts = 1;
    // Outside the alarm window a failed rotation is retried by the next timer run while the
    // current token stays valid; inside it, the VM is about to lose its token: alert.
    let outcome = match (&alarm, rec.error.as_deref()) {
        (Some(why), _) => Err(crate::domain::error::Error::permanent(format!("pgbackrest sas alarm: {why}"))),
        (None, Some(e)) if !ok => Err(crate::domain::error::Error::transient(e.to_string())),
        (None, _) if !ok => Err(crate::domain::error::Error::transient("pgbackrest sas rotation failed")),
        _ => Ok(()),
    };
    let alerting = Alerting::next_run(AlertKind::Pgbackrest);
    conclude(r.monitor, &mut job, outcome, rec.clone(), None, alerting).await;
}

/// The targets to act on: all of them, or the one named. An error names what is missing.
pub fn pick(settings: &crate::config::settings::Settings, name: Option<&str>) -> Result<Vec<Target>> {
    let all = &settings.pgbackrest_targets;
    if all.is_empty() {
        return Err(crate::domain::error::Error::permanent(
            "setting PGVAULT_PGBACKREST_TARGETS: no pgBackRest targets are configured",
        ));
    }
    match name {
        None => Ok(all.clone()),
        Some(n) => all
            .iter()
            .find(|t| t.name == n)
            .cloned()
            .map(|t| vec![t])
            .ok_or_else(|| crate::domain::error::Error::permanent(format!("no pgBackRest target named {n:?}"))),
    }
}
