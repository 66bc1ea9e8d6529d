//! The pgBackRest include file on the VM (`/etc/pgbackrest/conf.d/pgvault-sas.conf`) and its
//! atomic replacement.
//!
//! Write order (a reader, or a crash at any point, sees the old file or the new one, never a
//! mix or a truncated file):
//! 1. stale temp files of an earlier, killed run are removed;
//! 2. the new content goes to a temp file in the same directory (created exclusively, 0600);
//! 3. the temp file is fsynced, then given its owner, group and mode;
//! 4. it is renamed over the include file;
//! 5. the directory is fsynced, so the rename survives a power loss.
//!
//! A file whose content is already the new content is left alone (no write at all).
//!
//! Each step is a fail point (`sas-sync.<step>`, [`crate::seams::failpoint`]): the tests kill
//! the process there with SIGKILL.

use crate::domain::error::{Error, Result};
use crate::domain::secret::Secret;
use crate::seams::failpoint;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The include file's text for repository `repo`.
pub fn render(repo: u8, sas: &Secret) -> Secret {
    Secret::new(format!(
        "# Written by pgvault (pgbackrest-sas); replaced whole on every rotation. Do not edit.\n\
         [global]\nrepo{repo}-azure-key-type=sas\nrepo{repo}-azure-key={}\n",
        sas.expose()
    ))
}

/// What an include file says: (key type, key) of repository `repo`.
pub fn parse(text: &str, repo: u8) -> (Option<String>, Option<Secret>) {
    let mut key_type = None;
    let mut key = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix(&format!("repo{repo}-azure-key-type=")) {
            key_type = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix(&format!("repo{repo}-azure-key=")) {
            key = Some(Secret::new(v.trim()));
        }
    }
    (key_type, key)
}

/// Owner, group and mode of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOwnership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl FileOwnership {
    /// Resolve user and group names (or numbers) through /etc/passwd and /etc/group.
    pub fn resolve(owner: &str, group: &str, mode: u32) -> Result<Self> {
        Ok(FileOwnership { uid: lookup("/etc/passwd", owner)?, gid: lookup("/etc/group", group)?, mode })
    }
}

fn lookup(db: &str, name: &str) -> Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(db).map_err(|e| Error::permanent(format!("read {db}: {e}")))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let id = f.nth(1)?;
            (n == name).then(|| id.parse().ok()).flatten()
        })
        .next()
        .ok_or_else(|| {
            Error::permanent(format!(
                "no {} named {name:?} in {db}",
                if db.ends_with("group") { "group" } else { "user" }
            ))
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Unchanged,
    Written,
}

fn temp_prefix(path: &Path) -> String {
    format!(".{}.tmp-", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

/// Replace `path` with `content` atomically (see the module docs).
pub fn write_atomic(path: &Path, content: &Secret, own: &FileOwnership) -> Result<WriteOutcome> {
    let what = |e: std::io::Error, step: &str| {
        Error::permanent(format!("{step} for include file {}: {e}", path.display()))
            .with_hint("the existing include file was left as it was")
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(existing) = std::fs::read(path)
        && existing == content.expose().as_bytes()
    {
        return Ok(WriteOutcome::Unchanged);
    }
    let prefix = temp_prefix(path);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let tmp: PathBuf = dir.join(format!("{prefix}{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| what(e, "create a temp file"))?;
    let result = (|| {
        failpoint::hit("sas-sync.created");
        let bytes = content.expose().as_bytes();
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half]).map_err(|e| what(e, "write"))?;
        failpoint::hit("sas-sync.half-written");
        f.write_all(&bytes[half..]).map_err(|e| what(e, "write"))?;
        failpoint::hit("sas-sync.written");
        f.sync_all().map_err(|e| what(e, "fsync"))?;
        failpoint::hit("sas-sync.synced");
        std::os::unix::fs::fchown(&f, Some(own.uid), Some(own.gid)).map_err(|e| what(e, "chown"))?;
        f.set_permissions(std::fs::Permissions::from_mode(own.mode)).map_err(|e| what(e, "chmod"))?;
        failpoint::hit("sas-sync.owned");
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| what(e, "rename"))?;
        failpoint::hit("sas-sync.renamed");
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| what(e, "fsync the directory"))?;
        Ok(WriteOutcome::Written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_parses_and_writes_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgvault-sas.conf");
        let text = render(2, &Secret::new("sv=1&sig=a%2Bb&se=x"));
        let (kt, key) = parse(text.expose(), 2);
        assert_eq!(kt.as_deref(), Some("sas"));
        assert_eq!(key.unwrap().expose(), "sv=1&sig=a%2Bb&se=x");
        let me = FileOwnership { uid: 0, gid: 0, mode: 0o640 };
        let me = FileOwnership {
            uid: std::fs::metadata(dir.path()).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(me.uid),
            gid: std::fs::metadata(dir.path()).map(|m| std::os::unix::fs::MetadataExt::gid(&m)).unwrap_or(me.gid),
            ..me
        };
        std::fs::write(dir.path().join(".pgvault-sas.conf.tmp-1"), "stale").unwrap();
        assert_eq!(write_atomic(&path, &text, &me).unwrap(), WriteOutcome::Written);
        assert_eq!(write_atomic(&path, &text, &me).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text.expose());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(lookup("/etc/passwd", "root").unwrap() == 0);
        assert!(lookup("/etc/group", "no-such-group-x").is_err());
    }
}
