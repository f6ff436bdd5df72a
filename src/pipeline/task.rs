//! Task records: one per tracker issue, carrying its stage, branch and keys.

use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde::Serialize;

use crate::config::Config;
use crate::error::OrchError;
use crate::names;
use crate::pipeline::Stage;
use crate::queue::{self, NewJob};

/// One row of the `tasks` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    /// Task id.
    pub id: i64,
    /// Work-item id, e.g. `ORCH-059`; names `docs/work-items/<id>/`.
    pub work_item_id: String,
    /// Title of the issue.
    pub title: String,
    /// Description of the issue.
    pub description: String,
    /// Repository the task changes.
    pub repo: String,
    /// Feature branch.
    pub branch: Option<String>,
    /// Current stage.
    pub stage: String,
    /// Plane issue key (`PROJ-12`), if the task came from Plane.
    pub plane_id: Option<String>,
    /// Plane issue UUID.
    pub plane_issue_id: Option<String>,
    /// Plane project UUID.
    pub plane_project_id: Option<String>,
    /// The task's own cost cap in USD (else the `task_budget_usd` setting).
    pub budget_usd: Option<f64>,
    /// Why the task is blocked (over budget), if it is.
    pub blocked_reason: Option<String>,
    /// Task that must be `done` before this one's jobs run.
    pub depends_on: Option<i64>,
    /// Creation time (epoch seconds).
    pub created_at: i64,
    /// Last change (epoch seconds).
    pub updated_at: i64,
    /// When the task was escalated to a human.
    pub escalated_at: Option<i64>,
    /// When the task was cancelled.
    pub cancelled_at: Option<i64>,
    /// When a deferred cancel was requested.
    pub cancel_requested_at: Option<i64>,
    /// The task's state in the tracker ("Approved", "Needs Input", …).
    pub tracker_state: Option<String>,
}

/// The columns [`Task::from_row`] reads, in its order.
pub(crate) const TASK_COLUMNS: &str = "id, work_item_id, title, description, repo, branch, stage, \
     plane_id, plane_issue_id, depends_on, created_at, updated_at, escalated_at, cancelled_at, \
     cancel_requested_at, tracker_state, plane_project_id, budget_usd, blocked_reason";

impl Task {
    /// A task from a row whose first columns are [`TASK_COLUMNS`].
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Task> {
        Ok(Task {
            id: r.get(0)?,
            work_item_id: r.get(1)?,
            title: r.get(2)?,
            description: r.get(3)?,
            repo: r.get(4)?,
            branch: r.get(5)?,
            stage: r.get(6)?,
            plane_id: r.get(7)?,
            plane_issue_id: r.get(8)?,
            depends_on: r.get(9)?,
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
            escalated_at: r.get(12)?,
            cancelled_at: r.get(13)?,
            cancel_requested_at: r.get(14)?,
            tracker_state: r.get(15)?,
            plane_project_id: r.get(16)?,
            budget_usd: r.get(17)?,
            blocked_reason: r.get(18)?,
        })
    }

    /// The stage, parsed.
    pub fn stage(&self) -> Stage {
        self.stage.parse().unwrap_or(Stage::Created)
    }
}

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// Declared repository.
    pub repo: String,
    /// Title.
    pub title: String,
    /// Description (the business request).
    pub description: String,
    /// Work-item id; generated from the repo's prefix when empty.
    pub work_item_id: Option<String>,
    /// Task that must be `done` first.
    pub depends_on: Option<i64>,
    /// Plane issue key.
    pub plane_id: Option<String>,
    /// Plane issue UUID.
    pub plane_issue_id: Option<String>,
    /// Plane project UUID.
    pub plane_project_id: Option<String>,
    /// Start the pipeline: move to `analysis` and enqueue the analyst.
    pub start: bool,
}

/// Create a task (and, if asked, start its pipeline) inside the caller's write transaction.
pub fn create(conn: &Connection, config: &Config, new: &NewTask, now: i64) -> anyhow::Result<Task> {
    let repo = config.repo(&new.repo)?;
    if new.title.trim().is_empty() {
        return Err(OrchError::Usage("a task needs a non-empty title".into()).into());
    }
    if let Some(dep) = new.depends_on
        && get(conn, dep)?.is_none()
    {
        return Err(OrchError::NotFound(format!("task {dep} (depends_on) not found")).into());
    }
    let work_item_id = if let Some(id) = &new.work_item_id {
        id.clone()
    } else {
        {
            let prefix = if repo.work_item_prefix.is_empty() {
                new.repo.to_ascii_uppercase()
            } else {
                repo.work_item_prefix.clone()
            };
            let next: i64 =
                conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM tasks", [], |r| {
                    r.get(0)
                })?;
            format!("{prefix}-{next}")
        }
    };
    names::validate_work_item_id(&work_item_id).map_err(|e| OrchError::Usage(e.to_string()))?;
    let branch = names::feature_branch(&work_item_id, &new.title)
        .map_err(|e| OrchError::Usage(e.to_string()))?;
    let exists: Option<i64> = conn
        .query_row(
            "SELECT id FROM tasks WHERE repo = ?1 AND work_item_id = ?2",
            params![new.repo, work_item_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = exists {
        return Err(OrchError::Usage(format!(
            "work item {work_item_id} already exists in repo {} (task {id})",
            new.repo
        ))
        .into());
    }
    let stage = if new.start {
        Stage::Analysis
    } else {
        Stage::Created
    };
    conn.execute(
        "INSERT INTO tasks (work_item_id, title, description, repo, branch, stage, plane_id,
                            plane_issue_id, depends_on, created_at, updated_at, plane_project_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)",
        params![
            work_item_id,
            new.title.trim(),
            new.description,
            new.repo,
            branch,
            stage.as_str(),
            new.plane_id,
            new.plane_issue_id,
            new.depends_on,
            now,
            new.plane_project_id
        ],
    )?;
    let id = conn.last_insert_rowid();
    if new.start {
        conn.execute(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, at)
             VALUES (?1, 'created', ?2, 'start', ?3)",
            params![id, stage.as_str(), now],
        )?;
    }
    if let (true, Some(agent)) = (new.start, stage.agent()) {
        queue::enqueue(
            conn,
            &NewJob {
                agent,
                repo: &new.repo,
                task_id: Some(id),
                stage: Some(stage.as_str()),
                task_content: &new.description,
                max_attempts: config.max_attempts,
            },
            now,
        )?;
    }
    get(conn, id)?.ok_or_else(|| anyhow::anyhow!("task {id} vanished after insert"))
}

