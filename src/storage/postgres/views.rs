//! [`Views`] on PostgreSQL: each figure one small aggregate statement
//! summed by the server (these tables only grow), a set of tasks passed as
//! one `= ANY($1)` parameter. The statements are SQLite's in PostgreSQL's
//! dialect: every figure is cast to `double precision` (counts and sums of
//! `BIGINT` come back as `bigint` and `numeric`), SQLite's boolean sums are
//! `count(*) FILTER (…)`, `instr` is `strpos`. Labels are grouped and
//! ordered under `COLLATE "C"`, byte order as on SQLite, and where SQLite's
//! order came from its `GROUP BY` (which sorts) it is written out, so the
//! rows come in SQLite's order whatever the database's collation.

use std::collections::HashMap;

use postgres::Row;

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::views::{AttentionTask, FailedJob, Labelled, RunTotals, Views};

/// The agent runs joined to their job and task (for the repository label).
const RUNS_FROM: &str = "FROM agent_runs a LEFT JOIN jobs j ON j.id = a.job_id \
                         LEFT JOIN tasks t ON t.id = a.task_id";

/// The repository and stage labels of a run in [`RUNS_FROM`].
const RUN_LABELS: &str = "coalesce(j.repo, t.repo, '') COLLATE \"C\", \
                          coalesce(a.stage, '') COLLATE \"C\"";

/// `(labels…, value)` rows of `sql`, whose first `columns` columns are
/// labels (text) and whose next one is the value (`double precision`).
fn view_labelled(tx: &Tx<'_>, sql: &str, columns: usize) -> Result<Labelled> {
    tx.query(sql, &[])?
        .iter()
        .map(|r| {
            let labels = (0..columns)
                .map(|i| Ok(get::<Option<String>>(r, i)?.unwrap_or_default()))
                .collect::<Result<Vec<String>>>()?;
            Ok((labels, get::<Option<f64>>(r, columns)?.unwrap_or(0.0)))
        })
        .collect()
}

fn view_attention_from_row(r: &Row) -> Result<AttentionTask> {
    Ok(AttentionTask {
        id: get(r, 0)?,
        stage: get(r, 1)?,
        repo: get(r, 2)?,
        updated_at: get(r, 3)?,
        escalated_at: get(r, 4)?,
        blocked_reason: get(r, 5)?,
        analysis_waits: get(r, 6)?,
        deploy_initiated: get(r, 7)?,
    })
}

