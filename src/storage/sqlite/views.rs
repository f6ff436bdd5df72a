//! [`Views`] on SQLite: each figure one small aggregate statement summed by
//! SQLite (these tables only grow), a set of tasks passed as one `json_each`
//! parameter. Small on purpose: one statement with common table expressions
//! for the overview cost SQLite three times as much to compile as to run,
//! in every process.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use crate::storage::views::{AttentionTask, FailedJob, Labelled, RunTotals, Views};
use crate::storage::{Result, json_array};

/// The agent runs joined to their job and task (for the repository label).
const RUNS_FROM: &str = "FROM agent_runs a LEFT JOIN jobs j ON j.id = a.job_id \
                         LEFT JOIN tasks t ON t.id = a.task_id";

/// `(labels…, value)` rows of `sql`, whose first `columns` columns are labels.
fn group_counts(conn: &Connection, sql: &str, columns: usize) -> Result<Labelled> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| {
        let mut labels = Vec::with_capacity(columns);
        for i in 0..columns {
            labels.push(r.get::<_, Option<String>>(i)?.unwrap_or_default());
        }
        Ok((labels, r.get::<_, Option<f64>>(columns)?.unwrap_or(0.0)))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Views for Connection {
    fn view_jobs_by_status_agent(&self) -> Result<Labelled> {
        group_counts(
            self,
            "SELECT status, agent, count(*) FROM jobs GROUP BY status, agent ORDER BY status, agent",
            2,
        )
    }

    fn view_tasks_by_stage(&self) -> Result<Labelled> {
        group_counts(self, "SELECT stage, count(*) FROM tasks GROUP BY stage", 1)
    }

    fn view_deliveries_by_source_status(&self) -> Result<Labelled> {
        group_counts(
            self,
            "SELECT source, status, count(*) FROM webhook_deliveries GROUP BY source, status ORDER BY source, status",
            2,
        )
    }

    fn view_cost_by_repo_stage(&self) -> Result<Labelled> {
        group_counts(
            self,
            &format!(
                "SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), sum(a.cost_usd) {RUNS_FROM} \
                 GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            2,
        )
    }

    fn view_tokens_by_repo_stage_kind(&self) -> Result<Labelled> {
        group_counts(
            self,
            &format!(
                "SELECT repo, stage, kind, sum(n) FROM (\
                   SELECT coalesce(j.repo, t.repo, '') AS repo, coalesce(a.stage, '') AS stage, 'input' AS kind, a.input_tokens AS n {RUNS_FROM} \
                   UNION ALL SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), 'output', a.output_tokens {RUNS_FROM} \
                   UNION ALL SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), 'cache_read', a.cache_read_tokens {RUNS_FROM} \
                   UNION ALL SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), 'cache_creation', a.cache_creation_tokens {RUNS_FROM}) \
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ),
            3,
        )
    }

    fn view_runs_by_repo_stage_outcome(&self) -> Result<Labelled> {
        // The outcome text is "success", "transient: why" or "failure: why":
        // only the kind is a label (the reason would explode cardinality).
        group_counts(
            self,
            &format!(
                "SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), \
                   CASE WHEN a.outcome IS NULL THEN 'unfinished' \
                        WHEN instr(a.outcome, ':') > 0 THEN substr(a.outcome, 1, instr(a.outcome, ':') - 1) \
                        ELSE a.outcome END, count(*) {RUNS_FROM} \
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ),
            3,
        )
    }

    fn view_run_totals(&self, task_ids: &[i64], now: i64) -> Result<HashMap<i64, RunTotals>> {
        let mut stmt = self.prepare(
            "SELECT task_id, count(*), sum(max(coalesce(finished_at, ?2) - started_at, 0)),
                    min(started_at), coalesce(sum(cost_usd), 0), sum(cost_usd IS NULL)
             FROM agent_runs WHERE task_id IN (SELECT value FROM json_each(?1)) GROUP BY task_id",
        )?;
        let rows = stmt.query_map(params![json_array(task_ids), now], |r| {
            Ok((
                r.get(0)?,
                RunTotals {
                    runs: r.get(1)?,
                    secs: r.get(2)?,
                    first: r.get(3)?,
                    known: r.get(4)?,
                    unknown: r.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn view_done_at(&self, task_ids: &[i64]) -> Result<HashMap<i64, i64>> {
        let mut stmt = self.prepare(
            "SELECT task_id, max(at) FROM task_transitions
             WHERE to_stage = 'done' AND task_id IN (SELECT value FROM json_each(?1)) GROUP BY task_id",
        )?;
        let rows = stmt.query_map([json_array(task_ids)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn view_attention_tasks(&self) -> Result<Vec<AttentionTask>> {
        let mut stmt = self.prepare(
            "SELECT t.id, t.stage, t.repo, t.updated_at, t.escalated_at, t.blocked_reason,
                    t.stage = 'analysis' AND t.cancel_requested_at IS NULL
                      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.task_id = t.id AND j.status IN ('queued', 'running'))
                      AND EXISTS (SELECT 1 FROM jobs j WHERE j.task_id = t.id AND j.stage = 'analysis' AND j.status = 'done'),
                    EXISTS (SELECT 1 FROM deploys d WHERE d.task_id = t.id AND d.initiated_at IS NOT NULL)
             FROM tasks t
             WHERE t.stage NOT IN ('created', 'done', 'cancelled')
               AND (t.escalated_at IS NOT NULL OR t.blocked_reason IS NOT NULL OR t.stage IN ('analysis', 'deploy'))
             ORDER BY t.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AttentionTask {
                id: r.get(0)?,
                stage: r.get(1)?,
                repo: r.get(2)?,
                updated_at: r.get(3)?,
                escalated_at: r.get(4)?,
                blocked_reason: r.get(5)?,
                analysis_waits: r.get(6)?,
                deploy_initiated: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn view_failed_jobs(&self) -> Result<Vec<FailedJob>> {
        let mut stmt = self.prepare(
            "SELECT j.id, j.task_id, j.agent, COALESCE(j.finished_at, j.created_at), COALESCE(j.error, '')
             FROM jobs j LEFT JOIN tasks t ON t.id = j.task_id
             WHERE j.status = 'failed'
               AND (t.id IS NULL OR t.stage NOT IN ('done', 'cancelled'))
               AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.task_id = j.task_id AND k.id > j.id)
             ORDER BY j.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(FailedJob {
                job_id: r.get(0)?,
                task_id: r.get(1)?,
                agent: r.get(2)?,
                since: r.get(3)?,
                error: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_views_contract() {
        let (_dir, db) = crate::storage::test_db();
        db.sqlite()
            .execute_batch(&crate::storage::views::contract_rows("x'00'"))
            .expect("fixture");
        crate::storage::views::check_contract(db.sqlite());
    }
}
