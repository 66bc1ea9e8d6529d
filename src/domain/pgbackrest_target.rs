//! The inventory of pgBackRest targets (`PGVAULT_PGBACKREST_TARGETS`): one VM-hosted pgBackRest
//! repository in Azure Blob Storage per entry, and how its SAS reaches the VM.

use crate::domain::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use time::Duration;

/// The longest a token may live: a user delegation key lives at most 7 days.
pub const MAX_LIFETIME: Duration = Duration::days(7);
/// The shortest lifetime accepted (tests use minutes; production hours).
pub const MIN_LIFETIME: Duration = Duration::minutes(2);
/// Where the VM's pgBackRest reads the key from (a `conf.d` include file).
pub const DEFAULT_INCLUDE_FILE: &str = "/etc/pgbackrest/conf.d/pgvault-sas.conf";

/// How the token reaches the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// The VM runs `pgvault pgbackrest-sas sync` from a systemd timer and reads Key Vault.
    #[default]
    Pull,
    /// The function writes the include file through the VM's managed Run Command.
    Push,
    /// pgBackRest 2.58+ with `repo-azure-key-type=auto` (the VM's managed identity): no SAS;
    /// the rotator skips the target (the freshness check still runs).
    Auto,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Pull => "pull",
            Delivery::Push => "push",
            Delivery::Auto => "auto",
        }
    }
}

/// One entry as written in the setting. Durations are `<n>m`, `<n>h` or `<n>d`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    #[serde(default)]
    vm_resource_id: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    delivery: Delivery,
    blob_endpoint: String,
    container: String,
    #[serde(default = "default_repo")]
    repo: u8,
    #[serde(default = "default_permissions")]
    permissions: String,
    #[serde(default)]
    lifetime: Option<String>,
    #[serde(default)]
    renew_before: Option<String>,
    #[serde(default)]
    alarm_window: Option<String>,
    vault: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    include_file: Option<PathBuf>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    stanzas: Vec<String>,
    #[serde(default)]
    repo_path: Option<String>,
    #[serde(default)]
    max_backup_age: Option<String>,
}

fn default_repo() -> u8 {
    1
}
fn default_permissions() -> String {
    "racwdl".into()
}

/// When to renew and when to alarm. See [`crate::features::pgbackrest::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// How long a new token is valid (from now; its start is backdated a little more).
    #[serde(with = "secs")]
    pub lifetime: Duration,
    /// Rotate when the newest token has less than this left.
    #[serde(with = "secs")]
    pub renew_before: Duration,
    /// Alarm when the newest token has less than this left.
    #[serde(with = "secs")]
    pub alarm_window: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.whole_seconds())
    }
}

impl Policy {
    /// Defaults: 12 h, renew at half, alarm at a quarter.
    pub fn new(lifetime: Duration, renew_before: Option<Duration>, alarm_window: Option<Duration>) -> Result<Policy> {
        if lifetime < MIN_LIFETIME || lifetime > MAX_LIFETIME {
            return Err(Error::permanent(format!(
                "lifetime {} is outside {} .. {} (a user delegation key lives at most 7 days)",
                show(lifetime),
                show(MIN_LIFETIME),
                show(MAX_LIFETIME)
            )));
        }
        let renew_before = renew_before.unwrap_or(lifetime / 2);
        if renew_before <= Duration::ZERO || renew_before >= lifetime {
            return Err(Error::permanent(format!(
                "renew_before {} must be more than 0 and less than the lifetime {}",
                show(renew_before),
                show(lifetime)
            )));
        }
        let alarm_window = alarm_window.unwrap_or(lifetime / 4);
        if alarm_window <= Duration::ZERO || alarm_window >= renew_before {
            return Err(Error::permanent(format!(
                "alarm_window {} must be more than 0 and less than renew_before {}",
                show(alarm_window),
                show(renew_before)
            ))
            .with_hint("the alarm fires only after rotations failed for a while, so it must be shorter"));
        }
        Ok(Policy { lifetime, renew_before, alarm_window })
    }
}

