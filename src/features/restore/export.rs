//! As files: a verified copy in another container, and read-only user-delegation SAS URLs.
//! An encrypted backup is decrypted on the way out (every chunk authenticated first), unless the
//! request keeps it encrypted.

use super::*;

/// Copy a backup (verified block by block on the way) and its manifest into the target
/// container, and sign a read-only URL for each.
pub(super) async fn export(ctx: &Ctx, task: &RestoreTask, m: &Manifest) -> Result<Vec<ExportedFile>> {
    let exporter = ctx.store.file_export().ok_or_else(|| {
        Error::permanent("mode as-files needs Azure storage: the local store cannot sign read-only URLs")
            .with_hint("set PGVAULT_STORAGE=azure")
    })?;
    // Decrypted on the way out, the file is the plain zstd dump and loses its `.enc`. The key is
    // unwrapped before anything is written.
    let decrypting = m.encryption.is_some() && !task.options.keep_encrypted;
    let key = if decrypting { catalog::data_key(ctx, m).await? } else { None };
    let container = task.target.container.as_deref().expect("validated");
    let prefix = normalize_prefix(task.target.prefix.as_deref().unwrap_or(""))?;
    let secs = task.target.expires_in_seconds.unwrap_or(DEFAULT_EXPIRY_SECS).clamp(MIN_EXPIRY_SECS, MAX_EXPIRY_SECS);
    let dest = exporter.container(container).await?;
    if m.is_parts() {
        return parts::export_parts(ctx, task, m, key.as_ref(), &dest, &prefix, secs, exporter).await;
    }
    let data_blob = match m.data_blob.strip_suffix(".enc") {
        Some(plain) if decrypting => plain.to_string(),
        _ => m.data_blob.clone(),
    };
    let data_name = format!("{prefix}{data_blob}");
    let manifest_blob = layout::manifest_for_id(&m.id);
    let manifest_name = format!("{prefix}{manifest_blob}");

    let (data_bytes, data_sha, manifest_bytes) = if let Some(key) = &key {
        let (bytes, sha, plain) = export_decrypted(ctx, m, key, &dest, &data_name, &data_blob).await?;
        (bytes, sha, Bytes::from(plain.to_json()))
    } else {
        let (bytes, sha) = export_as_stored(ctx, m, &dest, &data_name).await?;
        (bytes, sha, ctx.store.get(&manifest_blob).await?)
    };
    dest.put(&manifest_name, manifest_bytes.clone(), &export_tags(m)).await?;
    let manifest_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes));
    let written = vec![(data_name, data_bytes, data_sha), (manifest_name, manifest_bytes.len() as u64, manifest_sha)];
    sign_files(task, m, container, secs, exporter, written).await
}

/// One read-only URL per exported file, all expiring together.
pub(super) async fn sign_files(
    task: &RestoreTask,
    m: &Manifest,
    container: &str,
    secs: u64,
    exporter: &dyn crate::seams::store::FileExport,
    written: Vec<(String, u64, String)>,
) -> Result<Vec<ExportedFile>> {
    // Whole seconds: the URL's `se` has no fraction, and the record must say the same time.
    let expires_at = (OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64))
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    let mut files = Vec::new();
    for (blob, bytes, sha) in written {
        let url = exporter.read_only_url(container, &blob, expires_at).await?;
        let url = crate::domain::secret::SecretUrl::new(url);
        files.push(ExportedFile { container: container.into(), blob, bytes, sha256: sha, url, expires_at });
    }
    tracing::info!(
        task = %task.task_id, backup = %m.id, container, files = ?files.iter().map(|f| &f.blob).collect::<Vec<_>>(),
        expires_at = %ts(expires_at), "backup exported as files"
    );
    Ok(files)
}

/// What a recipient of encrypted files needs to read them.
pub(super) fn decrypt_hint(m: &Manifest) -> Option<String> {
    let enc = m.encryption.as_ref()?;
    Some(format!(
        "the data file is encrypted as stored ({}, {} byte chunks; format in pgvault's DESIGN.md, \
         \"Encrypted backups\"); its data key is wrapped with Key Vault key {} ({}): decrypt with `pgvault cat {}` \
         under an identity that may unwrap with that key, or export again without keep_encrypted",
        enc.algorithm, enc.chunk_size, enc.key_id, enc.wrap_algorithm, m.id
    ))
}

pub(super) fn export_tags(m: &Manifest) -> Tags {
    let mut tags = Tags::new();
    tags.insert("pgvault".into(), "export".into());
    tags.insert("kind".into(), m.kind.as_str().into());
    tags
}

