//! [`Ledger`] on PostgreSQL: the `agent_runs` table, aggregated by the
//! server (the table only grows, so it is never read run by run for a
//! total), and the budget columns of `tasks` with their `task_transitions`.
//! The statements are SQLite's in PostgreSQL's dialect: sums of `BIGINT`
//! (which PostgreSQL returns as `NUMERIC`) are cast back to `bigint`,
//! SQLite's boolean sums are `count(*) FILTER (…)`, its two-argument
//! `max()` is `greatest()`, and a set of tasks is `= ANY($1)`. Where
//! SQLite's order came from its `GROUP BY` (which sorts, `NULL` first, by
//! byte), the order is written out, `NULLS FIRST` and `COLLATE "C"`, so the
//! rows come in the same order whatever the database's collation.

use std::collections::HashMap;

use postgres::Row;
use postgres::types::ToSql;

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::ledger::{
    AgentRun, DeadRun, Ledger, NewRun, ORCH_DIED, RunEnd, RunState, StageCost, StageDurations,
    StageRunCost, StuckJob,
};

/// The columns [`ledger_run_from_row`] reads, `number` counted among its
/// job's runs.
const RUN_COLUMNS: &str = "a.id, (SELECT count(*) FROM agent_runs b WHERE b.job_id = a.job_id \
     AND b.id <= a.id), a.job_id, a.task_id, a.agent, a.stage, a.pid, a.started_at, \
     a.finished_at, a.outcome, a.exit_code, a.signal, a.timed_out, a.cost_usd, \
     a.input_tokens, a.output_tokens, a.output_path";

fn ledger_run_from_row(r: &Row) -> Result<AgentRun> {
    Ok(AgentRun {
        id: get(r, 0)?,
        number: get(r, 1)?,
        job_id: get(r, 2)?,
        task_id: get(r, 3)?,
        agent: get(r, 4)?,
        stage: get(r, 5)?,
        pid: get(r, 6)?,
        started_at: get(r, 7)?,
        finished_at: get(r, 8)?,
        outcome: get(r, 9)?,
        exit_code: get(r, 10)?,
        signal: get(r, 11)?,
        timed_out: get(r, 12)?,
        cost_usd: get(r, 13)?,
        input_tokens: get(r, 14)?,
        output_tokens: get(r, 15)?,
        output_path: get(r, 16)?,
    })
}

/// The runs matching `filter` (on `agent_runs a`, with the id as `$1`),
/// oldest first.
fn ledger_select_runs(tx: &Tx<'_>, filter: &str, id: i64) -> Result<Vec<AgentRun>> {
    let params: &[&(dyn ToSql + Sync)] = &[&id];
    tx.query(
        &format!("SELECT {RUN_COLUMNS} FROM agent_runs a WHERE {filter} ORDER BY a.id"),
        params,
    )?
    .iter()
    .map(ledger_run_from_row)
    .collect()
}

/// A count read from the server (never negative) as the unsigned count
/// the row types hold.
fn ledger_unsigned(r: &Row, idx: usize) -> Result<u64> {
    Ok(get::<i64>(r, idx)?.max(0).unsigned_abs())
}

