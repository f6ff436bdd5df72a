//! [`Deploys`] on SQLite: the `deploys` table, one row per task (its
//! primary key), so asking for Confirm Deploy again is one
//! `INSERT … ON CONFLICT` that starts the record afresh.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::storage::Result;
use crate::storage::deploys::{Deploy, Deploys};

impl Deploys for Connection {
    fn deploy_get(&self, task_id: i64) -> Result<Option<Deploy>> {
        Ok(self
            .query_row(
                "SELECT staging_sha, approve_requested_at, initiated_at, hook_pid, run_dir, exit_code, finished_at
                 FROM deploys WHERE task_id = ?1",
                [task_id],
                |r| {
                    Ok(Deploy {
                        staging_sha: r.get(0)?,
                        approve_requested_at: r.get(1)?,
                        initiated_at: r.get(2)?,
                        hook_pid: r.get(3)?,
                        run_dir: r.get(4)?,
                        exit_code: r.get(5)?,
                        finished_at: r.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    fn deploy_request(&self, task_id: i64, staging_sha: &str, now: i64) -> Result<()> {
        self.execute(
            "INSERT INTO deploys (task_id, staging_sha, approve_requested_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(task_id) DO UPDATE SET staging_sha = excluded.staging_sha,
                 approve_requested_at = excluded.approve_requested_at, initiated_at = NULL,
                 hook_pid = NULL, run_dir = NULL, exit_code = NULL, finished_at = NULL",
            params![task_id, staging_sha, now],
        )?;
        Ok(())
    }

    fn deploy_initiate(&self, task_id: i64, run_dir: &str, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE deploys SET initiated_at = ?2, run_dir = ?3 WHERE task_id = ?1 AND initiated_at IS NULL",
            params![task_id, now, run_dir],
        )? != 0)
    }

    fn deploy_set_hook_pid(&self, task_id: i64, pid: i64) -> Result<()> {
        self.execute(
            "UPDATE deploys SET hook_pid = ?2 WHERE task_id = ?1",
            params![task_id, pid],
        )?;
        Ok(())
    }

    fn deploy_finish(&self, task_id: i64, exit_code: Option<i64>, now: i64) -> Result<()> {
        self.execute(
            "UPDATE deploys SET exit_code = ?2, finished_at = ?3 WHERE task_id = ?1",
            params![task_id, exit_code, now],
        )?;
        Ok(())
    }

    fn deploy_retire_finalizers(
        &self,
        task_id: i64,
        finalizer_agent: &str,
        now: i64,
    ) -> Result<usize> {
        Ok(self.execute(
            "UPDATE jobs SET status = 'done', finished_at = ?2, error = 'finalized by orch finalize-deploy'
             WHERE task_id = ?1 AND agent = ?3 AND status = 'queued'",
            params![task_id, now, finalizer_agent],
        )?)
    }

    fn deploy_restage(&self, task_id: i64, now: i64) -> Result<bool> {
        let moved = self.execute(
            "UPDATE tasks SET stage = 'deploy-staging', updated_at = ?2 WHERE id = ?1 AND stage = 'deploy'",
            params![task_id, now],
        )? == 1;
        if moved {
            self.execute(
                "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
                 VALUES (?1, 'deploy', 'deploy-staging', 'rollback', 'main moved since staging', ?2)",
                params![task_id, now],
            )?;
            self.execute("DELETE FROM deploys WHERE task_id = ?1", [task_id])?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_deploys_contract() {
        let (_dir, db) = crate::storage::test_db();
        let conn = db.sqlite();
        crate::storage::deploys::check_contract(conn, &|task, agent, status, token| {
            super::super::add_job(conn, task, agent, status, token)
        });
    }
}
