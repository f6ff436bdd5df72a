//! Advancing a task without a job: the human/CI path (`orch advance`), the
//! webhook routes ("Approved") and the reconciler all evaluate the current
//! stage's gates and commit the decision here, guarded by the task's stage so
//! that racing callers advance it once.

use serde::Serialize;

use crate::backends::tracker;
use crate::context::Ctx;
use crate::error::OrchError;
use crate::outbox;
use crate::pipeline::engine::{self, Committed};
use crate::pipeline::evaluate::{self, Decision, Evaluation};
use crate::pipeline::{self_deploy, task};
use crate::queue;
use crate::storage::{Db, now};
use crate::workspace::Workspace;

/// What an advance did.
#[derive(Debug, Clone, Serialize)]
pub struct Advanced {
    /// The task.
    pub task_id: i64,
    /// The gates and the decision, when they were evaluated.
    pub evaluation: Option<Evaluation>,
    /// What was committed.
    pub committed: Option<Committed>,
    /// Whether the task moved (advanced, rolled back, or parked for Confirm Deploy).
    pub moved: bool,
    /// One line for people.
    pub note: String,
}

/// Record the human "Approved" status in the local tracker. On a task parked
/// awaiting Confirm Deploy it records nothing ("Approved" does not deploy).
pub fn record_approval(ctx: &Ctx, db: &mut Db, task_id: i64, by: &str) -> anyhow::Result<()> {
    let t = task::require(db.conn(), task_id)?;
    if self_deploy::awaiting_confirm(db.conn(), &ctx.config, &t)? {
        log::info!("task {task_id}: \"Approved\" by {by} on deploy: approved-on-deploy-noop");
        return Ok(());
    }
    db.write(|tx| {
        tracker::local::set_state(tx, t.id, tracker::state::APPROVED, now())?;
        tx.task_record_approval(t.id, &t.stage, &format!("approved by {by}"), now())?;
        Ok(())
    })
}

/// Evaluate `task_id`'s current gates and commit the decision.
pub fn advance_task(ctx: &Ctx, db: &mut Db, task_id: i64) -> anyhow::Result<Advanced> {
    let t = task::require(db.conn(), task_id)?;
    let stage = t.stage();
    let mut out = Advanced {
        task_id,
        evaluation: None,
        committed: None,
        moved: false,
        note: String::new(),
    };
    if stage.is_terminal() {
        out.note = format!("task {task_id} is {stage}; nothing to advance");
        return Ok(out);
    }
    if let Some(j) = queue::for_task(db.conn(), task_id)?
        .into_iter()
        .find(|j| j.status == "queued" || j.status == "running")
    {
        out.note = format!(
            "task {task_id} has job {} {} ({}); its gates are evaluated when that job ends",
            j.id, j.status, j.agent
        );
        return Ok(out);
    }
    // Parked awaiting Confirm Deploy: phase A already asked the human once.
    // Committing `AwaitHuman` again would post "In Review", a comment and a
    // notification on every `orch advance` and every reconcile pass.
    if self_deploy::awaiting_confirm(db.conn(), &ctx.config, &t)? {
        log::info!(
            "task {task_id}: approved-on-deploy-noop (awaiting Confirm Deploy; nothing posted)"
        );
        out.note = format!(
            "task {task_id} waits on deploy for \"Confirm Deploy\": {}",
            self_deploy::APPROVED_ON_DEPLOY_NOOP
        );
        out.evaluation = Some(Evaluation::new(
            Vec::new(),
            Decision::AwaitHuman {
                reason: self_deploy::APPROVED_ON_DEPLOY_NOOP.to_owned(),
            },
        ));
        return Ok(out);
    }
    let branch = t
        .branch
        .clone()
        .ok_or_else(|| OrchError::Usage(format!("task {task_id} has no branch")))?;
    let ws = Workspace::new(&ctx.repos_dir(), &t.repo, ctx.config.repo(&t.repo)?)?;
    let worktree = ws.prepare(&crate::pipeline::cancel::original(&t.work_item_id), &branch)?;
    let evaluation = evaluate::evaluate(ctx, db.conn(), &t, &worktree, None)?;
    let transitions = db.conn().task_transition_count(task_id)?;
    let key = format!("task-{task_id}-{}-{transitions}", t.stage);
    let committed = db.write(|tx| {
        engine::commit(
            tx,
            &ctx.config,
            task_id,
            stage,
            None,
            None,
            &evaluation.decision,
            &key,
            now(),
        )
    })?;
    if let Err(e) = outbox::deliver(ctx, db) {
        log::warn!("delivering the outbox: {e:#}");
    }
    out.moved = matches!(
        (&evaluation.decision, &committed),
        (
            Decision::Advance { .. }
                | Decision::Rollback { .. }
                | Decision::AwaitConfirmDeploy { .. },
            Committed::Applied { .. }
        )
    );
    out.note = match &evaluation.decision {
        Decision::Advance { to } => format!("task {task_id} advanced: {stage} → {to}"),
        Decision::Rollback { reason } => match &committed {
            Committed::Applied {
                escalated: true, ..
            } => {
                format!("task {task_id} escalated to a human: {reason}")
            }
            _ => format!("task {task_id} rolled back to development: {reason}"),
        },
        Decision::AwaitHuman { reason } => format!("task {task_id} waits: {reason}"),
        Decision::Retry { reason } | Decision::RetryLater { reason, .. } => {
            format!("task {task_id} stays on {stage}: {reason}")
        }
        Decision::Terminal => format!("task {task_id} is {stage}; nothing to advance"),
        Decision::AwaitConfirmDeploy { staging_sha } => format!(
            "task {task_id} advanced: {stage} → deploy; staging verified {staging_sha}; waiting for Confirm Deploy (orch advance --task {task_id} --confirm-deploy)"
        ),
    };
    if let Committed::StageMoved { stage: now_on, .. } = &committed {
        out.note = format!("task {task_id} moved to {now_on} meanwhile; nothing committed");
    }
    out.evaluation = Some(evaluation);
    out.committed = Some(committed);
    Ok(out)
}