/// One task by id.
pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Task>> {
    conn.query_row(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
        [id],
        Task::from_row,
    )
    .optional()
}

/// One task by id, or a not-found error.
pub fn require(conn: &Connection, id: i64) -> anyhow::Result<Task> {
    get(conn, id)?.ok_or_else(|| OrchError::NotFound(format!("task {id} not found")).into())
}

/// The live task of a Plane issue, by key or UUID (tombstoned keys never match).
pub fn by_plane_id(conn: &Connection, plane_id: &str) -> rusqlite::Result<Option<Task>> {
    conn.query_row(
        &format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE plane_id = ?1 OR plane_issue_id = ?1
             ORDER BY id DESC LIMIT 1"
        ),
        [plane_id],
        Task::from_row,
    )
    .optional()
}

/// Tasks, newest first, optionally only those on `stage` or in `repo`.
pub fn list(
    conn: &Connection,
    stage: Option<&str>,
    repo: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<Task>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks
         WHERE (?1 IS NULL OR stage = ?1) AND (?2 IS NULL OR repo = ?2)
         ORDER BY id DESC LIMIT {limit}"
    ))?;
    let rows = stmt.query_map(params![stage, repo], Task::from_row)?;
    rows.collect()
}

/// Tasks not done or cancelled (created ones included), newest first, at
/// most `limit`.
pub fn active(conn: &Connection, limit: u32) -> rusqlite::Result<Vec<Task>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks
         WHERE stage NOT IN ('done', 'cancelled') ORDER BY id DESC LIMIT {limit}"
    ))?;
    let rows = stmt.query_map([], Task::from_row)?;
    rows.collect()
}

/// How many tasks are cancelled, and how many have a STOP request not yet
/// carried out (not cancelled or done).
pub fn cancel_counts(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(
        "SELECT count(*) FILTER (WHERE stage = 'cancelled'),
                count(*) FILTER (WHERE cancel_requested_at IS NOT NULL
                                   AND stage NOT IN ('cancelled', 'done'))
         FROM tasks",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Tasks still in the pipeline (started, not done or cancelled), oldest first.
pub fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<Task>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks
         WHERE stage NOT IN ('created', 'done', 'cancelled') ORDER BY id"
    ))?;
    let rows = stmt.query_map([], Task::from_row)?;
    rows.collect()
}

/// How many tasks are on each stage that has any, in no particular order.
pub fn count_by_stage(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare("SELECT stage, count(*) FROM tasks GROUP BY stage")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Clear the escalation of `t` and queue its stage's agent again, unless a
/// job of the task is already queued or running. The developer-retry count
/// starts afresh from the `resume` transition the caller records
/// (`budget::resume`): only rollbacks after it count.
pub fn clear_escalation(
    conn: &Connection,
    config: &Config,
    t: &Task,
    now: i64,
) -> anyhow::Result<()> {
    conn.execute("UPDATE tasks SET escalated_at = NULL WHERE id = ?1", [t.id])?;
    let active = queue::for_task(conn, t.id)?
        .iter()
        .any(|j| j.status == "queued" || j.status == "running");
    if let (false, Some(agent)) = (active, t.stage().agent()) {
        queue::enqueue(
            conn,
            &NewJob {
                agent,
                repo: &t.repo,
                task_id: Some(t.id),
                stage: Some(t.stage.as_str()),
                task_content: &t.description,
                max_attempts: config.max_attempts,
            },
            now,
        )?;
    }
    Ok(())
}

/// One entry of a task's history (a stage transition, approval or escalation).
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// Stage before.
    pub from_stage: String,
    /// Stage after.
    pub to_stage: String,
    /// `start`, `advance`, `rollback`, `escalate`, `approve` or `cancel`.
    pub kind: String,
    /// Why.
    pub reason: String,
    /// The job whose end caused it, if any.
    pub job_id: Option<i64>,
    /// When (epoch seconds).
    pub at: i64,
}

/// A task's history, oldest first.
pub fn history(conn: &Connection, task_id: i64) -> rusqlite::Result<Vec<Transition>> {
    let mut stmt = conn.prepare(
        "SELECT from_stage, to_stage, kind, reason, job_id, at FROM task_transitions
         WHERE task_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([task_id], |r| {
        Ok(Transition {
            from_stage: r.get(0)?,
            to_stage: r.get(1)?,
            kind: r.get(2)?,
            reason: r.get(3)?,
            job_id: r.get(4)?,
            at: r.get(5)?,
        })
    })?;
    rows.collect()
}
