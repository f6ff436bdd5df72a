//! Task records: one per tracker issue, carrying its stage, branch and keys.

use crate::config::Config;
use crate::error::OrchError;
use crate::names;
use crate::pipeline::Stage;
use crate::queue::{self, NewJob};
use crate::storage;
use crate::storage::Executor;
use crate::storage::tasks::NewTaskRow;
pub use crate::storage::tasks::{Task, Transition};

impl Task {
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
pub fn create(
    conn: &dyn Executor,
    config: &Config,
    new: &NewTask,
    now: i64,
) -> anyhow::Result<Task> {
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
            let next = conn.task_next_number()?;
            format!("{prefix}-{next}")
        }
    };
    names::validate_work_item_id(&work_item_id).map_err(|e| OrchError::Usage(e.to_string()))?;
    let branch = names::feature_branch(&work_item_id, &new.title)
        .map_err(|e| OrchError::Usage(e.to_string()))?;
    if let Some(id) = conn.task_id_by_work_item(&new.repo, &work_item_id)? {
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
    let id = conn.task_insert(
        &NewTaskRow {
            work_item_id: &work_item_id,
            title: new.title.trim(),
            description: &new.description,
            repo: &new.repo,
            branch: &branch,
            stage: stage.as_str(),
            plane_id: new.plane_id.as_deref(),
            plane_issue_id: new.plane_issue_id.as_deref(),
            plane_project_id: new.plane_project_id.as_deref(),
            depends_on: new.depends_on,
        },
        new.start,
        now,
    )?;
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
pub fn get(conn: &dyn Executor, id: i64) -> storage::Result<Option<Task>> {
    conn.task_get(id)
}

/// One task by id, or a not-found error.
pub fn require(conn: &dyn Executor, id: i64) -> anyhow::Result<Task> {
    get(conn, id)?.ok_or_else(|| OrchError::NotFound(format!("task {id} not found")).into())
}

/// The live task of a Plane issue, by key or UUID (tombstoned keys never match).
pub fn by_plane_id(conn: &dyn Executor, plane_id: &str) -> storage::Result<Option<Task>> {
    conn.task_by_plane_id(plane_id)
}

/// Tasks, newest first, optionally only those on `stage` or in `repo`.
pub fn list(
    conn: &dyn Executor,
    stage: Option<&str>,
    repo: Option<&str>,
    limit: u32,
) -> storage::Result<Vec<Task>> {
    conn.task_list(stage, repo, limit)
}

/// Tasks not done or cancelled (created ones included), newest first, at
/// most `limit`.
pub fn active(conn: &dyn Executor, limit: u32) -> storage::Result<Vec<Task>> {
    conn.task_active(limit)
}

/// How many tasks are cancelled, and how many have a STOP request not yet
/// carried out (not cancelled or done).
pub fn cancel_counts(conn: &dyn Executor) -> storage::Result<(i64, i64)> {
    conn.task_cancel_counts()
}

/// Tasks still in the pipeline (started, not done or cancelled), oldest first.
pub fn unfinished(conn: &dyn Executor) -> storage::Result<Vec<Task>> {
    conn.task_unfinished()
}

/// How many tasks are on each stage that has any, in no particular order.
pub fn count_by_stage(conn: &dyn Executor) -> storage::Result<Vec<(String, i64)>> {
    conn.task_count_by_stage()
}

/// Clear the escalation of `t` and queue its stage's agent again, unless a
/// job of the task is already queued or running. The developer-retry count
/// starts afresh from the `resume` transition the caller records
/// (`budget::resume`): only rollbacks after it count.
pub fn clear_escalation(
    conn: &dyn Executor,
    config: &Config,
    t: &Task,
    now: i64,
) -> anyhow::Result<()> {
    conn.task_clear_escalation(t.id)?;
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

/// A task's history, oldest first.
pub fn history(conn: &dyn Executor, task_id: i64) -> storage::Result<Vec<Transition>> {
    conn.task_history(task_id)
}