/// A pgBackRest target, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    /// `/subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<vm>`:
    /// required for push delivery (the Run Command's parent), optional otherwise (pull and auto
    /// VMs fetch or hold their own credentials; the id then only names the VM in reports).
    pub vm_resource_id: Option<String>,
    /// The VM's Azure region (required for push: a run command is a tracked resource).
    pub location: Option<String>,
    pub delivery: Delivery,
    /// `https://<account>.blob.core.windows.net` (no trailing slash).
    pub blob_endpoint: String,
    pub container: String,
    /// pgBackRest repository number N (`repoN-...`).
    pub repo: u8,
    /// SAS permissions, a subset of `racwdl` in that order.
    pub permissions: String,
    pub policy: Policy,
    /// Key Vault URL holding the token.
    pub vault: String,
    /// The secret, one per target (default `pgbackrest-sas-<name>`).
    pub secret: String,
    pub include_file: PathBuf,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    /// Stanzas whose `backup.info` the freshness check reads.
    pub stanzas: Vec<String>,
    /// `repoN-path` (default `/`).
    pub repo_path: String,
    /// An error-level record when a stanza's newest backup is older than this.
    #[serde(with = "secs")]
    pub max_backup_age: Duration,
}

/// Parse `30m`, `12h`, `7d` (also `90s` for tests).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| Error::permanent(format!("{s:?} is not a duration like 30m, 12h or 7d")))?;
    match unit {
        "s" => Ok(Duration::seconds(n)),
        "m" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        _ => Err(Error::permanent(format!("{s:?} is not a duration like 30m, 12h or 7d"))),
    }
}

