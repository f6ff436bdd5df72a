//! The reaper: one pass over running jobs that decides, by each owner's lock,
//! which are dead, and brings every dead one to a correct end exactly once.
//! Safe from a timer, by hand and concurrently: every end is a fenced write,
//! so two reapers (or a reaper and a late finalizer) never both act.
//!
//! For a running job:
//! - **owner alive** (its lock is held): never reaped. A finalizer running
//!   heavy edge gates for minutes is alive by definition; a deferral is counted
//!   once its agent exited `reaper_finalize_grace_s` ago. Past
//!   `reaper_max_running_s` the backstop kills the owner (only once that pid
//!   is shown to hold the lock on this host, so a reused pid, or a pid of
//!   another host, is never signalled); its guardian then kills the agent's
//!   group, and the job is reaped as dead.
//! - **owner dead**: a job of a cancelled or finished task is cancelled; a job
//!   whose agent exited successfully is requeued as a finalize-only
//!   continuation, for a worker to push and evaluate that run's result without
//!   running the agent again (the reaper itself never runs tests, rebases,
//!   pushes or merges); any other is requeued while attempts remain, else
//!   failed with a notification. A job handed over by
//!   `orch claim` (its owner exited cleanly before any agent started) gets
//!   `reaper_start_grace_s` for a worker to take it over first. A run the dead
//!   owner never recorded the end of is settled first, its cost recovered
//!   from its log ([`budget::recover_dead_run`]).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::context::Ctx;
use crate::liveness::{Liveness, Locks};
use crate::outbox;
use crate::pipeline::engine::{self, Committed, Fence};
use crate::pipeline::evaluate::Decision;
use crate::pipeline::{Stage, budget, lease, task};
use crate::queue::{self, Finished, Job, Outcome};
use crate::storage::{Db, counters, now};

/// What the reaper did with one job.
#[derive(Debug, Clone, Serialize)]
pub struct Reaped {
    /// The job.
    pub job_id: i64,
    /// Its agent.
    pub agent: String,
    /// `done`, `queued`, `failed`, `cancelled`, or `lost` (someone else ended it first).
    pub outcome: String,
    /// Why it was reaped.
    pub reason: String,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Pass {
    /// Running jobs looked at.
    pub running: usize,
    /// Jobs brought to an end.
    pub reaped: Vec<Reaped>,
    /// Live finalizers past the finalize grace, left alone.
    pub finalizer_defers: u32,
    /// Handed-over jobs still in their start grace.
    pub start_grace_defers: u32,
    /// Live owners stopped by the backstop.
    pub backstopped: u32,
    /// Impossible queued rows healed.
    pub impossible_queued_healed: usize,
    /// Tasks whose pending cancel was applied.
    pub cancels_applied: Vec<i64>,
    /// Merge leases reclaimed.
    pub leases_reclaimed: Vec<lease::Reclaimed>,
    /// Lock files of owners that died after their job ended, removed.
    pub lock_files_removed: usize,
    /// Jobs whose handling failed (logged; the next pass retries them).
    pub errors: Vec<String>,
}

/// The recorded agent run of a job.
struct RunInfo {
    exit_code: Option<i64>,
    finished_at: Option<i64>,
    succeeded: bool,
}

/// The recorded runs of every running job, in one query.
fn run_infos(db: &Db) -> anyhow::Result<std::collections::HashMap<i64, RunInfo>> {
    Ok(db
        .conn()
        .ledger_runs_of_running_jobs()?
        .into_iter()
        .map(|r| {
            let info = RunInfo {
                exit_code: r.exit_code,
                finished_at: r.finished_at,
                succeeded: r.succeeded,
            };
            (r.run_id, info)
        })
        .collect())
}

/// One reaper pass.
pub fn reap_once(ctx: &Ctx, db: &mut Db) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    let t0 = now();
    let locks = ctx.locks()?;
    if ctx.config.reaper_enabled {
        let running = queue::running(db.conn())?;
        let mut runs = run_infos(db)?;
        pass.running = running.len();
        for job in running {
            let run = job.run_id.and_then(|id| runs.remove(&id));
            // One bad job never stops the pass.
            if let Err(e) = reap_job(ctx, &locks, db, &job, run.as_ref(), &mut pass) {
                log::warn!("reaping job {}: {e:#}", job.id);
                pass.errors.push(format!("job {}: {e:#}", job.id));
            }
        }
    }
    // Each step below is best-effort: its failure is recorded in the pass
    // and the steps after it still run (the next pass retries).
    let step = |what: &str, pass: &mut Pass, e: anyhow::Error| {
        log::warn!("reap: {what}: {e:#}");
        pass.errors.push(format!("{what}: {e:#}"));
    };
    // STOP requests interrupted by a crash, or deferred until a critical window closed.
    match crate::pipeline::cancel::apply_pending(ctx, db) {
        Ok(pending) => {
            for (task_id, c) in pending.applied {
                log::warn!("applied the pending cancel of task {task_id}: {}", c.note);
                pass.cancels_applied.push(task_id);
            }
            pass.errors.extend(pending.errors);
        }
        Err(e) => step("pending cancels", &mut pass, e),
    }
    if ctx.config.impossible_queued_sanitize_enabled {
        let healed = queue::any_impossible_queued(db.conn())
            .map_err(anyhow::Error::from)
            .and_then(|any| {
                if any {
                    Ok(db
                        .write(|tx| Ok(queue::sanitize_impossible_queued(tx, now())?))?
                        .len())
                } else {
                    Ok(0)
                }
            });
        match healed {
            Ok(n) => pass.impossible_queued_healed = n,
            Err(e) => step("impossible-queued sweep", &mut pass, e),
        }
    }
    match lease::reclaim_pass(db, &ctx.config, &locks, now()) {
        Ok(reclaimed) => pass.leases_reclaimed = reclaimed,
        Err(e) => step("lease reclaim", &mut pass, e),
    }
    match sweep_lock_files(db, &locks) {
        Ok(removed) => pass.lock_files_removed = removed,
        Err(e) => step("lock-file sweep", &mut pass, e),
    }
    let recorded = db.write(|tx| {
        let detail = serde_json::json!({
            "at": t0,
            "running": pass.running,
            "reaped": pass.reaped.len(),
            "errors": pass.errors.len(),
        });
        counters::bump(tx, "reaper_passes_total", 1, Some(&detail), now())?;
        for (name, n) in [
            ("finalizer_defers_total", pass.finalizer_defers),
            ("start_grace_defers_total", pass.start_grace_defers),
            ("reaper_backstop_total", pass.backstopped),
        ] {
            if n > 0 {
                counters::bump(tx, name, i64::from(n), None, now())?;
            }
        }
        Ok(())
    });
    if let Err(e) = recorded {
        step("recording the pass", &mut pass, e);
    }
    if let Err(e) = outbox::deliver(ctx, db) {
        log::warn!("delivering the outbox: {e:#}");
    }
    Ok(pass)
}

