//! [`Jobs`] on SQLite: the `jobs` table. A claim is one `UPDATE … WHERE id =
//! (SELECT … LIMIT 1) RETURNING` inside the caller's `BEGIN IMMEDIATE`
//! transaction, so SQLite's single writer makes it exclusive; every change
//! to a claimed job carries the fence `WHERE id = ?1 AND status = 'running'
//! AND claim_token = ?2`.
//!
//! The run-ownership invariant (`queued` ⇒ no run id, no owner, no pid, no
//! start time) is a CHECK constraint of the table, and every path back to
//! `queued` clears ownership with the one [`CLEAR_OWNERSHIP`] fragment.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use crate::storage::jobs::{
    Attempts, Claimer, Gates, Job, Jobs, NewJob, Requeue, RunningOwner, UNGATED_AGENT,
};
use crate::storage::{Result, json_array};

/// SQL assignments that remove every trace of a run from a job row,
/// including a pending finalize-only continuation: a job requeued any other
/// way runs its agent again.
const CLEAR_OWNERSHIP: &str = "run_id = NULL, pid = NULL, started_at = NULL, \
     finished_at = NULL, claim_token = NULL, owner_pid = NULL, owner_boot_id = NULL, \
     finalize_run_id = NULL";

/// The fence of every change to a claimed job: `?1` its id, `?2` the token.
const FENCE: &str = "WHERE id = ?1 AND status = 'running' AND claim_token = ?2";

const JOB_COLUMNS: &str = "id, agent, repo, task_id, stage, status, attempts, max_attempts, \
     transient_attempts, available_at, task_content, claim_token, owner_pid, owner_boot_id, \
     run_id, pid, created_at, started_at, finished_at, error, finalize_run_id";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        agent: r.get(1)?,
        repo: r.get(2)?,
        task_id: r.get(3)?,
        stage: r.get(4)?,
        status: r.get(5)?,
        attempts: r.get(6)?,
        max_attempts: r.get(7)?,
        transient_attempts: r.get(8)?,
        available_at: r.get(9)?,
        task_content: r.get(10)?,
        claim_token: r.get(11)?,
        owner_pid: r.get(12)?,
        owner_boot_id: r.get(13)?,
        run_id: r.get(14)?,
        pid: r.get(15)?,
        created_at: r.get(16)?,
        started_at: r.get(17)?,
        finished_at: r.get(18)?,
        error: r.get(19)?,
        finalize_run_id: r.get(20)?,
    })
}

/// The columns [`owner_from_row`] reads, in its order.
const OWNER_COLUMNS: &str = "id, task_id, claim_token, coalesce(started_at, created_at)";

fn owner_from_row(r: &Row<'_>) -> rusqlite::Result<RunningOwner> {
    Ok(RunningOwner {
        job_id: r.get(0)?,
        task_id: r.get(1)?,
        claim_token: r.get(2)?,
        since: r.get(3)?,
    })
}

/// The per-job eligibility rules, shared by the claim and by the diagnosis of
/// why nothing was claimed, so the two can never disagree. `j` is the
/// candidate; `?1` the serial flag, `?2` the dependency flag, `?3` now.
///
/// The post-deploy monitor ([`UNGATED_AGENT`]) is outside the serial gate and
/// `max_concurrency`, both ways: it only probes production for a few seconds
/// on a `done` task, and must not wait an agent's hour while its window runs.
const ELIGIBLE: &str = "
    j.status = 'queued' AND j.available_at <= ?3
    AND (?1 = 0 OR j.agent = 'post-deploy-monitor' OR NOT EXISTS (
          SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.repo = j.repo
                                 AND r.agent <> 'post-deploy-monitor'))
    AND (?1 = 0 OR coalesce(j.stage, '') NOT IN ('deploy-staging', 'deploy') OR NOT EXISTS (
          SELECT 1 FROM merge_leases l WHERE l.repo = j.repo AND l.task_id IS NOT j.task_id))
    AND (j.task_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM tasks b WHERE b.id = j.task_id AND (b.blocked_reason IS NOT NULL
              OR (b.cancel_requested_at IS NOT NULL AND b.stage NOT IN ('done', 'cancelled')
                  AND j.agent <> 'deploy-finalizer'))))
    AND (?2 = 0 OR j.task_id IS NULL OR (
          NOT EXISTS (SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.task_id = j.task_id)
          AND NOT EXISTS (SELECT 1 FROM tasks t JOIN tasks d ON d.id = t.depends_on
                          WHERE t.id = j.task_id AND d.stage <> 'done')))";

