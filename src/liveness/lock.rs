//! The worker lock file and the try-lock probe: the single-host primitive
//! behind [`super::Locks::Files`], and the [`WorkerLock`] an owner holds
//! whichever kind of lock proves its life.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::advisory::Session;

/// Length in hex digits of a claim token (128 random bits).
const TOKEN_LEN: usize = 32;

/// An exclusive lock held for as long as this value lives — a locked file
/// (one host) or a PostgreSQL session holding an advisory lock (many hosts);
/// its token is what the job row records as `claim_token`.
#[derive(Debug)]
pub struct WorkerLock {
    held: Held,
    token: String,
}

/// What keeps a [`WorkerLock`] held.
#[derive(Debug)]
enum Held {
    /// The open, `flock`ed lock file at `path`.
    File { file: File, path: PathBuf },
    /// A dedicated database session holding the advisory lock.
    Session(Box<Session>),
}

/// What a probe of an owner's lock says about the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Someone holds the lock: the owner process is alive.
    Alive,
    /// The lock is free or gone: the owner process is dead.
    Dead,
}

impl WorkerLock {
    /// Create a fresh lock file under `locks_dir` and lock it exclusively.
    pub fn acquire(locks_dir: &Path) -> anyhow::Result<WorkerLock> {
        std::fs::create_dir_all(locks_dir)
            .with_context(|| format!("creating lock directory {}", locks_dir.display()))?;
        loop {
            let token = super::random_hex16().context("reading /dev/urandom")?;
            let path = lock_path(locks_dir, &token);
            let mut file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating lock file {}", path.display()));
                }
            };
            match fs2::FileExt::try_lock_exclusive(&file) {
                Ok(()) => {}
                // A sweeper ([`remove_if_free`]) took it between our create
                // and our lock, and is removing it: take another token.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
            // The lock must be on the file the path names: if a sweeper removed
            // the path between create and lock, probes would see "dead".
            let held_ino = file.metadata().map_or(0, |f| f.ino());
            let same = std::fs::metadata(&path).is_ok_and(|m| m.ino() == held_ino);
            if !same {
                continue;
            }
            // Diagnostics only; the lock, not this text, is the proof of life.
            let _ = writeln!(file, "pid={} boot={}", std::process::id(), super::boot_id());
            return Ok(WorkerLock {
                held: Held::File { file, path },
                token,
            });
        }
    }

    /// The lock `session` holds, as a worker lock.
    pub(super) fn in_session(session: Session) -> WorkerLock {
        WorkerLock {
            token: session.token(),
            held: Held::Session(Box::new(session)),
        }
    }

    /// The claim token this lock stands for.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Release the lock: remove the lock file, then unlock it; or unlock the
    /// advisory lock, then close its session.
    ///
    /// Call this only once the job's outcome is committed: from then on a
    /// probe finds no lock and reports the owner dead, which is the truth.
    pub fn release(self) {
        match self.held {
            Held::File { file, path } => {
                let _ = std::fs::remove_file(&path);
                drop(file);
            }
            Held::Session(session) => session.release(),
        }
    }
}

fn lock_path(locks_dir: &Path, token: &str) -> PathBuf {
    locks_dir.join(format!("{token}.lock"))
}

/// Remove the lock file of `token` if no process holds it, and say whether
/// it went: the garbage a killed owner leaves (only an owner that lives to
/// commit removes its own file).
///
/// Safe against a live owner at every step: a held file cannot be locked
/// here, so it stays; the file is unlinked only while this process holds its
/// lock and only if the path still names the locked file; and an owner that
/// created the file but had not locked it yet finds it locked and takes
/// another token ([`WorkerLock::acquire`]). Call it only for tokens no
/// running job has: the reaper reads a killed claim's leftover file as "not
/// handed over", so it must stay while that job runs.
pub fn remove_if_free(locks_dir: &Path, token: &str) -> io::Result<bool> {
    if token.len() != TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let path = lock_path(locks_dir, token);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) => return Err(e),
    }
    let locked = file.metadata()?.ino();
    if std::fs::metadata(&path).is_ok_and(|m| m.ino() == locked) {
        std::fs::remove_file(&path)?;
        return Ok(true);
    }
    Ok(false)
}

