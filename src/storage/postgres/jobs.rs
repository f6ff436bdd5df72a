//! [`Jobs`] on PostgreSQL: the `jobs` table, shared by claimers on many
//! hosts. Every change to a claimed job carries the same fence as on SQLite
//! (`WHERE id = $1 AND status = 'running' AND claim_token = $2`), and the
//! run-ownership invariant is the table's CHECK constraint.
//!
//! **The claim.** One statement, `UPDATE jobs SET … WHERE id = (SELECT j.id
//! FROM jobs j WHERE <eligible> ORDER BY j.id LIMIT 1 FOR UPDATE OF j SKIP
//! LOCKED) AND status = 'queued' RETURNING …`: the candidate row is locked
//! before it is changed, and a row another writer holds (a cancel, an
//! operator's claim) is skipped instead of waited on. That alone makes a
//! job claimed once. It does not keep the gates exact: `max_concurrency`,
//! the serial gate and the task-dependency gate are counts over *running*
//! jobs, and under `READ COMMITTED` two claimers can both count the same
//! running set and both see room for one more (SQLite never has this
//! problem: it has one writer). So a claim first takes the transaction-level
//! advisory lock [`CLAIM_LOCK_KEY`] (`pg_advisory_xact_lock`), held until
//! the claim's transaction ends: claims are serialized, and each one's
//! statement takes its snapshot after the previous claim committed, so it
//! counts every running job. [`Jobs::job_claim_queued`] and
//! [`Jobs::job_adopt`] take the same lock, since they too make jobs
//! running. A claim takes milliseconds, so the serialization costs far less
//! than the agents' minutes; the claim's transaction must stay short (it
//! is `Store::write`'s, in `READ COMMITTED`: a `REPEATABLE READ` snapshot
//! taken before the lock would defeat it).

use std::collections::BTreeMap;

use postgres::Row;
use postgres::types::ToSql;

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::jobs::{
    Attempts, Claimer, Gates, Job, Jobs, NewJob, Requeue, RunningOwner, UNGATED_AGENT,
};

/// The key of the transaction-level advisory lock every claim takes
/// ("orch" in ASCII, then 2). Advisory locks are per database.
pub const CLAIM_LOCK_KEY: i64 = 0x6f72_6368_0000_0002;

/// The assignments that remove every trace of a run from a job row, as a
/// macro so that [`CLEAR_RUN`] and [`CLEAR_OWNERSHIP`] share one text.
macro_rules! clear_run {
    () => {
        "run_id = NULL, pid = NULL, started_at = NULL, finished_at = NULL, \
         claim_token = NULL, owner_pid = NULL, owner_boot_id = NULL"
    };
}

/// Every trace of a run, but not a pending finalize-only continuation.
/// PostgreSQL refuses two assignments to one column in one `UPDATE` (SQLite
/// applies the rightmost), so the finalize requeue writes this and its own
/// `finalize_run_id`.
const CLEAR_RUN: &str = clear_run!();

/// Every trace of a run, including a pending finalize-only continuation: a
/// job requeued any way but the finalize requeue runs its agent again.
const CLEAR_OWNERSHIP: &str = concat!(clear_run!(), ", finalize_run_id = NULL");

/// The fence of every change to a claimed job: `$1` its id, `$2` the token.
const FENCE: &str = "WHERE id = $1 AND status = 'running' AND claim_token = $2";

const JOB_COLUMNS: &str = "id, agent, repo, task_id, stage, status, attempts, max_attempts, \
     transient_attempts, available_at, task_content, claim_token, owner_pid, owner_boot_id, \
     run_id, pid, created_at, started_at, finished_at, error, finalize_run_id";

fn job_from_row(r: &Row) -> Result<Job> {
    Ok(Job {
        id: get(r, 0)?,
        agent: get(r, 1)?,
        repo: get(r, 2)?,
        task_id: get(r, 3)?,
        stage: get(r, 4)?,
        status: get(r, 5)?,
        attempts: get(r, 6)?,
        max_attempts: get(r, 7)?,
        transient_attempts: get(r, 8)?,
        available_at: get(r, 9)?,
        task_content: get(r, 10)?,
        claim_token: get(r, 11)?,
        owner_pid: get(r, 12)?,
        owner_boot_id: get(r, 13)?,
        run_id: get(r, 14)?,
        pid: get(r, 15)?,
        created_at: get(r, 16)?,
        started_at: get(r, 17)?,
        finished_at: get(r, 18)?,
        error: get(r, 19)?,
        finalize_run_id: get(r, 20)?,
    })
}

