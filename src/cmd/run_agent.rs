//! `orch run-agent --next | --job N`: the worker. Take a lock, claim, run the
//! agent in the task's worktree, finalize, exit. Started by a systemd timer
//! (`orch-worker@.service`), by `orch demo`, or by hand.

use std::process::ExitCode;

use crate::cmd::claim;
use crate::context::Ctx;
use crate::error::exit;
use crate::liveness;
use crate::output;
use crate::pipeline::run_summary;
use crate::pipeline::worker;
use crate::queue::{self, ClaimById, Claimer};
use crate::storage::{self, Db};

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
    /// With --next: keep claiming while work is claimable (at most N jobs,
    /// default 50), so a stage's successor starts the moment it is
    /// committed; each job is claimed under a lock of its own. What the
    /// worker unit runs, woken by orch-worker@.path (docs/architecture.md).
    #[arg(long, value_name = "N", requires = "next", num_args = 0..=1, default_missing_value = "50")]
    pub until_idle: Option<u32>,
    /// Print the run report as JSON (with --until-idle, one per line).
    #[arg(long)]
    pub json: bool,
}

/// Run `orch run-agent`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let Some(max_jobs) = args.until_idle else {
        return run_one(ctx, &mut db, args, true);
    };
    // The exit code of the last job that did not end well, 0 when all
    // did, 3 when there was nothing to run at all.
    let mut exit = None;
    for _ in 0..max_jobs.max(1) {
        // Taken before the claim: work committed from now on wakes a
        // worker again, even if this one finds nothing and stops.
        storage::wake::consume(&ctx.state_dir);
        let code = run_one(ctx, &mut db, args, exit.is_none())?;
        if code == ExitCode::from(exit::NOTHING_TO_DO) {
            break;
        }
        if code != ExitCode::SUCCESS || exit.is_none() {
            exit = Some(code);
        }
    }
    Ok(exit.unwrap_or(ExitCode::from(exit::NOTHING_TO_DO)))
}

/// Claim one job (or the one named) and run it to its committed end;
/// `explain_nothing` says why when there is nothing to claim.
fn run_one(ctx: &Ctx, db: &mut Db, args: &Args, explain_nothing: bool) -> anyhow::Result<ExitCode> {
    let locks = ctx.locks()?;
    let lock = locks.acquire()?;
    let job = if let Some(id) = args.job {
        let boot_id = liveness::boot_id();
        let claimer = Claimer {
            token: lock.token(),
            pid: std::process::id(),
            boot_id: &boot_id,
        };
        let max = ctx.config.max_concurrency;
        match db.write(|tx| queue::claim_by_id(tx, &locks, id, claimer, max, storage::now()))? {
            ClaimById::Claimed(job) => *job,
            ClaimById::Refused(why) => {
                lock.release();
                let why = refused_by_id(db, id, why)?;
                return nothing(db, args.json, &why, false);
            }
        }
    } else {
        match claim::claim_with(ctx, db, &locks, &lock)? {
            Ok(job) => job,
            Err(why) if !explain_nothing => {
                lock.release();
                log::info!("nothing more to run: {}", output::safe(&why.to_string()));
                return Ok(ExitCode::from(exit::NOTHING_TO_DO));
            }
            Err(why) => {
                lock.release();
                return nothing(db, args.json, &why.to_string(), true);
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
    let report = worker::run_claimed(ctx, db, &lock, &job);
    lock.release();
    let report = report?;
    if args.json && args.until_idle.is_some() {
        output::print_json_line(&report)?;
    } else if args.json {
        output::print_json(&report)?;
    } else {
        let after = queue::get(db.conn(), job.id)?;
        for line in run_summary::lines(db.conn(), &report, after.as_ref()) {
            crate::say!("{line}");
        }
    }
    Ok(ExitCode::from(report.ending.exit_code()))
}

/// Nothing was claimed: say why (exit 3), and with `stuck`, name the jobs
/// that failed for good and hold their tasks up: no worker runs them again.
fn nothing(db: &Db, json: bool, why: &str, stuck: bool) -> anyhow::Result<ExitCode> {
    let stuck = if stuck {
        run_summary::stuck_failed(db.conn())?
    } else {
        Vec::new()
    };
    if json {
        output::print_json(&serde_json::json!({ "job_id": null, "why": why, "failed": stuck }))?;
        return Ok(ExitCode::from(exit::NOTHING_TO_DO));
    }
    log::warn!("nothing to run: {}", output::safe(why));
    for s in &stuck {
        log::warn!(
            "job {} ({} of task {}) failed for good: {}; see `orch job show {}`, then `orch job retry {}`",
            s.job_id,
            s.agent,
            s.task_id,
            output::safe(s.error.as_deref().unwrap_or("-")),
            s.job_id,
            s.job_id
        );
    }
    Ok(ExitCode::from(exit::NOTHING_TO_DO))
}

/// Why `--job N` was refused, with the way out when the job failed for good.
fn refused_by_id(db: &Db, id: i64, why: String) -> anyhow::Result<String> {
    let failed = queue::get(db.conn(), id)?.is_some_and(|j| j.status == "failed");
    Ok(if failed {
        format!("{why} (it failed for good: `orch job show {id}`, then `orch job retry {id}`)")
    } else {
        why
    })
}
