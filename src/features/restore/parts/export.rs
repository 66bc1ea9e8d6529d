//! As files, for a backup in parts: one file per part (each copied through the verified reader,
//! decrypted on the way out unless kept encrypted), the set manifest, and a README that gives the
//! order and the plain-tool command of every file.

use super::*;

/// Export every part, then the manifest and the README; one read-only URL per file.
#[allow(clippy::too_many_arguments)]
pub(in crate::features::restore) async fn export_parts(
    ctx: &Ctx,
    task: &RestoreTask,
    m: &Manifest,
    key: Option<&DataKey>,
    dest: &std::sync::Arc<dyn crate::seams::store::BlobStore>,
    prefix: &str,
    secs: u64,
    exporter: &dyn crate::seams::store::FileExport,
) -> Result<Vec<ExportedFile>> {
    let container = task.target.container.as_deref().expect("validated");
    let mut set = m.clone();
    let mut written = Vec::new();
    for (i, part) in m.parts.iter().enumerate() {
        let view = m.part_view(part);
        let (bytes, sha) = match key {
            Some(key) => {
                let blob = part.data_blob.strip_suffix(".enc").unwrap_or(&part.data_blob).to_string();
                let name = format!("{prefix}{blob}");
                let (bytes, sha, plain) = export_decrypted(ctx, &view, key, dest, &name, &blob).await?;
                let p = &mut set.parts[i];
                p.restore_hint = p.spec.restore_hint(file_of(&blob), m.compression.by_pgvault(), None);
                p.data_blob = blob;
                p.stored_bytes = bytes;
                p.sha256 = sha.clone();
                p.blocks = plain.blocks;
                written.push((name, bytes, sha.clone()));
                (bytes, sha)
            }
            None => {
                let name = format!("{prefix}{}", part.data_blob);
                let (bytes, sha) = export_as_stored(ctx, &view, dest, &name).await?;
                written.push((name, bytes, sha.clone()));
                (bytes, sha)
            }
        };
        tracing::debug!(task = %task.task_id, part = %part.spec.name, bytes, sha256 = %sha, "part exported");
    }
    let manifest_blob = layout::manifest_for_id(&m.id);
    let manifest_bytes = if key.is_some() {
        // The copies are plain: the manifest describes them (no encryption, their sizes, hashes).
        set.encryption = None;
        set.stored_bytes = set.parts.iter().map(|p| p.stored_bytes).sum();
        Bytes::from(set.to_json())
    } else {
        ctx.store.get(&manifest_blob).await?
    };
    let manifest_name = format!("{prefix}{manifest_blob}");
    dest.put(&manifest_name, manifest_bytes.clone(), &export_tags(m)).await?;
    written.push((manifest_name, manifest_bytes.len() as u64, sha256_hex(&manifest_bytes)));
    let readme = Bytes::from(readme(&set, file_of(&manifest_blob), task.options.keep_encrypted));
    let readme_name = format!("{prefix}{}{README_SUFFIX}", m.id);
    dest.put(&readme_name, readme.clone(), &export_tags(m)).await?;
    written.push((readme_name, readme.len() as u64, sha256_hex(&readme)));
    sign_files(task, m, container, secs, exporter, written).await
}

/// The README beside the files of a backup in parts: `<id>.README.txt`.
pub const README_SUFFIX: &str = ".README.txt";

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))
}

fn file_of(blob: &str) -> &str {
    blob.rsplit('/').next().unwrap_or(blob)
}

/// The README of an exported backup in parts: what the files are, and the order and commands
/// that restore them with plain PostgreSQL tools (and zstd). Pure.
pub fn readme(set: &Manifest, manifest_file: &str, encrypted: bool) -> String {
    let by_kind = |k: PartKind| set.parts.iter().filter(move |p| p.spec.kind == k);
    let schema = by_kind(PartKind::Schema).next();
    let zstd = set.compression.by_pgvault();
    let source = |p: &Part| match (encrypted, zstd) {
        (true, _) => format!("pgvault cat {} |", crate::domain::parts::envelope_id(&set.id, &p.spec.name)),
        (false, true) => format!("zstd -d < {} |", file_of(&p.data_blob)),
        (false, false) => format!("cat {} |", file_of(&p.data_blob)),
    };
    let mut out = format!(
        "Backup {} of database {:?} on server {:?} (PostgreSQL {}), dumped by {} in {} parts, all in one snapshot \
         ({}).\n\nFiles:\n  {manifest_file}: the set manifest (every part's size, SHA-256 and blocks; `sha256sum \
         <file>` must print its part's sha256)\n",
        set.id,
        set.database,
        set.server,
        set.server_version,
        set.tool.version,
        set.parts.len(),
        set.snapshot.as_deref().unwrap_or("?"),
    );
    for p in &set.parts {
        out.push_str(&format!(
            "  {}: part {:?} ({}, {} bytes, sha256 {})\n",
            file_of(&p.data_blob),
            p.spec.name,
            kind_name(p.spec.kind),
            p.stored_bytes,
            p.sha256
        ));
    }
    if encrypted {
        out.push_str(
            "\nThe parts are encrypted as stored: `pgvault cat` decrypts them under an identity that may unwrap the \
             manifest's key.\n",
        );
    }
    out.push_str(
        "\nRestore, in this order, into an empty database <target> (create it with the encoding and locale in the \
         manifest's database_properties, from template0):\n",
    );
    if let Some(s) = schema {
        out.push_str(&format!(
            "\n1. The schema part's pre-data (tables, types, functions; no index or constraint yet):\n   {} pg_restore \
             --section=pre-data --dbname=<target> --no-owner\n",
            source(s)
        ));
    }
    out.push_str("\n2. Every data and COPY part, in any order, or several at once:\n");
    for p in by_kind(PartKind::Data).chain(by_kind(PartKind::Copy)) {
        let line = match p.spec.kind {
            PartKind::Copy => {
                let table = p.spec.table.as_ref().map(|t| t.sql()).unwrap_or_default();
                let cols: Vec<String> = p.spec.columns.iter().map(|c| quote_ident(c)).collect();
                format!(
                    "{} PGCLIENTENCODING=UTF8 psql --dbname=<target> -c '\\copy {table} ({}) FROM STDIN'",
                    source(p),
                    cols.join(", ").replace('\'', "'\\''")
                )
            }
            _ => format!("{} pg_restore --data-only --dbname=<target> --no-owner", source(p)),
        };
        out.push_str(&format!("   {line}\n"));
    }
    if let Some(s) = schema {
        out.push_str(&format!(
            "\n3. The schema part's post-data (indexes, constraints, foreign keys, triggers, policies, materialized \
             views refreshed), after every part of step 2:\n   {} pg_restore --section=post-data --dbname=<target> \
             --no-owner\n",
            source(s)
        ));
    }
    if !set.notes.is_empty() {
        out.push_str("\nNotes:\n");
        for n in &set.notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    out
}