/// The columns [`owner_from_row`] reads, in its order.
const OWNER_COLUMNS: &str = "id, task_id, claim_token, coalesce(started_at, created_at)";

fn owner_from_row(r: &Row) -> Result<RunningOwner> {
    Ok(RunningOwner {
        job_id: get(r, 0)?,
        task_id: get(r, 1)?,
        claim_token: get(r, 2)?,
        since: get(r, 3)?,
    })
}

/// The per-job eligibility rules, shared by the claim and the diagnosis
/// (SQLite's `ELIGIBLE` in PostgreSQL's dialect). `j` is the candidate;
/// `$1` the serial flag, `$2` the dependency flag (booleans), `$3` now.
const ELIGIBLE: &str = "
    j.status = 'queued' AND j.available_at <= $3
    AND (NOT $1 OR j.agent = 'post-deploy-monitor' OR NOT EXISTS (
          SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.repo = j.repo
                                 AND r.agent <> 'post-deploy-monitor'))
    AND (NOT $1 OR coalesce(j.stage, '') NOT IN ('deploy-staging', 'deploy') OR NOT EXISTS (
          SELECT 1 FROM merge_leases l WHERE l.repo = j.repo
                                         AND l.task_id IS DISTINCT FROM j.task_id))
    AND (j.task_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM tasks b WHERE b.id = j.task_id AND (b.blocked_reason IS NOT NULL
              OR (b.cancel_requested_at IS NOT NULL AND b.stage NOT IN ('done', 'cancelled')
                  AND j.agent <> 'deploy-finalizer'))))
    AND (NOT $2 OR j.task_id IS NULL OR (
          NOT EXISTS (SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.task_id = j.task_id)
          AND NOT EXISTS (SELECT 1 FROM tasks t JOIN tasks d ON d.id = t.depends_on
                          WHERE t.id = j.task_id AND d.stage <> 'done')))";

/// The assignments of a claim: `$2` token, `$3` pid, `$4` boot id, `$5` now.
const CLAIM_SETS: &str = "status = 'running', attempts = attempts + 1, claim_token = $2, \
     owner_pid = $3, owner_boot_id = $4, started_at = $5, finished_at = NULL, \
     run_id = NULL, pid = NULL";

/// The predicate of an impossible queued row; the same text as the partial
/// index `jobs_impossible_queued`, so the sweep can use it.
const IMPOSSIBLE_QUEUED: &str = "status = 'queued' AND (run_id IS NOT NULL
    OR pid IS NOT NULL OR started_at IS NOT NULL OR finished_at IS NOT NULL
    OR claim_token IS NOT NULL OR owner_pid IS NOT NULL OR owner_boot_id IS NOT NULL)";

fn select(tx: &Tx<'_>, tail: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Job>> {
    tx.query(&format!("SELECT {JOB_COLUMNS} FROM jobs {tail}"), params)?
        .iter()
        .map(job_from_row)
        .collect()
}

/// The job an `UPDATE … RETURNING {JOB_COLUMNS}` changed, if any.
fn returning(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Job>> {
    tx.query_opt(sql, params)?
        .as_ref()
        .map(job_from_row)
        .transpose()
}

fn count(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<i64> {
    get(&tx.query_one(sql, params)?, 0)
}

/// Serialize with every other claim until `tx` ends (module doc).
fn lock_claims(tx: &Tx<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK_KEY])?;
    Ok(())
}

