//! What needs a human now, each with the one command that resolves it.
//!
//! The pipeline runs by itself until it cannot: a task escalated after too
//! many rollbacks, blocked over its budget, waiting for the analysis approval
//! or for Confirm Deploy; a job that failed for good; a running job whose
//! owner died and that no reaper has ended yet; messages the outbox gave up
//! on. Those look like any other row in a table, so `orch status`, `orch task
//! list`, the web board and the metrics all read this one list.

use serde::Serialize;

use crate::config::Config;
use crate::liveness::{Liveness, Locks};
use crate::pipeline::owners::{self, Owner};
use crate::pipeline::{Stage, self_deploy};
use crate::storage::Executor;
use crate::storage::views::FailedJob;

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

/// Everything that needs a human, oldest first within each kind; each
/// running job's owner is probed through its lock in `locks`.
pub fn list(conn: &dyn Executor, config: &Config, locks: &Locks) -> anyhow::Result<Vec<Item>> {
    list_probed(conn, config, &owners::probe_running(conn, locks)?)
}

/// [`list`], with the running jobs' owners already probed: a caller that
/// shows them too (`orch status`, `orch metrics`) probes them once.
pub fn list_probed(
    conn: &dyn Executor,
    config: &Config,
    running: &[Owner],
) -> anyhow::Result<Vec<Item>> {
    let mut items = task_items(conn, config)?;
    items.extend(failed_jobs(conn)?);
    items.extend(dead_owners(running));
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
fn task_items(conn: &dyn Executor, config: &Config) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    // The unfinished tasks that may need a human, in one query (a status
    // with thousands of tasks must not pay one query per task).
    for t in conn.view_attention_tasks()? {
        let item = |kind, since, reason: String, command: String| Item {
            kind,
            task_id: Some(t.id),
            job_id: None,
            since,
            reason,
            command,
        };
        // The same order of precedence as the pipeline: an escalated task
        // waits for `resume` whatever else is true of it.
        if let Some(at) = t.escalated_at {
            items.push(item(
                Kind::Escalated,
                at,
                format!("task {} escalated on stage {}", t.id, t.stage),
                format!("orch task resume --task {}", t.id),
            ));
        } else if let Some(why) = &t.blocked_reason {
            items.push(item(
                Kind::Blocked,
                t.updated_at,
                why.clone(),
                format!("orch task resume --task {} --budget <usd>", t.id),
            ));
        } else if t.stage == Stage::Deploy.as_str()
            && self_deploy::applies(config, &t.repo)
            && !t.deploy_initiated
        {
            // As self_deploy::awaiting_confirm, from the row already read.
            items.push(item(
                Kind::AwaitingConfirmDeploy,
                t.updated_at,
                format!("task {}: staging verified, production waits", t.id),
                format!("orch advance --task {} --confirm-deploy", t.id),
            ));
        } else if t.analysis_waits {
            items.push(item(
                Kind::AwaitingApproval,
                t.updated_at,
                format!("task {}: the analysis waits for a person's approval", t.id),
                format!("orch advance --task {} --approve", t.id),
            ));
        }
    }
    Ok(items)
}

/// Jobs that failed for good and are their unfinished task's latest.
fn failed_jobs(conn: &dyn Executor) -> anyhow::Result<Vec<Item>> {
    let item = |j: FailedJob| Item {
        kind: Kind::FailedJob,
        task_id: j.task_id,
        job_id: Some(j.job_id),
        since: j.since,
        reason: format!(
            "job {} ({}) failed for good: {}",
            j.job_id, j.agent, j.error
        ),
        command: format!("orch job retry {}", j.job_id),
    };
    Ok(conn.view_failed_jobs()?.into_iter().map(item).collect())
}

/// Running jobs whose owner lock is free: dead until a reaper ends them.
fn dead_owners(running: &[Owner]) -> impl Iterator<Item = Item> + '_ {
    running
        .iter()
        .filter(|o| o.liveness == Liveness::Dead)
        .map(|o| Item {
            kind: Kind::DeadOwner,
            task_id: o.task_id,
            job_id: Some(o.job_id),
            since: o.since,
            reason: format!("job {} is running but its owner is gone", o.job_id),
            command: "orch reap".to_owned(),
        })
}

/// One item for all dead outbox messages.
fn dead_outbox(conn: &dyn Executor) -> anyhow::Result<Vec<Item>> {
    let (count, since) = conn.outbox_dead()?;
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
