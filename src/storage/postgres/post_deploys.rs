//! [`PostDeploys`] on PostgreSQL: `post_deploys`, one row per task (its
//! primary key makes arming idempotent: `INSERT … ON CONFLICT DO NOTHING`),
//! and `post_deploy_checks`, whose `(task_id, seq)` key refuses a check
//! counted twice. Counting a check, deciding the verdict, starting the
//! rollback and finishing are guarded `UPDATE`s: under `READ COMMITTED` a
//! second session waits for the first to commit and re-checks the guard
//! against what it wrote, so each happens once. `ok` is stored as `BIGINT`
//! 0/1, as the schema says.

use postgres::Row;

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::post_deploys::{Check, NewCheck, PostDeploys, Record};

/// The columns [`post_deploy_from_row`] reads, in its order.
const RECORD_COLUMNS: &str = "task_id, started_at, window_s, checks_total, checks_done, \
     checks_failed, next_check_at, status, action_taken, finished_at, last_error, \
     rollback_started_at, rollback_exit_code";

fn post_deploy_from_row(r: &Row) -> Result<Record> {
    Ok(Record {
        task_id: get(r, 0)?,
        started_at: get(r, 1)?,
        window_s: get(r, 2)?,
        checks_total: get(r, 3)?,
        checks_done: get(r, 4)?,
        checks_failed: get(r, 5)?,
        next_check_at: get(r, 6)?,
        status: get(r, 7)?,
        action_taken: get(r, 8)?,
        finished_at: get(r, 9)?,
        last_error: get(r, 10)?,
        rollback_started_at: get(r, 11)?,
        rollback_exit_code: get(r, 12)?,
    })
}

