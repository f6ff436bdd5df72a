//! Stale git lock files, and the proof that one is stale before it goes.
//!
//! git guards every file it rewrites (the index, `HEAD`, a ref,
//! `packed-refs`, …) with `<file>.lock`, created with `O_EXCL` and renamed
//! into place when done. A git killed in between — a worker SIGKILLed
//! together with its git children, the OOM killer, a reboot — leaves the
//! `.lock` behind, and every later git that needs the same file fails with
//! "File exists", for ever: git never removes a lock it did not take. A
//! task's job would then fail on every retry until it fails for good.
//!
//! A lock file is stale exactly when no process can still be about to
//! rename it. orch proves that before removing one, from two facts:
//! - no git can *start* on the repository: the caller holds the repository's
//!   [`crate::liveness::RepoLock`], which every git command orch itself runs
//!   on the repository's clone or worktrees holds (fetch, worktree add and
//!   remove, commit and push, the merge gate's rebase and push, the forge's
//!   merge and branch deletion), and agents run git only inside their own
//!   task's worktree while their job is claimed;
//! - no git is *still running* there: no process but this one has its
//!   working directory inside the directories the locks belong to
//!   ([`occupants`]). git runs with its working directory in the worktree or
//!   clone it works on (orch starts it there, `git -C` changes into it), so a
//!   git orphaned by its killed parent, or an agent that outlived its worker,
//!   is seen. Such a process usually ends within moments; it is waited for a
//!   bounded time, and if it is still there its locks are left alone.
//!
//! The limit: a process that works on the repository from outside it (a
//! shell elsewhere with `GIT_DIR` set) is not seen. orch never does that.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for a process still inside the repository (typically a
/// git orphaned by its killed worker finishing a push) to leave.
pub const OCCUPANT_WAIT: Duration = Duration::from_secs(10);

/// The lock files git may have left in `git_dir`: `*.lock` directly in it
/// (`index.lock`, `HEAD.lock`, `packed-refs.lock`, …) and anywhere under its
/// `refs/` (ref locks). Other worktrees' private directories
/// (`worktrees/<name>/`) and the object store are not looked into.
pub fn find(git_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    collect(git_dir, false, &mut found);
    collect(&git_dir.join("refs"), true, &mut found);
    found
}

fn collect(dir: &Path, recurse: bool, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() && recurse {
            collect(&path, true, found);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
            found.push(path);
        }
    }
}

/// The pids, other than this process, whose working directory is one of
/// `dirs` or inside one. Processes whose directory cannot be read (another
/// user's, or gone) are not counted: they cannot be working on our files.
pub fn occupants(dirs: &[PathBuf]) -> Vec<i32> {
    let me = std::process::id();
    let dirs: Vec<PathBuf> = dirs
        .iter()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| dirs.iter().any(|d| cwd.starts_with(d)))
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Remove the stale `locks`, once no process is inside `dirs` (waiting up to
/// `wait` for those that are). Returns the locks removed; if a process stays
/// inside, none is removed and a warning names it. The caller must hold the
/// repository's lock, so no git of orch's can start meanwhile.
pub fn clear(locks: &[PathBuf], dirs: &[PathBuf], wait: Duration) -> Vec<PathBuf> {
    if locks.is_empty() {
        return Vec::new();
    }
    let deadline = Instant::now() + wait;
    let mut inside = occupants(dirs);
    while !inside.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        inside = occupants(dirs);
    }
    if !inside.is_empty() {
        log::warn!(
            "git lock files {} are left in place: processes {inside:?} still work in {}",
            show(locks),
            show(dirs)
        );
        return Vec::new();
    }
    let removed: Vec<PathBuf> = locks
        .iter()
        .filter(|l| match std::fs::remove_file(l) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                log::warn!("removing the stale git lock {}: {e}", l.display());
                false
            }
        })
        .cloned()
        .collect();
    if !removed.is_empty() {
        log::warn!(
            "removed stale git lock files left by a killed git: {}",
            show(&removed)
        );
    }
    removed
}

fn show(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_and_ref_locks_but_not_other_worktrees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = dir.path();
        for f in [
            "index.lock",
            "HEAD.lock",
            "refs/heads/feature/x.lock",
            "refs/remotes/origin/main.lock",
            "worktrees/other/index.lock",
            "objects/ab/cd",
            "config",
        ] {
            let p = g.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, "").expect("write");
        }
        let mut found: Vec<String> = find(g)
            .iter()
            .map(|p| p.strip_prefix(g).expect("inside").display().to_string())
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                "HEAD.lock",
                "index.lock",
                "refs/heads/feature/x.lock",
                "refs/remotes/origin/main.lock"
            ]
        );
    }

    #[test]
    fn a_process_inside_keeps_the_locks_one_outside_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = dir.path().join("index.lock");
        std::fs::write(&lock, "").expect("write");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .expect("spawn");
        let dirs = [dir.path().to_path_buf()];
        let locks = std::slice::from_ref(&lock);
        assert!(clear(locks, &dirs, Duration::ZERO).is_empty());
        assert!(lock.exists(), "a lock was removed under a live process");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(clear(locks, &dirs, Duration::ZERO), locks);
        assert!(!lock.exists());
    }
}
