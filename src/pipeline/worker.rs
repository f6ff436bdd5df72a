//! One job, start to finish, in the process that owns it: prepare the
//! worktree, run the agent in its own process group, record the run, then
//! finalize — commit and push, evaluate the gates, and commit the outcome in
//! one fenced transaction. The owner lock is held throughout, so the job is
//! alive to everyone else exactly as long as this process is. A job the
//! reaper requeued as a finalize-only continuation (its agent succeeded, its
//! worker died) skips the agent and is finalized as that worker would have.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::backends::forge;
use crate::context::Ctx;
use crate::crash;
use crate::liveness::{self, WorkerLock};
use crate::outbox;
use crate::pipeline::engine::{self, Committed, Fence};
use crate::pipeline::evaluate::{self, Decision, Evaluation};
use crate::pipeline::run_summary::Ending;
use crate::pipeline::task::{self, Task};
use crate::pipeline::{Stage, brief, budget, cancel, confine, judge, post_deploy, self_deploy};
use crate::queue::{Job, Outcome};
use crate::runner::{self, claude::RunVerdict};
use crate::storage::ledger::{NewRun, RunEnd};
use crate::storage::{Db, now};
use crate::workspace::Workspace;

/// What happened to a job.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The job.
    pub job_id: i64,
    /// Its task.
    pub task_id: Option<i64>,
    /// The agent.
    pub agent: String,
    /// The stage it worked on.
    pub stage: Option<String>,
    /// The agent run, if one was started.
    pub run_id: Option<i64>,
    /// The agent's exit code.
    pub exit_code: Option<i32>,
    /// The signal that killed the agent.
    pub signal: Option<i32>,
    /// `wall` or `stall` if the agent was stopped for time.
    pub timed_out: Option<String>,
    /// How the run was judged (`success`, or why not).
    pub run_verdict: String,
    /// The per-run log.
    pub log_path: Option<String>,
    /// Cost reported by Claude Code, in USD.
    pub cost_usd: Option<f64>,
    /// The gates and the decision, when the run succeeded.
    pub evaluation: Option<Evaluation>,
    /// What was committed.
    pub committed: Committed,
    /// Wall time of the whole job, in seconds.
    pub duration_s: f64,
    /// How it ended, in one word; decides `run-agent`'s exit code.
    pub ending: Ending,
}

impl RunReport {
    fn ending(job: &Job, committed: Committed, ending: Ending) -> RunReport {
        let mut report = RunReport::new(job, committed);
        report.ending = ending;
        report
    }

    fn new(job: &Job, committed: Committed) -> RunReport {
        RunReport {
            job_id: job.id,
            task_id: job.task_id,
            agent: job.agent.clone(),
            stage: job.stage.clone(),
            run_id: None,
            exit_code: None,
            signal: None,
            timed_out: None,
            run_verdict: String::new(),
            log_path: None,
            cost_usd: None,
            evaluation: None,
            ending: Ending::of_committed(&committed),
            committed,
            duration_s: 0.0,
        }
    }
}

/// A random RFC 4122 version-4 UUID (Claude Code session ids must be UUIDs).
fn uuid_v4() -> anyhow::Result<String> {
    let hex = liveness::random_hex16()?;
    let mut chars: Vec<char> = hex.chars().collect();
    chars[12] = '4';
    chars[16] = ['8', '9', 'a', 'b'][usize::from(chars[16].to_digit(16).unwrap_or(0) as u8 % 4)];
    let s: String = chars.into_iter().collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    ))
}

/// End the job with a failed run (no decision about the task).
fn fail_job(
    ctx: &Ctx,
    db: &mut Db,
    job: &Job,
    fence: Fence<'_>,
    outcome: &Outcome,
) -> anyhow::Result<Committed> {
    let stage = job
        .stage
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(Stage::Created);
    let key = format!("job-{}-{}", job.id, job.attempts);
    if let Some(task_id) = job.task_id {
        db.write(|tx| {
            engine::commit(
                tx,
                &ctx.config,
                task_id,
                stage,
                Some(fence),
                Some(outcome),
                &Decision::Terminal,
                &key,
                now(),
            )
        })
    } else {
        {
            let backoff = crate::queue::Backoff {
                base_s: ctx.config.transient_backoff_base_s,
                max_s: ctx.config.transient_backoff_max_s,
            };
            let end = db.write(|tx| {
                Ok(crate::queue::finish(
                    tx,
                    fence.job_id,
                    fence.token,
                    outcome,
                    backoff,
                    ctx.config.max_transient_attempts,
                    now(),
                )?)
            })?;
            Ok(Committed::Applied {
                job: Some(end),
                stage: String::new(),
                next_job: None,
                escalated: false,
            })
        }
    }
}

