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
            .execute_batch(
                "INSERT INTO tasks (id, work_item_id, repo, stage, created_at, updated_at, escalated_at)
                 VALUES (1, 'A-1', 'demo', 'development', 0, 6, 5),
                        (2, 'B-2', 'other', 'analysis', 0, 7, NULL),
                        (3, 'C-3', 'demo', 'done', 0, 80, NULL),
                        (4, 'D-4', 'demo', 'deploy', 0, 8, NULL),
                        (5, 'E-5', 'demo', 'deploy', 0, 9, NULL);
                 INSERT INTO deploys (task_id, initiated_at) VALUES (5, 50);
                 INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, at)
                 VALUES (3, 'deploy', 'done', 'advance', 70), (3, 'deploy', 'done', 'advance', 80),
                        (1, 'created', 'analysis', 'start', 1);
                 INSERT INTO jobs (id, agent, repo, task_id, stage, status, created_at, finished_at, error)
                 VALUES (10, 'analyst', 'other', 2, 'analysis', 'done', 0, 20, NULL),
                        (11, 'developer', 'demo', 1, 'development', 'failed', 0, 30, 'boom'),
                        (12, 'developer', 'demo', NULL, NULL, 'failed', 3, NULL, NULL),
                        (13, 'tester', 'demo', 3, 'testing', 'failed', 0, 60, 'no');
                 INSERT INTO agent_runs (id, job_id, task_id, agent, stage, started_at, finished_at,
                                         outcome, cost_usd, input_tokens, output_tokens, cache_read_tokens)
                 VALUES (100, 11, 1, 'developer', 'development', 10, 40, 'success', 1.5, 100, 10, 5),
                        (101, 11, 1, 'developer', 'development', 50, NULL, NULL, NULL, NULL, NULL, NULL),
                        (102, 10, 2, 'analyst', 'analysis', 0, 20, 'failure: x', 0.5, 1, 2, NULL),
                        (103, NULL, NULL, 'x', NULL, 0, 1, 'success', NULL, NULL, NULL, NULL);
                 INSERT INTO webhook_deliveries (source, content_hash, body, status, received_at)
                 VALUES ('plane', 'h1', x'00', 'pending', 0), ('plane', 'h2', x'00', 'processed', 0),
                        ('gitea', 'h1', x'00', 'pending', 0);",
            )
            .expect("fixture");
        crate::storage::views::check_contract(db.sqlite());
    }
}
