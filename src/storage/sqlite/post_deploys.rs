//! [`PostDeploys`] on SQLite: `post_deploys`, one row per task (its primary
//! key makes arming idempotent), and `post_deploy_checks`, whose
//! `(task_id, seq)` key refuses a check counted twice.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::storage::Result;
use crate::storage::post_deploys::{Check, NewCheck, PostDeploys, Record};

const RECORD_COLUMNS: &str = "task_id, started_at, window_s, checks_total, checks_done, \
     checks_failed, next_check_at, status, action_taken, finished_at, last_error, \
     rollback_started_at, rollback_exit_code";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        task_id: r.get(0)?,
        started_at: r.get(1)?,
        window_s: r.get(2)?,
        checks_total: r.get(3)?,
        checks_done: r.get(4)?,
        checks_failed: r.get(5)?,
        next_check_at: r.get(6)?,
        status: r.get(7)?,
        action_taken: r.get(8)?,
        finished_at: r.get(9)?,
        last_error: r.get(10)?,
        rollback_started_at: r.get(11)?,
        rollback_exit_code: r.get(12)?,
    })
}

/// The records `sql` selects (it reads [`RECORD_COLUMNS`]).
fn records(conn: &Connection, sql: &str) -> Result<Vec<Record>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], record_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl PostDeploys for Connection {
    fn post_deploy_arm(
        &self,
        task_id: i64,
        started_at: i64,
        window_s: i64,
        checks_total: i64,
        next_check_at: i64,
    ) -> Result<bool> {
        Ok(self.execute(
            "INSERT OR IGNORE INTO post_deploys (task_id, started_at, window_s, checks_total, next_check_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task_id, started_at, window_s, checks_total, next_check_at],
        )? != 0)
    }

    fn post_deploy_delay_job(&self, job_id: i64, at: i64) -> Result<()> {
        self.execute(
            "UPDATE jobs SET available_at = ?2 WHERE id = ?1",
            params![job_id, at],
        )?;
        Ok(())
    }

    fn post_deploy_get(&self, task_id: i64) -> Result<Option<Record>> {
        Ok(self
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM post_deploys WHERE task_id = ?1"),
                [task_id],
                record_from_row,
            )
            .optional()?)
    }

    fn post_deploy_running(&self) -> Result<Vec<Record>> {
        records(
            self,
            &format!(
                "SELECT {RECORD_COLUMNS} FROM post_deploys WHERE finished_at IS NULL ORDER BY started_at, task_id"
            ),
        )
    }

    fn post_deploy_recent(&self, limit: u32) -> Result<Vec<Record>> {
        records(
            self,
            &format!(
                "SELECT {RECORD_COLUMNS} FROM post_deploys WHERE finished_at IS NOT NULL
                 ORDER BY finished_at DESC, task_id DESC LIMIT {limit}"
            ),
        )
    }

    fn post_deploy_checks(&self, task_id: i64) -> Result<Vec<Check>> {
        let mut stmt = self.prepare(
            "SELECT seq, at, ok, detail, job_id FROM post_deploy_checks WHERE task_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([task_id], |r| {
            Ok(Check {
                seq: r.get(0)?,
                at: r.get(1)?,
                ok: r.get(2)?,
                detail: r.get(3)?,
                job_id: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn post_deploy_owns(&self, job_id: i64, token: &str) -> Result<bool> {
        Ok(self.query_row(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1 AND status = 'running' AND claim_token = ?2)",
            params![job_id, token],
            |r| r.get(0),
        )?)
    }

    fn post_deploy_count_check(&self, check: &NewCheck<'_>) -> Result<bool> {
        let changed = self.execute(
            "UPDATE post_deploys SET checks_done = checks_done + 1,
                 checks_failed = checks_failed + ?3, next_check_at = ?4,
                 last_error = CASE WHEN ?3 = 1 THEN ?5 ELSE last_error END
             WHERE task_id = ?1 AND status = 'running' AND checks_done = ?2",
            params![
                check.task_id,
                check.seq - 1,
                i64::from(!check.ok),
                check.next_check_at,
                check.detail
            ],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        self.execute(
            "INSERT INTO post_deploy_checks (task_id, seq, at, ok, detail, job_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                check.task_id,
                check.seq,
                check.at,
                check.ok,
                check.detail,
                check.job_id
            ],
        )?;
        Ok(true)
    }

    fn post_deploy_decide(&self, task_id: i64, status: &str, action: &str) -> Result<bool> {
        Ok(self.execute(
            "UPDATE post_deploys SET status = ?2, action_taken = ?3, next_check_at = NULL
             WHERE task_id = ?1 AND status = 'running'",
            params![task_id, status, action],
        )? == 1)
    }

    fn post_deploy_rollback_start(&self, task_id: i64, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE post_deploys SET rollback_started_at = ?2
             WHERE task_id = ?1 AND rollback_started_at IS NULL",
            params![task_id, now],
        )? == 1)
    }

    fn post_deploy_rollback_end(&self, task_id: i64, exit_code: Option<i64>) -> Result<()> {
        self.execute(
            "UPDATE post_deploys SET rollback_exit_code = ?2 WHERE task_id = ?1",
            params![task_id, exit_code],
        )?;
        Ok(())
    }

    fn post_deploy_finish(&self, task_id: i64, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE post_deploys SET finished_at = ?2, next_check_at = NULL WHERE task_id = ?1 AND finished_at IS NULL",
            params![task_id, now],
        )? == 1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_post_deploys_contract() {
        let (_dir, db) = crate::storage::test_db();
        let conn = db.sqlite();
        conn.execute_batch(
            "INSERT INTO tasks (id, work_item_id, repo, stage, created_at, updated_at)
             VALUES (1, 'A-1', 'demo', 'done', 0, 0), (2, 'B-2', 'demo', 'done', 0, 0);",
        )
        .expect("tasks");
        crate::storage::post_deploys::check_contract(conn, &|task, agent, status, token| {
            super::super::add_job(conn, task, agent, status, token)
        });
    }
}
