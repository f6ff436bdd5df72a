//! Committing a decision: the job's outcome, the task's advance or rollback,
//! the next job and the outbox rows, in ONE transaction fenced by the claim
//! token and guarded by the task's stage (docs/architecture.md, decision 3).
//!
//! Whoever commits first wins. A finalizer whose claim was reaped, a reaper
//! racing a live finalizer, or a human `orch advance` racing either: the loser
//! changes nothing, so no task ever advances twice and no next job is ever
//! enqueued twice.

use serde::Serialize;

use crate::config::Config;
use crate::outbox::{self, Message};
use crate::pipeline::evaluate::Decision;
use crate::pipeline::task::{self, Task};
use crate::pipeline::{Stage, lease};
use crate::queue::{self, Backoff, Finished, NewJob, Outcome};
use crate::storage;
use crate::storage::Executor;
use crate::storage::tasks::NewTransition;

/// Developer retries (rollbacks into development) before a task is escalated
/// to a human instead of looping.
pub const MAX_DEVELOPER_RETRIES: i64 = 3;

/// The claim that fences a job's end.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    /// The job.
    pub job_id: i64,
    /// Its claim token.
    pub token: &'a str,
}

/// What was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "committed")]
pub enum Committed {
    /// The fence did not match: someone else ended this job. Nothing was written.
    LostClaim,
    /// The task was no longer on the stage the decision was made for. Only the job ended.
    StageMoved {
        /// The job's end.
        job: Option<Finished>,
        /// Where the task is now.
        stage: String,
    },
    /// The decision was applied.
    Applied {
        /// The job's end, when a job was fenced.
        job: Option<Finished>,
        /// The task's stage now.
        stage: String,
        /// The job enqueued for the new stage, if any.
        next_job: Option<i64>,
        /// Whether the task was escalated to a human.
        escalated: bool,
    },
}

/// Rollbacks into development since the task was last resumed by a human
/// (the developer retry count). Only those: a non-code event — main moving
/// under a confirmed deploy, which sends the task back to deploy-staging —
/// never feeds the developer-retry loop (the ORCH-110 lesson).
pub fn developer_retry_count(conn: &dyn Executor, task_id: i64) -> storage::Result<i64> {
    conn.task_developer_retries(task_id)
}

fn transition(
    conn: &dyn Executor,
    task_id: i64,
    (from, to): (&str, &str),
    kind: &str,
    reason: &str,
    job_id: Option<i64>,
    now: i64,
) -> storage::Result<()> {
    conn.task_record_transition(&NewTransition {
        task_id,
        from_stage: from,
        to_stage: to,
        kind,
        reason,
        job_id,
        at: now,
    })
}

/// Move the task from `from` to `to` if it is still on `from`.
fn move_stage(
    conn: &dyn Executor,
    task_id: i64,
    from: Stage,
    to: Stage,
    now: i64,
) -> storage::Result<bool> {
    conn.task_move_stage(task_id, from.as_str(), to.as_str(), now)
}

fn enqueue_stage_job(
    conn: &dyn Executor,
    config: &Config,
    task: &Task,
    stage: Stage,
    content: &str,
    now: i64,
) -> storage::Result<Option<i64>> {
    let Some(agent) = stage.agent() else {
        return Ok(None);
    };
    // A pending STOP is a fence: the task gets no new work; whoever leaves
    // the critical window applies the cancel (`cancel::apply_pending_for`).
    if task.cancel_requested_at.is_some() {
        return Ok(None);
    }
    queue::enqueue(
        conn,
        &NewJob {
            agent,
            repo: &task.repo,
            task_id: Some(task.id),
            stage: Some(stage.as_str()),
            task_content: content,
            max_attempts: config.max_attempts,
        },
        now,
    )
    .map(Some)
}

