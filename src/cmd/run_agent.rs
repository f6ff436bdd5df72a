//! `orch run-agent --next | --job N`: the worker. Take a lock, claim, run the
//! agent in the task's worktree, finalize, exit. Started by a systemd timer
//! (`orch-worker@.service`), by `orch demo`, or by hand.

use std::process::ExitCode;

use crate::cmd::claim;
use crate::context::Ctx;
use crate::error::exit;
use crate::liveness::{self, WorkerLock};
use crate::output;
use crate::pipeline::worker::{self, RunReport};
use crate::queue::{self, ClaimById, Claimer};
use crate::storage;

/// Arguments of `orch run-agent`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["next", "job"])))]
pub struct Args {
    /// Claim the next eligible job (FIFO, respecting every gate).
    #[arg(long)]
    pub next: bool,
    /// Run this job: a queued one (overriding order, gates and backoff, not
    /// max_concurrency), or adopt a running one whose owner is dead.
    #[arg(long, value_name = "N")]
    pub job: Option<i64>,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `orch run-agent`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    claim::sanitize_sweep(ctx, &mut db)?;
    let lock = WorkerLock::acquire(&ctx.locks_dir())?;
    let job = if let Some(id) = args.job {
        let boot_id = liveness::boot_id();
        let claimer = Claimer {
            token: lock.token(),
            pid: std::process::id(),
            boot_id: &boot_id,
        };
        let locks = ctx.locks_dir();
        let max = ctx.config.max_concurrency;
        match db.write(|tx| queue::claim_by_id(tx, &locks, id, claimer, max, storage::now()))? {
            ClaimById::Claimed(job) => *job,
            ClaimById::Refused(why) => {
                lock.release();
                return nothing(args.json, &why);
            }
        }
    } else {
        match claim::claim_with(ctx, &mut db, &lock)? {
            Ok(job) => job,
            Err(why) => {
                lock.release();
                return nothing(args.json, &why.to_string());
            }
        }
    };
    log::info!(
        "claimed job {} ({} on {}, stage {})",
        job.id,
        job.agent,
        job.repo,
        output::opt(job.stage.as_deref())
    );
    let report = worker::run_claimed(ctx, &mut db, &lock, &job);
    lock.release();
    let report = report?;
    if args.json {
        output::print_json(&report)?;
    } else {
        print_human(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn nothing(json: bool, why: &str) -> anyhow::Result<ExitCode> {
    if json {
        output::print_json(&serde_json::json!({ "job_id": null, "why": why }))?;
    } else {
        log::warn!("nothing to run: {why}");
    }
    Ok(ExitCode::from(exit::NOTHING_TO_DO))
}

fn print_human(r: &RunReport) {
    crate::say!(
        "job {} ({} on stage {}, task {}): run {}",
        r.job_id,
        r.agent,
        output::opt(r.stage.as_deref()),
        output::opt(r.task_id),
        if r.run_verdict.is_empty() {
            "not started"
        } else {
            &r.run_verdict
        }
    );
    if let Some(e) = &r.evaluation {
        for g in &e.gates {
            crate::say!("  gate {} {}: {}", g.gate, g.verdict, g.reason);
        }
        crate::say!(
            "  decision: {}",
            serde_json::to_string(&e.decision).unwrap_or_default()
        );
    }
    crate::say!(
        "  committed: {}",
        serde_json::to_string(&r.committed).unwrap_or_default()
    );
    if let Some(log) = &r.log_path {
        crate::say!("  log: {log}");
    }
}
