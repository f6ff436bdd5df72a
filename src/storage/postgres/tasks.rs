//! [`Tasks`] on PostgreSQL: the `tasks` table and its audit trail
//! `task_transitions`. As on SQLite, guards are written into the statements
//! (`AND stage = $2`, `AND stage NOT IN ('cancelled', 'done')`): under
//! `READ COMMITTED` a second writer of the same row waits for the first to
//! commit, then re-checks the guard against the row the first wrote, so of
//! two racing writers one changes the row and the other learns it did not.
//!
//! **Task ids.** SQLite gives a new task one more than the largest id, and
//! [`Tasks::task_next_number`] promises that number (it becomes the suffix
//! of a generated work-item id, `ORCH-<n>`). The identity sequence of
//! `tasks.id` would not keep that promise here: it never hands a number
//! back after a rollback, and two sessions that each read the next number
//! before either inserts would both build `ORCH-<n>`. So both
//! [`Tasks::task_next_number`] and [`Tasks::task_insert`] first take the
//! transaction-level advisory lock [`TASK_ID_LOCK_KEY`], and the insert
//! writes the id itself (`coalesce(max(id), 0) + 1`, read after the lock,
//! so it sees every committed task). Task creations are serialized until
//! their transactions end, as SQLite's write transactions are, and the
//! number read is the id the task gets. Creating a task is rare and short;
//! the identity default of `tasks.id` is never used by orch.

use postgres::Row;
use postgres::types::ToSql;

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::tasks::{NewTaskRow, NewTransition, Task, Tasks, Transition};

/// The key of the transaction-level advisory lock that serializes task
/// creation ("orch" in ASCII, then 3). Advisory locks are per database.
pub const TASK_ID_LOCK_KEY: i64 = 0x6f72_6368_0000_0003;

/// The columns [`task_from_row`] reads, in its order.
const TASK_COLUMNS: &str = "id, work_item_id, title, description, repo, branch, stage, \
     plane_id, plane_issue_id, depends_on, created_at, updated_at, escalated_at, cancelled_at, \
     cancel_requested_at, tracker_state, plane_project_id, budget_usd, blocked_reason";

fn task_from_row(r: &Row) -> Result<Task> {
    Ok(Task {
        id: get(r, 0)?,
        work_item_id: get(r, 1)?,
        title: get(r, 2)?,
        description: get(r, 3)?,
        repo: get(r, 4)?,
        branch: get(r, 5)?,
        stage: get(r, 6)?,
        plane_id: get(r, 7)?,
        plane_issue_id: get(r, 8)?,
        depends_on: get(r, 9)?,
        created_at: get(r, 10)?,
        updated_at: get(r, 11)?,
        escalated_at: get(r, 12)?,
        cancelled_at: get(r, 13)?,
        cancel_requested_at: get(r, 14)?,
        tracker_state: get(r, 15)?,
        plane_project_id: get(r, 16)?,
        budget_usd: get(r, 17)?,
        blocked_reason: get(r, 18)?,
    })
}

/// The tasks of `SELECT {TASK_COLUMNS} FROM tasks {tail}`.
fn tasks_select(tx: &Tx<'_>, tail: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Task>> {
    tx.query(&format!("SELECT {TASK_COLUMNS} FROM tasks {tail}"), params)?
        .iter()
        .map(task_from_row)
        .collect()
}

/// The single number `sql` selects.
fn tasks_count(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<i64> {
    get(&tx.query_one(sql, params)?, 0)
}

/// Serialize with every other task creation until `tx` ends (module doc).
fn tasks_lock_ids(tx: &Tx<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TASK_ID_LOCK_KEY])?;
    Ok(())
}

/// A `LIMIT` as the server takes it.
fn tasks_limit(limit: u32) -> i64 {
    i64::from(limit)
}

