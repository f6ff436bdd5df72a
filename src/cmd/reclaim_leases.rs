//! `orch reclaim-leases`: one merge-lease pass. A lease whose holder can no
//! longer use it (task done, cancelled or rolled back; merging job gone) is
//! reclaimed; a live merge or a task parked on `deploy` keeps its lease.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::output;
use crate::pipeline::lease;
use crate::storage;

/// Arguments of `orch reclaim-leases`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the reclaimed leases as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `orch reclaim-leases`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let reclaimed = lease::reclaim_pass(&mut db, &ctx.config, &ctx.locks()?, storage::now())?;
    if let Err(e) = crate::outbox::deliver(ctx, &mut db) {
        log::warn!("delivering the outbox: {e:#}");
    }
    let held = lease::all(db.conn())?;
    if args.json {
        output::print_json(&serde_json::json!({
            "enabled": ctx.config.lease_reclaim_enabled,
            "reclaimed": reclaimed,
            "held": held,
        }))?;
    } else {
        if !ctx.config.lease_reclaim_enabled {
            crate::say!("lease reclaim is disabled (lease_reclaim_enabled = false)");
        }
        crate::say!(
            "reclaimed {} lease(s); {} held",
            reclaimed.len(),
            held.len()
        );
        for r in &reclaimed {
            crate::say!("  {} from {}: {}", r.lease.repo, r.lease.branch, r.why);
        }
        for l in &held {
            crate::say!(
                "  held: {} by {} (task {})",
                l.repo,
                l.branch,
                output::opt(l.task_id)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
