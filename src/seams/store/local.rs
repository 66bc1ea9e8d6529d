//! A blob store in a local directory: the default for running without Azure, and the reference
//! implementation of the storage contract.
//!
//! Layout under the root: committed blobs at their names; staged blocks under
//! `.staging/<name>/<block id>`; tags in `.tags/<name>.json`. Commit writes the concatenation to a
//! temporary file, fsyncs it, and renames it into place, so readers see old or new, never half;
//! `put` writes its bytes the same way.
//!
//! What is made durable, and when: a staged block is written (temp file, rename: a block file
//! is whole or absent) but not fsynced, because nothing reads it except the commit of the same
//! blob, and a staged block survives a killed process (the page cache is the kernel's), which is
//! the crash that matters here; a machine that loses power loses uncommitted blocks, and the
//! backup that staged them starts over, as it must anyway (a pg_dump stream cannot resume). The
//! commit copies the blocks inside the kernel (`copy_file_range`, no user-space buffer), fsyncs
//! the result once, and only then renames it into place. So a committed blob has been on disk
//! before any reader could see it, and its bytes are written to disk once, not twice (an fsync
//! per staged block wrote every byte twice and cost about a tenth of a backup's wall time).

use super::{BlobInfo, BlobProps, BlobStore, ByteStream, CreateOutcome, Tags, Tier};
use crate::domain::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncWriteExt;

const STAGING: &str = ".staging";
const TAGS: &str = ".tags";

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        let rel = Path::new(name);
        let ok =
            !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_))) && !name.starts_with('.');
        if !ok {
            return Err(Error::permanent(format!("invalid blob name {name:?}")));
        }
        Ok(self.root.join(rel))
    }

    fn staging_dir(&self, name: &str) -> Result<PathBuf> {
        self.path(name)?;
        Ok(self.root.join(STAGING).join(name))
    }

    fn tags_path(&self, name: &str) -> Result<PathBuf> {
        self.path(name)?;
        Ok(self.root.join(TAGS).join(format!("{name}.json")))
    }

    fn block_path(&self, name: &str, block_id: &str) -> Result<PathBuf> {
        // Block ids are base64: map the two characters that are awkward in file names.
        let safe: String = block_id
            .chars()
            .map(|c| match c {
                '/' => '_',
                '+' => '-',
                c => c,
            })
            .collect();
        Ok(self.staging_dir(name)?.join(safe))
    }

    fn not_found(name: &str) -> Error {
        Error::permanent(format!("blob {name:?} does not exist"))
    }
}

/// Write `data` to `dest` atomically: temp file in the same directory, fsync, rename.
async fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    let dir = dest.parent().expect("blob paths have a parent");
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(data).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, dest).await?;
    Ok(())
}