impl Tasks for Tx<'_> {
    fn task_next_number(&self) -> Result<i64> {
        tasks_lock_ids(self)?;
        tasks_count(self, "SELECT coalesce(max(id), 0) + 1 FROM tasks", &[])
    }

    fn task_id_by_work_item(&self, repo: &str, work_item_id: &str) -> Result<Option<i64>> {
        self.query_opt(
            "SELECT id FROM tasks WHERE repo = $1 AND work_item_id = $2",
            &[&repo, &work_item_id],
        )?
        .map(|r| get(&r, 0))
        .transpose()
    }

    fn task_insert(&self, row: &NewTaskRow<'_>, started: bool, now: i64) -> Result<i64> {
        tasks_lock_ids(self)?;
        let id: i64 = get(
            &self.query_one(
                "INSERT INTO tasks (id, work_item_id, title, description, repo, branch, stage,
                                    plane_id, plane_issue_id, depends_on, created_at, updated_at,
                                    plane_project_id)
                 VALUES ((SELECT coalesce(max(id), 0) + 1 FROM tasks),
                         $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)
                 RETURNING id",
                &[
                    &row.work_item_id,
                    &row.title,
                    &row.description,
                    &row.repo,
                    &row.branch,
                    &row.stage,
                    &row.plane_id,
                    &row.plane_issue_id,
                    &row.depends_on,
                    &now,
                    &row.plane_project_id,
                ],
            )?,
            0,
        )?;
        if started {
            self.execute(
                "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, at)
                 VALUES ($1, 'created', $2, 'start', $3)",
                &[&id, &row.stage, &now],
            )?;
        }
        Ok(id)
    }

    fn task_get(&self, id: i64) -> Result<Option<Task>> {
        Ok(tasks_select(self, "WHERE id = $1", &[&id])?
            .into_iter()
            .next())
    }

    fn task_by_plane_id(&self, plane_id: &str) -> Result<Option<Task>> {
        Ok(tasks_select(
            self,
            "WHERE plane_id = $1 OR plane_issue_id = $1 ORDER BY id DESC LIMIT 1",
            &[&plane_id],
        )?
        .into_iter()
        .next())
    }

    fn task_list(&self, stage: Option<&str>, repo: Option<&str>, limit: u32) -> Result<Vec<Task>> {
        tasks_select(
            self,
            "WHERE ($1::text IS NULL OR stage = $1) AND ($2::text IS NULL OR repo = $2)
             ORDER BY id DESC LIMIT $3",
            &[&stage, &repo, &tasks_limit(limit)],
        )
    }

    fn task_pick(
        &self,
        stage: Option<&str>,
        repo: Option<&str>,
        unfinished: bool,
        limit: u32,
    ) -> Result<Vec<Task>> {
        tasks_select(
            self,
            "WHERE ($1::text IS NULL OR stage = $1) AND ($2::text IS NULL OR repo = $2)
               AND (NOT $3 OR stage NOT IN ('created', 'done', 'cancelled'))
             ORDER BY id DESC LIMIT $4",
            &[&stage, &repo, &unfinished, &tasks_limit(limit)],
        )
    }

    fn task_active(&self, limit: u32) -> Result<Vec<Task>> {
        tasks_select(
            self,
            "WHERE stage NOT IN ('done', 'cancelled') ORDER BY id DESC LIMIT $1",
            &[&tasks_limit(limit)],
        )
    }

    fn task_unfinished(&self) -> Result<Vec<Task>> {
        tasks_select(
            self,
            "WHERE stage NOT IN ('created', 'done', 'cancelled') ORDER BY id",
            &[],
        )
    }

    fn task_count_by_stage(&self) -> Result<Vec<(String, i64)>> {
        self.query("SELECT stage, count(*) FROM tasks GROUP BY stage", &[])?
            .iter()
            .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
            .collect()
    }

    fn task_cancel_counts(&self) -> Result<(i64, i64)> {
        let r = self.query_one(
            "SELECT count(*) FILTER (WHERE stage = 'cancelled'),
                    count(*) FILTER (WHERE cancel_requested_at IS NOT NULL
                                       AND stage NOT IN ('cancelled', 'done'))
             FROM tasks",
            &[],
        )?;
        Ok((get(&r, 0)?, get(&r, 1)?))
    }

    fn task_move_stage(&self, id: i64, from: &str, to: &str, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE tasks SET stage = $3, updated_at = $4 WHERE id = $1 AND stage = $2",
            &[&id, &from, &to, &now],
        )? == 1)
    }

    fn task_record_transition(&self, t: &NewTransition<'_>) -> Result<()> {
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, job_id, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &t.task_id,
                &t.from_stage,
                &t.to_stage,
                &t.kind,
                &t.reason,
                &t.job_id,
                &t.at,
            ],
        )?;
        Ok(())
    }

    fn task_record_approval(&self, id: i64, stage: &str, reason: &str, now: i64) -> Result<()> {
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
             VALUES ($1, $2, $2, 'approve', $3, $4)",
            &[&id, &stage, &reason, &now],
        )?;
        Ok(())
    }

    fn task_history(&self, id: i64) -> Result<Vec<Transition>> {
        self.query(
            "SELECT from_stage, to_stage, kind, reason, job_id, at FROM task_transitions
             WHERE task_id = $1 ORDER BY id",
            &[&id],
        )?
        .iter()
        .map(|r| {
            Ok(Transition {
                from_stage: get(r, 0)?,
                to_stage: get(r, 1)?,
                kind: get(r, 2)?,
                reason: get(r, 3)?,
                job_id: get(r, 4)?,
                at: get(r, 5)?,
            })
        })
        .collect()
    }

    fn task_transition_count(&self, id: i64) -> Result<i64> {
        tasks_count(
            self,
            "SELECT count(*) FROM task_transitions WHERE task_id = $1",
            &[&id],
        )
    }

    fn task_developer_retries(&self, id: i64) -> Result<i64> {
        tasks_count(
            self,
            "SELECT count(*) FROM task_transitions WHERE task_id = $1 AND kind = 'rollback'
               AND to_stage = 'development'
               AND id > coalesce((SELECT max(id) FROM task_transitions
                                  WHERE task_id = $1 AND kind = 'resume'), 0)",
            &[&id],
        )
    }

    fn task_escalate(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET escalated_at = $2, updated_at = $2 WHERE id = $1",
            &[&id, &now],
        )?;
        Ok(())
    }

    fn task_clear_escalation(&self, id: i64) -> Result<()> {
        self.execute("UPDATE tasks SET escalated_at = NULL WHERE id = $1", &[&id])?;
        Ok(())
    }

    fn task_set_tested(&self, id: i64, sha: &str) -> Result<()> {
        self.execute(
            "UPDATE tasks SET tested_sha = $2 WHERE id = $1",
            &[&id, &sha],
        )?;
        Ok(())
    }

    fn task_tested_sha(&self, id: i64) -> Result<Option<String>> {
        // Exactly one row, as SQLite's `query_row`: no task is an error.
        get(
            &self.query_one("SELECT tested_sha FROM tasks WHERE id = $1", &[&id])?,
            0,
        )
    }

    fn task_cancel_request(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET cancel_requested_at = $2, updated_at = $2 WHERE id = $1",
            &[&id, &now],
        )?;
        Ok(())
    }

    fn task_cancel_request_keep_first(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, $2),
                 updated_at = $2
             WHERE id = $1",
            &[&id, &now],
        )?;
        Ok(())
    }

    fn task_cancel_queued_jobs(&self, id: i64, spared_agent: &str, now: i64) -> Result<usize> {
        let n = self.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = $2
             WHERE task_id = $1 AND status = 'queued' AND agent <> $3",
            &[&id, &now, &spared_agent],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn task_cancel_mark(&self, id: i64, from_stage: &str, reason: &str, now: i64) -> Result<bool> {
        let suffix = format!("#cancelled-{id}");
        let marked = self.execute(
            "UPDATE tasks SET stage = 'cancelled', cancelled_at = $2, updated_at = $2,
                 plane_id = CASE WHEN plane_id IS NULL OR strpos(plane_id, '#cancelled-') > 0
                            THEN plane_id ELSE plane_id || $3 END,
                 plane_issue_id = CASE WHEN plane_issue_id IS NULL
                                           OR strpos(plane_issue_id, '#cancelled-') > 0
                            THEN plane_issue_id ELSE plane_issue_id || $3 END,
                 work_item_id = CASE WHEN strpos(work_item_id, '#cancelled-') > 0
                            THEN work_item_id ELSE work_item_id || $3 END
             WHERE id = $1 AND stage NOT IN ('cancelled', 'done')",
            &[&id, &now, &suffix],
        )?;
        if marked == 0 {
            return Ok(false);
        }
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
             VALUES ($1, $2, 'cancelled', 'cancel', $3, $4)",
            &[&id, &from_stage, &reason, &now],
        )?;
        Ok(true)
    }

    fn task_cancel_pending(&self) -> Result<Vec<i64>> {
        self.query(
            "SELECT id FROM tasks WHERE cancel_requested_at IS NOT NULL
             AND stage NOT IN ('cancelled', 'done') ORDER BY id",
            &[],
        )?
        .iter()
        .map(|r| get(r, 0))
        .collect()
    }
}

#[cfg(test)]
mod tests;
