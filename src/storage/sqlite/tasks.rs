//! [`Tasks`] on SQLite: the `tasks` table and its audit trail
//! `task_transitions`. Guards are written into the statements (`AND stage =
//! ?`, `AND stage NOT IN ('cancelled', 'done')`), so of two racing writers
//! one changes the row and the other learns it did not.

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use crate::storage::Result;
use crate::storage::tasks::{NewTaskRow, NewTransition, Task, Tasks, Transition};

impl Task {
    /// The columns [`Task::from_row`] reads, in its order (also read by the
    /// views whose SQL has not moved behind the boundary yet).
    pub(crate) const COLUMNS: &str = "id, work_item_id, title, description, repo, branch, stage, \
         plane_id, plane_issue_id, depends_on, created_at, updated_at, escalated_at, cancelled_at, \
         cancel_requested_at, tracker_state, plane_project_id, budget_usd, blocked_reason";

    /// A task from a row whose first columns are [`Task::COLUMNS`].
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Task> {
        Ok(Task {
            id: r.get(0)?,
            work_item_id: r.get(1)?,
            title: r.get(2)?,
            description: r.get(3)?,
            repo: r.get(4)?,
            branch: r.get(5)?,
            stage: r.get(6)?,
            plane_id: r.get(7)?,
            plane_issue_id: r.get(8)?,
            depends_on: r.get(9)?,
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
            escalated_at: r.get(12)?,
            cancelled_at: r.get(13)?,
            cancel_requested_at: r.get(14)?,
            tracker_state: r.get(15)?,
            plane_project_id: r.get(16)?,
            budget_usd: r.get(17)?,
            blocked_reason: r.get(18)?,
        })
    }
}

