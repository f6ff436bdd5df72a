//! [`Ledger`] on SQLite: the `agent_runs` table, aggregated by SQLite (the
//! table only grows, so it is never read run by run for a total), and the
//! budget columns of `tasks` with their `task_transitions`.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use crate::storage::Result;
use crate::storage::ledger::{
    AgentRun, DeadRun, Ledger, NewRun, ORCH_DIED, RunEnd, RunState, StageCost, StageDurations,
    StageRunCost, StuckJob,
};

/// The columns [`run_from_row`] reads, `number` counted among its job's runs.
const RUN_COLUMNS: &str = "a.id, (SELECT count(*) FROM agent_runs b WHERE b.job_id = a.job_id \
     AND b.id <= a.id), a.job_id, a.task_id, a.agent, a.stage, a.pid, a.started_at, \
     a.finished_at, a.outcome, a.exit_code, a.signal, a.timed_out, a.cost_usd, \
     a.input_tokens, a.output_tokens, a.output_path";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<AgentRun> {
    Ok(AgentRun {
        id: r.get(0)?,
        number: r.get(1)?,
        job_id: r.get(2)?,
        task_id: r.get(3)?,
        agent: r.get(4)?,
        stage: r.get(5)?,
        pid: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        outcome: r.get(9)?,
        exit_code: r.get(10)?,
        signal: r.get(11)?,
        timed_out: r.get(12)?,
        cost_usd: r.get(13)?,
        input_tokens: r.get(14)?,
        output_tokens: r.get(15)?,
        output_path: r.get(16)?,
    })
}

