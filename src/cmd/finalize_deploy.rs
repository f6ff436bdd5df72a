//! `orch finalize-deploy --task N`: phase C of the self-hosting deploy — read
//! the deploy hook's result, write `14-deploy-log.md`, advance (SUCCESS →
//! done) or roll back (FAILED → development), apply a deferred STOP.
//! Idempotent; the `deploy-finalizer` job runs the same code.

use std::process::ExitCode;
use std::time::Duration;

use crate::context::Ctx;
use crate::error::exit;
use crate::output;
use crate::pipeline::self_deploy;

/// Arguments of `orch finalize-deploy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task whose production deploy to finalize.
    #[arg(long)]
    pub task: i64,
    /// Wait up to this many seconds for the deploy hook to finish.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub wait: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `orch finalize-deploy`. Exit 0 when finalized, 3 when there is nothing
/// to do yet (the hook still runs) or any more (already finalized).
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let result = self_deploy::finalize(
        ctx,
        &mut db,
        args.task,
        None,
        Duration::from_secs(args.wait),
    )?;
    if args.json {
        output::print_json(&result)?;
    } else {
        crate::say!(
            "task {}: {}{}",
            args.task,
            result.note,
            result
                .deploy_status
                .as_deref()
                .map(|s| format!(
                    " (deploy_status {s}, hook exit {})",
                    output::opt(result.hook_exit_code)
                ))
                .unwrap_or_default()
        );
    }
    Ok(if result.note == "finalized" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NOTHING_TO_DO)
    })
}
