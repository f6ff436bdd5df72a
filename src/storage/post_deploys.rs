//! Post-deploy monitors as a backend stores them: one record per task
//! (its window, counters, verdict and rollback marker), one row per counted
//! check, and what the monitor writes to its own job. When a check is due
//! and what a verdict means is `pipeline::post_deploy`'s; this is the
//! interface every backend implements (SQLite: `storage::sqlite::post_deploys`).

use serde::Serialize;

use super::Result;

/// The monitor record of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The task.
    pub task_id: i64,
    /// When the monitor was armed (the task reached `done`).
    pub started_at: i64,
    /// The window, in seconds.
    pub window_s: i64,
    /// Checks planned over the window.
    pub checks_total: i64,
    /// Checks run so far.
    pub checks_done: i64,
    /// Checks that failed so far.
    pub checks_failed: i64,
    /// When the next check is due (`None` once no check is left).
    pub next_check_at: Option<i64>,
    /// `running`, `healthy` or `degraded`.
    pub status: String,
    /// `NONE`, `ALERT` or `ROLLBACK` once decided.
    pub action_taken: Option<String>,
    /// When the log was written and the job ended.
    pub finished_at: Option<i64>,
    /// The last failed check's reason.
    pub last_error: Option<String>,
    /// When `rollback_cmd` was started.
    pub rollback_started_at: Option<i64>,
    /// Its exit code (`None` while unknown).
    pub rollback_exit_code: Option<i64>,
}

/// One check, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Its number in the window (1-based).
    pub seq: i64,
    /// When it was counted.
    pub at: i64,
    /// Whether production answered healthy.
    pub ok: bool,
    /// What the probes said.
    pub detail: String,
    /// The monitor job that ran it.
    pub job_id: Option<i64>,
}

/// A check to count.
#[derive(Debug, Clone, Copy)]
pub struct NewCheck<'a> {
    /// The task.
    pub task_id: i64,
    /// Its number in the window (1-based): counted only if `seq - 1`
    /// checks are counted so far.
    pub seq: i64,
    /// Whether production answered healthy.
    pub ok: bool,
    /// What the probes said (the record's last error when not `ok`).
    pub detail: &'a str,
    /// When the next check is due (`None` for the last one).
    pub next_check_at: Option<i64>,
    /// The monitor job that ran it.
    pub job_id: i64,
    /// When it was counted.
    pub at: i64,
}

/// The post-deploy monitors of a backend.
pub trait PostDeploys {
    /// Arm the monitor of task `task_id`: a record started at `started_at`,
    /// `checks_total` checks over `window_s` seconds, the first due at
    /// `next_check_at`, unless the task has one; whether it was armed.
    fn post_deploy_arm(
        &self,
        task_id: i64,
        started_at: i64,
        window_s: i64,
        checks_total: i64,
        next_check_at: i64,
    ) -> Result<bool>;

    /// Make the monitor job `job_id` claimable only from `at` on.
    fn post_deploy_delay_job(&self, job_id: i64, at: i64) -> Result<()>;

    /// The monitor record of task `task_id`, if it was ever armed.
    fn post_deploy_get(&self, task_id: i64) -> Result<Option<Record>>;

    /// Monitors still watching, oldest first.
    fn post_deploy_running(&self) -> Result<Vec<Record>>;

    /// The last `limit` finished monitors, newest first.
    fn post_deploy_recent(&self, limit: u32) -> Result<Vec<Record>>;

    /// The checks of task `task_id`, in order.
    fn post_deploy_checks(&self, task_id: i64) -> Result<Vec<Check>>;

    /// Whether job `job_id` is running under claim `token`.
    fn post_deploy_owns(&self, job_id: i64, token: &str) -> Result<bool>;