/// Run a job this process has claimed with `lock`, to its committed end.
pub fn run_claimed(
    ctx: &Ctx,
    db: &mut Db,
    lock: &WorkerLock,
    job: &Job,
) -> anyhow::Result<RunReport> {
    let started = std::time::Instant::now();
    let fence = Fence {
        job_id: job.id,
        token: lock.token(),
    };
    let mut report = match job.finalize_run_id {
        Some(run_id) => finalize_only(ctx, db, fence, job, run_id)?,
        None => run_inner(ctx, db, fence, job)?,
    };
    report.duration_s = started.elapsed().as_secs_f64();
    apply_pending_stop(ctx, db, job);
    // Delivery is best-effort here; `orch reconcile` retries what is left.
    if let Err(e) = outbox::deliver(ctx, db) {
        log::warn!("delivering the outbox: {e:#}");
    }
    Ok(report)
}

/// A STOP that arrived while this job was in a critical window (merging,
/// deploying) applies as soon as the job has left it: now. If this process
/// dies first, `orch reap` or `orch reconcile` applies it.
fn apply_pending_stop(ctx: &Ctx, db: &mut Db, job: &Job) {
    let Some(task_id) = job.task_id else {
        return;
    };
    match cancel::apply_pending_for(ctx, db, task_id) {
        Ok(Some(c)) => log::warn!("task {task_id}: pending STOP applied ({})", c.note),
        Ok(None) => {}
        Err(e) => log::warn!("task {task_id}: applying its pending STOP: {e:#}; reap retries"),
    }
}

/// The task a claimed job works for, on the stage the job works on — or, when
/// there is nothing left to do (no task, task cancelled, task moved on), the
/// job's committed end.
fn task_for(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
) -> anyhow::Result<Result<(Task, Stage), Committed>> {
    let Some(task_id) = job.task_id else {
        let c = fail_job(
            ctx,
            db,
            job,
            fence,
            &Outcome::Failed("job has no task".into()),
        )?;
        return Ok(Err(c));
    };
    let task = task::require(db.conn(), task_id)?;
    let stage: Stage = job
        .stage
        .as_deref()
        .unwrap_or(&task.stage)
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    if task.stage() == Stage::Cancelled {
        db.write(|tx| {
            Ok(crate::queue::cancel_claimed(
                tx,
                job.id,
                fence.token,
                now(),
            )?)
        })?;
        return Ok(Err(Committed::StageMoved {
            job: None,
            stage: task.stage,
        }));
    }
    if task.stage() != stage {
        // The task moved on (a human advanced it): this job has nothing left to do.
        let c = db.write(|tx| {
            engine::commit(
                tx,
                &ctx.config,
                task_id,
                stage,
                Some(fence),
                None,
                &Decision::Terminal,
                &format!("job-{}", job.id),
                now(),
            )
        })?;
        return Ok(Err(c));
    }
    Ok(Ok((task, stage)))
}

/// The task's workspace and prepared worktree — or, when git fails, the job
/// ended for a retry with `what` and the error.
fn worktree_for(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    task: &Task,
    what: &str,
) -> anyhow::Result<Result<(Workspace, PathBuf), Committed>> {
    let ws = Workspace::new(&ctx.repos_dir(), &task.repo, ctx.config.repo(&task.repo)?)?;
    let branch = task
        .branch
        .clone()
        .ok_or_else(|| anyhow::anyhow!("task {} has no branch", task.id))?;
    match ws.prepare(&task.work_item_id, &branch) {
        Ok(worktree) => Ok(Ok((ws, worktree))),
        Err(e) => Ok(Err(fail_job(
            ctx,
            db,
            job,
            fence,
            &Outcome::Retry(format!("{what}: {e:#}")),
        )?)),
    }
}

