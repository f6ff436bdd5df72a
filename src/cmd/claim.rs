//! `orch claim`: take a lock, claim the next eligible job with that lock's
//! token, print it. Exit 3 when nothing is claimable, saying why.
//!
//! The claiming process is the job's owner: once it exits, `orch status`
//! shows the owner dead and `orch reap` requeues the job after
//! `reaper_start_grace_s` unless a worker (`orch run-agent --job N`) takes it
//! over, and the claim has cost one of the job's attempts. It is a scripting
//! primitive for external workers; the pipeline's own workers claim inside
//! `orch run-agent --next`.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::crash;
use crate::error::exit;
use crate::liveness::{self, Locks, WorkerLock};
use crate::output;
use crate::queue::{self, Claimer, Gates, Job, Unclaimable};
use crate::storage::{self, Db};

/// Arguments of `orch claim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the claimed job (or why none was claimed) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Claim the next job for the holder of `lock` (taken from `locks`).
pub fn claim_with(
    ctx: &Ctx,
    db: &mut Db,
    locks: &Locks,
    lock: &WorkerLock,
) -> anyhow::Result<Result<Job, Unclaimable>> {
    let gates = Gates::from_config(&ctx.config);
    let boot_id = liveness::boot_id();
    let claimer = Claimer {
        token: lock.token(),
        pid: std::process::id(),
        boot_id: &boot_id,
    };
    let now = storage::now();
    // With the proactive reclaim off, an expired lease is reclaimed lazily here.
    crate::pipeline::lease::reclaim_expired_before_claim(db.conn(), &ctx.config, locks, now);
    crash::point("claim.locked");
    let claimed = db.write(|tx| Ok(queue::claim(tx, claimer, gates, now)?))?;
    match claimed {
        Some(job) => {
            crash::point("claim.committed");
            Ok(Ok(job))
        }
        None => Ok(Err(db.read(|tx| Ok(queue::diagnose(tx, gates, now)?))?)),
    }
}

/// Run `orch claim`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let locks = ctx.locks()?;
    let lock = locks.acquire()?;
    let result = claim_with(ctx, &mut db, &locks, &lock)?;
    lock.release();
    match result {
        Ok(job) => {
            if args.json {
                output::print_json(&serde_json::json!({ "claimed": job }))?;
            } else {
                crate::say!(
                    "claimed job {} ({} on {}, task {}, stage {}, attempt {}/{})",
                    job.id,
                    job.agent,
                    job.repo,
                    output::opt(job.task_id),
                    output::opt(job.stage.as_deref()),
                    job.attempts,
                    job.max_attempts
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            if args.json {
                output::print_json(&serde_json::json!({ "claimed": null, "why": why }))?;
            } else {
                log::warn!("nothing to claim: {why}");
            }
            Ok(ExitCode::from(exit::NOTHING_TO_DO))
        }
    }
}
