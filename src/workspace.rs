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
use crate::git_config_guard;
use crate::git_locks;
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

    /// Serialise git operations on this repository's clone and worktrees.
    ///
    /// Every git command orch runs on the repository holds it: [`Workspace::sync`]
    /// and [`Workspace::prepare`] (fetch, worktree add), [`Workspace::remove`],
    /// [`Workspace::commit_and_push`], the merge gate's fetch, rebase and push,
    /// and the local forge's merge and branch deletion. Agents are the only
    /// other git users, each inside its own task's worktree. Not re-entrant:
    /// taking it twice in one process waits for ever.
    ///
    /// Taking it also strips the clone of the git settings and hooks an agent
    /// may have planted for orch's git to run ([`git_config_guard::sanitize`]),
    /// so every git sequence orch runs starts from a clean config.
    pub fn lock(&self) -> anyhow::Result<RepoLock> {
        let lock = RepoLock::acquire(&self.root.join(".lock"))?;
        git_config_guard::sanitize(&self.clone_dir()).with_context(|| {
            format!(
                "securing the git directory of {}",
                self.clone_dir().display()
            )
        })?;
        Ok(lock)
    }

    /// Refuse to run git in the worktree at `path` unless its `.git` file
    /// still leads into this clone: an agent can point it at a git directory
    /// of its own, whose config the sanitiser never sees.
    pub fn verify_worktree(&self, path: &Path) -> anyhow::Result<()> {
        if self.worktree_git_dir(path).is_none() {
            anyhow::bail!(
                "{}/.git does not point into orch's clone {} (it was changed, possibly by an agent): refusing to run git there",
                path.display(),
                self.clone_dir().display()
            );
        }
        Ok(())
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

    /// Make sure the worktree of `work_item_id` exists on `branch`, is
    /// consistent, and agrees with the remote branch if one exists; return
    /// its path. Called by whoever takes the worktree over: the holder of the
    /// task's job's claim.
    ///
    /// A new branch starts from the remote default branch. A worktree whose
    /// `git worktree add` was killed is made anew ([`Workspace::drop_interrupted_add`]).
    /// An existing worktree is first cleared of what a killed git left (stale
    /// lock files, a rebase in progress), then reconciled with the remote
    /// branch by [`reconcile`].
    pub fn prepare(&self, work_item_id: &str, branch: &str) -> anyhow::Result<PathBuf> {
        names::validate_branch(branch)?;
        let path = self.worktree_dir(work_item_id)?;
        let _lock = self.lock()?;
        self.drop_interrupted_add(&path)?;
        self.clear_stale_locks(&path);
        let clone = self.sync()?;
        let remote_branch = format!("origin/{branch}");
        if path.join(".git").exists() {
            self.verify_worktree(&path)?;
            let wt = Git::at(&path);
            self.abort_interrupted_rebase(&path, &wt, branch)?;
            if let Some(remote) = clone.rev(&remote_branch)? {
                reconcile(&wt, &remote_branch, &remote)?;
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

    /// Remove what a `git worktree add` killed before it finished left: its
    /// worktree at `path` and its private git directory. git writes
    /// `<clone>/.git/worktrees/<name>/locked` ("initializing") first, then
    /// the `.git` file, `HEAD` and `commondir`, checks the files out, and
    /// removes `locked` last; killed in between, it leaves a worktree that
    /// git refuses ("not a git repository") or one with files missing, whose
    /// next commit deletes them from the branch. orch locks no worktree, and
    /// every add runs under [`Workspace::lock`] (held here), so a `locked`
    /// file marks an add that died. No agent has run in such a worktree: the
    /// add was its claim's first step. Private directories of interrupted
    /// adds whose worktree never got its `.git` file go too (nothing can
    /// use them, and `git worktree prune` keeps locked ones).
    fn drop_interrupted_add(&self, path: &Path) -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(self.clone_dir().join(".git/worktrees")) else {
            return Ok(());
        };
        let own = self.worktree_git_dir(path);
        let mut ours = false;
        for admin in entries.filter_map(Result::ok).map(|e| e.path()) {
            if !admin.join("locked").exists() {
                continue;
            }
            let is_own = own
                .as_deref()
                .is_some_and(|own| std::fs::canonicalize(&admin).is_ok_and(|a| a == own));
            let dot_git = std::fs::read_to_string(admin.join("gitdir")).ok();
            let orphan = dot_git.is_none_or(|g| !Path::new(g.trim()).exists());
            if !is_own && !orphan {
                continue;
            }
            log::warn!(
                "{}: removing what an interrupted `git worktree add` left",
                admin.display()
            );
            std::fs::remove_dir_all(&admin)
                .with_context(|| format!("removing {}", admin.display()))?;
            ours |= is_own;
        }
        if ours {
            std::fs::remove_dir_all(path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    /// Remove the git lock files a killed git left in the worktree at `path`
    /// and in the clone, so the git commands that follow do not fail with
    /// "File exists" (see [`crate::git_locks`] for why a removed lock is
    /// proven stale). Call with [`Workspace::lock`] held, by the one process
    /// that owns the task's worktree: the holder of its job's claim.
    ///
    /// The worktree's own locks (`<clone>/.git/worktrees/<name>/`) are
    /// removed once nothing runs inside that worktree; the clone's (its index,
    /// `HEAD`, `packed-refs`, every ref) once nothing runs anywhere in the
    /// repository, since any worktree's git may take a shared ref's lock.
    /// Best effort: a lock that cannot be proven stale is left, and the git
    /// command that needs it fails as it would have.
    fn clear_stale_locks(&self, path: &Path) {
        if let Some(own) = self.worktree_git_dir(path) {
            let locks = git_locks::find(&own);
            git_locks::clear(&locks, &[path.to_path_buf(), own], git_locks::OCCUPANT_WAIT);
        }
        let shared = self.clone_dir().join(".git");
        let locks = git_locks::find(&shared);
        git_locks::clear(
            &locks,
            std::slice::from_ref(&self.root),
            git_locks::OCCUPANT_WAIT,
        );
    }

    /// The private git directory of the worktree at `path`
    /// (`<clone>/.git/worktrees/<name>`), read from its `.git` file — only if
    /// it really is inside the clone, since an agent can rewrite that file.
    fn worktree_git_dir(&self, path: &Path) -> Option<PathBuf> {
        let text = std::fs::read_to_string(path.join(".git")).ok()?;
        let named = path.join(text.trim().strip_prefix("gitdir:")?.trim());
        let dir = std::fs::canonicalize(named).ok()?;
        let worktrees = std::fs::canonicalize(self.clone_dir().join(".git/worktrees")).ok()?;
        (dir.starts_with(&worktrees) && dir != worktrees).then_some(dir)
    }

    /// Abort a rebase a killed process left in progress in the worktree at
    /// `path` (the merge gate's, or an agent's): it leaves HEAD detached
    /// mid-way and makes every later rebase refuse to start. Aborting puts
    /// `branch` back where it was before the rebase; a rebase starts only from
    /// a committed tree, so there is no work of a run to lose.
    ///
    /// A kill in the middle of one of the rebase's checkouts can leave files
    /// on disk that the index does not know, and `git rebase --abort` refuses
    /// to overwrite them ("untracked working tree files would be overwritten
    /// by reset"). Then the rebase is dropped (`--quit`), the branch checked
    /// out by force and the untracked leftovers cleaned (ignored files stay).
    fn abort_interrupted_rebase(&self, path: &Path, wt: &Git, branch: &str) -> anyhow::Result<()> {
        let Some(own) = self.worktree_git_dir(path) else {
            return Ok(());
        };
        if !own.join("rebase-merge").exists() && !own.join("rebase-apply").exists() {
            return Ok(());
        }
        log::warn!("{}: aborting a rebase left in progress", path.display());
        let aborted = wt.output(["rebase", "--abort"])?;
        if aborted.status.success() {
            return Ok(());
        }
        log::warn!(
            "{}: git rebase --abort failed ({}); checking out {branch} by force",
            path.display(),
            String::from_utf8_lossy(&aborted.stderr).trim()
        );
        wt.run(["rebase", "--quit"])
            .and_then(|_| wt.run(["checkout", "--force", "--quiet", branch, "--"]))
            .and_then(|_| wt.run(["clean", "-d", "--force", "--quiet"]))
            .with_context(|| format!("dropping the rebase left in {}", path.display()))?;
        Ok(())
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
        let _lock = self.lock()?;
        self.verify_worktree(worktree)?;
        let wt = Git::at(worktree);
        wt.run(["add", "--all"])?;
        crate::crash::point("push.staged");
        let dirty = !wt.check([
            "diff",
            "--cached",
            "--quiet",
            "--no-ext-diff",
            "--no-textconv",
        ])?;
        if dirty {
            wt.run(["commit", "--quiet", "--no-verify", "-m", message])?;
        }
        crate::crash::point("push.committed");
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

/// Reconcile the worktree's branch with the remote branch `remote_branch`
/// (at commit `remote`). The remote branch is the truth for everything that
/// was pushed: every run's result is pushed before it is decided on, so a
/// commit that is only local was never the basis of a decision.
///
/// - behind (HEAD is an ancestor of the remote): fast-forward, bringing in
///   commits pushed from elsewhere (the merge gate's rebase, a human);
/// - ahead (the remote is an ancestor of HEAD): kept — the commits of a
///   successful run whose worker died between commit and push; its finalizer
///   (or the reaper adopting it) pushes them;
/// - diverged (neither): the branch is reset to the remote. This is a rebase
///   by the merge gate that was never pushed (killed between rebase and push,
///   or the push was rejected); the gate rebases again. Without this every
///   later push is rejected as non-fast-forward until the job fails for good.
///
/// Uncommitted changes are never discarded: they are the result of an agent
/// that exited 0 and whose worker died before committing, which the reaper's
/// adoption commits and pushes. The reset keeps them (`--keep`); only if they
/// touch the very files the dropped commits changed are they moved to a
/// stash, for a human, with a warning. The dropped commits stay reachable
/// through the reflog.
fn reconcile(wt: &Git, remote_branch: &str, remote: &str) -> anyhow::Result<()> {
    let head = wt.rev("HEAD")?;
    if head.as_deref() == Some(remote) {
        return Ok(());
    }
    if wt.check(["merge-base", "--is-ancestor", "HEAD", remote_branch])? {
        wt.run(["merge", "--ff-only", "--quiet", remote_branch])?;
        return Ok(());
    }
    if wt.check(["merge-base", "--is-ancestor", remote_branch, "HEAD"])? {
        return Ok(());
    }
    let head = head.unwrap_or_default();
    log::warn!(
        "{}: the local branch (at {head}) diverged from {remote_branch} (at {remote}): \
         resetting it to {remote_branch}, the last pushed state",
        wt.dir().display()
    );
    if wt.check(["reset", "--quiet", "--keep", remote_branch])? {
        return Ok(());
    }
    wt.run([
        "stash",
        "push",
        "--quiet",
        "--include-untracked",
        "-m",
        &format!("orch: uncommitted changes on {head}, set aside to reset to {remote_branch}"),
    ])?;
    log::warn!(
        "{}: uncommitted changes conflicted with the reset; they are in `git stash list`",
        wt.dir().display()
    );
    wt.run(["reset", "--quiet", "--hard", remote_branch])?;
    Ok(())
}