impl Views for Tx<'_> {
    fn view_jobs_by_status_agent(&self) -> Result<Labelled> {
        view_labelled(
            self,
            "SELECT status COLLATE \"C\", agent COLLATE \"C\", count(*)::double precision
             FROM jobs GROUP BY 1, 2 ORDER BY 1, 2",
            2,
        )
    }

    fn view_tasks_by_stage(&self) -> Result<Labelled> {
        view_labelled(
            self,
            "SELECT stage COLLATE \"C\", count(*)::double precision FROM tasks
             GROUP BY 1 ORDER BY 1",
            1,
        )
    }

    fn view_deliveries_by_source_status(&self) -> Result<Labelled> {
        view_labelled(
            self,
            "SELECT source COLLATE \"C\", status COLLATE \"C\", count(*)::double precision
             FROM webhook_deliveries GROUP BY 1, 2 ORDER BY 1, 2",
            2,
        )
    }

    fn view_cost_by_repo_stage(&self) -> Result<Labelled> {
        view_labelled(
            self,
            &format!(
                "SELECT {RUN_LABELS}, sum(a.cost_usd) {RUNS_FROM} GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            2,
        )
    }

    fn view_tokens_by_repo_stage_kind(&self) -> Result<Labelled> {
        view_labelled(
            self,
            &format!(
                "SELECT repo, stage, kind, sum(n)::double precision FROM (
                   SELECT {RUN_LABELS}, 'input' COLLATE \"C\", a.input_tokens {RUNS_FROM}
                   UNION ALL SELECT {RUN_LABELS}, 'output', a.output_tokens {RUNS_FROM}
                   UNION ALL SELECT {RUN_LABELS}, 'cache_read', a.cache_read_tokens {RUNS_FROM}
                   UNION ALL SELECT {RUN_LABELS}, 'cache_creation', a.cache_creation_tokens {RUNS_FROM}
                 ) AS tokens (repo, stage, kind, n)
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ),
            3,
        )
    }

    fn view_runs_by_repo_stage_outcome(&self) -> Result<Labelled> {
        // The outcome text is "success", "transient: why" or "failure: why":
        // only the kind is a label (the reason would explode cardinality).
        view_labelled(
            self,
            &format!(
                "SELECT {RUN_LABELS},
                   CASE WHEN a.outcome IS NULL THEN 'unfinished'
                        WHEN strpos(a.outcome, ':') > 0
                             THEN substr(a.outcome, 1, strpos(a.outcome, ':') - 1)
                        ELSE a.outcome END COLLATE \"C\",
                   count(*)::double precision {RUNS_FROM}
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ),
            3,
        )
    }

    fn view_run_totals(&self, task_ids: &[i64], now: i64) -> Result<HashMap<i64, RunTotals>> {
        self.query(
            "SELECT task_id, count(*),
                    sum(greatest(coalesce(finished_at, $2::bigint) - started_at, 0))::bigint,
                    min(started_at), coalesce(sum(cost_usd), 0),
                    count(*) FILTER (WHERE cost_usd IS NULL)
             FROM agent_runs WHERE task_id = ANY($1) GROUP BY task_id",
            &[&task_ids, &now],
        )?
        .iter()
        .map(|r| {
            Ok((
                get(r, 0)?,
                RunTotals {
                    runs: get(r, 1)?,
                    secs: get(r, 2)?,
                    first: get(r, 3)?,
                    known: get(r, 4)?,
                    unknown: get(r, 5)?,
                },
            ))
        })
        .collect()
    }

    fn view_done_at(&self, task_ids: &[i64]) -> Result<HashMap<i64, i64>> {
        self.query(
            "SELECT task_id, max(at) FROM task_transitions
             WHERE to_stage = 'done' AND task_id = ANY($1) GROUP BY task_id",
            &[&task_ids],
        )?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
    }

    fn view_attention_tasks(&self) -> Result<Vec<AttentionTask>> {
        self.query(
            "SELECT t.id, t.stage, t.repo, t.updated_at, t.escalated_at, t.blocked_reason,
                    t.stage = 'analysis' AND t.cancel_requested_at IS NULL
                      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.task_id = t.id
                                      AND j.status IN ('queued', 'running'))
                      AND EXISTS (SELECT 1 FROM jobs j WHERE j.task_id = t.id
                                  AND j.stage = 'analysis' AND j.status = 'done'),
                    EXISTS (SELECT 1 FROM deploys d WHERE d.task_id = t.id
                            AND d.initiated_at IS NOT NULL)
             FROM tasks t
             WHERE t.stage NOT IN ('created', 'done', 'cancelled')
               AND (t.escalated_at IS NOT NULL OR t.blocked_reason IS NOT NULL
                    OR t.stage IN ('analysis', 'deploy'))
             ORDER BY t.id",
            &[],
        )?
        .iter()
        .map(view_attention_from_row)
        .collect()
    }

    fn view_failed_jobs(&self) -> Result<Vec<FailedJob>> {
        self.query(
            "SELECT j.id, j.task_id, j.agent, coalesce(j.finished_at, j.created_at),
                    coalesce(j.error, '')
             FROM jobs j LEFT JOIN tasks t ON t.id = j.task_id
             WHERE j.status = 'failed'
               AND (t.id IS NULL OR t.stage NOT IN ('done', 'cancelled'))
               AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.task_id = j.task_id AND k.id > j.id)
             ORDER BY j.id",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(FailedJob {
                job_id: get(r, 0)?,
                task_id: get(r, 1)?,
                agent: get(r, 2)?,
                since: get(r, 3)?,
                error: get(r, 4)?,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests;
