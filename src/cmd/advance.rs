//! `orch advance --task N`: the human and CI path. Evaluate the gate of the
//! task's current stage and advance it or roll it back, printing every gate's
//! reason. `--approve` first records the human "Approved" status (the gate of
//! analysis) in the local tracker.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::{OrchError, exit};
use crate::outbox;
use crate::output;
use crate::pipeline::engine::{self, Committed};
use crate::pipeline::evaluate::{self, Decision};
use crate::pipeline::task;
use crate::queue;
use crate::storage;
use crate::workspace::Workspace;

/// Arguments of `orch advance`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task.
    #[arg(long)]
    pub task: i64,
    /// Record the human "Approved" status before evaluating (approves an analysis).
    #[arg(long)]
    pub approve: bool,
    /// Confirm the production deploy of the self-hosting repo (the "Confirm
    /// Deploy" status): merge the staging-verified commit and start the deploy hook.
    #[arg(long, conflicts_with = "approve")]
    pub confirm_deploy: bool,
    /// Print the evaluation and what was committed as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `orch advance`. Exit 0 when the task moved (advanced or rolled back),
/// 3 when its gate keeps it where it is.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let now = storage::now();
    let t = task::require(db.conn(), args.task)?;
    let stage = t.stage();
    if stage.is_terminal() {
        return finish(
            args.json,
            None,
            None,
            &format!("task {} is {}; nothing to advance", t.id, t.stage),
        );
    }
    if args.confirm_deploy {
        let confirmed = crate::pipeline::self_deploy::confirm(ctx, &mut db, t.id, false)?;
        if args.json {
            output::print_json(&confirmed)?;
        } else {
            println!("task {}: {}", t.id, confirmed.note);
        }
        return Ok(if confirmed.note == "self-deploy-initiated" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(exit::NOTHING_TO_DO)
        });
    }
    if args.approve {
        db.write(|tx| {
            crate::backends::tracker::local::set_state(
                tx,
                t.id,
                crate::backends::tracker::state::APPROVED,
                now,
            )?;
            tx.execute(
                "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
                 VALUES (?1, ?2, ?2, 'approve', 'approved by a human (orch advance --approve)', ?3)",
                rusqlite::params![t.id, t.stage, now],
            )?;
            Ok(())
        })?;
    }
    let active: Vec<_> = queue::for_task(db.conn(), t.id)?
        .into_iter()
        .filter(|j| j.status == "queued" || j.status == "running")
        .collect();
    if let Some(j) = active.first() {
        return finish(
            args.json,
            None,
            None,
            &format!(
                "task {} has job {} {} ({}); its gates are evaluated when that job ends",
                t.id, j.id, j.status, j.agent
            ),
        );
    }
    let branch = t
        .branch
        .clone()
        .ok_or_else(|| OrchError::Usage(format!("task {} has no branch", t.id)))?;
    let ws = Workspace::new(&ctx.repos_dir(), &t.repo, ctx.config.repo(&t.repo)?)?;
    let worktree = ws.prepare(&t.work_item_id, &branch)?;
    let evaluation = evaluate::evaluate(ctx, db.conn(), &t, &worktree, None)?;
    let transitions: i64 = db.conn().query_row(
        "SELECT count(*) FROM task_transitions WHERE task_id = ?1",
        [t.id],
        |r| r.get(0),
    )?;
    let key = format!("task-{}-{}-{transitions}", t.id, t.stage);
    let committed = db.write(|tx| {
        engine::commit(
            tx,
            &ctx.config,
            t.id,
            stage,
            None,
            None,
            &evaluation.decision,
            &key,
            storage::now(),
        )
    })?;
    if let Err(e) = outbox::deliver(ctx, &mut db) {
        log::warn!("delivering the outbox: {e:#}");
    }
    let moved = matches!(
        (&evaluation.decision, &committed),
        (
            Decision::Advance { .. }
                | Decision::Rollback { .. }
                | Decision::AwaitConfirmDeploy { .. },
            Committed::Applied { .. }
        )
    );
    let line = match &evaluation.decision {
        Decision::Advance { to } => format!("task {} advanced: {stage} → {to}", t.id),
        Decision::Rollback { reason } => match &committed {
            Committed::Applied {
                escalated: true, ..
            } => {
                format!("task {} escalated to a human: {reason}", t.id)
            }
            _ => format!("task {} rolled back to development: {reason}", t.id),
        },
        Decision::AwaitHuman { reason } => format!("task {} waits: {reason}", t.id),
        Decision::Retry { reason } | Decision::RetryLater { reason, .. } => {
            format!("task {} stays on {stage}: {reason}", t.id)
        }
        Decision::Terminal => format!("task {} is {stage}; nothing to advance", t.id),
        Decision::AwaitConfirmDeploy { staging_sha } => format!(
            "task {} advanced: {stage} → deploy; staging verified {staging_sha}; waiting for Confirm Deploy (orch advance --task {} --confirm-deploy)",
            t.id, t.id
        ),
    };
    if args.json {
        output::print_json(&serde_json::json!({
            "task_id": t.id, "evaluation": evaluation, "committed": committed, "moved": moved
        }))?;
    } else {
        for g in &evaluation.gates {
            println!("gate {} {}: {}", g.gate, g.verdict, g.reason);
        }
        println!("{line}");
    }
    Ok(if moved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NOTHING_TO_DO)
    })
}

fn finish(
    json: bool,
    evaluation: Option<&evaluate::Evaluation>,
    committed: Option<&Committed>,
    line: &str,
) -> anyhow::Result<ExitCode> {
    if json {
        output::print_json(&serde_json::json!({
            "evaluation": evaluation, "committed": committed, "moved": false, "note": line
        }))?;
    } else {
        println!("{line}");
    }
    Ok(ExitCode::from(exit::NOTHING_TO_DO))
}