#[async_trait]
impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn stage_block(&self, name: &str, block_id: &str, data: Bytes) -> Result<()> {
        let dest = self.block_path(name, block_id)?;
        // Whole or absent (rename), not fsynced: see the module's note on durability.
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = dest.parent().expect("block paths have a parent");
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
            std::fs::write(&tmp, &data)?;
            std::fs::rename(&tmp, &dest)
        })
        .await
        .map_err(|e| Error::transient(format!("stage a block of blob {name:?}: {e}")))??;
        Ok(())
    }

    async fn commit_blocks(&self, name: &str, block_ids: &[String], tags: &Tags) -> Result<()> {
        let dest = self.path(name)?;
        let blocks =
            block_ids.iter().map(|id| Ok((id.clone(), self.block_path(name, id)?))).collect::<Result<Vec<_>>>()?;
        let dir = dest.parent().expect("blob paths have a parent").to_path_buf();
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let owned = name.to_string();
        let concatenated = {
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                std::fs::create_dir_all(&dir)?;
                let mut out = std::fs::File::create(&tmp)?;
                for (id, block) in &blocks {
                    let mut f = match std::fs::File::open(block) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(Error::permanent(format!(
                                "commit blob {owned:?}: block {id:?} was never staged"
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    // File to file: std uses copy_file_range, so the bytes stay in the kernel.
                    std::io::copy(&mut f, &mut out)?;
                }
                out.sync_all()?;
                Ok(())
            })
            .await
            .map_err(|e| Error::transient(format!("commit blob {name:?}: {e}")))?
        };
        if let Err(e) = concatenated {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        write_atomic(&self.tags_path(name)?, &serde_json::to_vec(tags).expect("tags serialize")).await?;
        tokio::fs::rename(&tmp, &dest).await?;
        // Like Azure, a commit discards the blob's uncommitted blocks.
        let _ = tokio::fs::remove_dir_all(self.staging_dir(name)?).await;
        Ok(())
    }

    async fn put(&self, name: &str, data: Bytes, tags: &Tags) -> Result<()> {
        let dest = self.path(name)?;
        // As in a commit: tags first, then the content's rename, the one step readers can see.
        write_atomic(&self.tags_path(name)?, &serde_json::to_vec(tags).expect("tags serialize")).await?;
        write_atomic(&dest, &data).await
    }

    async fn create(&self, name: &str, data: Bytes, tags: &Tags) -> Result<CreateOutcome> {
        let dest = self.path(name)?;
        let dir = dest.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(dir).await?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(&data).await?;
        f.sync_all().await?;
        drop(f);
        // hard_link fails if the destination exists: an atomic create-if-absent. Tags are
        // written only by the winner, so a losing create changes nothing.
        let linked = tokio::fs::hard_link(&tmp, &dest).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match linked {
            Ok(()) => {
                write_atomic(&self.tags_path(name)?, &serde_json::to_vec(tags).expect("tags serialize")).await?;
                Ok(CreateOutcome::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(CreateOutcome::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, name: &str) -> Result<Bytes> {
        match tokio::fs::read(self.path(name)?).await {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Self::not_found(name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(&self, name: &str) -> Result<ByteStream> {
        let f = match tokio::fs::File::open(self.path(name)?).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Self::not_found(name));
            }
            Err(e) => return Err(e.into()),
        };
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
        Ok(stream.map(|r| r.map_err(Error::from)).boxed())
    }

    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = match tokio::fs::File::open(self.path(name)?).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Self::not_found(name));
            }
            Err(e) => return Err(e.into()),
        };
        f.seek(std::io::SeekFrom::Start(range.start)).await?;
        let part = f.take(range.end.saturating_sub(range.start));
        let stream = tokio_util::io::ReaderStream::with_capacity(part, 1 << 20);
        Ok(stream.map(|r| r.map_err(Error::from)).boxed())
    }

    async fn tags(&self, name: &str) -> Result<Tags> {
        if !self.exists(name).await? {
            return Err(Self::not_found(name));
        }
        match tokio::fs::read(self.tags_path(name)?).await {
            Ok(v) => serde_json::from_slice(&v)
                .map_err(|e| Error::permanent(format!("tags of blob {name:?} are unreadable: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tags::new()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            while let Some(entry) = rd.next_entry().await? {
                let file_name = entry.file_name();
                let file_name = file_name.to_string_lossy();
                if file_name.starts_with('.') {
                    continue; // staging, tags, temp files
                }
                let meta = entry.metadata().await?;
                let path = entry.path();
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&self.root).expect("under root");
                let name = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
                if name.starts_with(prefix) {
                    let last_modified = meta.modified().ok().map(time::OffsetDateTime::from);
                    out.push(BlobInfo { name, size: meta.len(), last_modified });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.path(name)?).await?)
    }

    async fn set_tier(&self, name: &str, tier: Tier) -> Result<()> {
        self.path(name)?;
        Err(Error::unsupported(format!(
            "set blob {name:?} to the {tier} tier: access tiers are not supported by the local store"
        )))
    }

    async fn properties(&self, name: &str) -> Result<BlobProps> {
        self.path(name)?;
        Err(Error::unsupported(format!(
            "read the access tier of blob {name:?}: access tiers are not supported by the local store"
        )))
    }

    async fn discard_staged(&self, name: &str) -> Result<()> {
        match tokio::fs::remove_dir_all(self.staging_dir(name)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn delete(&self, name: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(name)?).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let _ = tokio::fs::remove_file(self.tags_path(name)?).await;
        Ok(())
    }
}