/// Commit the end of a job (if `fence`) and the decision for `task`, which
/// was evaluated on stage `stage`, in the caller's write transaction.
///
/// `job_outcome` is the job's end when the run itself failed; when it is
/// `None` the job's end follows from the decision (retry on a failed gate,
/// done otherwise). `key` makes outbox rows unique per decision (e.g. `job-12`).
#[allow(clippy::too_many_arguments)]
pub fn commit(
    conn: &dyn Executor,
    config: &Config,
    task_id: i64,
    stage: Stage,
    fence: Option<Fence<'_>>,
    job_outcome: Option<&Outcome>,
    decision: &Decision,
    key: &str,
    now: i64,
) -> anyhow::Result<Committed> {
    let backoff = Backoff {
        base_s: config.transient_backoff_base_s,
        max_s: config.transient_backoff_max_s,
    };
    let outcome = job_outcome.cloned().unwrap_or_else(|| match decision {
        Decision::Retry { reason } => Outcome::Retry(reason.clone()),
        Decision::RetryLater { reason, .. } => Outcome::Transient(reason.clone()),
        _ => Outcome::Done,
    });
    let transient_budget = match decision {
        Decision::RetryLater { budget, .. } if job_outcome.is_none() => *budget,
        _ => config.max_transient_attempts,
    };
    let job_end = match fence {
        Some(f) => {
            let end = queue::finish(
                conn,
                f.job_id,
                f.token,
                &outcome,
                backoff,
                transient_budget,
                now,
            )?;
            if end == Finished::LostClaim {
                return Ok(Committed::LostClaim);
            }
            Some(end)
        }
        None => None,
    };
    let job_id = fence.map(|f| f.job_id);
    let task = task::require(conn, task_id)?;
    if task.stage() != stage {
        return Ok(Committed::StageMoved {
            job: job_end,
            stage: task.stage,
        });
    }
    if job_end == Some(Finished::Failed) {
        let text = format!(
            "{}: the {} job {} failed for good on stage {stage}: {}",
            task.work_item_id,
            stage.agent().unwrap_or("stage"),
            job_id.unwrap_or(0),
            outcome.text()
        );
        outbox::push(
            conn,
            &format!("{key}:failed"),
            &Message::Notify { text },
            now,
        )?;
    }
    // A failed run decides nothing about the task.
    if job_outcome.is_some() {
        return Ok(Committed::Applied {
            job: job_end,
            stage: task.stage,
            next_job: None,
            escalated: false,
        });
    }
    let mut applied = None;
    let step = Step {
        conn,
        config,
        task: &task,
        stage,
        job_id,
        key,
        now,
    };
    match decision {
        Decision::Terminal | Decision::Retry { .. } | Decision::RetryLater { .. } => {}
        Decision::AwaitConfirmDeploy { staging_sha } => {
            // Phase A: on to deploy, the lease kept, no deployer job: a human confirms.
            if !move_stage(conn, task_id, stage, Stage::Deploy, now)? {
                return Ok(Committed::StageMoved {
                    job: job_end,
                    stage: task.stage,
                });
            }
            transition(
                conn,
                task_id,
                (stage.as_str(), Stage::Deploy.as_str()),
                "advance",
                "staging verified; awaiting Confirm Deploy",
                job_id,
                now,
            )?;
            // Nobody is asked to confirm a deploy the operator has stopped.
            if task.cancel_requested_at.is_none() {
                crate::pipeline::self_deploy::request_confirmation(
                    conn,
                    &task,
                    staging_sha,
                    key,
                    now,
                )?;
            }
        }
        Decision::AwaitHuman { reason } => await_human(&step, reason)?,
        Decision::Advance { to } => applied = Some(advance(&step, *to)?),
        Decision::Rollback { reason } => applied = Some(rollback(&step, reason)?),
    }
    let (next_job, escalated) = match applied {
        Some(Applied::StageMoved) => {
            return Ok(Committed::StageMoved {
                job: job_end,
                stage: task.stage,
            });
        }
        Some(Applied::Next { job, escalated }) => (job, escalated),
        None => (None, false),
    };
    let stage_now = task::require(conn, task_id)?.stage;
    Ok(Committed::Applied {
        job: job_end,
        stage: stage_now,
        next_job,
        escalated,
    })
}

/// What applying an advance or a rollback did.
enum Applied {
    /// The task was no longer on the evaluated stage: nothing was written.
    StageMoved,
    /// Applied: the next job, if one was enqueued, and whether the task was escalated.
    Next { job: Option<i64>, escalated: bool },
}

/// What every step of a decision writes with, in the caller's transaction.
struct Step<'a> {
    conn: &'a dyn Executor,
    config: &'a Config,
    task: &'a Task,
    stage: Stage,
    job_id: Option<i64>,
    key: &'a str,
    now: i64,
}