fn run_inner(ctx: &Ctx, db: &mut Db, fence: Fence<'_>, job: &Job) -> anyhow::Result<RunReport> {
    let (task, stage) = match task_for(ctx, db, fence, job)? {
        Ok(found) => found,
        Err(c) => return Ok(RunReport::new(job, c)),
    };
    if let Some(report) = run_reserved(ctx, db, fence, job, &task)? {
        return Ok(report);
    }
    if let Some(report) = refuse_over_budget(ctx, db, fence, job, &task)? {
        return Ok(report);
    }
    let (ws, worktree) = match worktree_for(ctx, db, fence, job, &task, "launch error")? {
        Ok(found) => found,
        Err(c) => return Ok(RunReport::ending(job, c, Ending::Error)),
    };
    crash::point("run.worktree");

    let (mut report, verdict) = match run_agent(ctx, db, fence, job, &task, stage, &worktree)? {
        Ok(ran) => ran,
        Err(why) => {
            // Nothing ran: the job waits and tries again, a bounded number of times.
            let outcome = Outcome::Transient(format!("the agent could not be started: {why}"));
            let mut report = RunReport::new(job, fail_job(ctx, db, job, fence, &outcome)?);
            report.run_verdict = format!("not started: the agent could not be started: {why}");
            report.ending = Ending::Refused;
            return Ok(report);
        }
    };
    let failed = match verdict {
        RunVerdict::Success => None,
        RunVerdict::Transient(r) => Some(Outcome::Transient(r)),
        RunVerdict::Failure(r) => Some(Outcome::Retry(r)),
        RunVerdict::Permanent(r) => Some(Outcome::Failed(r)),
    };
    if let Some(outcome) = failed {
        report.committed = fail_job(ctx, db, job, fence, &outcome)?;
        report.ending = if report.committed == Committed::LostClaim {
            Ending::Error
        } else {
            Ending::of_agent(report.timed_out.is_some(), report.signal)
        };
        return Ok(report);
    }
    push_and_finalize(
        ctx,
        db,
        fence,
        job,
        &task,
        stage,
        &ws,
        &worktree,
        &mut report,
    )?;
    Ok(report)
}

/// The reserved agents, which run deterministically without an LLM process:
/// the deploy finalizer and the post-deploy monitor. `None` for any other.
fn run_reserved(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    task: &Task,
) -> anyhow::Result<Option<RunReport>> {
    let mut report = RunReport::new(job, Committed::LostClaim);
    if job.agent == self_deploy::FINALIZER_AGENT {
        let wait = Duration::from_secs(ctx.config.agent_timeout_s);
        let finalized = self_deploy::finalize(ctx, db, task.id, Some(fence), wait)?;
        report.run_verdict = format!("deploy-finalizer: {}", finalized.note);
        report.committed = match finalized.committed {
            Some(c) => {
                report.ending = match finalized.deploy_status.as_deref() {
                    Some("FAILED") if c != Committed::LostClaim => Ending::RolledBack,
                    _ => Ending::of_committed(&c),
                };
                c
            }
            None if finalized.note == "waiting" => {
                report.ending = Ending::RetryLater;
                fail_job(
                    ctx,
                    db,
                    job,
                    fence,
                    &Outcome::Transient("the deploy hook is still running".into()),
                )?
            }
            None => {
                report.ending = Ending::Error;
                fail_job(
                    ctx,
                    db,
                    job,
                    fence,
                    &Outcome::Failed(format!("deploy finalizer: {}", finalized.note)),
                )?
            }
        };
        return Ok(Some(report));
    }
    if job.agent == post_deploy::MONITOR_AGENT {
        match post_deploy::run(ctx, db, task, fence) {
            Ok(m) => {
                report.run_verdict = format!("post-deploy-monitor: {}", m.note);
                report.ending = Ending::of_committed(&m.committed);
                report.committed = m.committed;
            }
            // orch could not run a check (git, the worktree, the runner):
            // not production's fault; retry the job, counters are kept.
            Err(e) => {
                report.run_verdict = format!("post-deploy-monitor: error: {e:#}");
                report.ending = Ending::Error;
                report.committed = fail_job(
                    ctx,
                    db,
                    job,
                    fence,
                    &Outcome::Retry(format!("post-deploy monitor: {e:#}")),
                )?;
            }
        }
        return Ok(Some(report));
    }
    Ok(None)
}

/// The budget is checked before every stage start and every retry: a task
/// that cannot afford its next run is blocked and the claim given back.
fn refuse_over_budget(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    task: &Task,
) -> anyhow::Result<Option<RunReport>> {
    let Some(reason) = budget::refuse_run(db.conn(), &ctx.config, task)? else {
        return Ok(None);
    };
    let blocked = db.write(|tx| {
        let blocked = budget::block(tx, task, &reason, now())?;
        crate::queue::release_claim(tx, job.id, fence.token)?;
        Ok(blocked)
    })?;
    log::warn!(
        "task {} {}: {reason}",
        task.id,
        if blocked { "blocked" } else { "stays blocked" }
    );
    let mut report = RunReport::new(job, Committed::LostClaim);
    report.run_verdict = format!("not started: {reason}");
    report.committed = Committed::StageMoved {
        job: None,
        stage: task.stage.clone(),
    };
    report.ending = Ending::Refused;
    Ok(Some(report))
}

