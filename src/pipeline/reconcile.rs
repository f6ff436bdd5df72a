//! The reconciler (`orch reconcile`): repair the drift between the source of
//! truth and the task's stage that lost webhooks and crashes leave behind.
//! One pass processes pending webhook deliveries, delivers the outbox,
//! advances tasks whose gate is already green (never analysis, the human's
//! gate; skipping escalated, blocked, busy and terminal tasks, after a
//! per-stage grace), and polls Plane for
//! issues whose webhook never arrived. Every step is idempotent.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backends::tracker::{self, key, plane::PlaneClient};
use crate::context::Ctx;
use crate::outbox;
use crate::pipeline::{Stage, advance, cancel, self_deploy, task};
use crate::queue;
use crate::storage::{Db, counters, now};
use crate::webhooks::route::{self, Routed};

/// Grace before a task idle on a stage is re-evaluated, in seconds.
pub const DEFAULT_GRACE_S: i64 = 300;

/// What one pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Reconciled {
    /// Webhook deliveries processed.
    pub deliveries: route::Processed,
    /// Outbox messages delivered, retrying, dead.
    pub outbox: outbox::Delivery,
    /// Tasks moved by a gate that was already green.
    pub advanced: Vec<String>,
    /// Tasks left alone, by reason.
    pub skipped: BTreeMap<String, u32>,
    /// What the tracker poll did.
    pub polled: Vec<String>,
    /// Tasks whose pending STOP was applied (its critical window had closed).
    pub cancels_applied: Vec<i64>,
    /// The steps that failed (`step: error`); every other step still ran.
    pub errors: Vec<String>,
}

/// One reconcile pass. Never raises past a step: each step (deliveries,
/// outbox, pending STOPs, stuck stages, the tracker poll, the final outbox
/// flush) is isolated, its error is collected in `errors`, and the next step
/// still runs — a Plane outage must not keep a STOP's notification, queued
/// by an earlier step, from going out. The pass is recorded in the counter
/// `reconcile_passes_total` (its `last` detail is what `orch status` shows).
pub fn reconcile_once(ctx: &Ctx, db: &mut Db) -> Reconciled {
    let t0 = now();
    let mut out = Reconciled::default();
    match route::process_pending(ctx, db) {
        Ok(d) => out.deliveries = d,
        Err(e) => step_failed(&mut out, "webhook deliveries", &e),
    }
    match outbox::deliver(ctx, db) {
        Ok(d) => out.outbox = d,
        Err(e) => step_failed(&mut out, "outbox", &e),
    }
    if ctx.config.reconcile_enabled {
        // Before anything advances a task: a STOP whose window closed is final.
        match cancel::apply_pending(ctx, db) {
            Ok(pending) => {
                out.cancels_applied = pending.applied.into_iter().map(|(id, _)| id).collect();
                for e in pending.errors {
                    step_failed(&mut out, "pending STOP", &anyhow::anyhow!(e));
                }
            }
            Err(e) => step_failed(&mut out, "pending STOPs", &e),
        }
        if let Err(e) = stuck_stages(ctx, db, &mut out) {
            step_failed(&mut out, "stuck stages", &e);
        }
        if ctx.config.tracker == "plane"
            && let Err(e) = poll_plane(ctx, db, &mut out)
        {
            step_failed(&mut out, "tracker poll", &e);
        }
    } else {
        out.skipped.insert("reconcile disabled".into(), 1);
    }
    // What the steps above queued for the tracker goes out now, whatever failed.
    match outbox::deliver(ctx, db) {
        Ok(more) => {
            out.outbox.delivered += more.delivered;
            out.outbox.retrying = more.retrying;
            out.outbox.dead += more.dead;
        }
        Err(e) => step_failed(&mut out, "final outbox flush", &e),
    }
    let detail = serde_json::json!({
        "at": t0,
        "deliveries_acted": out.deliveries.acted,
        "deliveries_failed": out.deliveries.failed,
        "outbox_delivered": out.outbox.delivered,
        "advanced": out.advanced.len(),
        "polled": out.polled.len(),
        "cancels_applied": out.cancels_applied.len(),
        "skipped": out.skipped,
        "errors": out.errors,
    });
    if let Err(e) = db.write(|tx| {
        counters::bump(tx, "reconcile_passes_total", 1, Some(&detail), now())?;
        Ok(())
    }) {
        step_failed(&mut out, "recording the pass", &e);
    }
    out
}

fn step_failed(out: &mut Reconciled, step: &str, e: &anyhow::Error) {
    log::warn!("reconcile: {step}: {e:#}");
    out.errors.push(format!("{step}: {e:#}"));
}

fn grace_for(ctx: &Ctx, stage: Stage) -> i64 {
    serde_json::from_str::<BTreeMap<String, i64>>(&ctx.config.reconcile_grace_overrides_json)
        .ok()
        .and_then(|m| m.get(stage.as_str()).copied())
        .unwrap_or(DEFAULT_GRACE_S)
}

fn skip(out: &mut Reconciled, why: &str) {
    *out.skipped.entry(why.to_owned()).or_default() += 1;
}

