//! Merge leases: one row per repository in `merge_leases`, so merges into
//! `main` are serialised per repository (docs/architecture.md, decision 9).
//!
//! A lease is acquired by the merge gate before it rebases and re-tests,
//! idempotently for the same branch, and released in the same transaction
//! that advances, rolls back, escalates, blocks or finishes its task. It is never
//! taken from a holder that can still use it (merge in flight, or the task
//! parked on `deploy`), and one `orch reclaim-leases` pass reclaims it as soon
//! as its holder cannot (task terminal, rolled back or cancelled, merging job
//! gone). The TTL `merge_lock_timeout_s` is only a backstop for a lease whose
//! task has no live job; it never robs a live merge.

use serde::Serialize;

use crate::config::Config;
use crate::liveness::{Liveness, Locks};
use crate::outbox::{self, Message};
use crate::pipeline::Stage;
use crate::pipeline::task;
use crate::storage::Executor;
use crate::storage::{self, counters};

pub use crate::storage::leases::{Holder, Lease};

/// The result of an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is ours (new, or already held by the same branch).
    Held,
    /// Another branch holds it.
    Busy(Lease),
}

/// Acquire `repo`'s lease for `holder` in one statement: idempotent for the
/// same branch, refused while another branch holds it.
pub fn acquire(
    conn: &dyn Executor,
    repo: &str,
    holder: Holder<'_>,
    now: i64,
) -> storage::Result<Acquired> {
    Ok(match conn.lease_take(repo, holder, now)? {
        Some(l) if l.branch != holder.branch => Acquired::Busy(l),
        _ => Acquired::Held,
    })
}

/// Release `repo`'s lease if `branch` holds it; returns whether a row went.
pub fn release(conn: &dyn Executor, repo: &str, branch: &str) -> storage::Result<bool> {
    conn.lease_release(repo, branch)
}

/// Release whatever lease `task_id` holds (any repository).
pub fn release_for_task(conn: &dyn Executor, task_id: i64) -> storage::Result<usize> {
    conn.lease_release_for_task(task_id)
}

/// The lease of `repo`, if held.
pub fn get(conn: &dyn Executor, repo: &str) -> storage::Result<Option<Lease>> {
    conn.lease_get(repo)
}

/// Every lease.
pub fn all(conn: &dyn Executor) -> storage::Result<Vec<Lease>> {
    conn.lease_all()
}

/// Why a lease can no longer be used by its holder, or `None` if it can.
pub fn unusable_because(
    conn: &dyn Executor,
    config: &Config,
    locks: &Locks,
    lease: &Lease,
    now: i64,
) -> anyhow::Result<Option<String>> {
    let Some(task) = lease
        .task_id
        .map(|id| task::get(conn, id))
        .transpose()?
        .flatten()
    else {
        return Ok(Some("holder task is gone".into()));
    };
    let stage = task.stage();
    if stage.is_terminal() {
        return Ok(Some(format!("holder task {} is {stage}", task.id)));
    }
    if task.branch.as_deref() != Some(lease.branch.as_str()) {
        return Ok(Some(format!(
            "holder task {} is on another branch",
            task.id
        )));
    }
    match stage {
        // Parked awaiting Confirm Deploy, or deploying: the lease stays.
        Stage::Deploy => return Ok(None),
        Stage::DeployStaging => {}
        other => {
            return Ok(Some(format!(
                "holder task {} rolled back to {other}",
                task.id
            )));
        }
    }
    if task.escalated_at.is_some() {
        return Ok(Some(format!(
            "holder task {} is escalated to a human",
            task.id
        )));
    }
    // Blocking releases the lease itself; this covers a lease taken before it did.
    if task.blocked_reason.is_some() {
        return Ok(Some(format!(
            "holder task {} is blocked over budget",
            task.id
        )));
    }
    let jobs = crate::queue::for_task(conn, task.id)?;
    // A probe that cannot ask (the database of advisory locks out of
    // reach) is an error, never "dead": a live merger keeps its lease.
    for j in jobs.iter().filter(|j| j.status == "running") {
        if let Some(token) = j.claim_token.as_deref()
            && locks.probe(token)? == Liveness::Alive
        {
            return Ok(None);
        }
    }
    let queued = jobs.iter().any(|j| j.status == "queued");
    let running_dead = jobs.iter().any(|j| j.status == "running");
    if running_dead {
        return Ok(Some(format!(
            "the merging process of task {} is dead",
            task.id
        )));
    }
    if !queued {
        return Ok(Some(format!(
            "holder task {} has no job that could merge",
            task.id
        )));
    }
    // Queued to resume: kept, but only up to the TTL backstop.
    let age = now - lease.acquired_at;
    if age >= i64::try_from(config.merge_lock_timeout_s).unwrap_or(i64::MAX) {
        return Ok(Some(format!(
            "stale: age {age}s >= merge_lock_timeout_s {} with no live holder",
            config.merge_lock_timeout_s
        )));
    }
    Ok(None)
}