/// Where one run keeps its files: `<state>/runs/job-<id>-run<n>/`, `n`
/// counting the job's runs. Never shared with an earlier run: an attempt
/// given back after a crash repeats the attempt number, and an old log would
/// otherwise be judged as this run's.
struct RunFiles {
    task_file: PathBuf,
    log: PathBuf,
    /// The agent's own writable directory (its HOME in the sandbox, the
    /// cost file); the log and the brief stay out of its reach.
    agent_dir: PathBuf,
    cost_file: PathBuf,
}

impl RunFiles {
    fn create(
        ctx: &Ctx,
        db: &Db,
        job: &Job,
        task: &Task,
        stage: Stage,
    ) -> anyhow::Result<RunFiles> {
        let earlier = db.conn().ledger_run_count_of_job(job.id)?;
        let dir = ctx
            .state_dir
            .join("runs")
            .join(format!("job-{}-run{}", job.id, earlier + 1));
        // Left by a run that died before it was recorded: not this run's.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let agent_dir = dir.join("agent");
        std::fs::create_dir_all(&agent_dir)
            .with_context(|| format!("creating {}", agent_dir.display()))?;
        let files = RunFiles {
            task_file: dir.join("task.md"),
            log: dir.join("agent.log"),
            cost_file: agent_dir.join("cost.json"),
            agent_dir,
        };
        std::fs::write(
            &files.task_file,
            brief::task_file(task, stage, &job.agent, &job.task_content),
        )
        .with_context(|| format!("writing {}", files.task_file.display()))?;
        Ok(files)
    }
}

/// Run the stage's agent in `worktree` and record the run from start to
/// end; the report so far and the verdict on the run — or, as the inner
/// error, why the agent could not be started (nothing was run or recorded).
fn run_agent(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    task: &Task,
    stage: Stage,
    worktree: &Path,
) -> anyhow::Result<Result<(RunReport, RunVerdict), String>> {
    let files = RunFiles::create(ctx, db, job, task, stage)?;
    let (command, protocol) = ctx.config.agent_command(stage);
    let session_id = uuid_v4()?;
    // The per-run cap, lowered to what the task has left (read before this
    // run is recorded: an unfinished run is charged the cap).
    let ledger = budget::ledger(db.conn(), &ctx.config, task)?;
    let run_cap = ctx.config.run_budget_usd().unwrap_or(0.0);
    let run_budget = ledger.remaining_usd.map_or(run_cap, |r| r.min(run_cap));
    let launch = Launch {
        command,
        worktree,
        files: &files,
        session_id: &session_id,
        run_budget,
    };
    let mut spec = match agent_spec(ctx, job, task, stage, &launch) {
        Ok(spec) => spec,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    let run_id = record_run_start(db, fence, job, task, stage, command, &files, &session_id)?;
    crash::point("run.recorded");
    spec.env
        .push(("ORCH_RUN_ID".to_owned(), run_id.to_string()));
    let agent_started = std::time::Instant::now();
    crate::output::progress(&format!(
        "job {}: {} agent started on stage {stage} of task {}",
        job.id, job.agent, task.id
    ));
    let outcome = runner::run(&spec, |pid| {
        let res = db.write(|tx| {
            crate::queue::set_pid(tx, job.id, fence.token, pid)?;
            tx.ledger_set_run_pid(run_id, pid)?;
            Ok(())
        });
        if let Err(e) = res {
            log::warn!("recording the agent pid {pid}: {e:#}");
        }
    })?;
    crash::point("run.ended");

    let judged = judge::judge(
        &ctx.config,
        protocol,
        &outcome,
        &files.log,
        &files.cost_file,
    );
    let outcome_text = judged.verdict.describe();
    crate::output::progress(&format!(
        "job {}: {} agent ended after {:.1}s: {outcome_text}",
        job.id,
        job.agent,
        agent_started.elapsed().as_secs_f64()
    ));
    let timed_out = outcome.timed_out.map(|t| match t {
        runner::Timeout::Wall => "wall",
        runner::Timeout::Stall => "stall",
    });
    record_run_end(db, run_id, &outcome, timed_out, &outcome_text, &judged)?;
    crash::point("run.exited");

    let mut report = RunReport::new(job, Committed::LostClaim);
    report.run_id = Some(run_id);
    report.exit_code = outcome.exit_code;
    report.signal = outcome.signal;
    report.timed_out = timed_out.map(str::to_owned);
    report.run_verdict = outcome_text;
    report.log_path = Some(files.log.display().to_string());
    report.cost_usd = judged.cost_usd;
    Ok(Ok((report, judged.verdict)))
}

/// What an agent run is started with, besides the job and its task.
struct Launch<'a> {
    command: &'a str,
    worktree: &'a Path,
    files: &'a RunFiles,
    session_id: &'a str,
    run_budget: f64,
}

