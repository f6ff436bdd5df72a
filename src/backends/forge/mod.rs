//! The forge: where branches live and merge. Merging is idempotent: "already
//! merged?" is always checked first, and a merge is pinned to the tested
//! commit, so a re-drive after a crash never merges twice or merges something
//! untested.

pub mod gitea;
pub mod local;

use crate::names;

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "merge")]
pub enum Merged {
    /// The tested commit was already in the default branch.
    AlreadyMerged,
    /// The default branch now contains the tested commit.
    Merged {
        /// The new head of the default branch.
        head: String,
    },
}

/// Why a merge was refused.
#[derive(Debug, thiserror::Error)]
pub enum MergeRefused {
    /// The branch no longer points at the tested commit.
    #[error("branch {branch} moved since it was tested ({tested} → {now})")]
    Moved {
        /// The branch.
        branch: String,
        /// The commit that was tested.
        tested: String,
        /// Where the branch points now.
        now: String,
    },
    /// The default branch has commits the feature branch lacks: rebase first.
    #[error("{branch} is behind {base}: it must be rebased and re-tested before it can merge")]
    Behind {
        /// The branch.
        branch: String,
        /// The default branch.
        base: String,
    },
}

/// A forge backend.
pub trait Forge {
    /// Make sure a pull request exists for `branch`; return its reference.
    fn ensure_pr(&self, branch: &str, title: &str) -> anyhow::Result<String>;
    /// Whether `commit` is already in the default branch.
    fn is_merged(&self, commit: &str) -> anyhow::Result<bool>;
    /// Merge `branch`, pinned to `tested` (the commit the gates passed on).
    fn merge(&self, branch: &str, tested: &str) -> anyhow::Result<Merged>;
    /// Delete a remote feature branch; refuses the default branch, `main` and `master`.
    /// Returns false if it was already gone.
    fn delete_branch(&self, branch: &str) -> anyhow::Result<bool>;
}

/// Whether `branch` may never be deleted.
pub fn is_protected_branch(branch: &str, default_branch: &str) -> bool {
    matches!(branch, "main" | "master") || branch == default_branch
}

/// Validate a branch handed to a forge operation.
pub fn check_branch(branch: &str) -> anyhow::Result<()> {
    names::validate_branch(branch)?;
    Ok(())
}

/// The forge of repository `repo` as configured: `forge = "local"` (the
/// repository's `remote` is a git repository) or `"gitea"` (the REST API;
/// branches are still pushed with git to `remote`).
pub fn for_repo(ctx: &crate::context::Ctx, repo: &str) -> anyhow::Result<Box<dyn Forge>> {
    if ctx.config.forge == "gitea" {
        let timeout = std::time::Duration::from_secs(ctx.config.http_timeout_s);
        return Ok(Box::new(gitea::GiteaForge::from_config(
            &ctx.config,
            repo,
            timeout,
        )?));
    }
    let ws = crate::workspace::Workspace::new(&ctx.repos_dir(), repo, ctx.config.repo(repo)?)?;
    Ok(Box::new(local::LocalForge::new(ws)))
}
