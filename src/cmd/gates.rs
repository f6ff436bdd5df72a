//! `orch gates check --task N`: dry-run the gates of a task's current stage
//! against its worktree now. The work is in [`crate::pipeline::gate_check`].

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::{OrchError, exit};
use crate::output;
use crate::pipeline::gate_check::{self, DryRun};
use crate::pipeline::run_summary::EXIT_GATES;
use crate::pipeline::task;

/// Gate subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Dry-run the gates of a task's current stage against its worktree, listing every problem.
    ///
    /// Every artifact's every problem at once (missing file, missing
    /// frontmatter, each missing or invalid field with the values expected),
    /// without changing anything: no job, no transition, no agent. Gates that
    /// would run the tests or talk to a forge are shown as not checked. Exit
    /// 0 when every checked gate passes, 4 when one fails or rejects, 3 when
    /// the task's stage has no gates (created, done, cancelled), 1 when the
    /// task does not exist.
    Check(CheckArgs),
}

/// Arguments of `orch gates check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The task.
    #[arg(long, value_name = "N")]
    pub task: i64,
    /// Print the dry run as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run a gates subcommand.
pub fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    let Command::Check(args) = command;
    let db = ctx.open_db()?;
    let task = task::require(db.conn(), args.task)?;
    let Some(dry) = gate_check::check(ctx, db.conn(), &task)? else {
        return Err(OrchError::NothingToDo(format!(
            "task {} is on {}: no gates to check",
            task.id, task.stage
        ))
        .into());
    };
    if args.json {
        output::print_json(&dry)?;
    } else {
        print_human(&dry);
    }
    Ok(ExitCode::from(if dry.passed {
        exit::OK
    } else {
        EXIT_GATES
    }))
}

fn print_human(dry: &DryRun) {
    crate::say!(
        "task {} ({}) on stage {}: gates checked against {}",
        dry.task_id,
        dry.work_item_id,
        dry.stage,
        dry.artifact_dir
    );
    for g in &dry.gates {
        let status = g.status.replace('_', " ");
        if g.problems.len() > 1 {
            crate::say!("  {} {status}: {} problems", g.gate, g.problems.len());
            for p in &g.problems {
                crate::say!("    - {}", output::safe(p));
            }
        } else {
            crate::say!("  {} {status}: {}", g.gate, output::safe(&g.reason));
        }
    }
    let failing = dry
        .gates
        .iter()
        .filter(|g| g.status == "fail" || g.status == "reject")
        .count();
    crate::say!(
        "{} (a dry run: nothing was changed; gates not checked run with the job)",
        if failing == 0 {
            "every checked gate passes".to_owned()
        } else {
            format!("{failing} gate(s) do not pass")
        }
    );
}
