//! The PostgreSQL client tools bundled in the Flex Consumption package, made runnable.
//!
//! `scripts/package` puts `pg/<major>/bin/{pg_dump,pg_restore,pg_dumpall}` and the shared
//! libraries they need (`pg/<major>/lib`) next to the `pgvault` binary. Flex mounts the app folder
//! read-only, and exec bits are not guaranteed to survive every deployment path, so at start-up
//! (after the listener is bound) [`install`] copies each major to a writable directory
//! (`/tmp/pgvault-pg/<major>`), marks the tools executable, and puts a small wrapper in front of
//! each one that sets `LD_LIBRARY_PATH` for that child only. The wrapper is why this works even
//! though pgvault starts its tools with a cleared environment, and why pgvault never mutates its
//! own environment (the crate forbids `unsafe`, and `set_var` is unsafe for good reason).
//!
//! Layout after [`install`]:
//! - `<dest>/<major>/libexec/<tool>`: the real binary (its RUNPATH `$ORIGIN/../lib` finds libpq);
//! - `<dest>/<major>/lib/`: libpq and the system libraries it needs (OpenSSL, krb5, zstd, lz4, zlib);
//! - `<dest>/<major>/bin/<tool>`: `#!/bin/sh` wrapper: `LD_LIBRARY_PATH=<lib> exec <libexec>/<tool>`.
//!
//! The `bin` directories are what goes into the PostgreSQL bin directory search.

use crate::domain::error::{Error, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The tools pgvault runs.
pub const TOOLS: &[&str] = &["pg_dump", "pg_restore", "pg_dumpall"];

/// Folder of the package (next to the binary) that holds one sub-folder per major.
pub const BUNDLE_DIR: &str = "pg";

/// Where the tools are copied to on the instance (writable on Flex).
pub const DEFAULT_DEST: &str = "/tmp/pgvault-pg";

/// The bundle folder of the running binary's package, if it has one.
pub fn package_bundle_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.join(BUNDLE_DIR);
    dir.is_dir().then_some(dir)
}

/// The environment a bundled tool needs (what its wrapper sets): `LD_LIBRARY_PATH=<major>/lib`.
pub fn tool_env(major_dir: &Path) -> Vec<(String, String)> {
    vec![("LD_LIBRARY_PATH".into(), major_dir.join("lib").display().to_string())]
}

/// Copy every `<bundle>/<major>` to `<dest>/<major>` and return the `bin` directories to search,
/// newest major first. Idempotent: an existing `<dest>/<major>` is replaced (a restarted handler
/// on the same instance copies again). A bundle without the majors returns an empty list.
pub fn install(bundle: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let io = |what: String| move |e: std::io::Error| Error::permanent(format!("bundled PostgreSQL tools: {what}: {e}"));
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(bundle)
        .map_err(io(format!("cannot read {}", bundle.display())))?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .filter(|(_, p)| p.join("bin").is_dir())
        .collect();
    majors.sort_by_key(|m| std::cmp::Reverse(m.0));
    std::fs::create_dir_all(dest).map_err(io(format!("cannot create {}", dest.display())))?;
    let mut bins = Vec::new();
    for (major, src) in majors {
        let final_dir = dest.join(major.to_string());
        let tmp = dest.join(format!(".{major}.tmp-{}", std::process::id()));
        remove_if_exists(&tmp).map_err(io(format!("cannot clear {}", tmp.display())))?;
        copy_major(&src, &tmp).map_err(io(format!("cannot copy {} to {}", src.display(), tmp.display())))?;
        remove_if_exists(&final_dir).map_err(io(format!("cannot clear {}", final_dir.display())))?;
        std::fs::rename(&tmp, &final_dir).map_err(io(format!("cannot rename {}", tmp.display())))?;
        write_wrappers(&final_dir).map_err(io(format!("cannot write wrappers in {}", final_dir.display())))?;
        bins.push(final_dir.join("bin"));
    }
    Ok(bins)
}

fn remove_if_exists(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `src/bin/<tool>` -> `dst/libexec/<tool>` (0755), `src/lib/*` -> `dst/lib/` (0644; symlinks
/// are followed, so a read-only or zip-flattened source works alike).
fn copy_major(src: &Path, dst: &Path) -> std::io::Result<()> {
    let libexec = dst.join("libexec");
    let lib = dst.join("lib");
    std::fs::create_dir_all(&libexec)?;
    std::fs::create_dir_all(&lib)?;
    std::fs::create_dir_all(dst.join("bin"))?;
    for tool in TOOLS {
        let from = src.join("bin").join(tool);
        if from.is_file() {
            let to = libexec.join(tool);
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(src.join("lib")) {
        for e in entries.flatten() {
            if e.path().is_file() {
                let to = lib.join(e.file_name());
                std::fs::copy(e.path(), &to)?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
            }
        }
    }
    Ok(())
}

fn write_wrappers(major_dir: &Path) -> std::io::Result<()> {
    let env = tool_env(major_dir);
    for tool in TOOLS {
        let real = major_dir.join("libexec").join(tool);
        if !real.is_file() {
            continue;
        }
        let mut script = String::from("#!/bin/sh\n# written by pgvault at start-up (src/bundle.rs)\n");
        for (k, v) in &env {
            script.push_str(&format!("{k}={}\nexport {k}\n", sh_quote(v)));
        }
        script.push_str(&format!("exec {} \"$@\"\n", sh_quote(&real.display().to_string())));
        let path = major_dir.join("bin").join(tool);
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_copies_wraps_and_is_idempotent() {
        let src = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        // A fake tool that prints the LD_LIBRARY_PATH it was given.
        for major in ["15", "17"] {
            let bin = src.path().join(major).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::create_dir_all(src.path().join(major).join("lib")).unwrap();
            std::fs::write(src.path().join(major).join("lib/libpq.so.5"), b"x").unwrap();
            // Written without exec bits, as a zip extracted without them would be.
            std::fs::write(bin.join("pg_dump"), "#!/bin/sh\necho \"pg_dump (PostgreSQL) 17.1 $LD_LIBRARY_PATH\"\n")
                .unwrap();
        }
        std::fs::create_dir_all(src.path().join("not-a-major/bin")).unwrap();
        for _ in 0..2 {
            let bins = install(src.path(), dest.path()).unwrap();
            assert_eq!(bins, vec![dest.path().join("17/bin"), dest.path().join("15/bin")]);
        }
        let out = std::process::Command::new(dest.path().join("17/bin/pg_dump")).env_clear().output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&dest.path().join("17/lib").display().to_string()), "{text}");
        assert!(dest.path().join("17/lib/libpq.so.5").is_file());
        assert!(!dest.path().join("17/bin/pg_restore").exists(), "no wrapper for a tool not bundled");
    }

    #[test]
    fn missing_bundle_is_an_error_naming_it() {
        let dest = tempfile::tempdir().unwrap();
        let e = install(Path::new("/nonexistent/pg"), dest.path()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pg"), "{e}");
    }
}