/// Test whether the owner of `token` is alive, without blocking.
///
/// A token that is not one of ours (wrong shape) cannot name a held lock, so
/// its owner is dead.
pub fn probe(locks_dir: &Path, token: &str) -> io::Result<Liveness> {
    if token.len() != TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Liveness::Dead);
    }
    let file = match File::open(lock_path(locks_dir, token)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Liveness::Dead),
        Err(e) => return Err(e),
    };
    match fs2::FileExt::try_lock_shared(&file) {
        // Dropping `file` releases our probe lock at once.
        Ok(()) => Ok(Liveness::Dead),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Liveness::Alive),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_free_lock_file_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = WorkerLock::acquire(dir.path()).expect("lock");
        let stale = "b".repeat(TOKEN_LEN);
        std::fs::write(lock_path(dir.path(), &stale), "").expect("stale file");
        assert!(!remove_if_free(dir.path(), held.token()).expect("held"));
        assert!(lock_path(dir.path(), held.token()).exists());
        assert!(remove_if_free(dir.path(), &stale).expect("stale"));
        assert!(!lock_path(dir.path(), &stale).exists());
        assert!(!remove_if_free(dir.path(), &stale).expect("gone"));
        assert!(!remove_if_free(dir.path(), "../x").expect("not a token"));
        assert_eq!(
            probe(dir.path(), held.token()).expect("probe"),
            Liveness::Alive
        );
    }

    #[test]
    fn held_lock_is_alive_released_is_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = WorkerLock::acquire(dir.path()).expect("lock");
        let token = lock.token().to_owned();
        // flock is per open file description: a second open in this process
        // behaves like another process.
        assert_eq!(probe(dir.path(), &token).expect("probe"), Liveness::Alive);
        lock.release();
        assert_eq!(probe(dir.path(), &token).expect("probe"), Liveness::Dead);
    }

    #[test]
    fn dropped_lock_is_dead_even_if_file_remains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = WorkerLock::acquire(dir.path()).expect("lock");
        let token = lock.token().to_owned();
        drop(lock);
        assert!(dir.path().join(format!("{token}.lock")).exists());
        assert_eq!(probe(dir.path(), &token).expect("probe"), Liveness::Dead);
    }

    #[test]
    fn foreign_tokens_are_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        for t in ["", "../../etc/passwd", "zz", &"a".repeat(31)] {
            assert_eq!(probe(dir.path(), t).expect("probe"), Liveness::Dead);
        }
    }

    #[test]
    fn lock_fd_is_close_on_exec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = WorkerLock::acquire(dir.path()).expect("lock");
        let token = lock.token().to_owned();
        // A child that outlives our lock must not keep it: after we drop it
        // while the child still runs, the probe must say dead.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        drop(lock);
        let liveness = probe(dir.path(), &token).expect("probe");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(liveness, Liveness::Dead);
    }
}

/// A blocking exclusive lock that serialises git operations on one
/// repository's clone cache (fetch, worktree add/remove, merge) across
/// processes. Released when dropped.
#[derive(Debug)]
pub struct RepoLock {
    _file: File,
}

impl RepoLock {
    /// Wait for and take the lock at `path` (created if missing).
    pub fn acquire(path: &Path) -> anyhow::Result<RepoLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        fs2::FileExt::lock_exclusive(&file)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(RepoLock { _file: file })
    }
}

/// Whether a lock file for `token` exists at all. A worker that exits
/// normally removes its file ([`WorkerLock::release`]); one killed by a signal
/// leaves it behind, unlocked.
pub fn lock_file_exists(locks_dir: &Path, token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_hexdigit())
        && lock_path(locks_dir, token).exists()
}

/// Whether process `pid` has the lock file of `token` open: proof that the
/// pid is the live owner (not a reused pid) before anyone signals it.
pub fn pid_holds_lock(locks_dir: &Path, token: &str, pid: i64) -> bool {
    let want = lock_path(locks_dir, token);
    let want = std::fs::canonicalize(&want).unwrap_or(want);
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| target == want)
}