    /// Count a check on a running record if it is the next one: the
    /// counters and the next due time move on and the check is recorded;
    /// whether it was counted (another run may have counted it).
    fn post_deploy_count_check(&self, check: &NewCheck<'_>) -> Result<bool>;

    /// Record the verdict `status` (`healthy` or `degraded`) and `action` of
    /// a running record; whether this call decided it.
    fn post_deploy_decide(&self, task_id: i64, status: &str, action: &str) -> Result<bool>;

    /// Mark the rollback started at `now` unless it was; whether this call
    /// marked it (so `rollback_cmd` runs at most once).
    fn post_deploy_rollback_start(&self, task_id: i64, now: i64) -> Result<bool>;

    /// Record the rollback's exit code (`None` if unknown).
    fn post_deploy_rollback_end(&self, task_id: i64, exit_code: Option<i64>) -> Result<()>;

    /// Mark the monitor finished at `now` unless it is; whether this call did.
    fn post_deploy_finish(&self, task_id: i64, now: i64) -> Result<bool>;
}

/// The contract every backend's [`PostDeploys`] keeps, run by each
/// backend's tests on a store with no monitor and tasks 1 and 2.
/// `add_job` adds a job (jobs are another concept's).
#[cfg(test)]
pub(crate) fn check_contract(store: &impl PostDeploys, add_job: super::AddJob<'_>) {
    assert!(store.post_deploy_arm(1, 100, 90, 3, 130).expect("arm"));
    assert!(
        !store.post_deploy_arm(1, 200, 90, 3, 230).expect("arm"),
        "once"
    );
    let rec = store.post_deploy_get(1).expect("get").expect("armed");
    assert_eq!(
        (
            rec.started_at,
            rec.checks_total,
            rec.checks_done,
            rec.next_check_at,
            rec.status.as_str()
        ),
        (100, 3, 0, Some(130), "running")
    );
    assert_eq!(store.post_deploy_get(2).expect("get"), None);
    let job = add_job(1, "post-deploy-monitor", "running", Some("tok"));
    let queued = add_job(1, "post-deploy-monitor", "queued", None);
    store.post_deploy_delay_job(queued, 500).expect("delay");
    assert!(store.post_deploy_owns(job, "tok").expect("owns"));
    assert!(!store.post_deploy_owns(job, "other").expect("owns"));
    assert!(!store.post_deploy_owns(queued, "tok").expect("owns"));
    // Checks count once each, in order.
    let check = NewCheck {
        task_id: 1,
        seq: 1,
        ok: true,
        detail: "HTTP 200",
        next_check_at: Some(160),
        job_id: job,
        at: 131,
    };
    assert!(store.post_deploy_count_check(&check).expect("count"));
    assert!(
        !store.post_deploy_count_check(&check).expect("count"),
        "once"
    );
    let failed = NewCheck {
        seq: 2,
        ok: false,
        detail: "HTTP 500",
        next_check_at: Some(190),
        at: 161,
        ..check
    };
    assert!(store.post_deploy_count_check(&failed).expect("count"));
    let rec = store.post_deploy_get(1).expect("get").expect("armed");
    assert_eq!(
        (
            rec.checks_done,
            rec.checks_failed,
            rec.next_check_at,
            rec.last_error.as_deref()
        ),
        (2, 1, Some(190), Some("HTTP 500"))
    );
    assert_eq!(
        store.post_deploy_checks(1).expect("checks"),
        [
            Check {
                seq: 1,
                at: 131,
                ok: true,
                detail: "HTTP 200".into(),
                job_id: Some(job),
            },
            Check {
                seq: 2,
                at: 161,
                ok: false,
                detail: "HTTP 500".into(),
                job_id: Some(job),
            },
        ]
    );
    // The verdict once, the rollback started once, the end once.
    assert!(
        store
            .post_deploy_decide(1, "degraded", "ROLLBACK")
            .expect("decide")
    );
    assert!(
        !store
            .post_deploy_decide(1, "healthy", "NONE")
            .expect("decide")
    );
    assert!(store.post_deploy_rollback_start(1, 200).expect("start"));
    assert!(!store.post_deploy_rollback_start(1, 210).expect("start"));
    store.post_deploy_rollback_end(1, Some(0)).expect("end");
    assert_eq!(store.post_deploy_running().expect("running").len(), 1);
    assert!(store.post_deploy_recent(5).expect("recent").is_empty());
    assert!(store.post_deploy_finish(1, 300).expect("finish"));
    assert!(!store.post_deploy_finish(1, 310).expect("finish"));
    let rec = store.post_deploy_get(1).expect("get").expect("armed");
    assert_eq!(
        (
            rec.status.as_str(),
            rec.action_taken.as_deref(),
            rec.rollback_started_at,
            rec.rollback_exit_code,
            rec.finished_at,
            rec.next_check_at
        ),
        (
            "degraded",
            Some("ROLLBACK"),
            Some(200),
            Some(0),
            Some(300),
            None
        )
    );
    assert!(store.post_deploy_running().expect("running").is_empty());
    assert!(store.post_deploy_arm(2, 400, 90, 3, 430).expect("arm"));
    assert!(store.post_deploy_finish(2, 500).expect("finish"));
    let recent = store.post_deploy_recent(5).expect("recent");
    assert_eq!(recent.iter().map(|r| r.task_id).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(store.post_deploy_recent(1).expect("recent").len(), 1);
}
