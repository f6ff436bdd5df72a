//! The self-hosting repository's production deploys as a backend stores
//! them: one record per task through the phases of Confirm Deploy (asked
//! for, initiated, finished), and what those phases write to the task and
//! its jobs. What the phases mean is `pipeline::self_deploy`'s; this is the
//! interface every backend implements (SQLite: `storage::sqlite::deploys`).

use serde::Serialize;

use super::Result;

/// The deploy record of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Deploy {
    /// The commit verified on staging.
    pub staging_sha: Option<String>,
    /// When Confirm Deploy was asked for.
    pub approve_requested_at: Option<i64>,
    /// When the production deploy was started (phase B).
    pub initiated_at: Option<i64>,
    /// The hook's pid.
    pub hook_pid: Option<i64>,
    /// The hook's run directory (`started`, `result`, `hook.log`).
    pub run_dir: Option<String>,
    /// The hook's exit code.
    pub exit_code: Option<i64>,
    /// When phase C finished.
    pub finished_at: Option<i64>,
}

/// The deploy records of a backend.
pub trait Deploys {
    /// The deploy record of task `task_id`, if any.
    fn deploy_get(&self, task_id: i64) -> Result<Option<Deploy>>;

    /// Phase A: record `staging_sha` as verified and Confirm Deploy as asked
    /// for at `now`, starting the record afresh (a previous deploy's
    /// progress is cleared).
    fn deploy_request(&self, task_id: i64, staging_sha: &str, now: i64) -> Result<()>;

    /// Phase B: record the deploy initiated at `now`, run in `run_dir`,
    /// unless it was already; whether this call initiated it.
    fn deploy_initiate(&self, task_id: i64, run_dir: &str, now: i64) -> Result<bool>;

    /// Record the pid of the started deploy hook.
    fn deploy_set_hook_pid(&self, task_id: i64, pid: i64) -> Result<()>;

    /// Phase C: record the hook's exit code (`None` if unknown) and the end.
    fn deploy_finish(&self, task_id: i64, exit_code: Option<i64>, now: i64) -> Result<()>;

    /// End the queued jobs of `finalizer_agent` for task `task_id` as done
    /// (phase C ran without them); how many.
    fn deploy_retire_finalizers(
        &self,
        task_id: i64,
        finalizer_agent: &str,
        now: i64,
    ) -> Result<usize>;

    /// Phase B refused because main moved: send task `task_id` from `deploy`
    /// back to `deploy-staging` (a `rollback` transition) and drop its deploy
    /// record, if it is still on `deploy`; whether it moved.
    fn deploy_restage(&self, task_id: i64, now: i64) -> Result<bool>;
}

/// The contract every backend's [`Deploys`] keeps, run by each backend's
/// tests on a store with no task. `add_job` adds a job (jobs are another
/// concept's).
#[cfg(test)]
pub(crate) fn check_contract<S: Deploys + super::tasks::Tasks>(
    store: &S,
    add_job: super::AddJob<'_>,
) {
    let task = store
        .task_insert(
            &super::tasks::NewTaskRow {
                work_item_id: "A-1",
                title: "Title",
                description: "",
                repo: "demo",
                branch: "feature/a",
                stage: "deploy",
                plane_id: None,
                plane_issue_id: None,
                plane_project_id: None,
                depends_on: None,
            },
            false,
            10,
        )
        .expect("task");
    assert_eq!(store.deploy_get(task).expect("get"), None);
    store.deploy_request(task, "abc", 100).expect("request");
    assert!(
        store
            .deploy_initiate(task, "/run/1", 110)
            .expect("initiate")
    );
    assert!(
        !store
            .deploy_initiate(task, "/run/2", 120)
            .expect("initiate"),
        "once"
    );
    store.deploy_set_hook_pid(task, 4242).expect("pid");
    store.deploy_finish(task, Some(0), 130).expect("finish");
    assert_eq!(
        store.deploy_get(task).expect("get"),
        Some(Deploy {
            staging_sha: Some("abc".into()),
            approve_requested_at: Some(100),
            initiated_at: Some(110),
            hook_pid: Some(4242),
            run_dir: Some("/run/1".into()),
            exit_code: Some(0),
            finished_at: Some(130),
        })
    );
    // A new request starts the record afresh.
    store.deploy_request(task, "def", 200).expect("request");
    assert_eq!(
        store.deploy_get(task).expect("get"),
        Some(Deploy {
            staging_sha: Some("def".into()),
            approve_requested_at: Some(200),
            ..Deploy::default()
        })
    );
    // Only queued jobs of the finalizer are retired.
    add_job(task, "deploy-finalizer", "queued", None);
    add_job(task, "deploy-finalizer", "running", Some("tok"));
    add_job(task, "deployer", "queued", None);
    assert_eq!(
        store
            .deploy_retire_finalizers(task, "deploy-finalizer", 210)
            .expect("retire"),
        1
    );
    // Restaging moves the task once and drops the record.
    assert!(store.deploy_restage(task, 300).expect("restage"));
    assert!(!store.deploy_restage(task, 310).expect("restage"));
    assert_eq!(store.deploy_get(task).expect("get"), None);
    let t = store.task_get(task).expect("task").expect("task");
    assert_eq!((t.stage.as_str(), t.updated_at), ("deploy-staging", 300));
    let last = store
        .task_history(task)
        .expect("history")
        .pop()
        .expect("last");
    assert_eq!(
        (
            last.from_stage.as_str(),
            last.to_stage.as_str(),
            last.kind.as_str()
        ),
        ("deploy", "deploy-staging", "rollback")
    );
}
