//! As files: a verified copy in another container, and read-only user-delegation SAS URLs.

use super::*;

/// Copy a backup (verified block by block on the way) and its manifest into the target
/// container, and sign a read-only URL for each.
pub(super) async fn export(ctx: &Ctx, task: &RestoreTask, m: &Manifest) -> Result<Vec<ExportedFile>> {
    let exporter = ctx.store.file_export().ok_or_else(|| {
        Error::permanent("mode as-files needs Azure storage: the local store cannot sign read-only URLs")
            .with_hint("set PGVAULT_STORAGE=azure")
    })?;
    let container = task.target.container.as_deref().expect("validated");
    let prefix = normalize_prefix(task.target.prefix.as_deref().unwrap_or(""))?;
    let secs = task.target.expires_in_seconds.unwrap_or(DEFAULT_EXPIRY_SECS).clamp(MIN_EXPIRY_SECS, MAX_EXPIRY_SECS);
    let dest = exporter.container(container).await?;
    let data_name = format!("{prefix}{}", m.data_blob);
    let manifest_blob = layout::manifest_for_id(&m.id);
    let manifest_name = format!("{prefix}{manifest_blob}");

    // The copy keeps the block structure, so the manifest's block hashes describe it too.
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
    let upload =
        backup::upload_blocks(dest.clone(), data_name.clone(), irx, ctx.settings.blocks_in_flight, ctx.cancel.clone());
    let (pumped, (), uploaded) = tokio::join!(catalog::verified_blocks(m, stream, tx), forward, upload);
    pumped?;
    let staged = uploaded?;
    if staged != m.blocks.len() {
        let _ = dest.discard_staged(&data_name).await;
        return Err(Error::transient(format!("export {:?}: staged {staged} of {} blocks", m.id, m.blocks.len())));
    }
    let mut tags = Tags::new();
    tags.insert("pgvault".into(), "export".into());
    tags.insert("kind".into(), m.kind.as_str().into());
    let ids: Vec<String> = (0..staged).map(crate::seams::store::block_id).collect();
    dest.commit_blocks(&data_name, &ids, &tags).await.map_err(|e| e.context(format!("commit copy {data_name:?}")))?;
    let manifest_bytes = ctx.store.get(&manifest_blob).await?;
    dest.put(&manifest_name, manifest_bytes.clone(), &tags).await?;

    // Whole seconds: the URL's `se` has no fraction, and the record must say the same time.
    let expires_at = (OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64))
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    let mut files = Vec::new();
    for (blob, bytes, sha) in [
        (data_name, m.stored_bytes, m.sha256.clone()),
        (
            manifest_name,
            manifest_bytes.len() as u64,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes)),
        ),
    ] {
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