/// The assignments of a claim: `?2` token, `?3` pid, `?4` boot id, `?5` now.
const CLAIM_SETS: &str = "status = 'running', attempts = attempts + 1, claim_token = ?2, \
     owner_pid = ?3, owner_boot_id = ?4, started_at = ?5, finished_at = NULL, \
     run_id = NULL, pid = NULL";

/// The predicate of an impossible queued row; the same text as the partial
/// index `jobs_impossible_queued`, so the sweep is an index lookup.
const IMPOSSIBLE_QUEUED: &str = "status = 'queued' AND (run_id IS NOT NULL
    OR pid IS NOT NULL OR started_at IS NOT NULL OR finished_at IS NOT NULL
    OR claim_token IS NOT NULL OR owner_pid IS NOT NULL OR owner_boot_id IS NOT NULL)";

fn select(conn: &Connection, tail: &str, params: impl rusqlite::Params) -> Result<Vec<Job>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs {tail}"))?;
    let rows = stmt.query_map(params, job_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<i64> {
    Ok(conn.query_row(sql, params, |r| r.get(0))?)
}

impl Jobs for Connection {
    fn job_insert(&self, job: &NewJob<'_>, now: i64) -> Result<i64> {
        self.execute(
            "INSERT INTO jobs (agent, repo, task_id, stage, task_content, max_attempts, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.agent,
                job.repo,
                job.task_id,
                job.stage,
                job.task_content,
                job.max_attempts.max(1),
                now
            ],
        )?;
        Ok(self.last_insert_rowid())
    }

    fn job_claim(&self, claimer: Claimer<'_>, gates: Gates, now: i64) -> Result<Option<Job>> {
        let sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                 claim_token = ?4, owner_pid = ?5, owner_boot_id = ?6, started_at = ?3,
                 finished_at = NULL, run_id = NULL, pid = NULL
             WHERE id = (
                 SELECT j.id FROM jobs j
                 WHERE {ELIGIBLE}
                   AND (j.agent = 'post-deploy-monitor' OR (SELECT count(*) FROM jobs c
                        WHERE c.status = 'running' AND c.agent <> 'post-deploy-monitor') < ?7)
                 ORDER BY j.id LIMIT 1)
               AND status = 'queued'
             RETURNING {JOB_COLUMNS}"
        );
        Ok(self
            .query_row(
                &sql,
                params![
                    gates.serial,
                    gates.task_deps,
                    now,
                    claimer.token,
                    claimer.pid,
                    claimer.boot_id,
                    gates.max_concurrency
                ],
                job_from_row,
            )
            .optional()?)
    }

    fn job_count_queued(&self) -> Result<i64> {
        count(
            self,
            "SELECT count(*) FROM jobs WHERE status = 'queued'",
            [],
        )
    }

    fn job_count_available(&self, now: i64) -> Result<i64> {
        count(
            self,
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND available_at <= ?1",
            [now],
        )
    }

    fn job_next_available(&self) -> Result<i64> {
        count(
            self,
            "SELECT coalesce(min(available_at), 0) FROM jobs WHERE status = 'queued'",
            [],
        )
    }

    fn job_count_eligible(&self, serial: bool, task_deps: bool, now: i64) -> Result<i64> {
        count(
            self,
            &format!("SELECT count(*) FROM jobs j WHERE {ELIGIBLE}"),
            params![serial, task_deps, now],
        )
    }

    fn job_claim_queued(&self, job_id: i64, claimer: Claimer<'_>, now: i64) -> Result<Option<Job>> {
        Ok(self
            .query_row(
                &format!(
                    "UPDATE jobs SET {CLAIM_SETS} WHERE id = ?1 AND status = 'queued'
                     RETURNING {JOB_COLUMNS}"
                ),
                params![job_id, claimer.token, claimer.pid, claimer.boot_id, now],
                job_from_row,
            )
            .optional()?)
    }

    fn job_adopt(
        &self,
        job_id: i64,
        old_token: &str,
        claimer: Claimer<'_>,
        now: i64,
    ) -> Result<Option<Job>> {
        Ok(self
            .query_row(
                &format!(
                    "UPDATE jobs SET {CLAIM_SETS}
                     WHERE id = ?1 AND status = 'running' AND claim_token = ?6
                     RETURNING {JOB_COLUMNS}"
                ),
                params![
                    job_id,
                    claimer.token,
                    claimer.pid,
                    claimer.boot_id,
                    now,
                    old_token
                ],
                job_from_row,
            )
            .optional()?)
    }

    fn job_running_gated(&self) -> Result<i64> {
        count(
            self,
            "SELECT count(*) FROM jobs WHERE status = 'running' AND agent <> ?1",
            [UNGATED_AGENT],
        )
    }

    fn job_set_run(&self, job_id: i64, token: &str, run_id: i64, pid: Option<u32>) -> Result<bool> {
        Ok(self.execute(
            &format!("UPDATE jobs SET run_id = ?3, pid = ?4 {FENCE}"),
            params![job_id, token, run_id, pid],
        )? == 1)
    }

    fn job_set_pid(&self, job_id: i64, token: &str, pid: u32) -> Result<bool> {
        Ok(self.execute(
            &format!("UPDATE jobs SET pid = ?3 {FENCE}"),
            params![job_id, token, pid],
        )? == 1)
    }

    fn job_attempts(&self, job_id: i64, token: &str) -> Result<Option<Attempts>> {
        Ok(self
            .query_row(
                &format!("SELECT attempts, max_attempts, transient_attempts FROM jobs {FENCE}"),
                params![job_id, token],
                |r| {
                    Ok(Attempts {
                        attempts: r.get(0)?,
                        max_attempts: r.get(1)?,
                        transient: r.get(2)?,
                    })
                },
            )
            .optional()?)
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
                "UPDATE jobs SET status = ?3, finished_at = ?4, error = coalesce(?5, error) {FENCE}"
            ),
            params![job_id, token, status, now, error],
        )? == 1)
    }

    fn job_requeue(&self, job_id: i64, token: &str, requeue: Requeue<'_>) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', error = ?3,
                     transient_attempts = transient_attempts + ?4,
                     attempts = max(attempts - ?5, 0), available_at = coalesce(?6, available_at),
                     {CLEAR_OWNERSHIP} {FENCE}"
            ),
            params![
                job_id,
                token,
                requeue.error,
                i64::from(requeue.transient),
                i64::from(requeue.refund_attempt),
                requeue.available_at
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
        // SQLite applies the rightmost assignment of a column:
        // `finalize_run_id` is set after CLEAR_OWNERSHIP cleared it.
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', attempts = max(attempts - 1, 0), error = ?5,
                     transient_attempts = transient_attempts + ?4, available_at = 0,
                     {CLEAR_OWNERSHIP}, finalize_run_id = ?3
                 {FENCE}"
            ),
            params![
                job_id,
                token,
                run_id,
                i64::from(death_of_a_continuation),
                note
            ],
        )? == 1)
    }

    fn job_release_claim(&self, job_id: i64, token: &str) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', attempts = max(attempts - 1, 0), {CLEAR_OWNERSHIP}
                 {FENCE}"
            ),
            params![job_id, token],
        )? == 1)
    }

    fn job_revive_failed(&self, job_id: i64) -> Result<bool> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'queued', attempts = 0, transient_attempts = 0,
                     available_at = 0, {CLEAR_OWNERSHIP}
                 WHERE id = ?1 AND status = 'failed'"
            ),
            [job_id],
        )? == 1)
    }

    fn job_cancel_for_task(&self, task_id: i64, only_queued: bool, now: i64) -> Result<usize> {
        let statuses = if only_queued {
            "('queued')"
        } else {
            "('queued', 'running')"
        };
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?2, available_at = 0
                 WHERE task_id = ?1 AND status IN {statuses}"
            ),
            params![task_id, now],
        )?)
    }

    fn job_impossible_queued(&self) -> Result<Vec<Job>> {
        select(self, &format!("WHERE {IMPOSSIBLE_QUEUED} ORDER BY id"), [])
    }

    fn job_any_impossible_queued(&self) -> Result<bool> {
        Ok(self.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM jobs WHERE {IMPOSSIBLE_QUEUED})"),
            [],
            |r| r.get(0),
        )?)
    }

    fn job_clear_queued_ownership(&self, job_id: i64) -> Result<bool> {
        Ok(self.execute(
            &format!("UPDATE jobs SET {CLEAR_OWNERSHIP} WHERE id = ?1 AND status = 'queued'"),
            [job_id],
        )? == 1)
    }

    fn job_get(&self, id: i64) -> Result<Option<Job>> {
        Ok(select(self, "WHERE id = ?1", [id])?.into_iter().next())
    }

    fn job_list(&self, status: Option<&str>, limit: u32) -> Result<Vec<Job>> {
        select(
            self,
            &format!("WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT {limit}"),
            [status],
        )
    }

    fn job_for_task(&self, task_id: i64) -> Result<Vec<Job>> {
        select(self, "WHERE task_id = ?1 ORDER BY id", [task_id])
    }

    fn job_running(&self) -> Result<Vec<Job>> {
        select(self, "WHERE status = 'running' ORDER BY id", [])
    }

    fn job_running_owners(&self) -> Result<Vec<RunningOwner>> {
        let mut stmt = self.prepare_cached(&format!(
            "SELECT {OWNER_COLUMNS} FROM jobs WHERE status = 'running'"
        ))?;
        let rows = stmt.query_map([], owner_from_row)?;
        // Sorted here: SQLite would sort through a temporary B-tree (the
        // status index is ordered by availability), at several times the cost.
        let mut owners = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        owners.sort_unstable_by_key(|o| o.job_id);
        Ok(owners)
    }

    fn job_running_count_in(&self, alive: &[String]) -> Result<usize> {
        // One index lookup per token.
        let n = count(
            self,
            "SELECT count(*) FROM jobs INDEXED BY jobs_running_token
             WHERE status = 'running' AND claim_token IN (SELECT value FROM json_each(?1))",
            [json_array(alive)],
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
            "claim_token IN (SELECT value FROM json_each(?1))"
        } else {
            "(claim_token IS NULL OR claim_token NOT IN (SELECT value FROM json_each(?1)))"
        };
        // Reads the index in order and stops at `limit`.
        let mut stmt = self.prepare(&format!(
            "SELECT {OWNER_COLUMNS} FROM jobs INDEXED BY jobs_running_since
             WHERE status = 'running' AND {test}
             ORDER BY coalesce(started_at, created_at), id LIMIT {limit}"
        ))?;
        let rows = stmt.query_map([json_array(alive)], owner_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn job_by_ids(&self, ids: &[i64]) -> Result<Vec<Job>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        select(
            self,
            "WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
            [json_array(ids)],
        )
    }

    fn job_counts(&self) -> Result<BTreeMap<String, i64>> {
        let mut stmt = self.prepare("SELECT status, count(*) FROM jobs GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_jobs_contract() {
        let (_dir, db) = crate::storage::test_db();
        crate::storage::jobs::check_contract(db.sqlite());
    }
}
