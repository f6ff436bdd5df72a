//! The merge gate, `check_branch_mergeable` on the deploy-staging → deploy
//! edge: take the repository's merge lease, and if the branch is behind
//! `main`, rebase it, push it (with lease), and re-test it with the
//! repository's test command in a process group bounded by
//! `merge_retest_timeout_s`. A branch already up to date is not re-tested, so
//! a re-drive after a crash is cheap.
//!
//! Failures are classified (seed ORCH-110): an infrastructure `timeout` of the
//! re-test retries in place (no rollback, no developer retry, one alert when
//! the bound is spent); a `red` re-test or a rebase `conflict` releases the
//! lease and rolls the task back to development; `lock-busy` (another task
//! merges) waits without spending an attempt; anything else retries.
//!
//! Off (`merge_gate_enabled = false`) or for a repository outside
//! `merge_gate_repos`, the gate passes and touches nothing: the switch must
//! restore the behaviour without it, not a half of it.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::context::Ctx;
use crate::crash;
use crate::gates::{Gate, GateResult};
use crate::git::Git;
use crate::pipeline::evaluate::Decision;
use crate::pipeline::lease::{self, Acquired, Holder};
use crate::pipeline::task::Task;
use crate::runner;
use crate::storage::Executor;
use crate::storage::{counters, now};
use crate::workspace::Workspace;

/// How a merge-gate failure is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetestFailure {
    /// The re-test ran out of time: an infrastructure problem, not a code fault.
    Timeout,
    /// The re-test failed, or the rebase conflicted: a code fault.
    Red,
    /// Another task holds the merge lease.
    LockBusy,
    /// Anything else (push rejected, git error).
    Other,
}

/// Classify a finished re-test run.
pub fn classify_retest(outcome: &runner::Outcome) -> Option<RetestFailure> {
    match (outcome.timed_out, outcome.exit_code) {
        (Some(_), _) => Some(RetestFailure::Timeout),
        (None, Some(0)) => None,
        (None, _) => Some(RetestFailure::Red),
    }
}

fn bump(conn: &dyn Executor, name: &str) {
    if let Err(e) = counters::bump(conn, name, 1, None, now()) {
        log::warn!("counting {name}: {e}");
    }
}

/// A gate result, and on failure the decision its class calls for.
type Checked = (GateResult, Option<Decision>);

/// Evaluate `check_branch_mergeable`. On failure the second value is the
/// decision its class calls for.
///
/// In order: the merge lease of the repository (or a wait while another task
/// holds it), the branch caught up with main (rebased and pushed with a
/// lease, or found already tested on it), then the repository's tests run
/// again on what will be merged.
pub fn check(
    ctx: &Ctx,
    conn: &dyn Executor,
    task: &Task,
    worktree: &Path,
    job_id: Option<i64>,
) -> anyhow::Result<Checked> {
    let gate = Gate::BranchMergeable;
    // Off (`merge_gate_enabled = false`) or out of scope (`merge_gate_repos`):
    // no lease, no rebase, no push, no re-test. The forge's merge still
    // refuses a branch that is behind (back to development) or that moved.
    if !ctx.config.merge_gate_applies(&task.repo) {
        let why = if ctx.config.merge_gate_enabled {
            format!("{} is not in merge_gate_repos", task.repo)
        } else {
            "merge_gate_enabled = false".to_owned()
        };
        return Ok((
            GateResult::pass(
                gate,
                format!("merge gate off ({why}): no rebase, no re-test"),
            ),
            None,
        ));
    }
    let branch = task.branch.clone().unwrap_or_default();
    if let Some(busy) = take_lease(ctx, conn, task, &branch, job_id)? {
        return Ok(busy);
    }
    crash::point("merge.leased");
    let current = match catch_up(ctx, conn, task, worktree, &branch)? {
        CaughtUp::Ready { current } => current,
        CaughtUp::Done(checked) => return Ok(checked),
    };
    retest(ctx, conn, task, worktree, &branch, current)
}

