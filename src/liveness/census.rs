//! The liveness of many lock-file owners at once, for the views that show
//! them all (`orch status`, the attention list, the board; through
//! [`super::Census`]): one directory read and one read of `/proc/locks`
//! instead of an open, a try-lock and a close per running job.
//!
//! An owner whose lock file is absent is dead (a live owner creates its file
//! before it claims and removes it only after its job is committed); one whose
//! file's inode is in the kernel's table of held locks is alive. Anything else
//! — a file present but not listed, an inode that does not match (overlay
//! filesystems may report directory inodes differently), a `/proc` that
//! cannot be read — is settled by the exact per-file [`probe`], so the census
//! is never less exact than probing each owner, only faster in the common
//! case. Take it after reading the jobs it will be asked about: a job claimed
//! later has its file created later.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirEntryExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use super::lock::{Liveness, probe};

/// One look at the lock directory and the kernel's lock table.
#[derive(Debug)]
pub struct FileCensus {
    locks_dir: PathBuf,
    /// Lock files by token, with their inode; `None` if the directory could
    /// not be read (every question then goes to the exact probe).
    files: Option<HashMap<String, u64>>,
    /// Inodes on the lock directory's device that some process holds a lock on.
    held: HashSet<u64>,
}

impl FileCensus {
    /// Read `locks_dir` and `/proc/locks` once.
    pub fn take(locks_dir: &Path) -> FileCensus {
        FileCensus {
            locks_dir: locks_dir.to_path_buf(),
            files: lock_files(locks_dir),
            held: held_inodes(locks_dir).unwrap_or_default(),
        }
    }

    /// Whether the owner of `token` is alive (see the module doc).
    pub fn probe(&self, token: &str) -> std::io::Result<Liveness> {
        match self.files.as_ref().map(|f| f.get(token)) {
            Some(None) => Ok(Liveness::Dead),
            Some(Some(ino)) if self.held.contains(ino) => Ok(Liveness::Alive),
            _ => probe(&self.locks_dir, token),
        }
    }
}

impl FileCensus {
    /// The token of every owner that is alive: each lock file the kernel
    /// lists as held, and each one it does not list that the exact probe
    /// finds locked. `None` when the lock directory could not be listed
    /// (ask [`FileCensus::probe`] owner by owner then). Bounded by the lock
    /// files present, not by the jobs a database says are running.
    pub fn alive_tokens(&self) -> Option<Vec<String>> {
        let files = self.files.as_ref()?;
        Some(
            files
                .iter()
                .filter(|(token, ino)| {
                    self.held.contains(ino)
                        || matches!(probe(&self.locks_dir, token), Ok(Liveness::Alive))
                })
                .map(|(token, _)| token.clone())
                .collect(),
        )
    }
}

/// `<token>.lock` → inode, from one directory read.
fn lock_files(locks_dir: &Path) -> Option<HashMap<String, u64>> {
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(locks_dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name();
        if let Some(token) = name.to_str().and_then(|n| n.strip_suffix(".lock")) {
            files.insert(token.to_owned(), entry.ino());
        }
    }
    Some(files)
}

/// The inodes on `locks_dir`'s device named by a held (not a waiting) lock
/// in `/proc/locks`: `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF`.
fn held_inodes(locks_dir: &Path) -> std::io::Result<HashSet<u64>> {
    let dev = std::fs::metadata(locks_dir)?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let table = std::fs::read_to_string("/proc/locks")?;
    Ok(table
        .lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter_map(|id| {
            let mut parts = id.split(':');
            let maj = u64::from_str_radix(parts.next()?, 16).ok()?;
            let min = u64::from_str_radix(parts.next()?, 16).ok()?;
            let ino = parts.next()?.parse().ok()?;
            (maj == major && min == minor).then_some(ino)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::WorkerLock;

    #[test]
    fn the_census_agrees_with_the_probe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = WorkerLock::acquire(dir.path()).expect("lock");
        let dead = WorkerLock::acquire(dir.path()).expect("lock");
        let dead_token = dead.token().to_owned();
        // A file left behind by a killed owner: present, not locked.
        std::fs::write(dir.path().join(format!("{}.lock", "a".repeat(32))), "").expect("stale");
        dead.release();
        let census = FileCensus::take(dir.path());
        for token in [
            live.token(),
            dead_token.as_str(),
            &"a".repeat(32),
            "nonsense",
        ] {
            assert_eq!(
                census.probe(token).expect("census"),
                probe(dir.path(), token).expect("probe"),
                "{token}"
            );
        }
        assert_eq!(census.probe(live.token()).expect("live"), Liveness::Alive);
        assert_eq!(census.alive_tokens(), Some(vec![live.token().to_owned()]));
        assert!(
            !census.held.is_empty(),
            "this kernel's /proc/locks lists the held lock: the fast path is exercised"
        );
    }
}