/// Remove the lock files a killed owner left behind once no running job has
/// their token any more (the job was reaped, requeued or finished by another
/// worker), so the lock directory does not grow with every crash and the
/// views' census stays cheap. Tokens are never reused; a file that is held
/// stays ([`Locks::sweep`]; advisory locks leave nothing to sweep).
fn sweep_lock_files(db: &Db, locks: &Locks) -> anyhow::Result<usize> {
    locks.sweep(|| {
        Ok(queue::running_owners(db.conn())?
            .into_iter()
            .filter_map(|o| o.claim_token)
            .collect())
    })
}

fn reap_job(
    ctx: &Ctx,
    locks: &Locks,
    db: &mut Db,
    job: &Job,
    run: Option<&RunInfo>,
    pass: &mut Pass,
) -> anyhow::Result<()> {
    let token = job.claim_token.clone().unwrap_or_default();
    let t = now();
    // Set when a live owner is reaped anyway (backstop, or the kill-switch off).
    let mut forced: Option<String> = None;
    if locks.probe(&token)? == Liveness::Alive {
        let age = job.started_at.map_or(0, |s| t - s);
        let max = i64::try_from(ctx.config.reaper_max_running_s).unwrap_or(i64::MAX);
        let grace = i64::try_from(ctx.config.reaper_finalize_grace_s).unwrap_or(i64::MAX);
        // A finalize-only continuation finalizes from its claim on; its
        // agent exited long before, under an owner that died.
        let finalizing_for = if job.finalize_run_id.is_some() {
            job.started_at.map(|s| t - s)
        } else {
            run.filter(|r| r.exit_code.is_some())
                .and_then(|r| r.finished_at)
                .map(|f| t - f)
        };
        if age >= max {
            if !backstop(ctx, locks, job, &token)? {
                pass.errors.push(format!(
                    "job {}: past the backstop but its owner could not be stopped",
                    job.id
                ));
                return Ok(());
            }
            pass.backstopped += 1;
            forced = Some(format!("backstop age={age}s>={max}s"));
        } else if finalizing_for.is_some_and(|f| f >= grace) {
            if ctx.config.reaper_finalizer_liveness_enabled {
                pass.finalizer_defers += 1;
                log::info!(
                    "job {} is finalizing for {}s; its owner is alive, deferring",
                    job.id,
                    finalizing_for.unwrap_or(0)
                );
                return Ok(());
            }
            // Kill-switch off: the plain grace rule of the seeds, the fence keeps it safe.
            forced = Some(format!(
                "finalize grace {grace}s passed (finalizer liveness check disabled)"
            ));
        } else {
            return Ok(());
        }
    }
    // A run its dead worker never recorded is settled from its log first;
    // a log that ends in Claude's success result means the agent did its work.
    let settled_success = match (job.run_id, run) {
        (Some(run_id), Some(r)) if r.finished_at.is_none() => settle_dead_run(db, run_id)?,
        _ => false,
    };
    let task = job
        .task_id
        .map(|id| task::get(db.conn(), id))
        .transpose()?
        .flatten();
    // A post-deploy monitor works on a `done` task by design: it is resumed, not cancelled.
    let monitor_of_done_task = job.agent == crate::pipeline::post_deploy::MONITOR_AGENT
        && task.as_ref().is_some_and(|t| t.stage() == Stage::Done);
    if let Some(task) = &task
        && task.stage().is_terminal()
        && !monitor_of_done_task
    {
        let won = db.write(|tx| Ok(queue::cancel_claimed(tx, job.id, &token, now())?))?;
        record(
            db,
            pass,
            job,
            if won { "cancelled" } else { "lost" },
            &format!("task is {}", task.stage),
        )?;
        return Ok(());
    }
    let reason = forced.clone().unwrap_or_else(|| "owner dead".to_owned());
    if run.is_none() {
        // No agent was started in this claim. A clean hand-over (`orch claim`)
        // released its lock: give a worker the start grace to take it over.
        let age = job.started_at.map_or(i64::MAX, |s| t - s);
        let grace = i64::try_from(ctx.config.reaper_start_grace_s).unwrap_or(i64::MAX);
        if locks.may_have_handed_over(&token) && age < grace && reason == "owner dead" {
            pass.start_grace_defers += 1;
            return Ok(());
        }
    }
    // The successful agent run left to finalize: a continuation's, or this claim's.
    let succeeded = run
        .filter(|r| settled_success || (r.succeeded && r.exit_code == Some(0)))
        .and(job.run_id);
    if let Some(run_id) = job.finalize_run_id.or(succeeded) {
        return hand_to_finalizer(ctx, db, pass, job, &token, run_id, &reason);
    }
    let why = match run {
        None => format!("reaped: {reason} before its agent started"),
        Some(r) => format!(
            "reaped: {reason}, agent {} (run_id={})",
            r.exit_code
                .map_or_else(|| "never reported".to_owned(), |c| format!("exit={c}")),
            job.run_id.unwrap_or(0)
        ),
    };
    // Whose failure is it? A run its worker had already judged a failure,
    // or a job stopped by the backstop, spends an attempt; an owner that died
    // before its agent's run was judged is orch's crash, not the agent's
    // (docs/crash-safety.md).
    let agent_failed = run.is_some_and(|r| r.finished_at.is_some() && !r.succeeded);
    let outcome = if forced.is_some() || agent_failed {
        Outcome::Retry(why)
    } else {
        Outcome::OwnerDied(why)
    };
    end_job(ctx, db, pass, job, &token, &outcome)
}

