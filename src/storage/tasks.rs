//! Tasks as a backend stores them: one row per tracker issue (its stage,
//! branch, keys and STOP request) and the audit trail of its transitions.
//! What a stage means and when a task may move is the pipeline's
//! (`pipeline::task`, `pipeline::engine`, `pipeline::cancel`); this is the
//! interface every backend implements (SQLite: `storage::sqlite::tasks`).
//! Stages are passed as their names (`development`, `deploy-staging`), so
//! the storage layer never needs the pipeline's `Stage`.

use serde::Serialize;

use super::Result;

/// One task.
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

/// A task to insert, as the pipeline decided it.
#[derive(Debug, Clone, Copy)]
pub struct NewTaskRow<'a> {
    /// Work-item id.
    pub work_item_id: &'a str,
    /// Title.
    pub title: &'a str,
    /// Description.
    pub description: &'a str,
    /// Repository.
    pub repo: &'a str,
    /// Feature branch.
    pub branch: &'a str,
    /// First stage: `created`, or the started stage.
    pub stage: &'a str,
    /// Plane issue key.
    pub plane_id: Option<&'a str>,
    /// Plane issue UUID.
    pub plane_issue_id: Option<&'a str>,
    /// Plane project UUID.
    pub plane_project_id: Option<&'a str>,
    /// Task that must be `done` first.
    pub depends_on: Option<i64>,
}

/// One entry of a task's history (a stage transition, approval or escalation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// Stage before.
    pub from_stage: String,
    /// Stage after.
    pub to_stage: String,
    /// `start`, `advance`, `rollback`, `escalate`, `approve`, `cancel`,
    /// `block` or `resume`.
    pub kind: String,
    /// Why.
    pub reason: String,
    /// The job whose end caused it, if any.
    pub job_id: Option<i64>,
    /// When (epoch seconds).
    pub at: i64,
}

/// A transition to record.
#[derive(Debug, Clone, Copy)]
pub struct NewTransition<'a> {
    /// The task.
    pub task_id: i64,
    /// Stage before.
    pub from_stage: &'a str,
    /// Stage after.
    pub to_stage: &'a str,
    /// What kind of transition (see [`Transition::kind`]).
    pub kind: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The job whose end caused it, if any.
    pub job_id: Option<i64>,
    /// When (epoch seconds).
    pub at: i64,
}

/// The tasks of a backend.
pub trait Tasks {
    /// The number the next task would get (one more than the largest id):
    /// the suffix of a generated work-item id.
    fn task_next_number(&self) -> Result<i64>;

    /// The task of `repo` with work item `work_item_id`, if any.
    fn task_id_by_work_item(&self, repo: &str, work_item_id: &str) -> Result<Option<i64>>;