/// F-1: a task idle on a stage whose gate is green is advanced.
fn stuck_stages(ctx: &Ctx, db: &mut Db, out: &mut Reconciled) -> anyhow::Result<()> {
    let t0 = now();
    let tasks = task::list(db.conn(), None, None, 10_000)?;
    for t in tasks {
        let stage = t.stage();
        if stage.is_terminal() {
            skip(out, "terminal");
            continue;
        }
        if stage == Stage::Created {
            continue;
        }
        // Analysis is the human's gate: re-posting the approval request would
        // override the state a person set on the issue, and advancing it is
        // the person's call ("Approved", replayed by the poll below).
        if stage == Stage::Analysis {
            skip(out, "analysis (human gate)");
            continue;
        }
        // Phase A asked for Confirm Deploy once; asking again on a timer is noise.
        if self_deploy::awaiting_confirm(db.conn(), &ctx.config, &t)? {
            skip(out, "awaiting Confirm Deploy");
            continue;
        }
        // Gates that run the test suite or the merge gate are never re-run
        // from a timer: only a job (or a person) pays for them.
        let expensive = matches!(stage, Stage::DeployStaging)
            || (stage == Stage::Development && ctx.config.forge != "gitea");
        if expensive {
            skip(out, "gate runs commands");
            continue;
        }
        if t.escalated_at.is_some() {
            skip(out, "escalated");
            continue;
        }
        if queue::for_task(db.conn(), t.id)?
            .iter()
            .any(|j| j.status == "queued" || j.status == "running")
        {
            skip(out, "busy");
            continue;
        }
        if t0 - t.updated_at < grace_for(ctx, stage) {
            skip(out, "within grace");
            continue;
        }
        if ctx.config.reconcile_skip_blocked_enabled {
            let local = t.tracker_state.as_deref();
            let blocked_locally = matches!(
                local,
                Some(tracker::state::BLOCKED | tracker::state::NEEDS_INPUT)
            );
            let blocked_remote = match tracker::remote_state_key(ctx, &t) {
                Ok(k) => matches!(k.as_deref(), Some(key::BLOCKED | key::NEEDS_INPUT)),
                Err(e) => {
                    log::warn!("reading the tracker state of task {}: {e:#}", t.id);
                    skip(out, "tracker unreachable");
                    continue;
                }
            };
            if blocked_locally || blocked_remote {
                skip(out, "blocked or needs input");
                continue;
            }
        }
        match advance::advance_task(ctx, db, t.id) {
            Ok(a) if a.moved => {
                let moved = a.note.clone();
                if ctx.config.reconcile_notify_unblock {
                    db.write(|tx| {
                        outbox::push(
                            tx,
                            &format!("reconcile-{}-{}", t.id, t.updated_at),
                            &outbox::Message::Notify {
                                text: format!("reconciler: {moved}"),
                            },
                            now(),
                        )?;
                        Ok(())
                    })?;
                }
                out.advanced.push(a.note);
            }
            Ok(_) => skip(out, "gate not green"),
            Err(e) => {
                log::warn!("reconciling task {}: {e:#}", t.id);
                skip(out, "error");
            }
        }
    }
    Ok(())
}

/// F-2: replay the state of every Plane issue through the webhook handlers.
fn poll_plane(ctx: &Ctx, db: &mut Db, out: &mut Reconciled) -> anyhow::Result<()> {
    let client = PlaneClient::from_config(
        &ctx.config,
        std::time::Duration::from_secs(ctx.config.http_timeout_s),
    )?
    .with_board_cache(ctx.state_dir.join("cache"));
    let projects: Vec<(String, String)> = ctx
        .config
        .repos
        .iter()
        .filter(|(_, r)| !r.plane_project.is_empty())
        .map(|(name, r)| (name.clone(), r.plane_project.clone()))
        .collect();
    for (repo, project) in projects {
        // One project's failure (an unknown project, a 500) never hides the others.
        if let Err(e) = poll_project(ctx, db, out, &client, &repo, &project) {
            step_failed(out, &format!("tracker poll of {repo}"), &e);
        }
    }
    Ok(())
}

fn poll_project(
    ctx: &Ctx,
    db: &mut Db,
    out: &mut Reconciled,
    client: &PlaneClient,
    repo: &str,
    project: &str,
) -> anyhow::Result<()> {
    let states = client.project_states(project)?;
    for issue in client.list_issues(project)? {
        let Some(state_key) = states.key_of(&issue.state_id).map(str::to_owned) else {
            continue;
        };
        let existing = task::by_plane_id(db.conn(), &issue.id)?;
        // A terminal task needs no Plane call and no action.
        if existing.as_ref().is_some_and(|t| t.stage().is_terminal()) {
            db.write(|tx| {
                counters::bump(tx, "reconcile_skipped_terminal_total", 1, None, now())?;
                Ok(())
            })?;
            continue;
        }
        // Only the states that start, stop or gate something are replayed;
        // Confirm Deploy is never replayed (it must be a fresh human act).
        let replay = match state_key.as_str() {
            key::TO_ANALYSE | key::IN_PROGRESS => existing.is_none(),
            key::STOP => existing.is_some(),
            key::APPROVED => existing
                .as_ref()
                .is_some_and(|t| t.stage() == Stage::Analysis),
            _ => false,
        };
        if !replay {
            continue;
        }
        match route::act_on_state(ctx, db, repo, project, &issue, &state_key, false)? {
            Routed::Acted(note) => out.polled.push(note),
            Routed::Ignored(_) => {}
        }
    }
    Ok(())
}