/// Take the repository's merge lease for `task`; `Some` (wait, lock-busy)
/// while another task holds it.
fn take_lease(
    ctx: &Ctx,
    conn: &dyn Executor,
    task: &Task,
    branch: &str,
    job_id: Option<i64>,
) -> anyhow::Result<Option<Checked>> {
    let holder = Holder {
        task_id: task.id,
        branch,
        work_item_id: &task.work_item_id,
        job_id,
    };
    let mut acquired = lease::acquire(conn, &task.repo, holder, now())?;
    // With the proactive reclaim off, an expired lease is taken over here.
    if let Acquired::Busy(other) = &acquired
        && !ctx.config.lease_reclaim_enabled
        && lease::reclaim_expired_on_acquire(conn, &ctx.config, &ctx.locks()?, other, now())?
            .is_some()
    {
        acquired = lease::acquire(conn, &task.repo, holder, now())?;
    }
    let Acquired::Busy(other) = acquired else {
        return Ok(None);
    };
    bump(conn, "merge_gate_lock_busy_total");
    let reason = format!(
        "merge lease of {} held by task {} ({}): waiting (lock-busy)",
        task.repo,
        other.task_id.unwrap_or(0),
        other.branch
    );
    Ok(Some((
        GateResult::fail(Gate::BranchMergeable, reason.clone()),
        Some(Decision::RetryLater {
            reason,
            budget: ctx.config.max_transient_attempts,
        }),
    )))
}

/// Give the merge lease back: the task goes back to development.
fn release(conn: &dyn Executor, task: &Task, branch: &str) {
    if let Err(e) = lease::release(conn, &task.repo, branch) {
        log::warn!("releasing the merge lease of {}: {e}", task.repo);
    }
}

/// Where [`catch_up`] left the branch.
enum CaughtUp {
    /// Ready for the re-test; `current`: it was up to date already.
    Ready { current: bool },
    /// The gate is decided: already tested on main, a conflict, a failed push.
    Done(Checked),
}

/// Bring `branch` up to date with main: rebase it and push it with a lease
/// on what the remote had, unless it contains main already. Holds the
/// repository lock (every git orch runs on the repository does) until the
/// rebased branch is pushed, not during the re-test.
fn catch_up(
    ctx: &Ctx,
    conn: &dyn Executor,
    task: &Task,
    worktree: &Path,
    branch: &str,
) -> anyhow::Result<CaughtUp> {
    let gate = Gate::BranchMergeable;
    let ws = Workspace::new(&ctx.repos_dir(), &task.repo, ctx.config.repo(&task.repo)?)?;
    let base = ws.default_branch().to_owned();
    let wt = Git::at(worktree);
    let _repo_lock = ws.lock()?;
    ws.verify_worktree(worktree)?;
    wt.run(["fetch", "--quiet", "origin"])?;
    let origin_base = format!("origin/{base}");
    let current = wt.check(["merge-base", "--is-ancestor", &origin_base, "HEAD"])?;
    // The re-test is skipped only when it is proven redundant: the branch is
    // up to date AND the commit whose tests last passed already contained
    // main. A rebase whose re-test never finished (crash, timeout) is re-tested.
    let tested = conn.task_tested_sha(task.id)?;
    let tested_on_main = match &tested {
        Some(sha) => {
            wt.rev(sha)?.is_some()
                && wt.check(["merge-base", "--is-ancestor", &origin_base, sha])?
        }
        None => false,
    };
    if current && tested_on_main && ctx.config.merge_retest_skip_when_current_enabled {
        return Ok(CaughtUp::Done((
            GateResult::pass(gate, format!("branch up-to-date with {base}")),
            None,
        )));
    }
    if current {
        return Ok(CaughtUp::Ready { current });
    }
    let remote_branch = format!("origin/{branch}");
    let expected = wt.rev(&remote_branch)?.unwrap_or_default();
    let rebased = wt.output(["rebase", "--quiet", &origin_base])?;
    if !rebased.status.success() {
        let _ = wt.output(["rebase", "--abort"]);
        release(conn, task, branch);
        bump(conn, "merge_gate_red_total");
        let reason = format!(
            "conflict rebasing {branch} onto {base}: {}",
            String::from_utf8_lossy(&rebased.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&rebased.stderr).lines())
                .find(|l| l.contains("CONFLICT"))
                .unwrap_or("rebase failed")
                .trim()
        );
        return Ok(CaughtUp::Done((
            GateResult::reject(gate, reason.clone()),
            Some(Decision::Rollback { reason }),
        )));
    }
    crash::point("merge.rebased_local");
    let lease_spec = format!("--force-with-lease=refs/heads/{branch}:{expected}");
    let refspec = format!("HEAD:refs/heads/{branch}");
    if let Err(e) = wt.run(["push", "--quiet", &lease_spec, "origin", &refspec]) {
        let reason = format!("pushing the rebased {branch}: {e:#}");
        return Ok(CaughtUp::Done((
            GateResult::fail(gate, reason.clone()),
            Some(Decision::Retry { reason }),
        )));
    }
    bump(conn, "merge_gate_rebases_total");
    crash::point("merge.rebased");
    Ok(CaughtUp::Ready { current })
}

