//! The outbox: tracker comments, tracker state changes and notifications are
//! written as rows in the same transaction as the change they report, then
//! delivered after the commit (and retried by `orch reconcile` with backoff).
//! No message is lost with a crash, and a dedup key keeps each one single.
//!
//! Messages for the embedded tracker are applied and marked delivered in one
//! transaction: exactly once. Messages that leave the machine are leased
//! first (a concurrent deliverer skips them), sent, then marked delivered; a
//! crash between send and mark can repeat a send, which the remote side
//! absorbs by external id where it can (Plane comments).

use serde::Serialize;

use crate::backends::{notifier, tracker};
use crate::context::Ctx;
use crate::storage::Executor;
pub use crate::storage::outbox::{Listed, Message};
use crate::storage::{self, Db, now};

/// Attempts before a message is parked as `dead` (visible in `orch status`).
pub const MAX_ATTEMPTS: i64 = 8;

/// Queue `message` under `key` inside the caller's transaction. A key already
/// present is not queued again; returns whether a row was added.
pub fn push(conn: &dyn Executor, key: &str, message: &Message, now: i64) -> anyhow::Result<bool> {
    Ok(conn.outbox_push(key, message, now)?)
}

/// What one delivery pass did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Delivery {
    /// Messages delivered.
    pub delivered: u32,
    /// Messages that failed and will be retried.
    pub retrying: u32,
    /// Messages that failed for good.
    pub dead: u32,
}

/// A tracker state change that a newer one for the same task follows
/// (pending or delivered) must never be sent: it would move the issue back
/// (a PATCH to "In Review" retried after the task reached Done). It is
/// retired as delivered, with the reason in `last_error`, and never sent.
fn retire_superseded_states(conn: &dyn Executor) -> storage::Result<usize> {
    conn.outbox_retire_superseded()
}

/// Deliver every due message.
pub fn deliver(ctx: &Ctx, db: &mut Db) -> anyhow::Result<Delivery> {
    let mut report = Delivery::default();
    db.write(|tx| Ok(retire_superseded_states(tx)?))?;
    let pending = db.conn().outbox_pending()?;
    // A task's tracker messages go in order: once one of them is not due
    // (backing off, or leased by a deliverer that is sending it — a lease
    // that ran out makes it due again) or fails in this pass, the task's
    // later ones wait for the next pass. Notifications are never held.
    let mut held: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let t0 = now();
    for storage::outbox::Pending {
        id,
        task_id,
        payload,
        next_attempt_at,
    } in pending
    {
        if task_id.is_some_and(|t| held.contains(&t)) {
            continue;
        }
        if next_attempt_at > t0 {
            if let Some(t) = task_id {
                held.insert(t);
            }
            continue;
        }
        let message: Message = match serde_json::from_str(&payload) {
            Ok(m) => m,
            Err(e) => {
                db.write(|tx| Ok(tx.outbox_bury(id, &format!("unreadable payload: {e}"))?))?;
                report.dead += 1;
                continue;
            }
        };
        match deliver_one(ctx, db, id, &message) {
            Ok(true) => report.delivered += 1,
            // Another deliverer holds it: its task's later messages wait too.
            Ok(false) => {
                if let Some(t) = task_id {
                    held.insert(t);
                }
            }
            Err(e) => {
                let dead = db.write(|tx| {
                    let attempts = tx.outbox_attempts(id)?;
                    // A 4xx will not get better by retrying: dead at once.
                    let dead = attempts >= MAX_ATTEMPTS
                        || !crate::backends::http::is_retryable(&e)
                            && e.chain().any(|c| {
                                c.downcast_ref::<crate::backends::http::HttpError>()
                                    .is_some()
                            });
                    // The server's own `retry_after` (Telegram's 429) beats our schedule.
                    let hinted = e
                        .chain()
                        .find_map(|c| c.downcast_ref::<crate::backends::http::HttpError>())
                        .and_then(crate::backends::http::HttpError::retry_after);
                    let delay = hinted.map_or_else(
                        || 30_i64.saturating_mul(1 << attempts.clamp(0, 10)),
                        |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1),
                    );
                    tx.outbox_fail(id, &format!("{e:#}"), dead, now() + delay)?;
                    Ok(dead)
                })?;
                log::warn!("outbox message {id} not delivered: {e:#}");
                if !dead && let Some(t) = task_id {
                    held.insert(t);
                }
                if dead {
                    report.dead += 1;
                } else {
                    report.retrying += 1;
                }
            }
        }
    }
    Ok(report)
}

