//! The remote forge: one repository on Gitea, through its API v1
//! (`<gitea_url>/api/v1/repos/{owner}/{repo}`, header `Authorization: token …`).
//!
//! Every operation is safe to repeat after a crash (docs/architecture.md, decision 4):
//! a pull request is found before it is created, and Gitea's 409 on creation
//! ("an open PR for this head and base exists") means "found"; a merge checks
//! "already merged?" first and is pinned to the tested commit with
//! `head_commit_id`, so Gitea itself refuses to merge anything else; deleting
//! a branch that is already gone is success, and the default branch, `main`
//! and `master` are refused before any request is made.
//!
//! A pull request is found by branch with `GET /pulls/{base}/{head}`: Gitea's
//! list endpoint has no `head` filter (it silently ignores one), so the seeds'
//! `?head=` query must not be copied (pipeline-anchors §4.2). Branch names
//! are validated and sent as one percent-encoded path segment (`/` → `%2F`),
//! which Gitea decodes.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Forge, MergeRefused, Merged, check_branch, is_protected_branch};
use crate::backends::http::{HttpClient, HttpError, Reply, encode_segment, trim_base};
use crate::config::Config;
use crate::names;

/// The name of the secret holding the API token (`ORCH_GITEA_TOKEN`).
pub const TOKEN_SECRET: &str = "gitea_token";

/// Closed pull requests scanned by [`Forge::is_merged`], per page.
const CLOSED_PAGE: u32 = 50;
/// Pages of closed pull requests scanned by [`Forge::is_merged`].
const CLOSED_PAGES: u32 = 4;

/// The combined CI state of a commit (`GET /commits/{sha}/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CiState {
    /// Every check passed.
    Success,
    /// Checks are still running.
    Pending,
    /// A check failed.
    Failure,
    /// A check could not run.
    Error,
    /// A check passed with a warning (Gitea's fifth state); not a success.
    Warning,
}

/// The fields of a Gitea pull request orch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The PR number (Gitea's `index`).
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    /// Whether it was merged.
    pub merged: bool,
    /// The commit the merge created, once merged.
    pub merge_commit_sha: Option<String>,
    /// The commit the head branch pointed at (at merge time, once merged).
    pub head_sha: String,
    /// The head branch.
    pub head_ref: String,
    /// The base branch.
    pub base_ref: String,
}

impl PullRequest {
    fn from_json(v: &Value) -> anyhow::Result<PullRequest> {
        let Some(number) = v.get("number").and_then(Value::as_u64) else {
            bail!("Gitea pull request without a number");
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(PullRequest {
            number,
            state: text(v.get("state")),
            merged: v.get("merged").and_then(Value::as_bool).unwrap_or(false),
            merge_commit_sha: v
                .get("merge_commit_sha")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            head_sha: text(v.pointer("/head/sha")),
            head_ref: text(v.pointer("/head/ref")),
            base_ref: text(v.pointer("/base/ref")),
        })
    }

    /// Whether `commit` is this PR's merge commit or its head commit.
    pub fn has_commit(&self, commit: &str) -> bool {
        self.head_sha == commit || self.merge_commit_sha.as_deref() == Some(commit)
    }
}

/// One Gitea repository as a [`Forge`].
#[derive(Debug)]
pub struct GiteaForge {
    http: HttpClient,
    repo_url: String,
    default_branch: String,
}

impl GiteaForge {
    /// The forge of `<gitea_url>/{owner}/{repo}`, whose PRs merge into `default_branch`.
    pub fn new(
        gitea_url: &str,
        owner: &str,
        repo: &str,
        default_branch: &str,
        token: &str,
        timeout: Duration,
    ) -> anyhow::Result<GiteaForge> {
        let url = trim_base(gitea_url);
        if url.is_empty() {
            bail!("the Gitea URL (gitea_url) is not set");
        }
        names::validate_repo_name(owner).context("gitea_owner")?;
        names::validate_repo_name(repo)?;
        names::validate_branch(default_branch).context("default branch")?;
        if token.trim().is_empty() {
            bail!("the Gitea token is empty");
        }
        let http = HttpClient::new(timeout)
            .with_secret_header("Authorization", &format!("token {}", token.trim()))
            .with_secret(token.trim());
        Ok(GiteaForge {
            http,
            repo_url: format!(
                "{url}/api/v1/repos/{}/{}",
                encode_segment(owner),
                encode_segment(repo)
            ),
            default_branch: default_branch.to_owned(),
        })
    }