/// Run the repository's tests on the caught-up branch, confined like an
/// agent, and classify the outcome: green passes, a timeout is retried in
/// place, red rolls the task back (and gives the lease up).
fn retest(
    ctx: &Ctx,
    conn: &dyn Executor,
    task: &Task,
    worktree: &Path,
    branch: &str,
    current: bool,
) -> anyhow::Result<Checked> {
    let gate = Gate::BranchMergeable;
    let repo = ctx.config.repo(&task.repo)?;
    if repo.test_command.trim().is_empty() {
        let reason = format!(
            "no test command to re-test {branch} (set [repos.{}].test_command)",
            task.repo
        );
        return Ok((
            GateResult::fail(gate, reason.clone()),
            Some(Decision::Retry { reason }),
        ));
    }
    let timeout = Duration::from_secs(ctx.config.merge_retest_timeout_s);
    let log_path = ctx.logs_dir().join(format!("task-{}-retest.log", task.id));
    std::fs::create_dir_all(ctx.logs_dir())?;
    let _ = std::fs::remove_file(&log_path);
    let spec = runner::Spec {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), repo.test_command.clone()],
        cwd: worktree.to_path_buf(),
        env: vec![("ORCH_TASK_ID".to_owned(), task.id.to_string())],
        log_path: log_path.clone(),
        log_max_bytes: ctx.config.log_max_bytes,
        wall_timeout: timeout,
        stall_timeout: None,
        kill_grace: Duration::from_secs(ctx.config.agent_kill_grace_seconds),
        tree_kill: ctx.config.subprocess_tree_kill_enabled,
        guard_program: std::env::current_exe()?,
    };
    let spec = super::confine::confine(ctx, task, worktree, None, spec)?;
    bump(conn, "merge_gate_retests_total");
    let retest_started = std::time::Instant::now();
    crate::output::progress(&format!(
        "task {}: merge gate re-test of {branch} started (timeout {}s)",
        task.id,
        timeout.as_secs()
    ));
    let outcome = runner::run(&spec, |_| {})?;
    let failure = classify_retest(&outcome);
    crate::output::progress(&format!(
        "task {}: merge gate re-test of {branch} ended after {:.1}s: {}",
        task.id,
        retest_started.elapsed().as_secs_f64(),
        match failure {
            None => "green",
            Some(RetestFailure::Timeout) => "timed out",
            Some(_) => "red",
        }
    ));
    let what = if current {
        "re-test"
    } else {
        "rebased onto main, re-test"
    };
    match failure {
        None => {
            crate::pipeline::evaluate::record_tested(conn, task, worktree)?;
            Ok((GateResult::pass(gate, format!("{what} green")), None))
        }
        Some(RetestFailure::Timeout) => {
            bump(conn, "merge_gate_retest_timeouts_total");
            let reason = format!(
                "re-test timeout after {}s (infra; retried in place)",
                timeout.as_secs()
            );
            Ok((
                GateResult::fail(gate, reason.clone()),
                Some(Decision::RetryLater {
                    reason,
                    budget: ctx.config.merge_infra_retry_max,
                }),
            ))
        }
        Some(_) => {
            release(conn, task, branch);
            bump(conn, "merge_gate_red_total");
            let reason = format!("{what} red (log {})", log_path.display());
            Ok((
                GateResult::reject(gate, reason.clone()),
                Some(Decision::Rollback { reason }),
            ))
        }
    }
}
