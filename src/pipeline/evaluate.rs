//! Evaluating a stage's exit gates and turning their verdicts into a
//! decision: advance, roll back, wait for a human, or retry the agent.
//!
//! Evaluation may take minutes (it runs the repository's tests) and may have
//! idempotent external effects (the merge on the deploy-staging → deploy
//! edge), so it happens outside any transaction; its decision is committed
//! afterwards by [`crate::pipeline::engine`], fenced and guarded.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::backends::forge::{MergeRefused, Merged};
use crate::backends::tracker;
use crate::context::Ctx;
use crate::gates::{self, Gate, GateResult, Verdict};
use crate::git::Git;
use crate::pipeline::Stage;
use crate::pipeline::task::Task;
use crate::runner;
use crate::storage::Executor;

/// What should happen to a task after its gates were evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Every gate passed: move to `to`.
    Advance {
        /// The next stage.
        to: Stage,
    },
    /// An artifact said no (review REQUEST_CHANGES, test FAIL, deploy FAILED,
    /// or the branch cannot merge): back to development.
    Rollback {
        /// Why.
        reason: String,
    },
    /// The agent's work is complete; a human must approve it.
    AwaitHuman {
        /// What the human is asked.
        reason: String,
    },
    /// A gate failed: the agent should run again.
    Retry {
        /// Which gate and why.
        reason: String,
    },
    /// Not the agent's fault (another task holds the merge lease, or the
    /// re-test timed out): run the job again later, in place, without
    /// spending an attempt, at most `budget` times.
    RetryLater {
        /// Why.
        reason: String,
        /// How many such retries a job gets before it fails (with one alert).
        budget: u32,
    },
    /// Self-hosting repo, phase A: staging passed every gate. Move to
    /// `deploy`, keep the merge lease, and ask a human for "Confirm Deploy".
    AwaitConfirmDeploy {
        /// The commit verified on staging (the one phase B merges and deploys).
        staging_sha: String,
    },
    /// The task is done or cancelled: nothing to evaluate.
    Terminal,
}

/// The gates that ran and the decision they lead to.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Every gate evaluated, in order.
    pub gates: Vec<GateResult>,
    /// What to do.
    pub decision: Decision,
    /// The merge done on the deploy-staging → deploy edge, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged: Option<Merged>,
}

impl Evaluation {
    pub(crate) fn new(gates: Vec<GateResult>, decision: Decision) -> Evaluation {
        Evaluation {
            gates,
            decision,
            merged: None,
        }
    }