    /// The forge of repository `repo` of the config (`gitea_url`,
    /// `gitea_owner`, the repo's `default_branch`, `main` if unset) with the
    /// secret `gitea_token`.
    pub fn from_config(
        config: &Config,
        repo: &str,
        timeout: Duration,
    ) -> anyhow::Result<GiteaForge> {
        let Some(repo_config) = config.repos.get(repo) else {
            bail!("unknown repository {repo:?}");
        };
        let Some(token) = crate::secrets::secret(TOKEN_SECRET) else {
            bail!(
                "no Gitea token: set {} or the systemd credential {}",
                crate::secrets::env_name(TOKEN_SECRET),
                crate::secrets::credential_name(TOKEN_SECRET)
            );
        };
        let default_branch = if repo_config.default_branch.is_empty() {
            "main"
        } else {
            repo_config.default_branch.as_str()
        };
        GiteaForge::new(
            &config.gitea_url,
            &config.gitea_owner,
            repo,
            default_branch,
            &token,
            timeout,
        )
    }

    /// The branch pull requests merge into.
    pub fn default_branch(&self) -> &str {
        &self.default_branch
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.repo_url)
    }

    /// Whether the token can read the repository: `GET /repos/{owner}/{repo}`.
    /// Returns the repository's full name and whether the token may push.
    pub fn check_access(&self) -> anyhow::Result<(String, bool)> {
        let reply = self.http.get(&self.repo_url)?.success()?;
        let name = reply
            .json
            .get("full_name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let push = reply
            .json
            .pointer("/permissions/push")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok((name, push))
    }

    /// The pull request of `branch` into the default branch, open or not:
    /// `GET /pulls/{base}/{head}` (200, or 404 = none).
    pub fn find_pr(&self, branch: &str) -> anyhow::Result<Option<PullRequest>> {
        check_branch(branch)?;
        let url = self.url(&format!(
            "/pulls/{}/{}",
            encode_segment(&self.default_branch),
            encode_segment(branch)
        ));
        let reply = self.http.get(&url)?;
        if reply.status == 404 {
            return Ok(None);
        }
        Ok(Some(PullRequest::from_json(&reply.success()?.json)?))
    }

    /// Pull request `number`: `GET /pulls/{n}`.
    pub fn get_pr(&self, number: u64) -> anyhow::Result<PullRequest> {
        let reply = self
            .http
            .get(&self.url(&format!("/pulls/{number}")))?
            .success()?;
        PullRequest::from_json(&reply.json)
    }

    /// Whether pull request `number` is merged: `GET /pulls/{n}/merge`
    /// (204 merged, 404 not merged).
    pub fn pr_merged(&self, number: u64) -> anyhow::Result<bool> {
        let reply = self
            .http
            .get(&self.url(&format!("/pulls/{number}/merge")))?;
        match reply.status {
            204 | 200 => Ok(true),
            404 => Ok(false),
            _ => Err(reply.error().into()),
        }
    }

    /// Whether the pull request of `branch` is merged and `commit` is its
    /// head or merge commit.
    pub fn is_branch_merged(&self, branch: &str, commit: &str) -> anyhow::Result<bool> {
        check_sha(commit)?;
        Ok(self
            .find_pr(branch)?
            .is_some_and(|pr| pr.merged && pr.has_commit(commit)))
    }

    /// The combined CI state of `sha` (`GET /commits/{sha}/status`); `None`
    /// when no status was reported for it.
    pub fn commit_status(&self, sha: &str) -> anyhow::Result<Option<CiState>> {
        check_sha(sha)?;
        let reply = self
            .http
            .get(&self.url(&format!("/commits/{}/status", encode_segment(sha))))?
            .success()?;
        let v = &reply.json;
        let count = v.get("total_count").and_then(Value::as_u64);
        let none_listed = v
            .get("statuses")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        if count == Some(0) || (count.is_none() && none_listed) {
            return Ok(None);
        }
        Ok(
            match v.get("state").and_then(Value::as_str).unwrap_or_default() {
                "" => None,
                "success" => Some(CiState::Success),
                "pending" => Some(CiState::Pending),
                "failure" => Some(CiState::Failure),
                "error" => Some(CiState::Error),
                "warning" => Some(CiState::Warning),
                other => bail!("{}: unknown commit state {other:?}", reply.request()),
            },
        )
    }

    /// The PR after a merge attempt, to tell "already merged" from a refusal.
    fn merge_outcome(
        &self,
        number: u64,
        reply: &Reply,
        tested: &str,
        branch: &str,
    ) -> anyhow::Result<Merged> {
        let message = reply.api_message().to_ascii_lowercase();
        match reply.status {
            405 => {
                if self.get_pr(number)?.merged {
                    return Ok(Merged::AlreadyMerged);
                }
                if message.contains("try again later") {
                    return Err(HttpError::Retryable {
                        status: Some(405),
                        retry_after: None,
                        message: format!(
                            "{}: HTTP 405: Gitea is still checking whether the PR can merge",
                            reply.request()
                        ),
                    }
                    .into());
                }
                Err(reply.error().into())
            }
            409 if message.contains("head out of date") => {
                let now = self.get_pr(number)?.head_sha;
                Err(MergeRefused::Moved {
                    branch: branch.to_owned(),
                    tested: tested.to_owned(),
                    now,
                }
                .into())
            }
            409 => {
                log::info!("Gitea refused to merge {branch}: {}", reply.api_message());
                Err(MergeRefused::Behind {
                    branch: branch.to_owned(),
                    base: self.default_branch.clone(),
                }
                .into())
            }
            _ => Err(reply.error().into()),
        }
    }
}

impl Forge for GiteaForge {
    /// Find the PR of `branch`, else create it; a 409 from creation means it
    /// exists, so it is found again. A PR found in any state (also merged or
    /// closed) is returned as is. Returns the PR number.
    fn ensure_pr(&self, branch: &str, title: &str) -> anyhow::Result<String> {
        check_branch(branch)?;
        if branch == self.default_branch {
            bail!("refusing to open a pull request from the default branch {branch}");
        }
        if let Some(pr) = self.find_pr(branch)? {
            return Ok(pr.number.to_string());
        }
        let title = if title.trim().is_empty() {
            branch
        } else {
            title
        };
        let body = json!({
            "head": branch,
            "base": self.default_branch,
            "title": title,
            "body": format!("Opened by orch for branch `{branch}`."),
        });
        let reply = self.http.post_json(&self.url("/pulls"), &body)?;
        match reply.status {
            409 => match self.find_pr(branch)? {
                Some(pr) => Ok(pr.number.to_string()),
                None => Err(anyhow::Error::new(reply.error()).context(format!(
                    "Gitea says a PR for {branch} exists but it cannot be found"
                ))),
            },
            _ => Ok(PullRequest::from_json(&reply.success()?.json)?
                .number
                .to_string()),
        }
    }