/// Hand a dead owner's job whose agent run `run_id` succeeded to the next
/// worker, as a finalize-only continuation (`queue::requeue_for_finalize`):
/// the worker commits, pushes and evaluates that run's result without
/// running the agent again. The reaper never finalizes in-process: that runs
/// test suites, rebases, pushes and merges, and a reaper must stay a quick,
/// bounded pass. A continuation whose own worker was killed spends an
/// attempt; once they are spent the job fails for good, so a finalization
/// that kills its worker every time (an OOM in the re-test, say) ends.
fn hand_to_finalizer(
    ctx: &Ctx,
    db: &mut Db,
    pass: &mut Pass,
    job: &Job,
    token: &str,
    run_id: i64,
    reason: &str,
) -> anyhow::Result<()> {
    let continuation = job.finalize_run_id.is_some();
    if continuation && job.transient_attempts >= i64::from(ctx.config.max_transient_attempts) {
        let why = format!(
            "reaped: {reason} while finalizing agent run {run_id}; its worker died {} times",
            job.transient_attempts + 1
        );
        return end_job(ctx, db, pass, job, token, &Outcome::Failed(why));
    }
    let why = format!(
        "reaped: {reason}; agent exit 0 (run_id={run_id}), queued for a worker to finalize"
    );
    let won = db.write(|tx| {
        Ok(queue::requeue_for_finalize(
            tx,
            job.id,
            token,
            run_id,
            continuation,
            &why,
        )?)
    })?;
    record(db, pass, job, if won { "queued" } else { "lost" }, &why)
}