/// The agent's command, environment and limits, confined to the task's
/// sandbox. An error means the agent cannot be started at all (the sandbox
/// is required and cannot be built, say).
fn agent_spec(
    ctx: &Ctx,
    job: &Job,
    task: &Task,
    stage: Stage,
    launch: &Launch<'_>,
) -> anyhow::Result<runner::Spec> {
    let (worktree, files) = (launch.worktree, launch.files);
    let artifact_dir = crate::gates::artifact_dir(worktree, &task.work_item_id);
    let env: Vec<(String, String)> = [
        ("ORCH_TASK_ID", task.id.to_string()),
        ("ORCH_JOB_ID", job.id.to_string()),
        ("ORCH_ATTEMPT", job.attempts.to_string()),
        ("ORCH_STAGE", stage.as_str().to_owned()),
        ("ORCH_AGENT", job.agent.clone()),
        ("ORCH_REPO", task.repo.clone()),
        ("ORCH_BRANCH", task.branch.clone().unwrap_or_default()),
        ("ORCH_WORK_ITEM", task.work_item_id.clone()),
        ("ORCH_WORKTREE", worktree.display().to_string()),
        ("ORCH_ARTIFACT_DIR", artifact_dir.display().to_string()),
        ("ORCH_TASK_FILE", files.task_file.display().to_string()),
        ("ORCH_SESSION_ID", launch.session_id.to_owned()),
        ("ORCH_MAX_TURNS", ctx.config.agent_max_turns.to_string()),
        ("ORCH_MAX_BUDGET_USD", format!("{:.2}", launch.run_budget)),
        ("ORCH_COST_FILE", files.cost_file.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let spec = runner::Spec {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), launch.command.to_owned()],
        cwd: worktree.to_path_buf(),
        env,
        log_path: files.log.clone(),
        log_max_bytes: ctx.config.log_max_bytes,
        wall_timeout: Duration::from_secs(ctx.config.agent_timeout_s),
        stall_timeout: (ctx.config.agent_stall_timeout_s > 0)
            .then(|| Duration::from_secs(ctx.config.agent_stall_timeout_s)),
        kill_grace: Duration::from_secs(ctx.config.agent_kill_grace_seconds),
        tree_kill: ctx.config.subprocess_tree_kill_enabled,
        guard_program: std::env::current_exe().context("locating the orch binary")?,
    };
    let agent_files = confine::AgentFiles {
        task_file: &files.task_file,
        dir: &files.agent_dir,
    };
    confine::confine(ctx, task, worktree, Some(agent_files), spec)
}

/// Record a run about to start and tie it to the job, fenced by the claim.
#[allow(clippy::too_many_arguments)]
fn record_run_start(
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    task: &Task,
    stage: Stage,
    command: &str,
    files: &RunFiles,
    session_id: &str,
) -> anyhow::Result<i64> {
    db.write(|tx| {
        let run_id = tx.ledger_start_run(&NewRun {
            job_id: job.id,
            task_id: task.id,
            agent: &job.agent,
            stage: stage.as_str(),
            command,
            output_path: &files.log.display().to_string(),
            session_id,
            started_at: now(),
        })?;
        if !crate::queue::set_run(tx, job.id, fence.token, run_id, None)? {
            anyhow::bail!(
                "job {} is no longer ours (claim lost before the agent started)",
                job.id
            );
        }
        Ok(run_id)
    })
}

