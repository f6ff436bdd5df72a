//! `orch reconcile`: one reconciler pass (docs/integrations.md) — pending
//! webhook deliveries, the outbox, stuck stages, the tracker poll. Run it
//! from a timer (`orch-reconcile.timer`) or by hand.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::output;
use crate::pipeline::reconcile;

/// Arguments of `orch reconcile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what the pass did as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `orch reconcile`. Exit 0, or 1 when a step failed (the others ran;
/// `errors` says which).
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let r = reconcile::reconcile_once(ctx, &mut db);
    if args.json {
        output::print_json(&r)?;
    } else {
        crate::say!(
            "deliveries: {} acted, {} ignored, {} failed; outbox: {} delivered, {} retrying, {} dead; {} task(s) advanced; {} started or replayed from the tracker",
            r.deliveries.acted,
            r.deliveries.ignored,
            r.deliveries.failed,
            r.outbox.delivered,
            r.outbox.retrying,
            r.outbox.dead,
            r.advanced.len(),
            r.polled.len()
        );
        for line in r
            .deliveries
            .notes
            .iter()
            .chain(&r.advanced)
            .chain(&r.polled)
        {
            crate::say!("  {line}");
        }
        if !r.skipped.is_empty() {
            let skipped: Vec<String> = r.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
            crate::say!("  skipped: {}", skipped.join(", "));
        }
        for e in &r.errors {
            crate::say!("  error: {e}");
        }
    }
    // Partial: a step failed, every other step ran (docs/exit-codes.md).
    Ok(if r.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
