//! Named fail points: places in the pipelines where a test has the process killed hard
//! (SIGKILL, as a Flex Consumption "Recreate" update, an OOM kill or a scale-in past its grace
//! does), or made to wait, to prove what a redelivery finds there.
//!
//! Off in production: nothing is armed unless `PGVAULT_FAILPOINTS` is set, which production
//! never sets (it is not a setting of the deployment). The variable is read once, at start-up
//! ([`setup`]); an unarmed point costs one lookup in an empty map. The `fail` crate's
//! `failpoints` feature is always compiled in, so the plain test suite exercises the same binary.
//!
//! Syntax: `name=actions;name=actions`, where `actions` is the `fail` crate's
//! (`[p%][count*]task[(arg)]`, chained with `->`). The task that acts is `return`, with an
//! argument that says what to do:
//! - `return` or `return(kill)`: SIGKILL this process at once (no destructor, no reply);
//! - `return(hold:<path>)`: create `<path>.reached`, then wait until `<path>` exists, and go on;
//! - `return(error)`, at a point passed with [`injected`]: the caller fails as it would on a
//!   transient error there.
//!
//! `backup.block-staged=3*off->return` kills the process when the fourth block has been staged.

/// The environment variable that arms fail points (tests only).
pub const SETTING: &str = "PGVAULT_FAILPOINTS";

/// Every fail point, where it is, and what a kill there leaves behind (docs/reliability.md).
pub const POINTS: &[(&str, &str)] = &[
    ("backup.block-staged", "after each block staged (count hits for \"after N blocks\")"),
    ("backup.after-commit", "the data blob committed, its manifest not yet created"),
    ("backup.after-manifest", "the manifest created, the reply not yet sent"),
    ("backup.parts-planned", "a backup in parts: the snapshot exported and the parts planned, none started"),
    (
        "backup.parts-sent",
        "a backup in parts on the backup-parts queue: every part sent, the coordinator about to wait for results",
    ),
    (
        "backup.part-run",
        "a part worker (backup-parts) about to run its part; `return(error)` fails the delivery transiently",
    ),
    (
        "backup.parts-committed",
        "a backup in parts: every part committed, the snapshot released, the set manifest not yet written",
    ),
    (
        "restore.mid-stream",
        "after each verified block handed on to pg_restore (verify and as-files read through the same reader)",
    ),
    ("restore.after-pg-restore", "pg_restore exited 0, the row counts not yet checked"),
    ("restore.between-renames", "the swap transaction open, the old database renamed, the copy not yet"),
    ("restore.after-swap", "the swap committed, the task's record not yet written"),
    ("retention.between-deletes", "a backup's manifest deleted, its data blob not yet"),
    ("sas-sync.created", "the include file's temp file created"),
    ("sas-sync.half-written", "half the include file written to the temp file"),
    ("sas-sync.written", "the temp file written, not yet fsynced"),
    ("sas-sync.synced", "the temp file fsynced"),
    ("sas-sync.owned", "the temp file given its owner and mode"),
    ("sas-sync.renamed", "the temp file renamed over the include file, the directory not yet fsynced"),
];

/// Arm the fail points `PGVAULT_FAILPOINTS` names. Called once at start-up; an error names the
/// setting and the entry.
pub fn setup() -> Result<(), String> {
    let Some(spec) = std::env::var_os(SETTING) else { return Ok(()) };
    let spec = spec.to_string_lossy();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            return Err(format!("setting {SETTING}: entry {entry:?} is not name=actions"));
        };
        let name = name.trim();
        if !POINTS.iter().any(|(p, _)| *p == name) {
            let known: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
            return Err(format!("setting {SETTING}: no fail point {name:?}\nHINT: one of {}", known.join(", ")));
        }
        fail::cfg(name, actions.trim()).map_err(|e| format!("setting {SETTING}: fail point {name:?}: {e}"))?;
    }
    Ok(())
}

/// Pass fail point `name`: nothing happens unless a test armed it.
pub fn hit(name: &str) {
    fn eval(name: &str) {
        fail::fail_point!(name, |arg: Option<String>| act(name, arg.as_deref()));
    }
    eval(name)
}

/// Pass fail point `name` where a test may inject a failure: true when armed with
/// `return(error)` (the caller then fails transiently); any other action acts as in [`hit`].
pub fn injected(name: &str) -> bool {
    fn eval(name: &str) -> bool {
        fail::fail_point!(name, |arg: Option<String>| {
            if arg.as_deref() == Some("error") {
                eprintln!("pgvault: fail point {name}: error");
                return true;
            }
            act(name, arg.as_deref());
            false
        });
        false
    }
    eval(name)
}

fn act(name: &str, arg: Option<&str>) {
    match arg {
        None | Some("kill") => {
            eprintln!("pgvault: fail point {name}: SIGKILL");
            // SIGKILL cannot be caught: the process ends here, as under an OOM kill.
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            // The signal is delivered before kill(2) returns to a single-threaded caller, and
            // promptly to a multi-threaded one; never go on past the point meanwhile.
            loop {
                std::thread::park();
            }
        }
        Some(other) => match other.strip_prefix("hold:") {
            Some(path) => {
                let path = std::path::Path::new(path);
                let reached = path.with_extension("reached");
                let _ = std::fs::write(&reached, name);
                eprintln!("pgvault: fail point {name}: holding until {} exists", path.display());
                // A test-only wait for the test's own signal (the file), not a timed guess. On a
                // multi-threaded runtime the other tasks go on meanwhile.
                let wait = || {
                    while !path.exists() {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                };
                match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                    _ => wait(),
                }
            }
            None => panic!("fail point {name}: unknown action {other:?} (kill, hold:<path>, error)"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_is_unique_and_dotted() {
        let names: std::collections::BTreeSet<&str> = POINTS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), POINTS.len());
        assert!(names.iter().all(|n| n.contains('.') && !n.contains('=') && !n.contains(';')));
    }

    #[test]
    fn an_unarmed_point_does_nothing_and_a_counted_hold_waits_for_its_file() {
        hit("backup.after-commit");
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        // The first hit passes, the second holds until the file appears.
        fail::cfg("test.point", &format!("1*off->return(hold:{})", go.display())).unwrap();
        hit("test.point");
        assert!(!go.with_extension("reached").exists());
        let waiter = std::thread::spawn(move || hit("test.point"));
        let reached = go.with_extension("reached");
        while !reached.exists() {
            std::thread::yield_now();
        }
        assert!(!waiter.is_finished(), "held at the point");
        std::fs::write(&go, "").unwrap();
        waiter.join().unwrap();
        fail::remove("test.point");
    }
}
