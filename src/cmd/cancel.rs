//! `orch cancel --task N`: STOP semantics — the full reset, or a deferral
//! inside a critical window (docs/cancel.md). Idempotent.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::exit;
use crate::output;
use crate::pipeline::cancel;

/// Arguments of `orch cancel`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task to cancel.
    #[arg(long)]
    pub task: i64,
    /// Why (shown in the tracker comment, the notification and the task's history).
    #[arg(long, default_value = "cancelled by an operator")]
    pub reason: String,
    /// Apply the full reset even inside a critical window (an operator's override).
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `orch cancel`. Exit 0 when the task was cancelled or the cancel
/// deferred, 3 when there was nothing to cancel (missing, done, cancelled,
/// or STOP not applicable).
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let result = cancel::cancel_task(ctx, &mut db, args.task, &args.reason, args.force)?;
    if args.json {
        output::print_json(&result)?;
    } else {
        crate::say!(
            "task {}: {}{}",
            args.task,
            result.note,
            if result.stopped > 0 {
                format!(" ({} running agent(s) stopped)", result.stopped)
            } else {
                String::new()
            }
        );
    }
    Ok(if result.note == "cancelled" || result.deferred {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NOTHING_TO_DO)
    })
}
