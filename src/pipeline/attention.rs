//! What needs a human now, each with the one command that resolves it.
//!
//! The pipeline runs by itself until it cannot: a task escalated after too
//! many rollbacks, blocked over its budget, waiting for the analysis approval
//! or for Confirm Deploy; a job that failed for good; a running job whose
//! owner died and that no reaper has ended yet; messages the outbox gave up
//! on. Those look like any other row in a table, so `orch status`, `orch task
//! list`, the web board and the metrics all read this one list.

use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use crate::config::Config;
use crate::liveness::{self, Liveness};
use crate::pipeline::{self_deploy, task};

/// Why something needs a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Rolled back too often; the stage's agent no longer runs by itself.
    Escalated,
    /// Over its cost budget; no run starts until the budget is raised.
    Blocked,
    /// The analysis is done and waits for a person's approval.
    AwaitingApproval,
    /// Staging is verified; production waits for "Confirm Deploy".
    AwaitingConfirmDeploy,
    /// A job used up its attempts.
    FailedJob,
    /// A running job whose owner is gone (the reaper ends it).
    DeadOwner,
    /// Tracker or notifier messages the outbox gave up on.
    DeadOutbox,
}

impl Kind {
    /// Every kind, in the order they are listed (and exported as gauges).
    pub const ALL: [Kind; 7] = [
        Kind::Escalated,
        Kind::Blocked,
        Kind::AwaitingApproval,
        Kind::AwaitingConfirmDeploy,
        Kind::FailedJob,
        Kind::DeadOwner,
        Kind::DeadOutbox,
    ];

    /// The name used in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Escalated => "escalated",
            Kind::Blocked => "blocked",
            Kind::AwaitingApproval => "awaiting-approval",
            Kind::AwaitingConfirmDeploy => "awaiting-confirm-deploy",
            Kind::FailedJob => "failed-job",
            Kind::DeadOwner => "dead-owner",
            Kind::DeadOutbox => "dead-outbox",
        }
    }
}

/// One thing that needs a human.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Why.
    pub kind: Kind,
    /// The task concerned, if one is.
    pub task_id: Option<i64>,
    /// The job concerned, if one is.
    pub job_id: Option<i64>,
    /// Since when (Unix seconds), as far as the records tell.
    pub since: i64,
    /// What happened, in a line.
    pub reason: String,
    /// The one command that resolves it.
    pub command: String,
}

/// Everything that needs a human, oldest first within each kind.
pub fn list(conn: &Connection, config: &Config, locks_dir: &Path) -> anyhow::Result<Vec<Item>> {
    let mut items = task_items(conn, config)?;
    items.extend(failed_jobs(conn)?);
    items.extend(dead_owners(conn, locks_dir)?);
    items.extend(dead_outbox(conn)?);
    items.sort_by_key(|i| (i.kind, i.since));
    Ok(items)
}

/// How many items of each kind (every kind present, zero included).
pub fn counts(items: &[Item]) -> Vec<(Kind, usize)> {
    Kind::ALL
        .iter()
        .map(|k| (*k, items.iter().filter(|i| i.kind == *k).count()))
        .collect()
}

/// Escalated, blocked and waiting tasks.
fn task_items(conn: &Connection, config: &Config) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    for t in task::unfinished(conn)? {
        let item = |kind, reason: String, command: String| Item {
            kind,
            task_id: Some(t.id),
            job_id: None,
            since: t.updated_at,
            reason,
            command,
        };
        if let Some(at) = t.escalated_at {
            items.push(Item {
                since: at,
                ..item(
                    Kind::Escalated,
                    format!("task {} escalated on stage {}", t.id, t.stage),
                    format!("orch task resume --task {}", t.id),
                )
            });
        } else if let Some(why) = &t.blocked_reason {
            items.push(item(
                Kind::Blocked,
                why.clone(),
                format!("orch task resume --task {} --budget <usd>", t.id),
            ));
        } else if self_deploy::awaiting_confirm(conn, config, &t)? {
            items.push(item(
                Kind::AwaitingConfirmDeploy,
                format!("task {}: staging verified, production waits", t.id),
                format!("orch advance --task {} --confirm-deploy", t.id),
            ));
        } else if awaits_approval(conn, &t)? {
            items.push(item(
                Kind::AwaitingApproval,
                format!("task {}: the analysis waits for a person's approval", t.id),
                format!("orch advance --task {} --approve", t.id),
            ));
        }
    }
    Ok(items)
}

/// An analysis whose agent finished and that nothing else works on.
fn awaits_approval(conn: &Connection, t: &task::Task) -> rusqlite::Result<bool> {
    if t.stage != "analysis" || t.cancel_requested_at.is_some() {
        return Ok(false);
    }
    conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE task_id = ?1 AND status IN ('queued', 'running'))
            AND EXISTS (SELECT 1 FROM jobs WHERE task_id = ?1 AND stage = 'analysis' AND status = 'done')",
        [t.id],
        |r| r.get(0),
    )
}

/// Jobs that failed for good and are their unfinished task's latest.
fn failed_jobs(conn: &Connection) -> anyhow::Result<Vec<Item>> {
    let mut stmt = conn.prepare(
        "SELECT j.id, j.task_id, j.agent, COALESCE(j.finished_at, j.created_at), COALESCE(j.error, '')
         FROM jobs j LEFT JOIN tasks t ON t.id = j.task_id
         WHERE j.status = 'failed'
           AND (t.id IS NULL OR t.stage NOT IN ('done', 'cancelled'))
           AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.task_id = j.task_id AND k.id > j.id)
         ORDER BY j.id",
    )?;
    let rows = stmt.query_map([], |r| {
        let id: i64 = r.get(0)?;
        let agent: String = r.get(2)?;
        let error: String = r.get(4)?;
        Ok(Item {
            kind: Kind::FailedJob,
            task_id: r.get(1)?,
            job_id: Some(id),
            since: r.get(3)?,
            reason: format!("job {id} ({agent}) failed for good: {error}"),
            command: format!("orch job retry {id}"),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Running jobs whose owner lock is free: dead until a reaper ends them.
fn dead_owners(conn: &Connection, locks_dir: &Path) -> anyhow::Result<Vec<Item>> {
    let mut stmt = conn.prepare(
        "SELECT id, task_id, claim_token, COALESCE(started_at, created_at)
         FROM jobs WHERE status = 'running' ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut items = Vec::new();
    for row in rows {
        let (id, task_id, token, since) = row?;
        let dead =
            token.is_none_or(|t| matches!(liveness::probe(locks_dir, &t), Ok(Liveness::Dead)));
        if dead {
            items.push(Item {
                kind: Kind::DeadOwner,
                task_id,
                job_id: Some(id),
                since,
                reason: format!("job {id} is running but its owner is gone"),
                command: "orch reap".to_owned(),
            });
        }
    }
    Ok(items)
}

/// One item for all dead outbox messages.
fn dead_outbox(conn: &Connection) -> anyhow::Result<Vec<Item>> {
    let (count, since): (i64, Option<i64>) = conn.query_row(
        "SELECT count(*), min(created_at) FROM outbox WHERE status = 'dead'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(if count == 0 {
        Vec::new()
    } else {
        vec![Item {
            kind: Kind::DeadOutbox,
            task_id: None,
            job_id: None,
            since: since.unwrap_or(0),
            reason: format!("{count} tracker/notifier message(s) could not be delivered"),
            command: "orch outbox retry --all-dead".to_owned(),
        }]
    })
}