/// The tasks `sql` selects (it reads [`Task::COLUMNS`] first).
fn tasks(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Task>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, Task::from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Tasks for Connection {
    fn task_next_number(&self) -> Result<i64> {
        Ok(
            self.query_row("SELECT coalesce(max(id), 0) + 1 FROM tasks", [], |r| {
                r.get(0)
            })?,
        )
    }

    fn task_id_by_work_item(&self, repo: &str, work_item_id: &str) -> Result<Option<i64>> {
        Ok(self
            .query_row(
                "SELECT id FROM tasks WHERE repo = ?1 AND work_item_id = ?2",
                params![repo, work_item_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn task_insert(&self, row: &NewTaskRow<'_>, started: bool, now: i64) -> Result<i64> {
        self.execute(
            "INSERT INTO tasks (work_item_id, title, description, repo, branch, stage, plane_id,
                                plane_issue_id, depends_on, created_at, updated_at, plane_project_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)",
            params![
                row.work_item_id,
                row.title,
                row.description,
                row.repo,
                row.branch,
                row.stage,
                row.plane_id,
                row.plane_issue_id,
                row.depends_on,
                now,
                row.plane_project_id
            ],
        )?;
        let id = self.last_insert_rowid();
        if started {
            self.execute(
                "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, at)
                 VALUES (?1, 'created', ?2, 'start', ?3)",
                params![id, row.stage, now],
            )?;
        }
        Ok(id)
    }

    fn task_get(&self, id: i64) -> Result<Option<Task>> {
        Ok(self
            .query_row(
                &format!("SELECT {} FROM tasks WHERE id = ?1", Task::COLUMNS),
                [id],
                Task::from_row,
            )
            .optional()?)
    }

    fn task_by_plane_id(&self, plane_id: &str) -> Result<Option<Task>> {
        Ok(self
            .query_row(
                &format!(
                    "SELECT {} FROM tasks WHERE plane_id = ?1 OR plane_issue_id = ?1
                     ORDER BY id DESC LIMIT 1",
                    Task::COLUMNS
                ),
                [plane_id],
                Task::from_row,
            )
            .optional()?)
    }

    fn task_list(&self, stage: Option<&str>, repo: Option<&str>, limit: u32) -> Result<Vec<Task>> {
        tasks(
            self,
            &format!(
                "SELECT {} FROM tasks
                 WHERE (?1 IS NULL OR stage = ?1) AND (?2 IS NULL OR repo = ?2)
                 ORDER BY id DESC LIMIT {limit}",
                Task::COLUMNS
            ),
            params![stage, repo],
        )
    }

    fn task_pick(
        &self,
        stage: Option<&str>,
        repo: Option<&str>,
        unfinished: bool,
        limit: u32,
    ) -> Result<Vec<Task>> {
        tasks(
            self,
            &format!(
                "SELECT {} FROM tasks
                 WHERE (?1 IS NULL OR stage = ?1) AND (?2 IS NULL OR repo = ?2)
                   AND (?3 = 0 OR stage NOT IN ('created', 'done', 'cancelled'))
                 ORDER BY id DESC LIMIT {limit}",
                Task::COLUMNS
            ),
            params![stage, repo, unfinished],
        )
    }

    fn task_active(&self, limit: u32) -> Result<Vec<Task>> {
        tasks(
            self,
            &format!(
                "SELECT {} FROM tasks
                 WHERE stage NOT IN ('done', 'cancelled') ORDER BY id DESC LIMIT {limit}",
                Task::COLUMNS
            ),
            [],
        )
    }

    fn task_unfinished(&self) -> Result<Vec<Task>> {
        tasks(
            self,
            &format!(
                "SELECT {} FROM tasks
                 WHERE stage NOT IN ('created', 'done', 'cancelled') ORDER BY id",
                Task::COLUMNS
            ),
            [],
        )
    }

    fn task_count_by_stage(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.prepare("SELECT stage, count(*) FROM tasks GROUP BY stage")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn task_cancel_counts(&self) -> Result<(i64, i64)> {
        Ok(self.query_row(
            "SELECT count(*) FILTER (WHERE stage = 'cancelled'),
                    count(*) FILTER (WHERE cancel_requested_at IS NOT NULL
                                       AND stage NOT IN ('cancelled', 'done'))
             FROM tasks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    fn task_move_stage(&self, id: i64, from: &str, to: &str, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE tasks SET stage = ?3, updated_at = ?4 WHERE id = ?1 AND stage = ?2",
            params![id, from, to, now],
        )? == 1)
    }

    fn task_record_transition(&self, t: &NewTransition<'_>) -> Result<()> {
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, job_id, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.task_id,
                t.from_stage,
                t.to_stage,
                t.kind,
                t.reason,
                t.job_id,
                t.at
            ],
        )?;
        Ok(())
    }

    fn task_record_approval(&self, id: i64, stage: &str, reason: &str, now: i64) -> Result<()> {
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
             VALUES (?1, ?2, ?2, 'approve', ?3, ?4)",
            params![id, stage, reason, now],
        )?;
        Ok(())
    }

    fn task_history(&self, id: i64) -> Result<Vec<Transition>> {
        let mut stmt = self.prepare(
            "SELECT from_stage, to_stage, kind, reason, job_id, at FROM task_transitions
             WHERE task_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(Transition {
                from_stage: r.get(0)?,
                to_stage: r.get(1)?,
                kind: r.get(2)?,
                reason: r.get(3)?,
                job_id: r.get(4)?,
                at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn task_transition_count(&self, id: i64) -> Result<i64> {
        Ok(self.query_row(
            "SELECT count(*) FROM task_transitions WHERE task_id = ?1",
            [id],
            |r| r.get(0),
        )?)
    }

    fn task_developer_retries(&self, id: i64) -> Result<i64> {
        Ok(self.query_row(
            "SELECT count(*) FROM task_transitions WHERE task_id = ?1 AND kind = 'rollback'
               AND to_stage = 'development'
               AND id > coalesce((SELECT max(id) FROM task_transitions
                                  WHERE task_id = ?1 AND kind = 'resume'), 0)",
            [id],
            |r| r.get(0),
        )?)
    }

    fn task_escalate(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET escalated_at = ?2, updated_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    fn task_clear_escalation(&self, id: i64) -> Result<()> {
        self.execute("UPDATE tasks SET escalated_at = NULL WHERE id = ?1", [id])?;
        Ok(())
    }

    fn task_set_tested(&self, id: i64, sha: &str) -> Result<()> {
        self.execute(
            "UPDATE tasks SET tested_sha = ?2 WHERE id = ?1",
            params![id, sha],
        )?;
        Ok(())
    }

    fn task_tested_sha(&self, id: i64) -> Result<Option<String>> {
        Ok(
            self.query_row("SELECT tested_sha FROM tasks WHERE id = ?1", [id], |r| {
                r.get(0)
            })?,
        )
    }

    fn task_cancel_request(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET cancel_requested_at = ?2, updated_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    fn task_cancel_request_keep_first(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, ?2), updated_at = ?2
             WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    fn task_cancel_queued_jobs(&self, id: i64, spared_agent: &str, now: i64) -> Result<usize> {
        Ok(self.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?2
             WHERE task_id = ?1 AND status = 'queued' AND agent <> ?3",
            params![id, now, spared_agent],
        )?)
    }

    fn task_cancel_mark(&self, id: i64, from_stage: &str, reason: &str, now: i64) -> Result<bool> {
        let suffix = format!("#cancelled-{id}");
        let marked = self.execute(
            "UPDATE tasks SET stage = 'cancelled', cancelled_at = ?2, updated_at = ?2,
                 plane_id = CASE WHEN plane_id IS NULL OR instr(plane_id, '#cancelled-') > 0
                            THEN plane_id ELSE plane_id || ?3 END,
                 plane_issue_id = CASE WHEN plane_issue_id IS NULL OR instr(plane_issue_id, '#cancelled-') > 0
                            THEN plane_issue_id ELSE plane_issue_id || ?3 END,
                 work_item_id = CASE WHEN instr(work_item_id, '#cancelled-') > 0
                            THEN work_item_id ELSE work_item_id || ?3 END
             WHERE id = ?1 AND stage NOT IN ('cancelled', 'done')",
            params![id, now, suffix],
        )?;
        if marked == 0 {
            return Ok(false);
        }
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
             VALUES (?1, ?2, 'cancelled', 'cancel', ?3, ?4)",
            params![id, from_stage, reason, now],
        )?;
        Ok(true)
    }

    fn task_cancel_pending(&self) -> Result<Vec<i64>> {
        let mut stmt = self.prepare(
            "SELECT id FROM tasks WHERE cancel_requested_at IS NOT NULL
             AND stage NOT IN ('cancelled', 'done') ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_tasks_contract() {
        let (_dir, db) = crate::storage::test_db();
        let conn = db.sqlite();
        crate::storage::tasks::check_contract(conn, &|task, agent, status, token| {
            super::super::add_job(conn, task, agent, status, token)
        });
    }
}
