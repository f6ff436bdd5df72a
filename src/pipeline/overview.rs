//! One line per task for the operator (`orch status`, `orch task list`): the
//! task itself, how long its agents ran, how long it has been under way and
//! what it cost, plus what of it needs a human ([`attention`]).
//!
//! Everything comes from one query, whatever the number of tasks: the runs
//! and transitions are aggregated for the tasks picked, not read task by
//! task. Costs follow the ledger (`budget`): a run without a recorded cost is
//! unknown, never zero, so a task with such runs has no total (`cost_usd` is
//! `None`), only what is known plus how many runs are not.

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::pipeline::attention;
use crate::pipeline::task::{self, Task};

/// Which tasks to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// Only tasks on this stage.
    pub stage: Option<&'a str>,
    /// Only tasks of this repository.
    pub repo: Option<&'a str>,
    /// Only tasks still in the pipeline (not created, done or cancelled).
    pub unfinished: bool,
}

/// A task with its times, cost and what of it needs a human.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// Seconds since the task was created.
    pub age_s: i64,
    /// Agent runs of the task.
    pub runs: i64,
    /// The sum of its agent runs' durations (a run still going counts up to now).
    pub run_time_s: i64,
    /// When its first agent run started.
    pub first_run_at: Option<i64>,
    /// When it reached `done`.
    pub done_at: Option<i64>,
    /// First run start to `done` (or its cancel, or now while unfinished);
    /// `None` before any run.
    pub elapsed_s: Option<i64>,
    /// The total cost in USD when every run's cost is known, else `None`.
    pub cost_usd: Option<f64>,
    /// The sum of the costs that are known.
    pub known_cost_usd: f64,
    /// Runs whose cost is unknown (or not recorded yet).
    pub unknown_cost_runs: i64,
    /// What of this task needs a human (items of [`attention::list`]).
    pub attention: Vec<attention::Item>,
}

/// At most `limit` tasks matching `filter`, newest first, summarised at `now`.
/// `attention` is left empty: see [`attach`].
pub fn list(
    conn: &Connection,
    filter: Filter<'_>,
    limit: u32,
    now: i64,
) -> rusqlite::Result<Vec<TaskSummary>> {
    let mut stmt = conn.prepare(&format!(
        "WITH picked AS (
            SELECT {cols} FROM tasks
            WHERE (?1 IS NULL OR stage = ?1) AND (?2 IS NULL OR repo = ?2)
              AND (?3 = 0 OR stage NOT IN ('created', 'done', 'cancelled'))
            ORDER BY id DESC LIMIT ?4),
         runs AS (
            SELECT task_id, count(*) AS n, sum(max(coalesce(finished_at, ?5) - started_at, 0)) AS secs,
                   min(started_at) AS first, coalesce(sum(cost_usd), 0) AS known,
                   sum(cost_usd IS NULL) AS unknown
            FROM agent_runs WHERE task_id IN (SELECT id FROM picked) GROUP BY task_id),
         done AS (
            SELECT task_id, max(at) AS at FROM task_transitions
            WHERE to_stage = 'done' AND task_id IN (SELECT id FROM picked) GROUP BY task_id)
         SELECT p.*, coalesce(r.n, 0), coalesce(r.secs, 0), r.first, coalesce(r.known, 0),
                coalesce(r.unknown, 0), d.at
         FROM picked p LEFT JOIN runs r ON r.task_id = p.id LEFT JOIN done d ON d.task_id = p.id
         ORDER BY p.id DESC",
        cols = task::TASK_COLUMNS
    ))?;
    let n = task::TASK_COLUMNS.split(',').count();
    let rows = stmt.query_map(
        params![filter.stage, filter.repo, filter.unfinished, limit, now],
        |r| {
            let task = Task::from_row(r)?;
            let first_run_at: Option<i64> = r.get(n + 2)?;
            let done_at: Option<i64> = r.get(n + 5)?;
            let known: f64 = r.get(n + 3)?;
            let unknown: i64 = r.get(n + 4)?;
            Ok(TaskSummary {
                age_s: (now - task.created_at).max(0),
                runs: r.get(n)?,
                run_time_s: r.get(n + 1)?,
                first_run_at,
                done_at,
                elapsed_s: first_run_at.map(|f| {
                    let end = done_at.or(task.cancelled_at).unwrap_or(now);
                    (end - f).max(0)
                }),
                cost_usd: (unknown == 0).then_some(known),
                known_cost_usd: known,
                unknown_cost_runs: unknown,
                attention: Vec::new(),
                task,
            })
        },
    )?;
    rows.collect()
}

/// Give each summary the attention items of its task.
pub fn attach(summaries: &mut [TaskSummary], items: &[attention::Item]) {
    for s in summaries {
        s.attention = items
            .iter()
            .filter(|i| i.task_id == Some(s.task.id))
            .cloned()
            .collect();
    }
}