/// Advance the task from the evaluated stage to `to`, with the next job and
/// the messages.
fn advance(step: &Step<'_>, to: Stage) -> anyhow::Result<Applied> {
    let &Step {
        conn,
        config,
        task,
        stage,
        job_id,
        key,
        now,
    } = step;
    let task_id = task.id;
    let wi = &task.work_item_id;
    if !move_stage(conn, task_id, stage, to, now)? {
        return Ok(Applied::StageMoved);
    }
    // The merge is done once the task leaves deploy-staging: free the lease.
    if stage == Stage::DeployStaging || to == Stage::Done {
        lease::release_for_task(conn, task_id)?;
    }
    transition(
        conn,
        task_id,
        (stage.as_str(), to.as_str()),
        "advance",
        "",
        job_id,
        now,
    )?;
    let mut next_job = enqueue_stage_job(conn, config, task, to, &task.description, now)?;
    if to == Stage::Done {
        // Production is watched for a window after `done` (one monitor per task).
        next_job = crate::pipeline::post_deploy::arm(conn, config, task, now)?;
    }
    let text = format!("{wi}: {stage} → {to}");
    outbox::push(
        conn,
        &format!("{key}:advance:comment"),
        &Message::Comment {
            task_id,
            author: stage.agent().unwrap_or("orch").to_owned(),
            body: format!("Stage {stage} passed its gates; moved to {to}."),
        },
        now,
    )?;
    if to == Stage::Done {
        outbox::push(
            conn,
            &format!("{key}:done:state"),
            &Message::State {
                task_id,
                state: crate::backends::tracker::state::DONE.to_owned(),
            },
            now,
        )?;
    }
    outbox::push(
        conn,
        &format!("{key}:advance:notify"),
        &Message::Notify { text },
        now,
    )?;
    Ok(Applied::Next {
        job: next_job,
        escalated: false,
    })
}

/// Roll the task back to development, or escalate it to a human after
/// [`MAX_DEVELOPER_RETRIES`].
fn rollback(step: &Step<'_>, reason: &str) -> anyhow::Result<Applied> {
    let &Step {
        conn,
        config,
        task,
        stage,
        job_id,
        key,
        now,
    } = step;
    let task_id = task.id;
    let wi = &task.work_item_id;
    // Neither an escalated nor a rolled-back task can use a merge lease.
    lease::release_for_task(conn, task_id)?;
    let retries = developer_retry_count(conn, task_id)?;
    if retries >= MAX_DEVELOPER_RETRIES {
        conn.task_escalate(task_id, now)?;
        transition(
            conn,
            task_id,
            (stage.as_str(), stage.as_str()),
            "escalate",
            reason,
            job_id,
            now,
        )?;
        let body = format!(
            "Escalated after {retries} developer retries: {reason}. A human must decide how to go on."
        );
        outbox::push(
            conn,
            &format!("{key}:escalate:state"),
            &Message::State {
                task_id,
                state: crate::backends::tracker::state::NEEDS_INPUT.to_owned(),
            },
            now,
        )?;
        outbox::push(
            conn,
            &format!("{key}:escalate:comment"),
            &Message::Comment {
                task_id,
                author: "orch".to_owned(),
                body: body.clone(),
            },
            now,
        )?;
        outbox::push(
            conn,
            &format!("{key}:escalate:notify"),
            &Message::Notify {
                text: format!("{wi}: {body}"),
            },
            now,
        )?;
        Ok(Applied::Next {
            job: None,
            escalated: true,
        })
    } else {
        if !move_stage(conn, task_id, stage, Stage::Development, now)? {
            return Ok(Applied::StageMoved);
        }
        transition(
            conn,
            task_id,
            (stage.as_str(), Stage::Development.as_str()),
            "rollback",
            reason,
            job_id,
            now,
        )?;
        let content = format!(
            "{}\n\nRolled back from {stage} (developer retry {} of {MAX_DEVELOPER_RETRIES}): {reason}",
            task.description,
            retries + 1
        );
        let next_job = enqueue_stage_job(conn, config, task, Stage::Development, &content, now)?;
        let text = format!("{wi}: {stage} → development (rollback): {reason}");
        outbox::push(
            conn,
            &format!("{key}:rollback:comment"),
            &Message::Comment {
                task_id,
                author: stage.agent().unwrap_or("orch").to_owned(),
                body: format!("Rolled back to development: {reason}"),
            },
            now,
        )?;
        outbox::push(
            conn,
            &format!("{key}:rollback:notify"),
            &Message::Notify { text },
            now,
        )?;
        Ok(Applied::Next {
            job: next_job,
            escalated: false,
        })
    }
}

/// Ask a person: the tracker state "In Review", the reason as a comment, a
/// notification. The task stays where it is.
fn await_human(step: &Step<'_>, reason: &str) -> anyhow::Result<()> {
    let &Step {
        conn,
        task,
        key,
        now,
        ..
    } = step;
    let task_id = task.id;
    let wi = &task.work_item_id;
    outbox::push(
        conn,
        &format!("{key}:await:state"),
        &Message::State {
            task_id,
            state: crate::backends::tracker::state::IN_REVIEW.to_owned(),
        },
        now,
    )?;
    outbox::push(
        conn,
        &format!("{key}:await:comment"),
        &Message::Comment {
            task_id,
            author: "orch".to_owned(),
            body: reason.to_owned(),
        },
        now,
    )?;
    outbox::push(
        conn,
        &format!("{key}:await:notify"),
        &Message::Notify {
            text: format!("{wi}: {reason}"),
        },
        now,
    )?;
    Ok(())
}