impl Ledger for Tx<'_> {
    fn ledger_start_run(&self, run: &NewRun<'_>) -> Result<i64> {
        get(
            &self.query_one(
                "INSERT INTO agent_runs (job_id, task_id, agent, stage, command, started_at,
                                         output_path, session_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 RETURNING id",
                &[
                    &run.job_id,
                    &run.task_id,
                    &run.agent,
                    &run.stage,
                    &run.command,
                    &run.started_at,
                    &run.output_path,
                    &run.session_id,
                ],
            )?,
            0,
        )
    }

    fn ledger_run_count_of_job(&self, job_id: i64) -> Result<i64> {
        get(
            &self.query_one(
                "SELECT count(*) FROM agent_runs WHERE job_id = $1",
                &[&job_id],
            )?,
            0,
        )
    }

    fn ledger_set_run_pid(&self, run_id: i64, pid: u32) -> Result<()> {
        self.execute(
            "UPDATE agent_runs SET pid = $2 WHERE id = $1",
            &[&run_id, &i64::from(pid)],
        )?;
        Ok(())
    }

    fn ledger_end_run(&self, run_id: i64, end: &RunEnd) -> Result<()> {
        // SQLite stores the booleans and the i32 codes as integers.
        self.execute(
            "UPDATE agent_runs SET finished_at = $2, exit_code = $3, signal = $4, timed_out = $5,
                 outcome = $6, is_error = $7, cost_usd = $8, input_tokens = $9,
                 output_tokens = $10, cache_read_tokens = $11, cache_creation_tokens = $12,
                 num_turns = $13, session_id = coalesce($14, session_id)
             WHERE id = $1",
            &[
                &run_id,
                &end.finished_at,
                &end.exit_code.map(i64::from),
                &end.signal.map(i64::from),
                &end.timed_out,
                &end.outcome,
                &end.is_error.map(i64::from),
                &end.cost_usd,
                &end.input_tokens,
                &end.output_tokens,
                &end.cache_read_tokens,
                &end.cache_creation_tokens,
                &end.num_turns,
                &end.session_id,
            ],
        )?;
        Ok(())
    }

    fn ledger_runs_of_running_jobs(&self) -> Result<Vec<RunState>> {
        self.query(
            "SELECT r.id, r.exit_code, r.finished_at, r.outcome FROM agent_runs r
             JOIN jobs j ON j.run_id = r.id WHERE j.status = 'running'
             ORDER BY r.id",
            &[],
        )?
        .iter()
        .map(|r| {
            let outcome: Option<String> = get(r, 3)?;
            Ok(RunState {
                run_id: get(r, 0)?,
                exit_code: get(r, 1)?,
                finished_at: get(r, 2)?,
                succeeded: outcome.as_deref() == Some("success"),
            })
        })
        .collect()
    }

    fn ledger_stage_costs(&self, task_ids: &[i64]) -> Result<Vec<(i64, StageCost)>> {
        // Grouped by the stage itself, as on SQLite: runs without a stage
        // and runs on the stage '' are two rows, both named ''. SQLite's
        // LIKE ignores the case of ASCII letters; ILIKE does too.
        self.query(
            "SELECT task_id, coalesce(stage, ''), count(*), coalesce(sum(cost_usd), 0),
                    count(*) FILTER (WHERE cost_usd IS NULL),
                    count(*) FILTER (WHERE cost_usd IS NULL AND outcome ILIKE $2),
                    coalesce(sum(input_tokens), 0)::bigint, coalesce(sum(output_tokens), 0)::bigint
             FROM agent_runs WHERE task_id = ANY($1)
             GROUP BY task_id, stage
             ORDER BY task_id, stage COLLATE \"C\" NULLS FIRST",
            &[&task_ids, &format!("{ORCH_DIED}:%")],
        )?
        .iter()
        .map(|r| {
            Ok((
                get(r, 0)?,
                StageCost {
                    stage: get(r, 1)?,
                    runs: get(r, 2)?,
                    cost_usd: get(r, 3)?,
                    unknown_runs: get(r, 4)?,
                    orch_died_unknown_runs: get(r, 5)?,
                    input_tokens: get(r, 6)?,
                    output_tokens: get(r, 7)?,
                },
            ))
        })
        .collect()
    }

    fn ledger_total_cost(&self) -> Result<(f64, i64)> {
        let r = self.query_one(
            "SELECT coalesce(sum(cost_usd), 0), count(*) - count(cost_usd) FROM agent_runs",
            &[],
        )?;
        Ok((get(&r, 0)?, get(&r, 1)?))
    }

    fn ledger_spent_by_task(&self) -> Result<HashMap<i64, f64>> {
        self.query(
            "SELECT task_id, coalesce(sum(cost_usd), 0) FROM agent_runs
             WHERE task_id IS NOT NULL GROUP BY task_id",
            &[],
        )?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
    }

    fn ledger_unfinished_run_log(&self, run_id: i64) -> Result<Option<Option<String>>> {
        self.query_opt(
            "SELECT output_path FROM agent_runs WHERE id = $1 AND finished_at IS NULL",
            &[&run_id],
        )?
        .map(|r| get(&r, 0))
        .transpose()
    }

    fn ledger_record_dead_run(&self, run_id: i64, run: &DeadRun, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE agent_runs SET finished_at = $2, outcome = $3, cost_usd = $4,
                 input_tokens = $5, output_tokens = $6,
                 exit_code = CASE WHEN $7 THEN 0 ELSE exit_code END
             WHERE id = $1 AND finished_at IS NULL",
            &[
                &run_id,
                &now,
                &run.outcome,
                &run.cost_usd,
                &run.input_tokens,
                &run.output_tokens,
                &run.succeeded,
            ],
        )? == 1)
    }

    fn ledger_block(&self, task_id: i64, stage: &str, reason: &str, now: i64) -> Result<bool> {
        let changed = self.execute(
            "UPDATE tasks SET blocked_reason = $2, updated_at = $3
             WHERE id = $1 AND blocked_reason IS NULL",
            &[&task_id, &reason, &now],
        )? == 1;
        if changed {
            self.execute(
                "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
                 VALUES ($1, $2, $2, 'block', $3, $4)",
                &[&task_id, &stage, &reason, &now],
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
                "UPDATE tasks SET budget_usd = $2 WHERE id = $1",
                &[&task_id, &b],
            )?;
        }
        self.execute(
            "UPDATE tasks SET blocked_reason = NULL, updated_at = $2 WHERE id = $1",
            &[&task_id, &now],
        )?;
        self.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
             VALUES ($1, $2, $2, 'resume', $3, $4)",
            &[&task_id, &stage, &reason, &now],
        )?;
        Ok(())
    }

    fn ledger_runs_of_job(&self, job_id: i64) -> Result<Vec<AgentRun>> {
        ledger_select_runs(self, "a.job_id = $1", job_id)
    }

    fn ledger_runs_of_task(&self, task_id: i64) -> Result<Vec<AgentRun>> {
        ledger_select_runs(self, "a.task_id = $1", task_id)
    }

    fn ledger_run(&self, run_id: i64) -> Result<Option<AgentRun>> {
        Ok(ledger_select_runs(self, "a.id = $1", run_id)?
            .into_iter()
            .next())
    }

    fn ledger_run_is_live(&self, job_id: i64, run_id: i64) -> Result<bool> {
        get(
            &self.query_one(
                "SELECT EXISTS (SELECT 1 FROM agent_runs r JOIN jobs j ON j.id = r.job_id
                     WHERE r.id = $2 AND j.id = $1 AND r.finished_at IS NULL
                       AND j.status = 'running' AND j.run_id = r.id)",
                &[&job_id, &run_id],
            )?,
            0,
        )
    }

    fn ledger_run_durations(&self, bounds_s: &[i64]) -> Result<Vec<StageDurations>> {
        // The bounds are numbers, written into the statement as SQLite's are.
        let buckets: Vec<String> = bounds_s
            .iter()
            .map(|b| format!("count(*) FILTER (WHERE d <= {b}), "))
            .collect();
        let buckets = buckets.concat();
        let n = bounds_s.len();
        self.query(
            &format!(
                "SELECT stage, {buckets}count(*), coalesce(sum(d), 0)::bigint FROM (
                    SELECT coalesce(stage, '') COLLATE \"C\" AS stage,
                           greatest(finished_at - started_at, 0) AS d
                    FROM agent_runs WHERE finished_at IS NOT NULL) AS runs
                 GROUP BY stage ORDER BY stage"
            ),
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(StageDurations {
                stage: get(r, 0)?,
                buckets: (1..=n)
                    .map(|i| ledger_unsigned(r, i))
                    .collect::<Result<_>>()?,
                count: ledger_unsigned(r, n + 1)?,
                sum_s: get(r, n + 2)?,
            })
        })
        .collect()
    }

    fn ledger_run_costs(&self) -> Result<Vec<StageRunCost>> {
        self.query(
            "SELECT coalesce(stage, '') COLLATE \"C\", coalesce(sum(cost_usd), 0),
                    count(*) - count(cost_usd)
             FROM agent_runs WHERE finished_at IS NOT NULL GROUP BY 1 ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(StageRunCost {
                stage: get(r, 0)?,
                known_usd: get(r, 1)?,
                unknown_runs: get(r, 2)?,
            })
        })
        .collect()
    }

    fn ledger_stuck_failed(&self) -> Result<Vec<StuckJob>> {
        self.query(
            "SELECT j.id, j.agent, j.task_id, j.error FROM jobs j JOIN tasks t ON t.id = j.task_id
             WHERE j.status = 'failed' AND t.stage NOT IN ('done', 'cancelled')
               AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.task_id = j.task_id AND k.id > j.id)
             ORDER BY j.id DESC LIMIT 5",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(StuckJob {
                job_id: get(r, 0)?,
                agent: get(r, 1)?,
                task_id: get(r, 2)?,
                error: get(r, 3)?,
            })
        })
        .collect()
    }

    fn ledger_job_to_show(&self, task_id: i64) -> Result<Option<i64>> {
        self.query_opt(
            "SELECT id FROM jobs WHERE task_id = $1
             ORDER BY status = 'running' DESC,
                      (SELECT max(r.id) FROM agent_runs r WHERE r.job_id = jobs.id) DESC NULLS LAST,
                      id DESC
             LIMIT 1",
            &[&task_id],
        )?
        .map(|r| get(&r, 0))
        .transpose()
    }
}

#[cfg(test)]
mod tests;
