//! `orch reap`: one reaper pass (docs/crash-safety.md). Run it from a timer
//! (`orch-reap.timer`), by hand, or concurrently: every end it writes is fenced.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::liveness::reaper;
use crate::output;

/// Arguments of `orch reap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what the pass did as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `orch reap`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let pass = reaper::reap_once(ctx, &mut db)?;
    if args.json {
        output::print_json(&pass)?;
    } else {
        crate::say!(
            "reaped {} of {} running job(s); {} finalizer deferral(s), {} in start grace, {} backstopped, {} impossible queued healed, {} lease(s) reclaimed",
            pass.reaped.iter().filter(|r| r.outcome != "lost").count(),
            pass.running,
            pass.finalizer_defers,
            pass.start_grace_defers,
            pass.backstopped,
            pass.impossible_queued_healed,
            pass.leases_reclaimed.len()
        );
        for r in &pass.reaped {
            crate::say!(
                "  job {} ({}): {} — {}",
                r.job_id,
                r.agent,
                r.outcome,
                r.reason
            );
        }
        for l in &pass.leases_reclaimed {
            crate::say!(
                "  lease {} from {}: {}",
                l.lease.repo,
                l.lease.branch,
                l.why
            );
        }
        for e in &pass.errors {
            crate::say!("  error: {e}");
        }
    }
    Ok(if pass.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