    /// Insert a task, with its `start` transition from `created` when
    /// `started`; returns its id.
    fn task_insert(&self, row: &NewTaskRow<'_>, started: bool, now: i64) -> Result<i64>;

    /// One task by id.
    fn task_get(&self, id: i64) -> Result<Option<Task>>;

    /// The live task of a Plane issue, by key or UUID, newest first
    /// (tombstoned keys never match).
    fn task_by_plane_id(&self, plane_id: &str) -> Result<Option<Task>>;

    /// Up to `limit` tasks, newest first, only those on `stage` and in
    /// `repo` when given.
    fn task_list(&self, stage: Option<&str>, repo: Option<&str>, limit: u32) -> Result<Vec<Task>>;

    /// Up to `limit` tasks, newest first, only those on `stage` and in
    /// `repo` when given, and only unfinished ones (started, not done or
    /// cancelled) when `unfinished`.
    fn task_pick(
        &self,
        stage: Option<&str>,
        repo: Option<&str>,
        unfinished: bool,
        limit: u32,
    ) -> Result<Vec<Task>>;

    /// Up to `limit` tasks not done or cancelled (created ones included),
    /// newest first.
    fn task_active(&self, limit: u32) -> Result<Vec<Task>>;

    /// Tasks started and not done or cancelled, oldest first.
    fn task_unfinished(&self) -> Result<Vec<Task>>;

    /// How many tasks are on each stage that has any, in no particular order.
    fn task_count_by_stage(&self) -> Result<Vec<(String, i64)>>;

    /// How many tasks are cancelled, and how many have a STOP request not
    /// yet carried out (not cancelled or done).
    fn task_cancel_counts(&self) -> Result<(i64, i64)>;

    /// Move task `id` from stage `from` to `to` if it is still on `from`;
    /// whether it moved.
    fn task_move_stage(&self, id: i64, from: &str, to: &str, now: i64) -> Result<bool>;

    /// Record a transition in the task's history.
    fn task_record_transition(&self, t: &NewTransition<'_>) -> Result<()>;

    /// Record a human approval of task `id` on `stage` (an `approve`
    /// transition that stays on the stage).
    fn task_record_approval(&self, id: i64, stage: &str, reason: &str, now: i64) -> Result<()>;

    /// The history of task `id`, oldest first.
    fn task_history(&self, id: i64) -> Result<Vec<Transition>>;

    /// How many transitions task `id` has recorded.
    fn task_transition_count(&self, id: i64) -> Result<i64>;

    /// Rollbacks of task `id` into development since its last `resume`.
    fn task_developer_retries(&self, id: i64) -> Result<i64>;

    /// Mark task `id` escalated to a human at `now`.
    fn task_escalate(&self, id: i64, now: i64) -> Result<()>;

    /// Clear the escalation of task `id`.
    fn task_clear_escalation(&self, id: i64) -> Result<()>;

    /// Remember `sha` as the last commit of task `id` whose tests passed.
    fn task_set_tested(&self, id: i64, sha: &str) -> Result<()>;

    /// The last commit of task `id` whose tests passed (`None` if none);
    /// an error if there is no task `id`.
    fn task_tested_sha(&self, id: i64) -> Result<Option<String>>;

    /// Record a STOP request of task `id` at `now` (its deferred cancel).
    fn task_cancel_request(&self, id: i64, now: i64) -> Result<()>;

    /// Record a STOP request of task `id`, keeping the time of an earlier one.
    fn task_cancel_request_keep_first(&self, id: i64, now: i64) -> Result<()>;

    /// Cancel the queued jobs of task `id`, except those of `spared_agent`;
    /// how many were cancelled.
    fn task_cancel_queued_jobs(&self, id: i64, spared_agent: &str, now: i64) -> Result<usize>;

    /// Mark task `id` cancelled, with its keys tombstoned (`#cancelled-<id>`
    /// appended once), and record its `cancel` transition from `from_stage`,
    /// unless it is cancelled or done already; whether this call marked it.
    fn task_cancel_mark(&self, id: i64, from_stage: &str, reason: &str, now: i64) -> Result<bool>;

    /// The tasks with a STOP request not yet carried out, by id.
    fn task_cancel_pending(&self) -> Result<Vec<i64>>;
}

/// The contract every backend's [`Tasks`] keeps, run by each backend's tests
/// on a store with no task. `add_job` adds a job (jobs are another
/// concept's).
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Tasks, add_job: super::AddJob<'_>) {
    let row = |wi, repo, stage, plane| NewTaskRow {
        work_item_id: wi,
        title: "Title",
        description: "Do it",
        repo,
        branch: "feature/x",
        stage,
        plane_id: plane,
        plane_issue_id: None,
        plane_project_id: None,
        depends_on: None,
    };
    assert_eq!(store.task_next_number().expect("next"), 1);
    let a = store
        .task_insert(&row("A-1", "demo", "analysis", Some("PL-1")), true, 100)
        .expect("insert");
    let b = store
        .task_insert(&row("B-2", "other", "created", None), false, 110)
        .expect("insert");
    assert_eq!(store.task_next_number().expect("next"), b + 1);
    assert_eq!(
        store.task_id_by_work_item("demo", "A-1").expect("by wi"),
        Some(a)
    );
    assert_eq!(
        store.task_id_by_work_item("other", "A-1").expect("by wi"),
        None
    );
    let t = store.task_get(a).expect("get").expect("task a");
    assert_eq!(
        (
            t.work_item_id.as_str(),
            t.stage.as_str(),
            t.created_at,
            t.updated_at
        ),
        ("A-1", "analysis", 100, 100)
    );
    assert_eq!(store.task_get(b + 100).expect("get"), None);
    assert_eq!(
        store.task_by_plane_id("PL-1").expect("plane").map(|t| t.id),
        Some(a)
    );
    // Lists: newest first, filtered, limited; unfinished skips `created`.
    let ids = |ts: Vec<Task>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(store.task_list(None, None, 10).expect("list")), [b, a]);
    assert_eq!(ids(store.task_list(None, None, 1).expect("list")), [b]);
    assert_eq!(
        ids(store.task_list(Some("analysis"), None, 10).expect("list")),
        [a]
    );
    assert_eq!(
        ids(store.task_list(None, Some("other"), 10).expect("list")),
        [b]
    );
    assert_eq!(ids(store.task_active(10).expect("active")), [b, a]);
    assert_eq!(ids(store.task_unfinished().expect("unfinished")), [a]);
    let mut counts = store.task_count_by_stage().expect("counts");
    counts.sort();
    assert_eq!(
        counts,
        [("analysis".to_owned(), 1), ("created".to_owned(), 1)]
    );
    // Stage moves are guarded by the stage they start from.
    assert!(
        !store
            .task_move_stage(a, "review", "testing", 200)
            .expect("move")
    );
    assert!(
        store
            .task_move_stage(a, "analysis", "development", 200)
            .expect("move")
    );
    let advance = NewTransition {
        task_id: a,
        from_stage: "analysis",
        to_stage: "development",
        kind: "advance",
        reason: "",
        job_id: None,
        at: 200,
    };
    store.task_record_transition(&advance).expect("transition");
    store
        .task_record_approval(a, "development", "approved by ann", 210)
        .expect("approve");
    let history = store.task_history(a).expect("history");
    assert_eq!(
        history
            .iter()
            .map(|t| (t.from_stage.as_str(), t.to_stage.as_str(), t.kind.as_str()))
            .collect::<Vec<_>>(),
        [
            ("created", "analysis", "start"),
            ("analysis", "development", "advance"),
            ("development", "development", "approve"),
        ]
    );
    assert_eq!(history[2].reason, "approved by ann");
    assert_eq!(store.task_transition_count(a).expect("count"), 3);
    assert_eq!(store.task_transition_count(b).expect("count"), 0);
    // Developer retries: rollbacks into development since the last resume.
    let rollback = NewTransition {
        from_stage: "review",
        kind: "rollback",
        ..advance
    };
    store.task_record_transition(&rollback).expect("rollback");
    store.task_record_transition(&rollback).expect("rollback");
    assert_eq!(store.task_developer_retries(a).expect("retries"), 2);
    let resume = NewTransition {
        kind: "resume",
        ..advance
    };
    store.task_record_transition(&resume).expect("resume");
    store.task_record_transition(&rollback).expect("rollback");
    assert_eq!(store.task_developer_retries(a).expect("retries"), 1);
    // Escalation, tested commit.
    store.task_escalate(a, 300).expect("escalate");
    assert_eq!(
        store.task_get(a).expect("get").and_then(|t| t.escalated_at),
        Some(300)
    );
    store.task_clear_escalation(a).expect("clear");
    assert_eq!(
        store.task_get(a).expect("get").and_then(|t| t.escalated_at),
        None
    );
    assert_eq!(store.task_tested_sha(a).expect("tested"), None);
    store.task_set_tested(a, "abc123").expect("tested");
    assert_eq!(
        store.task_tested_sha(a).expect("tested").as_deref(),
        Some("abc123")
    );
    assert!(store.task_tested_sha(b + 100).is_err(), "no such task");
    // STOP: the request, queued jobs cancelled (the spared agent's kept),
    // the mark once, with the keys tombstoned.
    store.task_cancel_request(b, 400).expect("request");
    store
        .task_cancel_request_keep_first(b, 410)
        .expect("request");
    store
        .task_cancel_request_keep_first(a, 420)
        .expect("request");
    let cancel_requested = |id| {
        store
            .task_get(id)
            .expect("get")
            .and_then(|t| t.cancel_requested_at)
    };
    assert_eq!(
        (cancel_requested(b), cancel_requested(a)),
        (Some(400), Some(420))
    );
    assert_eq!(store.task_cancel_pending().expect("pending"), [a, b]);
    assert_eq!(store.task_cancel_counts().expect("counts"), (0, 2));
    add_job(a, "developer", "queued", None);
    add_job(a, "deploy-finalizer", "queued", None);
    add_job(a, "reviewer", "running", Some("tok"));
    assert_eq!(
        store
            .task_cancel_queued_jobs(a, "deploy-finalizer", 430)
            .expect("cancel jobs"),
        1
    );
    assert!(
        store
            .task_cancel_mark(a, "development", "stop", 500)
            .expect("mark")
    );
    assert!(
        !store
            .task_cancel_mark(a, "development", "stop", 510)
            .expect("mark")
    );
    let t = store.task_get(a).expect("get").expect("task a");
    assert_eq!(
        (
            t.stage.as_str(),
            t.cancelled_at,
            t.work_item_id.as_str(),
            t.plane_id.as_deref()
        ),
        (
            "cancelled",
            Some(500),
            &*format!("A-1#cancelled-{a}"),
            Some(&*format!("PL-1#cancelled-{a}"))
        )
    );
    assert_eq!(store.task_by_plane_id("PL-1").expect("plane"), None);
    let last = store.task_history(a).expect("history").pop().expect("last");
    assert_eq!(
        (
            last.from_stage.as_str(),
            last.to_stage.as_str(),
            last.kind.as_str()
        ),
        ("development", "cancelled", "cancel")
    );
    assert_eq!(store.task_cancel_pending().expect("pending"), [b]);
    assert_eq!(store.task_cancel_counts().expect("counts"), (1, 1));
}