/// The copy keeps the block structure, so the manifest's block hashes describe it too.
pub(super) async fn export_as_stored(
    ctx: &Ctx,
    m: &Manifest,
    dest: &std::sync::Arc<dyn crate::seams::store::BlobStore>,
    data_name: &str,
) -> Result<(u64, String)> {
    let stream = read_with_progress(ctx, m, "export").await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let (itx, irx) = mpsc::channel::<(usize, Bytes)>(1);
    let forward = async move {
        let mut i = 0;
        while let Some(b) = rx.recv().await {
            if itx.send((i, b)).await.is_err() {
                break;
            }
            i += 1;
        }
    };
    let upload = stage(ctx, dest, data_name, irx);
    let (pumped, (), uploaded) = tokio::join!(catalog::verified_blocks(m, stream, tx), forward, upload);
    pumped?;
    let staged = uploaded?;
    if staged != m.blocks.len() {
        let _ = dest.discard_staged(data_name).await;
        return Err(Error::transient(format!("export {:?}: staged {staged} of {} blocks", m.id, m.blocks.len())));
    }
    commit(dest.as_ref(), m, data_name, staged).await?;
    Ok((m.stored_bytes, m.sha256.clone()))
}

/// Stage the copy's blocks as they come, like a backup's.
fn stage(
    ctx: &Ctx,
    dest: &std::sync::Arc<dyn crate::seams::store::BlobStore>,
    data_name: &str,
    rx: mpsc::Receiver<(usize, Bytes)>,
) -> impl Future<Output = Result<usize>> + use<> {
    backup::upload_blocks(dest.clone(), data_name.to_string(), rx, ctx.settings.blocks_in_flight, ctx.cancel.clone())
}

async fn commit(dest: &dyn crate::seams::store::BlobStore, m: &Manifest, data_name: &str, blocks: usize) -> Result<()> {
    let ids: Vec<String> = (0..blocks).map(crate::seams::store::block_id).collect();
    dest.commit_blocks(data_name, &ids, &export_tags(m))
        .await
        .map_err(|e| e.context(format!("commit copy {data_name:?}")))
}

/// Decrypted on the way out: the authenticated plain (zstd) bytes, cut into blocks again, and
/// a manifest copy that describes that file (no encryption, its own size, hashes and blocks), so
/// the recipient can check it with plain tools. Returns the file's size, its SHA-256 and that
/// manifest.
pub(super) async fn export_decrypted(
    ctx: &Ctx,
    m: &Manifest,
    key: &crate::domain::envelope::DataKey,
    dest: &std::sync::Arc<dyn crate::seams::store::BlobStore>,
    data_name: &str,
    data_blob: &str,
) -> Result<(u64, String, Manifest)> {
    use sha2::Digest;
    let stream = read_with_progress(ctx, m, "export").await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let (itx, irx) = mpsc::channel::<(usize, Bytes)>(1);
    let sizer = backup::BlockSizer { base: ctx.settings.block_size };
    let reblock = async move {
        let mut whole = sha2::Sha256::new();
        let mut blocks = Vec::new();
        let mut current = bytes::BytesMut::new();
        let mut total = 0u64;
        let mut ship = |current: &mut bytes::BytesMut, blocks: &mut Vec<crate::domain::manifest::Block>| {
            let data = current.split().freeze();
            whole.update(&data);
            blocks.push(crate::domain::manifest::Block {
                size: data.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(&data)),
            });
            (blocks.len() - 1, data)
        };
        while let Some(mut b) = rx.recv().await {
            total += b.len() as u64;
            while !b.is_empty() {
                let want = sizer.size_for(blocks.len());
                let take = (want - current.len()).min(b.len());
                current.extend_from_slice(&b.split_to(take));
                if current.len() == want && itx.send(ship(&mut current, &mut blocks)).await.is_err() {
                    return None;
                }
            }
        }
        if !current.is_empty() && itx.send(ship(&mut current, &mut blocks)).await.is_err() {
            return None;
        }
        drop(itx);
        Some((total, hex::encode(whole.finalize()), blocks))
    };
    let upload = stage(ctx, dest, data_name, irx);
    let (pumped, shipped, uploaded) = tokio::join!(catalog::plain_blocks(m, Some(key), stream, tx), reblock, upload);
    pumped?;
    let staged = uploaded?;
    let Some((bytes, sha, blocks)) = shipped.filter(|(_, _, b)| b.len() == staged) else {
        let _ = dest.discard_staged(data_name).await;
        return Err(Error::transient(format!("export {:?}: the decrypted copy was not staged whole", m.id)));
    };
    commit(dest.as_ref(), m, data_name, staged).await?;
    let mut plain = m.clone();
    plain.format_version = crate::domain::manifest::FORMAT_VERSION_PLAIN;
    plain.encryption = None;
    plain.data_blob = data_blob.to_string();
    plain.stored_bytes = bytes;
    plain.sha256 = sha.clone();
    plain.blocks = blocks;
    plain.restore_hint = crate::domain::manifest::restore_hint(m.kind, m.compression, data_blob);
    Ok((bytes, sha, plain))
}
