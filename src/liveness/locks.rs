//! Where the proof of an owner's life is kept, behind one type for every
//! caller: lock files in a directory when every worker runs on one host, or
//! PostgreSQL session advisory locks when workers on several hosts share one
//! queue (docs/scaling.md, "Owner liveness across hosts").
//!
//! Both kinds answer the same questions — take a lock for a claim, is the
//! owner of this token alive, which owners are alive, may this local pid be
//! signalled as the owner — so the reaper, the claim, STOP, the merge lease
//! and the views need not know which one is configured. Lock files are the
//! primitive in [`super::lock`] and [`super::census`]; the advisory locks
//! live in [`super::advisory`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::advisory::{self, Advisory};
use super::census::FileCensus;
use super::lock::{self, Liveness, WorkerLock};

/// Where owners keep the proof of their life.
#[derive(Debug)]
pub enum Locks {
    /// A lock file per owner in this directory, `flock`ed for the run: one
    /// host.
    Files(PathBuf),
    /// A PostgreSQL session per owner holding an advisory lock for the run:
    /// many hosts.
    Advisory(Box<Advisory>),
}

impl Locks {
    /// Advisory locks in the database at `advisory_url` when one is given,
    /// else lock files in `locks_dir`.
    pub fn configured(locks_dir: PathBuf, advisory_url: Option<&str>) -> anyhow::Result<Locks> {
        Ok(match advisory_url {
            Some(url) => Locks::Advisory(Box::new(Advisory::new(url)?)),
            None => Locks::Files(locks_dir),
        })
    }

    /// Take a fresh lock to claim a job with; it is held until the returned
    /// value is released or dropped, or this process dies.
    pub fn acquire(&self) -> anyhow::Result<WorkerLock> {
        match self {
            Locks::Files(dir) => WorkerLock::acquire(dir),
            Locks::Advisory(db) => db.acquire().map(WorkerLock::in_session),
        }
    }

    /// Whether the owner of `token` is alive, without blocking and without
    /// taking its lock. A token that cannot name a lock of this kind is dead;
    /// a lock that cannot be asked about is an error, never "dead".
    pub fn probe(&self, token: &str) -> anyhow::Result<Liveness> {
        match self {
            Locks::Files(dir) => Ok(lock::probe(dir, token)?),
            Locks::Advisory(db) => db.probe(token),
        }
    }

    /// The liveness of every owner at once, for a view. Take it after reading
    /// the jobs it will be asked about: a job claimed later took its lock
    /// later.
    pub fn census(&self) -> anyhow::Result<Census> {
        Ok(Census(match self {
            Locks::Files(dir) => Taken::Files(FileCensus::take(dir)),
            Locks::Advisory(db) => Taken::Held(db.held_keys()?),
        }))
    }

    /// Remove the leftovers of owners that died without releasing their
    /// lock, and say how many went: the lock files of killed owners whose
    /// token no running job has any more. `running` reads the tokens of the
    /// running jobs; it is called after the directory is listed (a file
    /// listed first is a running job's, a claimer's not yet committed and
    /// held, or garbage), and not at all when there is nothing to remove.
    /// Advisory locks leave nothing behind: a no-op.
    pub fn sweep(
        &self,
        running: impl FnOnce() -> anyhow::Result<HashSet<String>>,
    ) -> anyhow::Result<usize> {
        match self {
            Locks::Files(dir) => sweep_lock_files(dir, running),
            Locks::Advisory(_) => Ok(0),
        }
    }

    /// Whether process `pid` of this host holds the lock of `token`: proof
    /// that the pid is the live owner (not a reused pid, not a pid of another
    /// host) before anyone signals it.
    pub fn pid_holds(&self, token: &str, pid: i64) -> anyhow::Result<bool> {
        match self {
            Locks::Files(dir) => Ok(lock::pid_holds_lock(dir, token, pid)),
            Locks::Advisory(db) => db.pid_holds(token, pid),
        }
    }

    /// Whether the dead owner of `token` may have ended cleanly, handing its
    /// job over (`orch claim`), rather than been killed. A clean end removes
    /// the lock file, a kill leaves it; an advisory lock leaves no trace
    /// either way, so every dead owner may have handed over (a killed
    /// claimer's job then waits out the start grace too).
    pub fn may_have_handed_over(&self, token: &str) -> bool {
        match self {
            Locks::Files(dir) => !lock::lock_file_exists(dir, token),
            Locks::Advisory(_) => true,
        }
    }

    /// Whether owners may run on other hosts than this one, where their pids
    /// mean nothing: true for advisory locks, false for lock files (only
    /// processes of this host can hold them).
    pub fn spans_hosts(&self) -> bool {
        matches!(self, Locks::Advisory(_))
    }
}

/// The liveness of many owners at once ([`Locks::census`]).
#[derive(Debug)]
pub struct Census(Taken);

/// What a census saw.
#[derive(Debug)]
enum Taken {
    /// The lock directory and the kernel's lock table.
    Files(FileCensus),
    /// The keys of the held advisory locks.
    Held(HashSet<i64>),
}

