//! One line per task for the operator (`orch status`, `orch task list`): the
//! task itself, how long its agents ran, how long it has been under way and
//! what it cost, plus what of it needs a human ([`attention`]).
//!
//! Three queries, whatever the number of tasks: the tasks picked, then their
//! runs and their transitions to `done` aggregated for all of them at once
//! (`storage::views`), never read task by task. (One query with common table expressions did the
//! same but cost SQLite three times as much to compile as to run, in every
//! process.) Costs follow the ledger (`budget`): a run without a recorded cost is
//! unknown, never zero, so a task with such runs has no total (`cost_usd` is
//! `None`), only what is known plus how many runs are not.

use serde::Serialize;

use crate::pipeline::attention;
use crate::pipeline::task::Task;
use crate::storage;
use crate::storage::Executor;

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
    conn: &dyn Executor,
    filter: Filter<'_>,
    limit: u32,
    now: i64,
) -> storage::Result<Vec<TaskSummary>> {
    let tasks = pick(conn, filter, limit)?;
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = tasks.iter().map(|t| t.id).collect();
    let mut runs = conn.view_run_totals(&ids, now)?;
    let mut done = conn.view_done_at(&ids)?;
    Ok(tasks
        .into_iter()
        .map(|task| {
            let r = runs.remove(&task.id).unwrap_or_default();
            let done_at = done.remove(&task.id);
            TaskSummary {
                age_s: (now - task.created_at).max(0),
                runs: r.runs,
                run_time_s: r.secs,
                first_run_at: r.first,
                done_at,
                elapsed_s: r.first.map(|f| {
                    let end = done_at.or(task.cancelled_at).unwrap_or(now);
                    (end - f).max(0)
                }),
                cost_usd: (r.unknown == 0).then_some(r.known),
                known_cost_usd: r.known,
                unknown_cost_runs: r.unknown,
                attention: Vec::new(),
                task,
            }
        })
        .collect())
}

/// The tasks matching `filter`, newest first.
fn pick(conn: &dyn Executor, filter: Filter<'_>, limit: u32) -> storage::Result<Vec<Task>> {
    conn.task_pick(filter.stage, filter.repo, filter.unfinished, limit)
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