/// Deliver one message; false if another process had it already.
///
/// Tracker messages always update the local tracker (what `orch task show`
/// displays); with `tracker = "plane"` and a task that came from Plane they
/// go to Plane too, first. Notifications go to Telegram with
/// `notifier = "telegram"`, else to the log.
fn deliver_one(ctx: &Ctx, db: &mut Db, id: i64, message: &Message) -> anyhow::Result<bool> {
    let t = now();
    if !db.write(|tx| lease(tx, id, t))? {
        return Ok(false);
    }
    match message {
        Message::Comment {
            task_id,
            author,
            body,
        } => {
            if let Some((client, project, issue)) = plane_target(ctx, db, *task_id)? {
                let html = format!(
                    "<p><b>{}</b>: {}</p>",
                    crate::html::escape(author),
                    crate::html::escape(body)
                );
                client.comment(&project, &issue, &html, &format!("orch-outbox-{id}"))?;
            }
            db.write(|tx| {
                tracker::local::comment(tx, *task_id, author, body, &format!("outbox-{id}"), t)?;
                mark_delivered(tx, id, t)
            })?;
        }
        Message::State { task_id, state } => {
            if let Some((client, project, issue)) = plane_target(ctx, db, *task_id)? {
                let key = tracker::key_for_name(state)
                    .ok_or_else(|| anyhow::anyhow!("no Plane key for the state {state:?}"))?;
                let states = client.project_states(&project)?;
                let Some(state_id) = states.get(key) else {
                    anyhow::bail!("the Plane board of project {project} has no {state:?} state");
                };
                client.set_state(&project, &issue, state_id)?;
            }
            db.write(|tx| {
                tracker::local::set_state(tx, *task_id, state, t)?;
                mark_delivered(tx, id, t)
            })?;
        }
        Message::Notify { text } => {
            if ctx.config.notifier == "telegram" {
                let telegram = notifier::telegram::Telegram::from_config(
                    &ctx.config,
                    std::time::Duration::from_secs(ctx.config.http_timeout_s),
                )?;
                telegram.send(text)?;
            } else {
                notifier::log_notify(&ctx.state_dir, text, t)?;
            }
            db.write(|tx| mark_delivered(tx, id, t))?;
        }
    }
    Ok(true)
}

/// The Plane client and issue of a task, when its messages go to Plane.
fn plane_target(
    ctx: &Ctx,
    db: &Db,
    task_id: i64,
) -> anyhow::Result<Option<(tracker::plane::PlaneClient, String, String)>> {
    if ctx.config.tracker != "plane" {
        return Ok(None);
    }
    let Some(task) = crate::pipeline::task::get(db.conn(), task_id)? else {
        return Ok(None);
    };
    let (Some(project), Some(issue)) = (task.plane_project_id, task.plane_issue_id) else {
        return Ok(None);
    };
    let issue = crate::pipeline::cancel::original(&issue);
    let client = tracker::plane::PlaneClient::from_config(
        &ctx.config,
        std::time::Duration::from_secs(ctx.config.http_timeout_s),
    )?
    .with_board_cache(ctx.state_dir.join("cache"));
    Ok(Some((client, project, issue)))
}

/// Take a due message for 60 s and count the attempt; false if it is not due any more.
fn lease(conn: &dyn Executor, id: i64, now: i64) -> anyhow::Result<bool> {
    Ok(conn.outbox_lease(id, now)?)
}

fn mark_delivered(conn: &dyn Executor, id: i64, now: i64) -> anyhow::Result<()> {
    Ok(conn.outbox_mark_delivered(id, now)?)
}

/// When the oldest message still pending was written, if any is.
pub fn oldest_pending(conn: &dyn Executor) -> storage::Result<Option<i64>> {
    conn.outbox_oldest_pending()
}

/// Messages per status (`pending`, `delivered`, `dead`).
pub fn counts(conn: &dyn Executor) -> storage::Result<std::collections::BTreeMap<String, i64>> {
    let mut out: std::collections::BTreeMap<String, i64> = ["pending", "delivered", "dead"]
        .iter()
        .map(|s| ((*s).to_owned(), 0))
        .collect();
    out.extend(conn.outbox_counts()?);
    Ok(out)
}

/// The newest `limit` messages, of `status` only if given.
pub fn list(conn: &dyn Executor, status: Option<&str>, limit: u32) -> storage::Result<Vec<Listed>> {
    conn.outbox_list(status, limit)
}

/// Put message `id` (any not delivered), or with `None` every dead message,
/// back in line for delivery now, its attempts reset. Returns how many.
pub fn revive(conn: &dyn Executor, id: Option<i64>, now: i64) -> storage::Result<usize> {
    conn.outbox_revive(id, now)
}