impl Census {
    /// Whether the owner of `token` is alive.
    pub fn probe(&self, token: &str) -> anyhow::Result<Liveness> {
        match &self.0 {
            Taken::Files(files) => Ok(files.probe(token)?),
            Taken::Held(keys) => Ok(
                if advisory::key_of(token).is_some_and(|k| keys.contains(&k)) {
                    Liveness::Alive
                } else {
                    Liveness::Dead
                },
            ),
        }
    }

    /// The token of every owner that is alive; `None` when it could not be
    /// listed (ask [`Census::probe`] owner by owner then).
    pub fn alive_tokens(&self) -> Option<Vec<String>> {
        match &self.0 {
            Taken::Files(files) => files.alive_tokens(),
            Taken::Held(keys) => Some(keys.iter().copied().map(advisory::token_of).collect()),
        }
    }
}

/// [`Locks::sweep`] for lock files.
fn sweep_lock_files(
    locks_dir: &Path,
    running: impl FnOnce() -> anyhow::Result<HashSet<String>>,
) -> anyhow::Result<usize> {
    let Ok(entries) = std::fs::read_dir(locks_dir) else {
        return Ok(0);
    };
    let files: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".lock").map(str::to_owned)
        })
        .collect();
    if files.is_empty() {
        return Ok(0);
    }
    let running = running()?;
    let mut removed = 0;
    for token in files.iter().filter(|t| !running.contains(*t)) {
        if lock::remove_if_free(locks_dir, token)? {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, Locks) {
        let dir = tempfile::tempdir().expect("tempdir");
        let locks = Locks::configured(dir.path().join("locks"), None).expect("locks");
        (dir, locks)
    }

    #[test]
    fn without_a_url_the_locks_are_files_in_the_directory() {
        let (dir, locks) = files();
        assert!(matches!(&locks, Locks::Files(d) if *d == dir.path().join("locks")));
        assert!(!locks.spans_hosts());
    }

    #[test]
    fn a_held_file_lock_is_alive_a_released_one_dead() {
        let (dir, locks) = files();
        let lock = locks.acquire().expect("acquire");
        let token = lock.token().to_owned();
        assert!(dir.path().join(format!("locks/{token}.lock")).exists());
        assert_eq!(locks.probe(&token).expect("probe"), Liveness::Alive);
        let census = locks.census().expect("census");
        assert_eq!(census.probe(&token).expect("census"), Liveness::Alive);
        assert_eq!(census.alive_tokens(), Some(vec![token.clone()]));
        lock.release();
        assert_eq!(locks.probe(&token).expect("probe"), Liveness::Dead);
        let census = locks.census().expect("census");
        assert_eq!(census.probe(&token).expect("census"), Liveness::Dead);
        assert_eq!(census.alive_tokens(), Some(vec![]));
        for foreign in ["", "zz", "../x", &"a".repeat(16)] {
            assert_eq!(locks.probe(foreign).expect("probe"), Liveness::Dead);
            assert_eq!(census.probe(foreign).expect("census"), Liveness::Dead);
        }
    }

    #[test]
    fn a_clean_end_may_be_a_hand_over_a_kill_is_not() {
        let (_dir, locks) = files();
        let released = locks.acquire().expect("acquire");
        let released_token = released.token().to_owned();
        released.release();
        // A dropped lock leaves its file, as a killed owner does.
        let killed = locks.acquire().expect("acquire");
        let killed_token = killed.token().to_owned();
        drop(killed);
        assert!(locks.may_have_handed_over(&released_token));
        assert!(!locks.may_have_handed_over(&killed_token));
        assert_eq!(locks.probe(&killed_token).expect("probe"), Liveness::Dead);
    }

    #[test]
    fn the_sweep_removes_only_free_files_no_running_job_has() {
        let (dir, locks) = files();
        assert_eq!(
            locks
                .sweep(|| panic!("no files: the running jobs are not read"))
                .expect("sweep"),
            0
        );
        let held = locks.acquire().expect("acquire");
        // Dropped, not released: the file stays, unlocked, as a kill leaves it.
        let killed = || {
            let lock = locks.acquire().expect("acquire");
            lock.token().to_owned()
        };
        let (running_dead, garbage) = (killed(), killed());
        let running: HashSet<String> = [running_dead.clone()].into();
        let removed = locks.sweep(|| Ok(running)).expect("sweep");
        assert_eq!(removed, 1);
        let file = |t: &str| dir.path().join(format!("locks/{t}.lock"));
        assert!(file(held.token()).exists(), "held: kept");
        assert!(file(&running_dead).exists(), "a running job's: kept");
        assert!(!file(&garbage).exists(), "garbage: removed");
        held.release();
    }

    #[test]
    fn only_the_holding_pid_holds_the_file_lock() {
        let (_dir, locks) = files();
        let lock = locks.acquire().expect("acquire");
        let me = i64::from(std::process::id());
        assert!(locks.pid_holds(lock.token(), me).expect("pid holds"));
        assert!(!locks.pid_holds(lock.token(), 1).expect("pid 1"));
        let token = lock.token().to_owned();
        lock.release();
        assert!(!locks.pid_holds(&token, me).expect("released"));
    }
}
