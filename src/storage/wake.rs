//! The wake-up file: how a commit that makes work claimable starts an idle
//! worker within a second, with no long-running process.
//!
//! Whenever a transaction inserts or changes a job, the committing process
//! creates `<state>/wake/queued` after the commit. The shipped
//! `orch-worker@.path` unit watches that directory with
//! `DirectoryNotEmpty=` and starts the worker service; the worker removes the
//! file *before* each claim and keeps claiming while work is claimable. No
//! wake-up can be lost: a commit after the removal re-creates the file, and
//! systemd re-checks `DirectoryNotEmpty=` when the service stops, so the
//! worker runs again. A wake-up that finds nothing costs one short process.
//! The worker timers stay as the safety net (docs/architecture.md).

use std::path::{Path, PathBuf};

/// The directory the `.path` unit watches.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("wake")
}

fn file(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("queued")
}

/// Say that jobs changed: create the wake file (best effort: the timers
/// still find the work if this fails, a second later than the path unit).
pub fn notify(state_dir: &Path) {
    let path = file(state_dir);
    let made = std::fs::create_dir_all(dir(state_dir)).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map(drop)
    });
    if let Err(e) = made {
        log::warn!("waking workers through {}: {e}", path.display());
    }
}

/// Take the wake-up before looking for work, so that anything committed
/// after this moment wakes a worker again.
pub fn consume(state_dir: &Path) {
    match std::fs::remove_file(file(state_dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("taking the wake-up file: {e}"),
    }
}

/// Whether a wake-up is pending.
pub fn pending(state_dir: &Path) -> bool {
    file(state_dir).exists()
}
