//! `pgvault status [--json] [--html FILE]`: the status page's view in a terminal (colour only on
//! a TTY), as JSON, or written as the HTML page to a file.

use crate::config::context::Ctx;
use crate::domain::error::{Error, Result};
use crate::features::status;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub async fn run(ctx: &Ctx, json: bool, html: Option<&Path>) -> Result<ExitCode> {
    let view = status::gather(ctx, time::OffsetDateTime::now_utc()).await?;
    if let Some(path) = html {
        write_page(path, &status::html::render(&view))?;
        outln!("status page written to {}", path.display());
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&view).expect("the view serializes"));
    } else if html.is_none() {
        // anstream keeps the styles on a terminal and strips them for pipes, files and NO_COLOR.
        let mut out = anstream::stdout();
        out.write_all(status::text::render(&view).as_bytes())
            .map_err(|e| Error::permanent(format!("status: write to stdout: {e}")))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the page whole or not at all: a temporary file beside it, then a rename.
fn write_page(path: &Path, page: &str) -> Result<()> {
    let fail = |e: std::io::Error| Error::permanent(format!("status: write the page to {}: {e}", path.display()));
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir).map_err(fail)?;
    tmp.1.write_all(page.as_bytes()).and_then(|_| tmp.1.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp.0, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        fail(e)
    })
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let p = dir.join(format!(".pgvault-status-{}.tmp", uuid::Uuid::new_v4().simple()));
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&p)?;
    Ok((p, f))
}
