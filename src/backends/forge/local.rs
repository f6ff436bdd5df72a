//! The embedded forge: a bare git repository. A pull request is the feature
//! branch itself; merging fast-forwards the default branch with git.

use anyhow::bail;

use super::{Forge, MergeRefused, Merged, check_branch, is_protected_branch};
use crate::workspace::Workspace;

/// A forge that is a plain (usually bare) git repository.
#[derive(Debug, Clone)]
pub struct LocalForge {
    workspace: Workspace,
}

impl LocalForge {
    /// The forge of one repository.
    pub fn new(workspace: Workspace) -> LocalForge {
        LocalForge { workspace }
    }
}

impl Forge for LocalForge {
    fn ensure_pr(&self, branch: &str, _title: &str) -> anyhow::Result<String> {
        check_branch(branch)?;
        let _lock = self.workspace.lock()?;
        let git = self.workspace.sync()?;
        if git.rev(&format!("origin/{branch}"))?.is_none() {
            bail!("branch {branch} was not pushed to the forge");
        }
        Ok(branch.to_owned())
    }

    fn is_merged(&self, commit: &str) -> anyhow::Result<bool> {
        let _lock = self.workspace.lock()?;
        let git = self.workspace.sync()?;
        let base = format!("origin/{}", self.workspace.default_branch());
        Ok(git.rev(commit)?.is_some()
            && git.check(["merge-base", "--is-ancestor", commit, &base])?)
    }

    fn merge(&self, branch: &str, tested: &str) -> anyhow::Result<Merged> {
        check_branch(branch)?;
        let _lock = self.workspace.lock()?;
        let git = self.workspace.sync()?;
        let base_name = self.workspace.default_branch().to_owned();
        let base = format!("origin/{base_name}");
        if git.rev(tested)?.is_some()
            && git.check(["merge-base", "--is-ancestor", tested, &base])?
        {
            return Ok(Merged::AlreadyMerged);
        }
        let now = git.rev(&format!("origin/{branch}"))?.unwrap_or_default();
        if now != tested {
            return Err(MergeRefused::Moved {
                branch: branch.to_owned(),
                tested: tested.to_owned(),
                now,
            }
            .into());
        }
        if !git.check(["merge-base", "--is-ancestor", &base, tested])? {
            return Err(MergeRefused::Behind {
                branch: branch.to_owned(),
                base: base_name,
            }
            .into());
        }
        // A fast-forward push: git itself refuses it if the base moved meanwhile.
        let refspec = format!("{tested}:refs/heads/{base_name}");
        git.run(["push", "--quiet", "origin", &refspec])?;
        Ok(Merged::Merged {
            head: tested.to_owned(),
        })
    }

    fn delete_branch(&self, branch: &str) -> anyhow::Result<bool> {
        check_branch(branch)?;
        if is_protected_branch(branch, self.workspace.default_branch()) {
            bail!("refusing to delete protected branch {branch}");
        }
        let _lock = self.workspace.lock()?;
        let git = self.workspace.sync()?;
        if git.rev(&format!("origin/{branch}"))?.is_none() {
            return Ok(false);
        }
        let refspec = format!(":refs/heads/{branch}");
        git.run(["push", "--quiet", "origin", &refspec])?;
        Ok(true)
    }
}