    /// One line for people: each gate's verdict and reason.
    pub fn summary(&self) -> String {
        self.gates
            .iter()
            .map(|g| format!("{} {}: {}", g.gate, g.verdict, g.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The decision for one failed or rejected gate result.
fn from_failure(result: &GateResult) -> Decision {
    let reason = format!("{}: {}", result.gate, result.reason);
    match result.verdict {
        Verdict::Reject => Decision::Rollback { reason },
        Verdict::Fail | Verdict::Pass => Decision::Retry { reason },
    }
}

/// Evaluate the exit gates of `task`'s current stage, with its worktree at `worktree`.
pub fn evaluate(
    ctx: &Ctx,
    conn: &dyn Executor,
    task: &Task,
    worktree: &Path,
    job_id: Option<i64>,
) -> anyhow::Result<Evaluation> {
    let stage = task.stage();
    let artifacts = match gates::resolve_artifact_dir(worktree, &task.work_item_id) {
        Ok(dir) => dir,
        Err(reason) => {
            let r = GateResult::fail(Gate::AnalysisComplete, reason);
            let d = from_failure(&r);
            return Ok(Evaluation::new(vec![r], d));
        }
    };
    let mut results = Vec::new();
    // Run `checks` in order; stop at the first that does not pass.
    macro_rules! require {
        ($result:expr) => {{
            let r: GateResult = $result;
            let failed = (!r.passed()).then(|| from_failure(&r));
            results.push(r);
            if let Some(d) = failed {
                return Ok(Evaluation::new(results, d));
            }
        }};
    }
    let next = match stage.next() {
        Some(n) if !stage.is_terminal() && stage != Stage::Created => n,
        _ => return Ok(Evaluation::new(Vec::new(), Decision::Terminal)),
    };
    match stage {
        Stage::Analysis => {
            require!(gates::check_analysis_complete(&artifacts));
            let approved = check_analysis_approved(ctx, conn, task)?;
            if !approved.passed() {
                // Said to the person on the board first, in board terms.
                let reason = format!(
                    "analysis of {wi} is complete; waiting for the human \"Approved\" status: \
                     review docs/work-items/{wi}/ on branch {branch}, then move the issue to \
                     \"Approved\" to continue or \"Rejected\" to stop (from a shell: \
                     orch advance --task {id} --approve)",
                    wi = task.work_item_id,
                    branch = task.branch.as_deref().unwrap_or("-"),
                    id = task.id
                );
                results.push(approved);
                return Ok(Evaluation::new(results, Decision::AwaitHuman { reason }));
            }
            results.push(approved);
        }
        Stage::Architecture => require!(gates::check_architecture_done(&artifacts)),
        Stage::Development => require!(check_ci_green(ctx, conn, task, worktree)?),
        Stage::Review => require!(gates::check_review_approved(&artifacts)),
        Stage::Testing => require!(gates::check_tests_passed(&artifacts)),
        Stage::DeployStaging => {
            let staging = gates::check_staging_status(&artifacts);
            // A failed staging deploy is retried in place, not a code fault.
            if staging.verdict == Verdict::Reject {
                let reason = format!("{}: {}", staging.gate, staging.reason);
                results.push(staging);
                return Ok(Evaluation::new(results, Decision::Retry { reason }));
            }
            require!(staging);
            require!(check_staging_image_fresh(ctx, task, worktree)?);
            let (mergeable, failed) =
                crate::pipeline::merge_gate::check(ctx, conn, task, worktree, job_id)?;
            if let Some(decision) = failed {
                results.push(mergeable);
                return Ok(Evaluation::new(results, decision));
            }
            results.push(mergeable);
            // The self-hosting repo merges only on the human's Confirm Deploy
            // (phase B), so main is exactly what goes to production.
            if crate::pipeline::self_deploy::applies(&ctx.config, &task.repo) {
                let staging_sha = Git::at(worktree).rev("HEAD")?.ok_or_else(|| {
                    anyhow::anyhow!("worktree {} has no HEAD", worktree.display())
                })?;
                return Ok(Evaluation::new(
                    results,
                    Decision::AwaitConfirmDeploy { staging_sha },
                ));
            }
            let merged = merge(ctx, task, worktree)?;
            return Ok(match merged {
                Ok(m) => Evaluation {
                    gates: results,
                    decision: Decision::Advance { to: next },
                    merged: Some(m),
                },
                Err(d) => Evaluation::new(results, d),
            });
        }
        Stage::Deploy => {
            // The self-hosting repo leaves deploy only through Confirm Deploy
            // (phase B) and the deploy finalizer (phase C).
            if crate::pipeline::self_deploy::applies(&ctx.config, &task.repo)
                && !crate::pipeline::self_deploy::initiated(conn, task.id)?
            {
                return Ok(Evaluation::new(
                    Vec::new(),
                    Decision::AwaitHuman {
                        reason: crate::pipeline::self_deploy::APPROVED_ON_DEPLOY_NOOP.to_owned(),
                    },
                ));
            }
            require!(gates::check_deploy_status(&artifacts));
        }
        Stage::Created | Stage::Done | Stage::Cancelled => {
            return Ok(Evaluation::new(Vec::new(), Decision::Terminal));
        }
    }
    Ok(Evaluation::new(results, Decision::Advance { to: next }))
}

/// `check_analysis_approved`: the human set the tracker state "Approved"
/// (in Plane, or recorded locally by `orch advance --approve`).
fn check_analysis_approved(
    ctx: &Ctx,
    conn: &dyn Executor,
    task: &Task,
) -> anyhow::Result<GateResult> {
    let local = tracker::local::state(conn, task.id)?;
    let remote = tracker::remote_state_key(ctx, task)?;
    let state = local.clone();
    Ok(
        if local.as_deref() == Some(tracker::state::APPROVED)
            || remote.as_deref() == Some(tracker::key::APPROVED)
        {
            GateResult::pass(Gate::AnalysisApproved, "approved via status")
        } else {
            GateResult::fail(
                Gate::AnalysisApproved,
                format!(
                    "tracker state is {}, not \"Approved\"",
                    state.map_or_else(|| "unset".to_owned(), |s| format!("{s:?}"))
                ),
            )
        },
    )
}

/// Run a shell command in the worktree through the process-group runner.
fn run_check_command(
    ctx: &Ctx,
    task: &Task,
    worktree: &Path,
    command: &str,
    label: &str,
    timeout: Duration,
) -> anyhow::Result<(runner::Outcome, std::path::PathBuf)> {
    let log_path = ctx.logs_dir().join(format!("task-{}-{label}.log", task.id));
    std::fs::create_dir_all(ctx.logs_dir())?;
    let _ = std::fs::remove_file(&log_path);
    let spec = runner::Spec {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), command.to_owned()],
        cwd: worktree.to_path_buf(),
        env: vec![
            ("ORCH_TASK_ID".to_owned(), task.id.to_string()),
            ("ORCH_WORK_ITEM".to_owned(), task.work_item_id.clone()),
            ("ORCH_REPO".to_owned(), task.repo.clone()),
        ],
        log_path: log_path.clone(),
        log_max_bytes: ctx.config.log_max_bytes,
        wall_timeout: timeout,
        stall_timeout: None,
        kill_grace: Duration::from_secs(ctx.config.agent_kill_grace_seconds),
        tree_kill: ctx.config.subprocess_tree_kill_enabled,
        guard_program: std::env::current_exe()?,
    };
    let spec = super::confine::confine(ctx, task, worktree, None, spec)?;
    Ok((runner::run(&spec, |_| {})?, log_path))
}

/// `check_ci_green` on the local forge: the repository's test command passes in the worktree.
fn check_ci_green(
    ctx: &Ctx,
    conn: &dyn Executor,
    task: &Task,
    worktree: &Path,
) -> anyhow::Result<GateResult> {
    let repo = ctx.config.repo(&task.repo)?;
    // With Gitea, CI reports on the pushed commit; without a status, fall back to local tests.
    if ctx.config.forge == "gitea"
        && let Some(head) = Git::at(worktree).rev("HEAD")?
    {
        use crate::backends::forge::gitea::{CiState, GiteaForge};
        let forge = GiteaForge::from_config(
            &ctx.config,
            &task.repo,
            Duration::from_secs(ctx.config.http_timeout_s),
        )?;
        match forge.commit_status(&head)? {
            Some(CiState::Success) => {
                record_tested(conn, task, worktree)?;
                return Ok(GateResult::pass(
                    Gate::CiGreen,
                    format!("CI is green on {head}"),
                ));
            }
            Some(state) => {
                return Ok(GateResult::fail(
                    Gate::CiGreen,
                    format!("CI is {state:?} on {head}"),
                ));
            }
            None => {}
        }
    }
    if repo.test_command.trim().is_empty() {
        return Ok(GateResult::fail(
            Gate::CiGreen,
            format!(
                "no test command configured for repo {} (set [repos.{}].test_command)",
                task.repo, task.repo
            ),
        ));
    }
    let timeout = Duration::from_secs(ctx.config.test_timeout_s);
    let (outcome, log) =
        run_check_command(ctx, task, worktree, &repo.test_command, "tests", timeout)?;
    Ok(match (outcome.timed_out, outcome.exit_code) {
        (None, Some(0)) => {
            record_tested(conn, task, worktree)?;
            GateResult::pass(Gate::CiGreen, format!("`{}` passed", repo.test_command))
        }
        (Some(_), _) => GateResult::fail(
            Gate::CiGreen,
            format!(
                "`{}` timed out after {}s (log {})",
                repo.test_command,
                timeout.as_secs(),
                log.display()
            ),
        ),
        (None, code) => GateResult::fail(
            Gate::CiGreen,
            format!(
                "`{}` failed with {} (log {})",
                repo.test_command,
                code.map_or_else(
                    || format!("signal {}", outcome.signal.unwrap_or(0)),
                    |c| format!("exit code {c}")
                ),
                log.display()
            ),
        ),
    })
}

/// Remember that the worktree's HEAD passed the repository's tests.
pub fn record_tested(conn: &dyn Executor, task: &Task, worktree: &Path) -> anyhow::Result<()> {
    if let Some(head) = Git::at(worktree).rev("HEAD")? {
        conn.task_set_tested(task.id, &head)?;
    }
    Ok(())
}

/// `check_staging_image_fresh`: the configured provenance command passes.
fn check_staging_image_fresh(
    ctx: &Ctx,
    task: &Task,
    worktree: &Path,
) -> anyhow::Result<GateResult> {
    let cmd = ctx.config.staging_image_check_cmd.trim();
    if cmd.is_empty() {
        return Ok(GateResult::pass(
            Gate::StagingImageFresh,
            "not configured (staging_image_check_cmd is empty)",
        ));
    }
    let timeout = Duration::from_secs(ctx.config.test_timeout_s);
    let (outcome, log) = run_check_command(ctx, task, worktree, cmd, "image-fresh", timeout)?;
    Ok(
        if outcome.timed_out.is_none() && outcome.exit_code == Some(0) {
            GateResult::pass(Gate::StagingImageFresh, "staging image matches the branch")
        } else {
            GateResult::fail(
                Gate::StagingImageFresh,
                format!("`{cmd}` did not pass (log {})", log.display()),
            )
        },
    )
}

/// Merge the tested head of the branch into the default branch (idempotent).
fn merge(ctx: &Ctx, task: &Task, worktree: &Path) -> anyhow::Result<Result<Merged, Decision>> {
    let branch = task
        .branch
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("task {} has no branch", task.id))?;
    let head = Git::at(worktree)
        .rev("HEAD")?
        .ok_or_else(|| anyhow::anyhow!("worktree {} has no HEAD", worktree.display()))?;
    let forge = crate::backends::forge::for_repo(ctx, &task.repo)?;
    match forge.merge(branch, &head) {
        Ok(m) => Ok(Ok(m)),
        Err(e) => match e.downcast_ref::<MergeRefused>() {
            Some(MergeRefused::Behind { .. }) => Ok(Err(Decision::Rollback {
                reason: format!("merge refused: {e}"),
            })),
            Some(MergeRefused::Moved { .. }) => Ok(Err(Decision::Retry {
                reason: format!("merge refused: {e}"),
            })),
            None => Err(e),
        },
    }
}