impl Jobs for Tx<'_> {
    fn job_insert(&self, job: &NewJob<'_>, now: i64) -> Result<i64> {
        let row = self.query_one(
            "INSERT INTO jobs (agent, repo, task_id, stage, task_content, max_attempts, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING id",
            &[
                &job.agent,
                &job.repo,
                &job.task_id,
                &job.stage,
                &job.task_content,
                &i64::from(job.max_attempts.max(1)),
                &now,
            ],
        )?;
        get(&row, 0)
    }

    fn job_claim(&self, claimer: Claimer<'_>, gates: Gates, now: i64) -> Result<Option<Job>> {
        lock_claims(self)?;
        let sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                 claim_token = $4, owner_pid = $5, owner_boot_id = $6, started_at = $3,
                 finished_at = NULL, run_id = NULL, pid = NULL
             WHERE id = (
                 SELECT j.id FROM jobs j
                 WHERE {ELIGIBLE}
                   AND (j.agent = 'post-deploy-monitor' OR (SELECT count(*) FROM jobs c
                        WHERE c.status = 'running' AND c.agent <> 'post-deploy-monitor') < $7)
                 ORDER BY j.id LIMIT 1
                 FOR UPDATE OF j SKIP LOCKED)
               AND status = 'queued'
             RETURNING {JOB_COLUMNS}"
        );
        returning(
            self,
            &sql,
            &[
                &gates.serial,
                &gates.task_deps,
                &now,
                &claimer.token,
                &i64::from(claimer.pid),
                &claimer.boot_id,
                &i64::from(gates.max_concurrency),
            ],
        )
    }

    fn job_count_queued(&self) -> Result<i64> {
        count(
            self,
            "SELECT count(*) FROM jobs WHERE status = 'queued'",
            &[],
        )
    }

    fn job_count_available(&self, now: i64) -> Result<i64> {
        count(
            self,
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND available_at <= $1",
            &[&now],
        )
    }

    fn job_next_available(&self) -> Result<i64> {
        count(
            self,
            "SELECT coalesce(min(available_at), 0) FROM jobs WHERE status = 'queued'",
            &[],
        )
    }

    fn job_count_eligible(&self, serial: bool, task_deps: bool, now: i64) -> Result<i64> {
        count(
            self,
            &format!("SELECT count(*) FROM jobs j WHERE {ELIGIBLE}"),
            &[&serial, &task_deps, &now],
        )
    }

    fn job_claim_queued(&self, job_id: i64, claimer: Claimer<'_>, now: i64) -> Result<Option<Job>> {
        lock_claims(self)?;
        returning(
            self,
            &format!(
                "UPDATE jobs SET {CLAIM_SETS} WHERE id = $1 AND status = 'queued'
                 RETURNING {JOB_COLUMNS}"
            ),
            &[
                &job_id,
                &claimer.token,
                &i64::from(claimer.pid),
                &claimer.boot_id,
                &now,
            ],
        )
    }

    fn job_adopt(
        &self,
        job_id: i64,
        old_token: &str,
        claimer: Claimer<'_>,
        now: i64,
    ) -> Result<Option<Job>> {
        lock_claims(self)?;
        returning(
            self,
            &format!(
                "UPDATE jobs SET {CLAIM_SETS}
                 WHERE id = $1 AND status = 'running' AND claim_token = $6
                 RETURNING {JOB_COLUMNS}"
            ),
            &[
                &job_id,
                &claimer.token,
                &i64::from(claimer.pid),
                &claimer.boot_id,
                &now,
                &old_token,
            ],
        )
    }

    fn job_running_gated(&self) -> Result<i64> {
        count(
            self,
            "SELECT count(*) FROM jobs WHERE status = 'running' AND agent <> $1",
            &[&UNGATED_AGENT],
        )
    }

    fn job_set_run(&self, job_id: i64, token: &str, run_id: i64, pid: Option<u32>) -> Result<bool> {
        let pid = pid.map(i64::from);
        Ok(self.execute(
            &format!("UPDATE jobs SET run_id = $3, pid = $4 {FENCE}"),
            &[&job_id, &token, &run_id, &pid],
        )? == 1)
    }

    fn job_set_pid(&self, job_id: i64, token: &str, pid: u32) -> Result<bool> {
        Ok(self.execute(
            &format!("UPDATE jobs SET pid = $3 {FENCE}"),
            &[&job_id, &token, &i64::from(pid)],
        )? == 1)
    }

    fn job_attempts(&self, job_id: i64, token: &str) -> Result<Option<Attempts>> {
        self.query_opt(
            &format!("SELECT attempts, max_attempts, transient_attempts FROM jobs {FENCE}"),
            &[&job_id, &token],
        )?
        .map(|r| {
            Ok(Attempts {
                attempts: get(&r, 0)?,
                max_attempts: get(&r, 1)?,
                transient: get(&r, 2)?,
            })
        })
        .transpose()
    }

    fn job_end(
        &self,
        job_id: i64,
        token: &str,
        status: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = $3, finished_at = $4, error = coalesce($5, error) {FENCE}"
            ),
            &[&job_id, &token, &status, &now, &error],
        )? == 1)
    }

    fn job_requeue(&self, job_id: i64, token: &str, requeue: Requeue<'_>) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', error = $3,
                     transient_attempts = transient_attempts + $4,
                     attempts = greatest(attempts - $5, 0),
                     available_at = coalesce($6, available_at),
                     {CLEAR_OWNERSHIP} {FENCE}"
            ),
            &[
                &job_id,
                &token,
                &requeue.error,
                &i64::from(requeue.transient),
                &i64::from(requeue.refund_attempt),
                &requeue.available_at,
            ],
        )? == 1)
    }

    fn job_requeue_for_finalize(
        &self,
        job_id: i64,
        token: &str,
        run_id: i64,
        death_of_a_continuation: bool,
        note: &str,
    ) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0),
                     error = $5, transient_attempts = transient_attempts + $4, available_at = 0,
                     {CLEAR_RUN}, finalize_run_id = $3
                 {FENCE}"
            ),
            &[
                &job_id,
                &token,
                &run_id,
                &i64::from(death_of_a_continuation),
                &note,
            ],
        )? == 1)
    }

    fn job_release_claim(&self, job_id: i64, token: &str) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0),
                     {CLEAR_OWNERSHIP}
                 {FENCE}"
            ),
            &[&job_id, &token],
        )? == 1)
    }

    fn job_revive_failed(&self, job_id: i64) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', attempts = 0, transient_attempts = 0,
                     available_at = 0, {CLEAR_OWNERSHIP}
                 WHERE id = $1 AND status = 'failed'"
            ),
            &[&job_id],
        )? == 1)
    }

    fn job_cancel_for_task(&self, task_id: i64, only_queued: bool, now: i64) -> Result<usize> {
        let statuses = if only_queued {
            "('queued')"
        } else {
            "('queued', 'running')"
        };
        let n = self.execute(
            &format!(
                "UPDATE jobs SET status = 'cancelled', finished_at = $2, available_at = 0
                 WHERE task_id = $1 AND status IN {statuses}"
            ),
            &[&task_id, &now],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn job_impossible_queued(&self) -> Result<Vec<Job>> {
        select(self, &format!("WHERE {IMPOSSIBLE_QUEUED} ORDER BY id"), &[])
    }

    fn job_any_impossible_queued(&self) -> Result<bool> {
        get(
            &self.query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM jobs WHERE {IMPOSSIBLE_QUEUED})"),
                &[],
            )?,
            0,
        )
    }

    fn job_clear_queued_ownership(&self, job_id: i64) -> Result<bool> {
        Ok(self.execute(
            &format!("UPDATE jobs SET {CLEAR_OWNERSHIP} WHERE id = $1 AND status = 'queued'"),
            &[&job_id],
        )? == 1)
    }

    fn job_get(&self, id: i64) -> Result<Option<Job>> {
        Ok(select(self, "WHERE id = $1", &[&id])?.into_iter().next())
    }

    fn job_list(&self, status: Option<&str>, limit: u32) -> Result<Vec<Job>> {
        select(
            self,
            "WHERE ($1::text IS NULL OR status = $1) ORDER BY id DESC LIMIT $2",
            &[&status, &i64::from(limit)],
        )
    }

    fn job_for_task(&self, task_id: i64) -> Result<Vec<Job>> {
        select(self, "WHERE task_id = $1 ORDER BY id", &[&task_id])
    }

    fn job_running(&self) -> Result<Vec<Job>> {
        select(self, "WHERE status = 'running' ORDER BY id", &[])
    }

    fn job_running_owners(&self) -> Result<Vec<RunningOwner>> {
        self.query(
            &format!("SELECT {OWNER_COLUMNS} FROM jobs WHERE status = 'running' ORDER BY id"),
            &[],
        )?
        .iter()
        .map(owner_from_row)
        .collect()
    }

    fn job_running_count_in(&self, alive: &[String]) -> Result<usize> {
        let n = count(
            self,
            "SELECT count(*) FROM jobs WHERE status = 'running' AND claim_token = ANY($1)",
            &[&alive],
        )?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn job_running_owners_page(
        &self,
        alive: &[String],
        among_alive: bool,
        limit: usize,
    ) -> Result<Vec<RunningOwner>> {
        let test = if among_alive {
            "claim_token = ANY($1)"
        } else {
            "(claim_token IS NULL OR claim_token <> ALL($1))"
        };
        // The partial index `jobs_running_since` is in this order.
        self.query(
            &format!(
                "SELECT {OWNER_COLUMNS} FROM jobs
                 WHERE status = 'running' AND {test}
                 ORDER BY coalesce(started_at, created_at), id LIMIT $2"
            ),
            &[&alive, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )?
        .iter()
        .map(owner_from_row)
        .collect()
    }

    fn job_by_ids(&self, ids: &[i64]) -> Result<Vec<Job>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        select(self, "WHERE id = ANY($1) ORDER BY id", &[&ids])
    }

    fn job_counts(&self) -> Result<BTreeMap<String, i64>> {
        self.query("SELECT status, count(*) FROM jobs GROUP BY status", &[])?
            .iter()
            .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