/// The runs matching `filter` (on `agent_runs a`, with `id` as `?1`), oldest first.
fn select_runs(conn: &Connection, filter: &str, id: i64) -> Result<Vec<AgentRun>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM agent_runs a WHERE {filter} ORDER BY a.id");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([id], run_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Ledger for Connection {
    fn ledger_start_run(&self, run: &NewRun<'_>) -> Result<i64> {
        self.execute(
            "INSERT INTO agent_runs (job_id, task_id, agent, stage, command, started_at, output_path, session_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run.job_id,
                run.task_id,
                run.agent,
                run.stage,
                run.command,
                run.started_at,
                run.output_path,
                run.session_id
            ],
        )?;
        Ok(self.last_insert_rowid())
    }

    fn ledger_run_count_of_job(&self, job_id: i64) -> Result<i64> {
        Ok(self.query_row(
            "SELECT count(*) FROM agent_runs WHERE job_id = ?1",
            [job_id],
            |r| r.get(0),
        )?)
    }

    fn ledger_set_run_pid(&self, run_id: i64, pid: u32) -> Result<()> {
        self.execute(
            "UPDATE agent_runs SET pid = ?2 WHERE id = ?1",
            params![run_id, pid],
        )?;
        Ok(())
    }

    fn ledger_end_run(&self, run_id: i64, end: &RunEnd) -> Result<()> {
        self.execute(
            "UPDATE agent_runs SET finished_at = ?2, exit_code = ?3, signal = ?4, timed_out = ?5,
                 outcome = ?6, is_error = ?7, cost_usd = ?8, input_tokens = ?9,
                 output_tokens = ?10, cache_read_tokens = ?11, cache_creation_tokens = ?12,
                 num_turns = ?13, session_id = coalesce(?14, session_id)
             WHERE id = ?1",
            params![
                run_id,
                end.finished_at,
                end.exit_code,
                end.signal,
                end.timed_out,
                end.outcome,
                end.is_error,
                end.cost_usd,
                end.input_tokens,
                end.output_tokens,
                end.cache_read_tokens,
                end.cache_creation_tokens,
                end.num_turns,
                end.session_id,
            ],
        )?;
        Ok(())
    }

    fn ledger_runs_of_running_jobs(&self) -> Result<Vec<RunState>> {
        let mut stmt = self.prepare(
            "SELECT r.id, r.exit_code, r.finished_at, r.outcome FROM agent_runs r
             JOIN jobs j ON j.run_id = r.id WHERE j.status = 'running'",
        )?;
        let rows = stmt.query_map([], |r| {
            let outcome: Option<String> = r.get(3)?;
            Ok(RunState {
                run_id: r.get(0)?,
                exit_code: r.get(1)?,
                finished_at: r.get(2)?,
                succeeded: outcome.as_deref() == Some("success"),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn ledger_stage_costs(&self, task_ids: &[i64]) -> Result<Vec<(i64, StageCost)>> {
        let mut stmt = self.prepare_cached(
            "SELECT task_id, coalesce(stage, ''), count(*), coalesce(sum(cost_usd), 0),
                    sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END),
                    sum(CASE WHEN cost_usd IS NULL AND outcome LIKE ?2 THEN 1 ELSE 0 END),
                    coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0)
             FROM agent_runs WHERE task_id IN (SELECT value FROM json_each(?1))
             GROUP BY task_id, stage",
        )?;
        let rows = stmt.query_map(
            params![
                crate::storage::json_array(task_ids),
                format!("{ORCH_DIED}:%")
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    StageCost {
                        stage: r.get(1)?,
                        runs: r.get(2)?,
                        cost_usd: r.get(3)?,
                        unknown_runs: r.get(4)?,
                        orch_died_unknown_runs: r.get(5)?,
                        input_tokens: r.get(6)?,
                        output_tokens: r.get(7)?,
                    },
                ))
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn ledger_total_cost(&self) -> Result<(f64, i64)> {
        Ok(self.query_row(
            "SELECT coalesce(sum(cost_usd), 0), count(*) - count(cost_usd) FROM agent_runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    fn ledger_spent_by_task(&self) -> Result<HashMap<i64, f64>> {
        let mut stmt = self.prepare(
            "SELECT task_id, coalesce(sum(cost_usd), 0) FROM agent_runs
             WHERE task_id IS NOT NULL GROUP BY task_id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn ledger_unfinished_run_log(&self, run_id: i64) -> Result<Option<Option<String>>> {
        Ok(self
            .query_row(
                "SELECT output_path FROM agent_runs WHERE id = ?1 AND finished_at IS NULL",
                [run_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn ledger_record_dead_run(&self, run_id: i64, run: &DeadRun, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE agent_runs SET finished_at = ?2, outcome = ?3, cost_usd = ?4,
                 input_tokens = ?5, output_tokens = ?6,
                 exit_code = CASE WHEN ?7 THEN 0 ELSE exit_code END
             WHERE id = ?1 AND finished_at IS NULL",
            params![
                run_id,
                now,
                run.outcome,
                run.cost_usd,
                run.input_tokens,
                run.output_tokens,
                run.succeeded
            ],
        )? == 1)
    }

    fn ledger_block(&self, task_id: i64, stage: &str, reason: &str, now: i64) -> Result<bool> {
        let changed = self.execute(
            "UPDATE tasks SET blocked_reason = ?2, updated_at = ?3 WHERE id = ?1 AND blocked_reason IS NULL",
            params![task_id, reason, now],
        )? == 1;
        if changed {
            self.execute(
                "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
                 VALUES (?1, ?2, ?2, 'block', ?3, ?4)",
                params![task_id, stage, reason, now],
            )?;
        }
        Ok(changed)
    }

    fn ledger_resume(
        &self,
        task_id: i64,
        stage: &str,
        budget_usd: Option<f64>,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        if let Some(b) = budget_usd {
            self.execute(
                "UPDATE tasks SET budget_usd = ?2 WHERE id = ?1",
                params![task_id, b],
            )?;
        }
        self.execute(
            "UPDATE tasks SET blocked_reason = NULL, updated_at = ?2 WHERE id = ?1",
            params![task_id, now],
        )?;
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
             VALUES (?1, ?2, ?2, 'resume', ?3, ?4)",
            params![task_id, stage, reason, now],
        )?;
        Ok(())
    }

    fn ledger_runs_of_job(&self, job_id: i64) -> Result<Vec<AgentRun>> {
        select_runs(self, "a.job_id = ?1", job_id)
    }

    fn ledger_runs_of_task(&self, task_id: i64) -> Result<Vec<AgentRun>> {
        select_runs(self, "a.task_id = ?1", task_id)
    }

    fn ledger_run(&self, run_id: i64) -> Result<Option<AgentRun>> {
        Ok(select_runs(self, "a.id = ?1", run_id)?.into_iter().next())
    }

    fn ledger_run_is_live(&self, job_id: i64, run_id: i64) -> Result<bool> {
        let live: Option<i64> = self
            .query_row(
                "SELECT 1 FROM agent_runs r JOIN jobs j ON j.id = r.job_id
                 WHERE r.id = ?2 AND j.id = ?1 AND r.finished_at IS NULL
                   AND j.status = 'running' AND j.run_id = r.id",
                [job_id, run_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(live.is_some())
    }

    fn ledger_run_durations(&self, bounds_s: &[i64]) -> Result<Vec<StageDurations>> {
        let buckets: Vec<String> = bounds_s.iter().map(|b| format!("sum(d <= {b})")).collect();
        let mut stmt = self.prepare(&format!(
            "SELECT stage, {}, count(*), coalesce(sum(d), 0) FROM (
                SELECT coalesce(stage, '') AS stage, max(finished_at - started_at, 0) AS d
                FROM agent_runs WHERE finished_at IS NOT NULL)
             GROUP BY stage ORDER BY stage",
            buckets.join(", ")
        ))?;
        let n = bounds_s.len();
        let rows = stmt.query_map([], |r| {
            let mut buckets = Vec::with_capacity(n);
            for i in 0..n {
                buckets.push(r.get::<_, i64>(i + 1)?.max(0).unsigned_abs());
            }
            Ok(StageDurations {
                stage: r.get(0)?,
                buckets,
                count: r.get::<_, i64>(n + 1)?.max(0).unsigned_abs(),
                sum_s: r.get(n + 2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn ledger_run_costs(&self) -> Result<Vec<StageRunCost>> {
        let mut stmt = self.prepare(
            "SELECT coalesce(stage, ''), coalesce(sum(cost_usd), 0), count(*) - count(cost_usd)
             FROM agent_runs WHERE finished_at IS NOT NULL GROUP BY 1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StageRunCost {
                stage: r.get(0)?,
                known_usd: r.get(1)?,
                unknown_runs: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn ledger_stuck_failed(&self) -> Result<Vec<StuckJob>> {
        let mut stmt = self.prepare(
            "SELECT j.id, j.agent, j.task_id, j.error FROM jobs j JOIN tasks t ON t.id = j.task_id
             WHERE j.status = 'failed' AND t.stage NOT IN ('done', 'cancelled')
               AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.task_id = j.task_id AND k.id > j.id)
             ORDER BY j.id DESC LIMIT 5",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StuckJob {
                job_id: r.get(0)?,
                agent: r.get(1)?,
                task_id: r.get(2)?,
                error: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn ledger_job_to_show(&self, task_id: i64) -> Result<Option<i64>> {
        Ok(self
            .query_row(
                "SELECT id FROM jobs WHERE task_id = ?1
                 ORDER BY status = 'running' DESC,
                          (SELECT max(r.id) FROM agent_runs r WHERE r.job_id = jobs.id) DESC NULLS LAST,
                          id DESC
                 LIMIT 1",
                [task_id],
                |r| r.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_ledger_contract() {
        let (_dir, db) = crate::storage::test_db();
        db.sqlite()
            .execute_batch(crate::storage::ledger::CONTRACT_ROWS)
            .expect("fixture");
        crate::storage::ledger::check_contract(db.sqlite());
    }
}
