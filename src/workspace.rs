//! Where agents work: one clone cache per repository and one git worktree per
//! task, on the task's feature branch.
//!
//! Layout under `repos_dir`: `<repo>/clone` (a clone of the remote, never
//! checked out by hand), `<repo>/worktrees/<work-item>` (one per task) and
//! `<repo>/.lock` (serialises git operations on the clone across processes).
//! Every name is validated before it reaches a path or git.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::RepoConfig;
use crate::git::Git;
use crate::liveness::RepoLock;
use crate::names;

/// The clone cache and worktrees of one repository.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    remote: String,
    default_branch: String,
}

impl Workspace {
    /// The workspace of repository `name` under `repos_dir`.
    pub fn new(repos_dir: &Path, name: &str, repo: &RepoConfig) -> anyhow::Result<Workspace> {
        names::validate_repo_name(name)?;
        let default_branch = if repo.default_branch.is_empty() {
            "main".to_owned()
        } else {
            repo.default_branch.clone()
        };
        names::validate_branch(&default_branch)?;
        Ok(Workspace {
            root: repos_dir.join(name),
            remote: repo.remote.clone(),
            default_branch,
        })
    }

    /// The branch features merge into.
    pub fn default_branch(&self) -> &str {
        &self.default_branch
    }

    /// The clone cache.
    pub fn clone_dir(&self) -> PathBuf {
        self.root.join("clone")
    }

    /// The worktree of a work item.
    pub fn worktree_dir(&self, work_item_id: &str) -> anyhow::Result<PathBuf> {
        names::validate_work_item_id(work_item_id)?;
        Ok(self.root.join("worktrees").join(work_item_id))
    }

    /// Serialise git operations on this repository's clone.
    pub fn lock(&self) -> anyhow::Result<RepoLock> {
        RepoLock::acquire(&self.root.join(".lock"))
    }

    /// Clone the remote if needed and fetch. Call with [`Workspace::lock`] held.
    pub fn sync(&self) -> anyhow::Result<Git> {
        let clone = self.clone_dir();
        if !clone.join(".git").exists() {
            std::fs::create_dir_all(&self.root)
                .with_context(|| format!("creating {}", self.root.display()))?;
            let tmp = self.root.join("clone.tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            Git::at(&self.root)
                .run([
                    std::ffi::OsStr::new("clone"),
                    std::ffi::OsStr::new("--quiet"),
                    std::ffi::OsStr::new("--"),
                    std::ffi::OsStr::new(&self.remote),
                    tmp.as_os_str(),
                ])
                .with_context(|| format!("cloning {}", self.remote))?;
            // Rename last, so a crash mid-clone never leaves a half clone in place.
            std::fs::rename(&tmp, &clone)
                .with_context(|| format!("moving clone into {}", clone.display()))?;
        }
        let git = Git::at(&clone);
        git.run(["fetch", "--quiet", "--prune", "origin"])
            .with_context(|| format!("fetching {}", self.remote))?;
        Ok(git)
    }

    /// Make sure the worktree of `work_item_id` exists on `branch` and is up
    /// to date with the remote branch if one exists; return its path.
    ///
    /// A new branch starts from the remote default branch. An existing
    /// worktree keeps its local commits (they are pushed after every run).
    pub fn prepare(&self, work_item_id: &str, branch: &str) -> anyhow::Result<PathBuf> {
        names::validate_branch(branch)?;
        let path = self.worktree_dir(work_item_id)?;
        let _lock = self.lock()?;
        let clone = self.sync()?;
        let remote_branch = format!("origin/{branch}");
        if path.join(".git").exists() {
            let wt = Git::at(&path);
            // Bring in commits pushed from elsewhere (e.g. a rebase by the merge gate).
            if clone.rev(&remote_branch)?.is_some() {
                let head = wt.rev("HEAD")?;
                let remote = clone.rev(&remote_branch)?;
                if head != remote
                    && wt.check(["merge-base", "--is-ancestor", "HEAD", &remote_branch])?
                {
                    wt.run(["merge", "--ff-only", "--quiet", &remote_branch])?;
                }
            }
            return Ok(path);
        }
        // A directory left by a crash mid-add is not a worktree: clear it.
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        clone.run(["worktree", "prune"])?;
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        let start = if clone.rev(&remote_branch)?.is_some() {
            remote_branch
        } else {
            format!("origin/{}", self.default_branch)
        };
        let path_str = path.to_string_lossy().into_owned();
        clone
            .run([
                "worktree", "add", "--quiet", "-B", branch, "--", &path_str, &start,
            ])
            .with_context(|| format!("creating worktree {}", path.display()))?;
        Ok(path)
    }

    /// Commit everything in the worktree (if anything changed) and push the
    /// branch. Returns the pushed commit. Idempotent: pushing the same commit
    /// again is a no-op.
    pub fn commit_and_push(
        &self,
        worktree: &Path,
        branch: &str,
        message: &str,
    ) -> anyhow::Result<String> {
        names::validate_branch(branch)?;
        let wt = Git::at(worktree);
        wt.run(["add", "--all"])?;
        let dirty = !wt.check(["diff", "--cached", "--quiet"])?;
        if dirty {
            wt.run(["commit", "--quiet", "--no-verify", "-m", message])?;
        }
        let refspec = format!("HEAD:refs/heads/{branch}");
        wt.run(["push", "--quiet", "origin", &refspec])
            .with_context(|| format!("pushing {branch}"))?;
        wt.rev("HEAD")?
            .ok_or_else(|| anyhow::anyhow!("worktree {} has no HEAD", worktree.display()))
    }

    /// Remove the worktree of `work_item_id` (if any).
    pub fn remove(&self, work_item_id: &str) -> anyhow::Result<()> {
        let path = self.worktree_dir(work_item_id)?;
        let _lock = self.lock()?;
        if self.clone_dir().join(".git").exists() {
            let clone = Git::at(self.clone_dir());
            let path_str = path.to_string_lossy().into_owned();
            let _ = clone.output(["worktree", "remove", "--force", "--", &path_str]);
            let _ = clone.output(["worktree", "prune"]);
        }
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}
