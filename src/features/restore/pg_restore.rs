//! Feeding pg_restore: verified blocks, decompressed, into pg_restore's stdin (or a scratch
//! copy for `--jobs`), its verdict, and the row counts checked afterwards.

use super::*;

/// Keep the last 64 KiB of a tool's stderr.
pub(super) async fn collect_stderr(mut stderr: tokio::process::ChildStderr) -> String {
    use tokio::io::AsyncReadExt;
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    if kept.len() > KEEP {
        kept.drain(..kept.len() - KEEP);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

pub(super) fn pg_restore_command(tool: &Path, spec: &ConnSpec, args: &[String]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .envs(spec.tool_env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Wait for a tool, killing it if the shutdown token fires.
pub(super) async fn wait_or_kill(ctx: &Ctx, child: &mut tokio::process::Child) -> Result<std::process::ExitStatus> {
    tokio::select! {
        s = child.wait() => s.map_err(|e| Error::transient(format!("wait for pg_restore: {e}"))),
        _ = ctx.cancel.cancelled() => {
            let _ = child.kill().await;
            Err(Error::transient("restore cancelled by shutdown"))
        }
    }
}

/// pg_restore's verdict: exit 0 and no error line.
pub(super) fn pg_restore_verdict(status: std::process::ExitStatus, stderr: &str) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:") || l.contains("FATAL:")).collect();
    if status.success() && errors.is_empty() {
        return Ok(());
    }
    let detail = redact(if errors.is_empty() { stderr.trim().to_string() } else { errors.join("\n") }.trim());
    if let Some(sig) = status.signal() {
        return Err(Error::transient(format!("pg_restore was killed by signal {sig}: {detail}")));
    }
    let text = format!("pg_restore failed ({status}): {detail}");
    let lower = detail.to_ascii_lowercase();
    if ["could not connect", "server closed the connection", "terminating connection", "connection to server"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return Err(Error::transient(text));
    }
    let e = Error::permanent(text);
    Err(if lower.contains("role") && lower.contains("does not exist") {
        e.with_hint("restore the roles first (options.globals), or restore with options.no_owner / options.owner")
    } else if ["must be member of role", "must be able to set role", "permission denied to set role"]
        .iter()
        .any(|p| lower.contains(p))
    {
        // Objects in the archive belong to a role the restoring login may not become.
        e.with_hint(
            "make the restoring role a member of the objects' owner (`pgvault grant-sql --restore --role <restore \
             role> --member-of <owner>`), or restore with options.no_owner / options.owner",
        )
    } else if lower.contains("permission denied for schema") || lower.contains("permission denied for database") {
        // A non-superuser pg_restore gives each object its owner as it creates it, and PostgreSQL
        // then wants that owner to hold CREATE on the schema (or database) already; the archive
        // grants it only later, with the other privileges.
        e.with_hint(
            "an object's owner lacks CREATE on its schema while pg_restore gives it the object (the archive grants \
             it later): restore with options.no_owner, or as an admin role",
        )
    } else {
        e
    })
}

/// Open a backup's data for reading, with progress (bytes as stored, rate, elapsed, time left
/// against the manifest's stored size) logged at the steady interval of `ctx.progress`, or a bar
/// on a terminal. The final line is logged when the stream ends.
pub(super) async fn read_with_progress(ctx: &Ctx, m: &Manifest, what: &str) -> Result<crate::seams::store::ByteStream> {
    let stream = ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {:?}", m.id)))?;
    let progress =
        crate::seams::progress::Progress::start(ctx.progress, format!("{what} {}", m.id), Some(m.stored_bytes));
    Ok(with_progress(stream, progress))
}

/// Count a stream's bytes into `progress`, and finish it when the stream ends.
pub(super) fn with_progress(
    stream: crate::seams::store::ByteStream,
    progress: crate::seams::progress::Progress,
) -> crate::seams::store::ByteStream {
    use futures::StreamExt;
    let end = progress.clone();
    stream
        .inspect(move |r| {
            if let Ok(b) = r {
                progress.add(b.len() as u64);
            }
        })
        .chain(
            futures::stream::once(async move {
                end.finish();
                None
            })
            .filter_map(futures::future::ready),
        )
        .boxed()
}

/// Read the backup through the verified reader, decompress, and restore into the temporary
/// database, streaming or (parallel) from a local copy.
pub(super) async fn feed_pg_restore(
    ctx: &Ctx,
    m: &Manifest,
    tool: &Path,
    spec: &ConnSpec,
    mut args: Vec<String>,
    method: Method,
) -> Result<()> {
    let stream = read_with_progress(ctx, m, "restore").await?;
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let compression = m.compression;
    let raw = match method {
        Method::Stream => {
            let mut child = pg_restore_command(tool, spec, &args)
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| Error::permanent(format!("start {}: {e}", tool.display())))?;
            let stdin = std::fs::File::from(
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .into_owned_fd()
                    .map_err(|e| Error::transient(format!("pg_restore stdin: {e}")))?,
            );
            let stderr = tokio::spawn(collect_stderr(child.stderr.take().expect("piped")));
            let consumer = tokio::task::spawn_blocking(move || catalog::feed(rx, compression, stdin, false));
            let (pumped, fed, status) =
                tokio::join!(catalog::verified_blocks(m, stream, tx), consumer, wait_or_kill(ctx, &mut child));
            let stderr = stderr.await.unwrap_or_default();
            // Precedence: shutdown, then corruption (pg_restore saw only verified bytes and then
            // an early end), then pg_restore's own failure, then reading errors.
            let status = status?;
            if let Err(e) = &pumped
                && e.is_permanent()
            {
                return Err(pumped.expect_err("checked"));
            }
            pg_restore_verdict(status, &stderr)?;
            pumped?;
            fed.map_err(|e| Error::transient(format!("restore stream task failed: {e}")))?
                .map_err(|e| Error::permanent(format!("backup {:?}: decompress into pg_restore: {e}", m.id)))?
        }
        Method::Parallel(jobs) => {
            let path = ctx
                .settings
                .restore_scratch_dir
                .join(format!("pgvault-restore-{}.dump", &uuid::Uuid::new_v4().simple().to_string()[..12]));
            let file = ScratchFile::create(&path)?;
            let out = file.file.try_clone().map_err(|e| Error::transient(format!("scratch file: {e}")))?;
            let consumer = tokio::task::spawn_blocking(move || {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
                let n = catalog::feed(rx, compression, &mut w, false)?;
                std::io::Write::flush(&mut w)?;
                Ok::<_, std::io::Error>(n)
            });
            let (pumped, fed) = tokio::join!(catalog::verified_blocks(m, stream, tx), consumer);
            let fed = fed.map_err(|e| Error::transient(format!("restore download task failed: {e}")))?;
            // Corruption first; then a failed write (which stops the reader, so its own error
            // would only say that the consumer stopped); then reading errors.
            let raw = match (pumped, fed) {
                (Err(e), _) if e.is_permanent() => return Err(e),
                (_, Err(e)) => {
                    return Err(Error::transient(format!("write scratch file {}: {e}", path.display())));
                }
                (Err(e), _) => return Err(e),
                (Ok(_), Ok(raw)) => raw,
            };
            args.push(format!("--jobs={jobs}"));
            args.push(path.display().to_string());
            let mut child = pg_restore_command(tool, spec, &args)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| Error::permanent(format!("start {}: {e}", tool.display())))?;
            let stderr = tokio::spawn(collect_stderr(child.stderr.take().expect("piped")));
            let status = wait_or_kill(ctx, &mut child).await?;
            let stderr = stderr.await.unwrap_or_default();
            drop(file);
            pg_restore_verdict(status, &stderr)?;
            raw
        }
    };
    if raw != m.raw_bytes {
        return Err(Error::permanent(format!(
            "backup {:?} decompresses to {raw} bytes, the manifest says {}",
            m.id, m.raw_bytes
        )));
    }
    Ok(())
}

/// A scratch file readable only by us, removed when dropped.
pub(super) struct ScratchFile {
    path: PathBuf,
    file: std::fs::File,
}

impl ScratchFile {
    fn create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::transient(format!("create scratch file {}: {e}", path.display())))?;
        Ok(Self { path: path.to_path_buf(), file })
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// With exact counts in the manifest, every table must have exactly as many rows.
pub(super) async fn check_row_counts(spec: &ConnSpec, m: &Manifest) -> Result<usize> {
    let Some(counts) = m.row_counts.as_ref().filter(|r| r.method == "exact") else { return Ok(0) };
    let client = pg::connect(spec).await?;
    for t in &counts.tables {
        let sql = format!("SELECT count(*) FROM {}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let rows: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| {
                Error::permanent(format!(
                    "check restored table {}.{}: {}",
                    quote_ident(&t.schema),
                    quote_ident(&t.table),
                    redact(&pg::error_text(&e))
                ))
            })?
            .get(0);
        if rows != t.rows {
            return Err(Error::permanent(format!(
                "restored table {}.{} has {rows} rows, the backup's manifest says {}",
                quote_ident(&t.schema),
                quote_ident(&t.table),
                t.rows
            )));
        }
    }
    Ok(counts.tables.len())
}