/// A reclaimed lease.
#[derive(Debug, Clone, Serialize)]
pub struct Reclaimed {
    /// The lease.
    pub lease: Lease,
    /// Why.
    pub why: String,
}

/// One reclaim pass over every lease (`orch reclaim-leases`, and each reap).
pub fn reclaim_pass(
    db: &mut storage::Db,
    config: &Config,
    locks: &Locks,
    now: i64,
) -> anyhow::Result<Vec<Reclaimed>> {
    if !config.lease_reclaim_enabled {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for lease in all(db.conn())? {
        let reclaimed = db.write(|tx| {
            // Re-read inside the write lock: the holder may have released or re-acquired.
            let Some(current) = get(tx, &lease.repo)? else {
                return Ok(None);
            };
            if current != lease {
                return Ok(None);
            }
            let Some(why) = unusable_because(tx, config, locks, &current, now)? else {
                return Ok(None);
            };
            Ok(Some(reclaim_row(tx, current, why, now)?))
        })?;
        if let Some(r) = reclaimed {
            log::warn!(
                "reclaimed the merge lease of {} from {}: {}",
                r.lease.repo,
                r.lease.branch,
                r.why
            );
            out.push(r);
        }
    }
    Ok(out)
}

/// Release `current` (judged unusable for `why`), count it and notify, inside
/// the caller's write transaction.
fn reclaim_row(
    conn: &dyn Executor,
    current: Lease,
    why: String,
    now: i64,
) -> anyhow::Result<Reclaimed> {
    release(conn, &current.repo, &current.branch)?;
    let detail = serde_json::json!({ "repo": current.repo, "branch": current.branch, "why": why });
    counters::bump(conn, "lease_reclaimed_total", 1, Some(&detail), now)?;
    outbox::push(
        conn,
        &format!(
            "lease-reclaim-{}-{}-{}",
            current.repo, current.branch, current.acquired_at
        ),
        &Message::Notify {
            text: format!(
                "merge lease for {} reclaimed ({why}, holder={})",
                current.repo, current.branch
            ),
        },
        now,
    )?;
    Ok(Reclaimed {
        lease: current,
        why,
    })
}

/// The lazy reclaim on acquire, the only reclaim left when
/// `lease_reclaim_enabled = false` (the seed kept it under its kill-switch):
/// an acquirer refused by `lease` takes it over once it is older than
/// `merge_lock_timeout_s` — and, as everywhere here, only if its holder can no
/// longer use it, so a live merge or a task parked on `deploy` keeps it.
/// Returns what was reclaimed; the caller then acquires again.
pub fn reclaim_expired_on_acquire(
    conn: &dyn Executor,
    config: &Config,
    locks: &Locks,
    lease: &Lease,
    now: i64,
) -> anyhow::Result<Option<Reclaimed>> {
    let ttl = i64::try_from(config.merge_lock_timeout_s).unwrap_or(i64::MAX);
    if now - lease.acquired_at < ttl {
        return Ok(None);
    }
    let mut reclaimed = None;
    conn.transact(&mut |tx| {
        // Re-read under the write lock: the holder may have released or re-acquired.
        if get(tx, &lease.repo)?.as_ref() != Some(lease) {
            return Ok(());
        }
        let Some(why) = unusable_because(tx, config, locks, lease, now)? else {
            return Ok(());
        };
        let age = now - lease.acquired_at;
        reclaimed = Some(reclaim_row(
            tx,
            lease.clone(),
            format!("on acquire, age {age}s >= merge_lock_timeout_s: {why}"),
            now,
        )?);
        Ok(())
    })?;
    let Some(r) = reclaimed else {
        return Ok(None);
    };
    log::warn!(
        "reclaimed the merge lease of {} from {} on acquire: {}",
        r.lease.repo,
        r.lease.branch,
        r.why
    );
    Ok(Some(r))
}

/// The lazy reclaim before a claim, with `lease_reclaim_enabled = false`: the
/// serial gate keeps another task's `deploy-staging`/`deploy` jobs from being
/// claimed while a lease is held, so the claim is where the next acquirer
/// waits; every expired lease whose holder cannot use it is reclaimed there
/// (see [`reclaim_expired_on_acquire`]). Best-effort: an error is logged and
/// the claim goes on (the lease then stays, as with the switch off before).
pub fn reclaim_expired_before_claim(
    conn: &dyn Executor,
    config: &Config,
    locks: &Locks,
    now: i64,
) -> Vec<Reclaimed> {
    if config.lease_reclaim_enabled {
        return Vec::new();
    }
    let leases = match all(conn) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("reading the merge leases before a claim: {e}");
            return Vec::new();
        }
    };
    leases
        .iter()
        .filter_map(
            |l| match reclaim_expired_on_acquire(conn, config, locks, l, now) {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("reclaiming the expired merge lease of {}: {e:#}", l.repo);
                    None
                }
            },
        )
        .collect()
}