/// Record the end of a run whose worker died before recording it, with the
/// cost recovered from the run's log (docs/costs.md): without this its cost
/// stays unknown and is charged at the per-run cap, so a few crashes of orch
/// would block a task that spent nothing.
fn settle_dead_run(db: &mut Db, run_id: i64) -> anyhow::Result<bool> {
    // Files are read before the write transaction, which stays short.
    let Some(dead) = budget::recover_dead_run(db.conn(), run_id)? else {
        return Ok(false);
    };
    if db.write(|tx| Ok(budget::record_dead_run(tx, run_id, &dead, now())?))? {
        log::warn!("run {run_id}: {}", dead.outcome);
    }
    Ok(dead.succeeded)
}

fn finished_name(end: Option<Finished>) -> String {
    match end {
        Some(Finished::Done) => "done",
        Some(Finished::Failed) => "failed",
        Some(Finished::Requeued) => "queued",
        Some(Finished::LostClaim) | None => "lost",
    }
    .to_owned()
}

/// End a dead owner's job with `outcome` (a retry: requeued while attempts
/// remain, else failed with a notification) — fenced by the dead owner's
/// token, so only one reaper wins.
fn end_job(
    ctx: &Ctx,
    db: &mut Db,
    pass: &mut Pass,
    job: &Job,
    token: &str,
    outcome: &Outcome,
) -> anyhow::Result<()> {
    let why = outcome.text().to_owned();
    let fence = Fence {
        job_id: job.id,
        token,
    };
    let stage: Stage = job
        .stage
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(Stage::Created);
    let committed = db.write(|tx| {
        if let Some(task_id) = job.task_id {
            return engine::commit(
                tx,
                &ctx.config,
                task_id,
                stage,
                Some(fence),
                Some(outcome),
                &Decision::Terminal,
                &format!("reap-{}-{}", job.id, job.attempts),
                now(),
            );
        }
        let backoff = queue::Backoff {
            base_s: ctx.config.transient_backoff_base_s,
            max_s: ctx.config.transient_backoff_max_s,
        };
        let end = queue::finish(
            tx,
            job.id,
            token,
            outcome,
            backoff,
            ctx.config.max_transient_attempts,
            now(),
        )?;
        Ok(if end == Finished::LostClaim {
            Committed::LostClaim
        } else {
            Committed::Applied {
                job: Some(end),
                stage: String::new(),
                next_job: None,
                escalated: false,
            }
        })
    })?;
    let outcome = match committed {
        Committed::LostClaim => "lost".to_owned(),
        Committed::StageMoved { job: end, .. } | Committed::Applied { job: end, .. } => {
            finished_name(end)
        }
    };
    record(db, pass, job, &outcome, &why)
}

fn record(
    db: &mut Db,
    pass: &mut Pass,
    job: &Job,
    outcome: &str,
    reason: &str,
) -> anyhow::Result<()> {
    if outcome != "lost" {
        let detail = serde_json::json!({ "job_id": job.id, "agent": job.agent, "outcome": outcome, "reason": reason });
        db.write(|tx| {
            counters::bump(tx, "reaped_total", 1, Some(&detail), now())?;
            counters::bump(tx, &format!("reaped_{outcome}_total"), 1, None, now())?;
            Ok(())
        })?;
        log::warn!(
            "reaped job {} ({}, repo {}, run_id {}, pid {}): {outcome}: {reason}",
            job.id,
            job.agent,
            job.repo,
            job.run_id.unwrap_or(0),
            job.pid.unwrap_or(0)
        );
    }
    pass.reaped.push(Reaped {
        job_id: job.id,
        agent: job.agent.clone(),
        outcome: outcome.to_owned(),
        reason: reason.to_owned(),
    });
    Ok(())
}

/// Stop a live owner past the backstop: SIGKILL it, but only while that very
/// pid of this host holds the job's lock ([`Locks::pid_holds`]). Its guardian
/// then kills the agent's process group. Returns whether the lock is free
/// afterwards.
fn backstop(ctx: &Ctx, locks: &Locks, job: &Job, token: &str) -> anyhow::Result<bool> {
    let Some(owner) = job.owner_pid else {
        return Ok(false);
    };
    if !locks.pid_holds(token, owner)? {
        log::warn!(
            "job {}: owner pid {owner} does not hold the job's lock on this host; not signalling it",
            job.id
        );
        return Ok(false);
    }
    log::warn!(
        "job {} ran past reaper_max_running_s ({}s): killing its owner pid {owner}",
        job.id,
        ctx.config.reaper_max_running_s
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(owner).unwrap_or(0)),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if locks.probe(token)? == Liveness::Dead {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}