/// A duration as the inventory writes it.
pub fn show(d: Duration) -> String {
    let s = d.whole_seconds();
    if s % 86400 == 0 {
        format!("{}d", s / 86400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Parse `0640` (octal).
pub fn parse_mode(s: &str) -> Result<u32> {
    u32::from_str_radix(s.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| Error::permanent(format!("mode {s:?} is not an octal file mode like 0640")))
}

fn valid_permissions(p: &str) -> bool {
    let order = "racwdl";
    let mut pos = 0;
    !p.is_empty()
        && p.chars().all(|c| match order[pos..].find(c) {
            Some(i) => {
                pos += i + 1;
                true
            }
            None => false,
        })
}

/// Parse and validate the targets JSON (an array).
pub fn parse_targets(json: &str) -> Result<Vec<Target>> {
    let raw: Vec<RawTarget> =
        serde_json::from_str(json).map_err(|e| Error::permanent(format!("pgBackRest targets are not valid: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in raw {
        let ctx = |e: Error| e.context(format!("pgBackRest target {:?}", r.name));
        if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::permanent(format!(
                "pgBackRest target name {:?} must be 1+ of a-z, A-Z, 0-9, -",
                r.name
            )));
        }
        if !seen.insert(r.name.clone()) {
            return Err(Error::permanent(format!("pgBackRest target {:?} appears twice", r.name)));
        }
        let vm = r.vm_resource_id.as_deref().map(|v| v.trim().trim_end_matches('/').to_string());
        if let Some(vm) = &vm
            && (!vm.starts_with("/subscriptions/")
                || !vm.to_ascii_lowercase().contains("/providers/microsoft.compute/virtualmachines/"))
        {
            return Err(ctx(Error::permanent(format!(
                "vm_resource_id {vm:?} is not /subscriptions/../providers/Microsoft.Compute/virtualMachines/<vm>"
            ))));
        }
        if r.delivery == Delivery::Push && vm.is_none() {
            return Err(ctx(Error::permanent(
                "push delivery needs vm_resource_id: the VM whose Run Command writes the include file",
            ))
            .with_hint("pull and auto delivery do not need it; push does"));
        }
        if r.delivery == Delivery::Push && r.location.as_deref().is_none_or(str::is_empty) {
            return Err(ctx(Error::permanent("push delivery needs the VM's location (its Azure region)")));
        }
        match url::Url::parse(&r.blob_endpoint) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
            _ => {
                return Err(ctx(Error::permanent(format!(
                    "blob_endpoint {:?} must be an https:// URL",
                    r.blob_endpoint
                ))));
            }
        }
        if r.repo == 0 {
            return Err(ctx(Error::permanent(format!("repo {} must be from 1 to 255", r.repo))));
        }
        if !valid_permissions(&r.permissions) {
            return Err(ctx(Error::permanent(format!(
                "permissions {:?} must be letters of racwdl in that order",
                r.permissions
            ))));
        }
        let dur = |v: &Option<String>| v.as_deref().map(parse_duration).transpose();
        let lifetime = dur(&r.lifetime).map_err(ctx)?.unwrap_or(Duration::hours(12));
        let policy = Policy::new(lifetime, dur(&r.renew_before).map_err(ctx)?, dur(&r.alarm_window).map_err(ctx)?)
            .map_err(ctx)?;
        let vault = crate::domain::inventory::key_vault_url(&r.vault).map_err(ctx)?;
        let secret = r.secret.clone().unwrap_or_else(|| format!("pgbackrest-sas-{}", r.name));
        if secret.is_empty() || secret.len() > 127 || !secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ctx(Error::permanent(format!("{secret:?} is not a Key Vault secret name"))));
        }
        let include_file = r.include_file.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_INCLUDE_FILE));
        if !include_file.is_absolute() {
            return Err(ctx(Error::permanent(format!("include_file {} must be absolute", include_file.display()))));
        }
        let mode = parse_mode(r.mode.as_deref().unwrap_or("0640")).map_err(ctx)?;
        let max_backup_age = dur(&r.max_backup_age).map_err(ctx)?.unwrap_or(Duration::hours(26));
        out.push(Target {
            name: r.name.clone(),
            vm_resource_id: vm,
            location: r.location.clone(),
            delivery: r.delivery,
            blob_endpoint: r.blob_endpoint.trim_end_matches('/').to_string(),
            container: r.container.clone(),
            repo: r.repo,
            permissions: r.permissions.clone(),
            policy,
            vault,
            secret,
            include_file,
            owner: r.owner.clone().unwrap_or_else(|| "root".into()),
            group: r.group.clone().unwrap_or_else(|| "postgres".into()),
            mode,
            stanzas: r.stanzas.clone(),
            repo_path: r.repo_path.clone().unwrap_or_else(|| "/".into()),
            max_backup_age,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/pg1";

    #[test]
    fn defaults_and_rules() {
        let json = format!(
            r#"[{{"name":"pg1","vm_resource_id":"{VM}","blob_endpoint":"https://a.blob.core.windows.net/","container":"pgbr","vault":"my-vault"}}]"#
        );
        let t = &parse_targets(&json).unwrap()[0];
        assert_eq!(t.delivery, Delivery::Pull);
        assert_eq!(t.permissions, "racwdl");
        assert_eq!(t.policy.lifetime, Duration::hours(12));
        assert_eq!(t.policy.renew_before, Duration::hours(6));
        assert_eq!(t.policy.alarm_window, Duration::hours(3));
        assert_eq!(t.secret, "pgbackrest-sas-pg1");
        assert_eq!(t.mode, 0o640);
        assert_eq!((t.owner.as_str(), t.group.as_str()), ("root", "postgres"));
        assert_eq!(t.blob_endpoint, "https://a.blob.core.windows.net");
        // vm_resource_id: optional for pull and auto, required (and checked) for push.
        for (delivery, vm, ok) in [
            ("pull", None, true),
            ("auto", None, true),
            ("push", None, false),
            ("push", Some(VM), true),
            ("pull", Some("/subscriptions/s/vm1"), false),
        ] {
            let vm = vm.map(|v| format!(r#""vm_resource_id":"{v}","#)).unwrap_or_default();
            let json = format!(
                r#"[{{"name":"pg1",{vm}"delivery":"{delivery}","location":"westeurope","blob_endpoint":"https://a.blob.core.windows.net","container":"c","vault":"my-vault"}}]"#
            );
            match parse_targets(&json) {
                Ok(t) => assert!(ok, "{json}: accepted as {:?}", t[0].vm_resource_id),
                Err(e) => {
                    assert!(!ok, "{json}: {e}");
                    assert!(e.to_string().contains("vm_resource_id") && e.to_string().contains("pg1"), "{e}");
                }
            }
        }
        for (extra, why) in [
            (r#","lifetime":"8d""#, "outside"),
            (r#","lifetime":"2h","renew_before":"3h""#, "less than the lifetime"),
            (r#","renew_before":"2h","alarm_window":"2h""#, "alarm_window"),
            (r#","permissions":"wr""#, "racwdl"),
            (r#","delivery":"push""#, "location"),
            (r#","lifetime":"12 hours""#, "duration"),
            (r#","mode":"999""#, "octal"),
        ] {
            let json = format!(
                r#"[{{"name":"pg1","vm_resource_id":"{VM}","blob_endpoint":"https://a.blob.core.windows.net","container":"c","vault":"my-vault"{extra}}}]"#
            );
            let e = parse_targets(&json).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("pg1"), "{extra}: {e}");
        }
    }
}