    /// Whether `commit` is the head or merge commit of a merged pull request
    /// among the repository's most recently updated closed PRs (up to 200).
    /// The trait gives no branch; when the branch is known,
    /// [`GiteaForge::is_branch_merged`] asks about exactly its PR.
    fn is_merged(&self, commit: &str) -> anyhow::Result<bool> {
        check_sha(commit)?;
        for page in 1..=CLOSED_PAGES {
            let url = self.url(&format!(
                "/pulls?state=closed&sort=recentupdate&limit={CLOSED_PAGE}&page={page}"
            ));
            let reply = self.http.get(&url)?.success()?;
            let Some(list) = reply.json.as_array() else {
                bail!("{}: expected a JSON list", reply.request());
            };
            for v in list {
                let pr = PullRequest::from_json(v)?;
                if pr.merged && pr.has_commit(commit) {
                    return Ok(true);
                }
            }
            if list.len() < CLOSED_PAGE as usize {
                break;
            }
        }
        Ok(false)
    }

    /// Merge the PR of `branch`, pinned to `tested`. "Already merged?" is
    /// checked first (no merge request then); a PR whose head is no longer
    /// `tested` is refused as moved without asking Gitea to merge.
    fn merge(&self, branch: &str, tested: &str) -> anyhow::Result<Merged> {
        check_branch(branch)?;
        check_sha(tested)?;
        let Some(pr) = self.find_pr(branch)? else {
            bail!("no pull request for branch {branch}");
        };
        if pr.merged {
            return Ok(Merged::AlreadyMerged);
        }
        if pr.state == "closed" {
            bail!(
                "pull request #{} of {branch} was closed without merging",
                pr.number
            );
        }
        if !pr.head_sha.is_empty() && pr.head_sha != tested {
            return Err(MergeRefused::Moved {
                branch: branch.to_owned(),
                tested: tested.to_owned(),
                now: pr.head_sha,
            }
            .into());
        }
        let body = json!({ "Do": "merge", "head_commit_id": tested });
        let url = self.url(&format!("/pulls/{}/merge", pr.number));
        let reply = self.http.post_json(&url, &body)?;
        if reply.is_success() {
            let head = match self.get_pr(pr.number) {
                Ok(after) => after.merge_commit_sha.unwrap_or_else(|| tested.to_owned()),
                Err(e) => {
                    log::warn!("merged {branch}, but cannot read the merge commit: {e:#}");
                    tested.to_owned()
                }
            };
            return Ok(Merged::Merged { head });
        }
        self.merge_outcome(pr.number, &reply, tested, branch)
    }

    /// Delete `branch` on Gitea: `DELETE /branches/{branch}`; 204 → true,
    /// 404 → false (already gone). The default branch, `main` and `master`
    /// are refused before any request.
    fn delete_branch(&self, branch: &str) -> anyhow::Result<bool> {
        check_branch(branch)?;
        if is_protected_branch(branch, &self.default_branch) {
            bail!("refusing to delete protected branch {branch}");
        }
        let reply = self
            .http
            .delete(&self.url(&format!("/branches/{}", encode_segment(branch))))?;
        if reply.status == 404 {
            return Ok(false);
        }
        reply.success()?;
        Ok(true)
    }
}

/// A commit id: 4 to 64 hexadecimal digits.
fn check_sha(sha: &str) -> anyhow::Result<()> {
    if !(4..=64).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("invalid commit id {sha:?}");
    }
    Ok(())
}