/// Record how a run ended: exit, verdict, cost and usage.
fn record_run_end(
    db: &mut Db,
    run_id: i64,
    outcome: &runner::Outcome,
    timed_out: Option<&str>,
    outcome_text: &str,
    judged: &judge::Judged,
) -> anyhow::Result<()> {
    let result = judged.result.as_ref();
    let tokens = |v: Option<u64>| v.and_then(|t| i64::try_from(t).ok());
    let end = RunEnd {
        finished_at: now(),
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        timed_out: timed_out.map(str::to_owned),
        outcome: outcome_text.to_owned(),
        is_error: result.map(|r| r.is_error),
        cost_usd: judged.cost_usd,
        input_tokens: judged.input_tokens,
        output_tokens: judged.output_tokens,
        cache_read_tokens: result.and_then(|r| tokens(r.usage.cache_read_input_tokens)),
        cache_creation_tokens: result.and_then(|r| tokens(r.usage.cache_creation_input_tokens)),
        num_turns: result.and_then(|r| tokens(r.num_turns)),
        session_id: result.and_then(|r| r.session_id.clone()),
    };
    db.write(|tx| {
        tx.ledger_end_run(run_id, &end)?;
        Ok(())
    })
}

/// After a successful run: commit and push the worktree, make sure the PR
/// exists, evaluate the gates and commit the outcome.
#[allow(clippy::too_many_arguments)]
fn push_and_finalize(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    task: &Task,
    stage: Stage,
    ws: &Workspace,
    worktree: &Path,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let branch = task.branch.clone().unwrap_or_default();
    let message = format!("{} {}: {}", job.agent, stage, task.work_item_id);
    if let Err(e) = ws
        .commit_and_push(worktree, &branch, &message)
        .and_then(|_| forge::for_repo(ctx, &task.repo)?.ensure_pr(&branch, &task.title))
    {
        report.committed = fail_job(
            ctx,
            db,
            job,
            fence,
            &Outcome::Retry(format!("push failed: {e:#}")),
        )?;
        report.ending = Ending::Error;
        return Ok(());
    }
    crash::point("finalize.pushed");
    finalize(ctx, db, fence, job, task, stage, worktree, report)
}

/// Finalize agent run `run_id` of a job whose previous owner died after the
/// agent exited successfully (a continuation the reaper requeued, see
/// [`crate::queue::requeue_for_finalize`]): commit and push the worktree and
/// evaluate the gates exactly as that owner would have. The agent is not run
/// again: its work is in the worktree, which [`Workspace::prepare`] keeps.
fn finalize_only(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    run_id: i64,
) -> anyhow::Result<RunReport> {
    let mut report = RunReport::new(job, Committed::LostClaim);
    report.run_id = Some(run_id);
    "success (finalized by a later worker)".clone_into(&mut report.run_verdict);
    // Recorded, so that if this worker dies too the reaper sees which run it finalized.
    if !db.write(|tx| {
        Ok(crate::queue::set_run(
            tx,
            job.id,
            fence.token,
            run_id,
            None,
        )?)
    })? {
        report.ending = Ending::Error;
        return Ok(report);
    }
    let (task, stage) = match task_for(ctx, db, fence, job)? {
        Ok(found) => found,
        Err(c) => {
            report.ending = Ending::of_committed(&c);
            report.committed = c;
            return Ok(report);
        }
    };
    let (ws, worktree) = match worktree_for(ctx, db, fence, job, &task, "finalizing run")? {
        Ok(found) => found,
        Err(c) => {
            report.committed = c;
            report.ending = Ending::Error;
            return Ok(report);
        }
    };
    push_and_finalize(
        ctx,
        db,
        fence,
        job,
        &task,
        stage,
        &ws,
        &worktree,
        &mut report,
    )?;
    Ok(report)
}

/// Evaluate the gates and commit the outcome.
#[allow(clippy::too_many_arguments)]
fn finalize(
    ctx: &Ctx,
    db: &mut Db,
    fence: Fence<'_>,
    job: &Job,
    task: &Task,
    stage: Stage,
    worktree: &Path,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let evaluation = match evaluate::evaluate(ctx, db.conn(), task, worktree, Some(job.id)) {
        Ok(e) => e,
        Err(e) => {
            report.committed = fail_job(
                ctx,
                db,
                job,
                fence,
                &Outcome::Retry(format!("gate evaluation failed: {e:#}")),
            )?;
            report.ending = Ending::Error;
            return Ok(());
        }
    };
    crash::point("finalize.evaluated");
    let key = format!("job-{}", job.id);
    report.committed = db.write(|tx| {
        engine::commit(
            tx,
            &ctx.config,
            task.id,
            stage,
            Some(fence),
            None,
            &evaluation.decision,
            &key,
            now(),
        )
    })?;
    crash::point("finalize.committed");
    report.ending = Ending::of_decision(&evaluation.decision, &report.committed);
    report.evaluation = Some(evaluation);
    Ok(())
}