/// The records of `SELECT {RECORD_COLUMNS} FROM post_deploys {tail}`.
fn post_deploys_select(
    tx: &Tx<'_>,
    tail: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<Record>> {
    tx.query(
        &format!("SELECT {RECORD_COLUMNS} FROM post_deploys {tail}"),
        params,
    )?
    .iter()
    .map(post_deploy_from_row)
    .collect()
}

impl PostDeploys for Tx<'_> {
    fn post_deploy_arm(
        &self,
        task_id: i64,
        started_at: i64,
        window_s: i64,
        checks_total: i64,
        next_check_at: i64,
    ) -> Result<bool> {
        Ok(self.execute(
            "INSERT INTO post_deploys (task_id, started_at, window_s, checks_total, next_check_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[
                &task_id,
                &started_at,
                &window_s,
                &checks_total,
                &next_check_at,
            ],
        )? != 0)
    }

    fn post_deploy_delay_job(&self, job_id: i64, at: i64) -> Result<()> {
        self.execute(
            "UPDATE jobs SET available_at = $2 WHERE id = $1",
            &[&job_id, &at],
        )?;
        Ok(())
    }

    fn post_deploy_get(&self, task_id: i64) -> Result<Option<Record>> {
        Ok(
            post_deploys_select(self, "WHERE task_id = $1", &[&task_id])?
                .into_iter()
                .next(),
        )
    }

    fn post_deploy_running(&self) -> Result<Vec<Record>> {
        post_deploys_select(
            self,
            "WHERE finished_at IS NULL ORDER BY started_at, task_id",
            &[],
        )
    }

    fn post_deploy_recent(&self, limit: u32) -> Result<Vec<Record>> {
        post_deploys_select(
            self,
            "WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, task_id DESC LIMIT $1",
            &[&i64::from(limit)],
        )
    }

    fn post_deploy_checks(&self, task_id: i64) -> Result<Vec<Check>> {
        self.query(
            "SELECT seq, at, ok, detail, job_id FROM post_deploy_checks
             WHERE task_id = $1 ORDER BY seq",
            &[&task_id],
        )?
        .iter()
        .map(|r| {
            Ok(Check {
                seq: get(r, 0)?,
                at: get(r, 1)?,
                ok: get::<i64>(r, 2)? != 0,
                detail: get(r, 3)?,
                job_id: get(r, 4)?,
            })
        })
        .collect()
    }

    fn post_deploy_owns(&self, job_id: i64, token: &str) -> Result<bool> {
        get(
            &self.query_one(
                "SELECT EXISTS (SELECT 1 FROM jobs
                                WHERE id = $1 AND status = 'running' AND claim_token = $2)",
                &[&job_id, &token],
            )?,
            0,
        )
    }

    fn post_deploy_count_check(&self, check: &NewCheck<'_>) -> Result<bool> {
        let failed = i64::from(!check.ok);
        let changed = self.execute(
            "UPDATE post_deploys SET checks_done = checks_done + 1,
                 checks_failed = checks_failed + $3, next_check_at = $4,
                 last_error = CASE WHEN $3 = 1 THEN $5 ELSE last_error END
             WHERE task_id = $1 AND status = 'running' AND checks_done = $2",
            &[
                &check.task_id,
                &(check.seq - 1),
                &failed,
                &check.next_check_at,
                &check.detail,
            ],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        self.execute(
            "INSERT INTO post_deploy_checks (task_id, seq, at, ok, detail, job_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &check.task_id,
                &check.seq,
                &check.at,
                &i64::from(check.ok),
                &check.detail,
                &check.job_id,
            ],
        )?;
        Ok(true)
    }

    fn post_deploy_decide(&self, task_id: i64, status: &str, action: &str) -> Result<bool> {
        Ok(self.execute(
            "UPDATE post_deploys SET status = $2, action_taken = $3, next_check_at = NULL
             WHERE task_id = $1 AND status = 'running'",
            &[&task_id, &status, &action],
        )? == 1)
    }

    fn post_deploy_rollback_start(&self, task_id: i64, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE post_deploys SET rollback_started_at = $2
             WHERE task_id = $1 AND rollback_started_at IS NULL",
            &[&task_id, &now],
        )? == 1)
    }

    fn post_deploy_rollback_end(&self, task_id: i64, exit_code: Option<i64>) -> Result<()> {
        self.execute(
            "UPDATE post_deploys SET rollback_exit_code = $2 WHERE task_id = $1",
            &[&task_id, &exit_code],
        )?;
        Ok(())
    }

    fn post_deploy_finish(&self, task_id: i64, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE post_deploys SET finished_at = $2, next_check_at = NULL
             WHERE task_id = $1 AND finished_at IS NULL",
            &[&task_id, &now],
        )? == 1)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::post_deploys::{NewCheck, PostDeploys as _};
    use crate::storage::postgres::{fixtures, testing};

    const TASKS: &str = "INSERT INTO tasks (id, work_item_id, repo, stage, created_at, updated_at)
                         VALUES (1, 'A-1', 'demo', 'done', 0, 0), (2, 'B-2', 'demo', 'done', 0, 0);";

    #[test]
    fn postgres_keeps_the_post_deploys_contract() {
        let Some(mut store) = testing::store() else {
            return;
        };
        store
            .write(|tx| {
                tx.batch(TASKS)?;
                crate::storage::post_deploys::check_contract(tx, &|task, agent, status, token| {
                    fixtures::add_job(tx, task, agent, status, token)
                });
                Ok(())
            })
            .expect("write");
    }

    #[test]
    fn postgres_arms_a_monitor_once_under_concurrent_sessions() {
        let Some(mut store) = testing::store() else {
            return;
        };
        store.write(|tx| Ok(tx.batch(TASKS)?)).expect("tasks");
        let (first, second) =
            fixtures::race(store.db(), &|tx| tx.post_deploy_arm(1, 100, 90, 3, 130));
        assert_eq!((first, second), (true, false));
    }

    #[test]
    fn postgres_counts_a_check_once_and_rolls_back_once_under_concurrent_monitors() {
        let Some(mut store) = testing::store() else {
            return;
        };
        let job = store
            .write(|tx| {
                tx.batch(TASKS)?;
                tx.post_deploy_arm(1, 100, 90, 3, 130)?;
                Ok(fixtures::add_job(
                    tx,
                    1,
                    "post-deploy-monitor",
                    "running",
                    Some("tok"),
                ))
            })
            .expect("armed");
        let check = NewCheck {
            task_id: 1,
            seq: 1,
            ok: false,
            detail: "HTTP 500",
            next_check_at: Some(160),
            job_id: job,
            at: 131,
        };
        let (first, second) = fixtures::race(store.db(), &|tx| tx.post_deploy_count_check(&check));
        assert_eq!((first, second), (true, false));
        let (first, second) =
            fixtures::race(store.db(), &|tx| tx.post_deploy_rollback_start(1, 200));
        assert_eq!((first, second), (true, false));
        let (first, second) = fixtures::race(store.db(), &|tx| {
            tx.post_deploy_decide(1, "degraded", "ROLLBACK")
        });
        assert_eq!((first, second), (true, false));
        let (first, second) = fixtures::race(store.db(), &|tx| tx.post_deploy_finish(1, 300));
        assert_eq!((first, second), (true, false));
        let (rec, checks) = store
            .read(|tx| {
                Ok((
                    tx.post_deploy_get(1)?.expect("record"),
                    tx.post_deploy_checks(1)?,
                ))
            })
            .expect("read");
        assert_eq!(
            (
                rec.checks_done,
                rec.checks_failed,
                rec.rollback_started_at,
                rec.finished_at,
                checks.len()
            ),
            (1, 1, Some(200), Some(300), 1)
        );
        assert!(!checks[0].ok);
    }
}
