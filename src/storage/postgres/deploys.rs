//! [`Deploys`] on PostgreSQL: the `deploys` table, one row per task (its
//! primary key), so asking for Confirm Deploy again is one `INSERT … ON
//! CONFLICT` that starts the record afresh. Initiating a deploy and
//! restaging a task are guarded `UPDATE`s: under `READ COMMITTED` a second
//! session waits for the first to commit and re-checks the guard against
//! what it wrote, so each happens once.

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::deploys::{Deploy, Deploys};

impl Deploys for Tx<'_> {
    fn deploy_get(&self, task_id: i64) -> Result<Option<Deploy>> {
        self.query_opt(
            "SELECT staging_sha, approve_requested_at, initiated_at, hook_pid, run_dir, exit_code,
                    finished_at
             FROM deploys WHERE task_id = $1",
            &[&task_id],
        )?
        .map(|r| {
            Ok(Deploy {
                staging_sha: get(&r, 0)?,
                approve_requested_at: get(&r, 1)?,
                initiated_at: get(&r, 2)?,
                hook_pid: get(&r, 3)?,
                run_dir: get(&r, 4)?,
                exit_code: get(&r, 5)?,
                finished_at: get(&r, 6)?,
            })
        })
        .transpose()
    }

    fn deploy_request(&self, task_id: i64, staging_sha: &str, now: i64) -> Result<()> {
        self.execute(
            "INSERT INTO deploys (task_id, staging_sha, approve_requested_at) VALUES ($1, $2, $3)
             ON CONFLICT (task_id) DO UPDATE SET staging_sha = excluded.staging_sha,
                 approve_requested_at = excluded.approve_requested_at, initiated_at = NULL,
                 hook_pid = NULL, run_dir = NULL, exit_code = NULL, finished_at = NULL",
            &[&task_id, &staging_sha, &now],
        )?;
        Ok(())
    }

    fn deploy_initiate(&self, task_id: i64, run_dir: &str, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE deploys SET initiated_at = $2, run_dir = $3
             WHERE task_id = $1 AND initiated_at IS NULL",
            &[&task_id, &now, &run_dir],
        )? != 0)
    }

    fn deploy_set_hook_pid(&self, task_id: i64, pid: i64) -> Result<()> {
        self.execute(
            "UPDATE deploys SET hook_pid = $2 WHERE task_id = $1",
            &[&task_id, &pid],
        )?;
        Ok(())
    }

    fn deploy_finish(&self, task_id: i64, exit_code: Option<i64>, now: i64) -> Result<()> {
        self.execute(
            "UPDATE deploys SET exit_code = $2, finished_at = $3 WHERE task_id = $1",
            &[&task_id, &exit_code, &now],
        )?;
        Ok(())
    }

    fn deploy_retire_finalizers(
        &self,
        task_id: i64,
        finalizer_agent: &str,
        now: i64,
    ) -> Result<usize> {
        let n = self.execute(
            "UPDATE jobs SET status = 'done', finished_at = $2,
                 error = 'finalized by orch finalize-deploy'
             WHERE task_id = $1 AND agent = $3 AND status = 'queued'",
            &[&task_id, &now, &finalizer_agent],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn deploy_restage(&self, task_id: i64, now: i64) -> Result<bool> {
        let moved = self.execute(
            "UPDATE tasks SET stage = 'deploy-staging', updated_at = $2
             WHERE id = $1 AND stage = 'deploy'",
            &[&task_id, &now],
        )? == 1;
        if moved {
            self.execute(
                "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
                 VALUES ($1, 'deploy', 'deploy-staging', 'rollback', 'main moved since staging', $2)",
                &[&task_id, &now],
            )?;
            self.execute("DELETE FROM deploys WHERE task_id = $1", &[&task_id])?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use crate::storage::deploys::Deploys as _;
    use crate::storage::postgres::{fixtures, testing};
    use crate::storage::tasks::Tasks as _;

    #[test]
    fn postgres_keeps_the_deploys_contract() {
        let Some(mut store) = testing::store() else {
            return;
        };
        store
            .write(|tx| {
                crate::storage::deploys::check_contract(tx, &|task, agent, status, token| {
                    fixtures::add_job(tx, task, agent, status, token)
                });
                Ok(())
            })
            .expect("write");
    }

    /// A task on `deploy` with Confirm Deploy asked for.
    fn requested(store: &mut testing::TestStore) -> i64 {
        store
            .write(|tx| {
                tx.batch(
                    "INSERT INTO tasks (id, work_item_id, repo, stage, created_at, updated_at)
                     VALUES (1, 'A-1', 'demo', 'deploy', 0, 0);",
                )?;
                tx.deploy_request(1, "abc", 100)?;
                Ok(1)
            })
            .expect("task")
    }

    #[test]
    fn postgres_initiates_a_deploy_once_under_concurrent_sessions() {
        let Some(mut store) = testing::store() else {
            return;
        };
        let task = requested(&mut store);
        let runs = AtomicI64::new(1);
        let (first, second) = fixtures::race(store.db(), &|tx| {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            tx.deploy_initiate(task, &format!("/run/{n}"), 100 + 10 * n)
        });
        assert_eq!((first, second), (true, false));
        let d = store
            .read(|tx| Ok(tx.deploy_get(task)?.expect("deploy")))
            .expect("get");
        assert_eq!(
            (d.initiated_at, d.run_dir.as_deref()),
            (Some(110), Some("/run/1")),
            "the first initiation stands"
        );
    }

    #[test]
    fn postgres_restages_a_task_once_under_concurrent_sessions() {
        let Some(mut store) = testing::store() else {
            return;
        };
        let task = requested(&mut store);
        let (first, second) = fixtures::race(store.db(), &|tx| tx.deploy_restage(task, 300));
        assert_eq!((first, second), (true, false));
        let (stage, rollbacks, deploy) = store
            .read(|tx| {
                Ok((
                    tx.task_get(task)?.expect("task").stage,
                    tx.task_history(task)?
                        .iter()
                        .filter(|h| h.kind == "rollback")
                        .count(),
                    tx.deploy_get(task)?,
                ))
            })
            .expect("read");
        assert_eq!(
            (stage.as_str(), rollbacks, deploy),
            ("deploy-staging", 1, None)
        );
    }
}
