//! `orch advance --task N`: the human and CI path. Evaluate the gate of the
//! task's current stage and advance it or roll it back, printing every gate's
//! reason. `--approve` first records the human "Approved" status (the gate of
//! analysis) in the local tracker.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::exit;
use crate::output;
use crate::pipeline::{advance, task};

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
    let t = task::require(db.conn(), args.task)?;
    let stage = t.stage();
    if stage.is_terminal() {
        return finish(
            args.json,
            &format!("task {} is {}; nothing to advance", t.id, t.stage),
        );
    }
    if args.confirm_deploy {
        let confirmed = crate::pipeline::self_deploy::confirm(ctx, &mut db, t.id, false)?;
        if args.json {
            output::print_json(&confirmed)?;
        } else {
            crate::say!("task {}: {}", t.id, confirmed.note);
        }
        return Ok(if confirmed.note == "self-deploy-initiated" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(exit::NOTHING_TO_DO)
        });
    }
    if args.approve {
        advance::record_approval(ctx, &mut db, t.id, "a human (orch advance --approve)")?;
    }
    let result = advance::advance_task(ctx, &mut db, t.id)?;
    if args.json {
        output::print_json(&result)?;
    } else {
        if let Some(e) = &result.evaluation {
            for g in &e.gates {
                crate::say!("gate {} {}: {}", g.gate, g.verdict, g.reason);
            }
        }
        crate::say!("{}", result.note);
    }
    Ok(if result.moved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NOTHING_TO_DO)
    })
}

fn finish(json: bool, line: &str) -> anyhow::Result<ExitCode> {
    if json {
        output::print_json(&serde_json::json!({
            "evaluation": null, "committed": null, "moved": false, "note": line
        }))?;
    } else {
        crate::say!("{line}");
    }
    Ok(ExitCode::from(exit::NOTHING_TO_DO))
}
