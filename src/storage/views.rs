//! The read models of the operator's views (`orch status`, `orch task
//! list`, `orch metrics`, the web board) as a backend serves them: each an
//! aggregate over jobs, tasks, runs and deliveries in one statement, never
//! read row by row. What the figures mean and how they are shown is the
//! pipeline's (`pipeline::gauges`, `pipeline::overview`,
//! `pipeline::attention`); this is their row types and the read-only
//! interface every backend implements (SQLite: `storage::sqlite::views`).

use std::collections::HashMap;

use super::Result;

/// Label values, in the query's column order, and the value.
pub type Labelled = Vec<(Vec<String>, f64)>;

/// What the agent runs of one task add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunTotals {
    /// Runs.
    pub runs: i64,
    /// Their durations added up, in seconds (a run still going counts up to now).
    pub secs: i64,
    /// When the first one started.
    pub first: Option<i64>,
    /// The sum of the known costs, in USD.
    pub known: f64,
    /// Runs whose cost is unknown (or not recorded yet).
    pub unknown: i64,
}

/// An unfinished task that may need a human, with what decides whether it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionTask {
    /// The task.
    pub id: i64,
    /// Its stage.
    pub stage: String,
    /// Its repository.
    pub repo: String,
    /// Its last change (epoch seconds).
    pub updated_at: i64,
    /// When it was escalated, if it is.
    pub escalated_at: Option<i64>,
    /// Why it is blocked, if it is.
    pub blocked_reason: Option<String>,
    /// On analysis, not being cancelled, no active job, its analyst done.
    pub analysis_waits: bool,
    /// Phase B of a self-hosting deploy started.
    pub deploy_initiated: bool,
}

/// A job that failed for good and is its unfinished task's latest (or has no task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedJob {
    /// The job.
    pub job_id: i64,
    /// Its task, if any.
    pub task_id: Option<i64>,
    /// Its agent.
    pub agent: String,
    /// When it finished (else when it was created), epoch seconds.
    pub since: i64,
    /// Its last error (empty if none).
    pub error: String,
}

/// The read models of a backend's views.
pub trait Views {
    /// Jobs by status and agent, in that order.
    fn view_jobs_by_status_agent(&self) -> Result<Labelled>;

    /// Tasks by stage.
    fn view_tasks_by_stage(&self) -> Result<Labelled>;

    /// Webhook deliveries by source and status, in that order.
    fn view_deliveries_by_source_status(&self) -> Result<Labelled>;

    /// Known cost of the agent runs by repository and stage, in that order.
    fn view_cost_by_repo_stage(&self) -> Result<Labelled>;

    /// Tokens of the agent runs by repository, stage and kind (`input`,
    /// `output`, `cache_read`, `cache_creation`), in that order.
    fn view_tokens_by_repo_stage_kind(&self) -> Result<Labelled>;

    /// Agent runs by repository, stage and outcome kind (`success`,
    /// `failure`, `transient`, …, or `unfinished`), in that order.
    fn view_runs_by_repo_stage_outcome(&self) -> Result<Labelled>;

    /// The run totals of the tasks in `task_ids` that have runs, by task, at `now`.
    fn view_run_totals(&self, task_ids: &[i64], now: i64) -> Result<HashMap<i64, RunTotals>>;

    /// When each task in `task_ids` that reached `done` last did.
    fn view_done_at(&self, task_ids: &[i64]) -> Result<HashMap<i64, i64>>;

    /// The unfinished tasks that are escalated, blocked, or on analysis or
    /// deploy, by id.
    fn view_attention_tasks(&self) -> Result<Vec<AttentionTask>>;

    /// Jobs that failed for good and are their unfinished task's latest, by id.
    fn view_failed_jobs(&self) -> Result<Vec<FailedJob>>;
}

/// The rows [`check_contract`] expects, in SQL both backends run; `blob`
/// is the backend's literal for the one-byte body `00`.
#[cfg(test)]
pub(crate) fn contract_rows(blob: &str) -> String {
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
                 VALUES ('plane', 'h1', {blob}, 'pending', 0), ('plane', 'h2', {blob}, 'processed', 0),
                        ('gitea', 'h1', {blob}, 'pending', 0);".replace("{blob}", blob)
}

/// The contract every backend's [`Views`] keeps, run by each backend's
/// tests on a store holding exactly:
///
/// - tasks 1 (`demo`, development, escalated at 5), 2 (`other`, analysis),
///   3 (`demo`, done: transitions to done at 70 and 80), 4 and 5 (`demo`,
///   deploy; 5's production deploy initiated);
/// - jobs 10 (analyst of task 2 on analysis, done), 11 (developer of task
///   1, failed at 30 with `boom`), 12 (developer without task, failed,
///   created at 3, no error) and 13 (tester of task 3, failed);
/// - agent runs 100 (job 11, development, 10 → 40 s, success, $1.5, 100
///   in, 10 out, 5 cache-read tokens), 101 (job 11, development, started at
///   50, unfinished), 102 (job 10, analysis, 0 → 20 s, `failure: x`, $0.5,
///   1 in, 2 out) and 103 (no job, task or stage, 0 → 1 s, success, cost
///   unknown);
/// - webhook deliveries: `plane` pending and processed, `gitea` pending.
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Views) {
    let row = |labels: &[&str], v: f64| (labels.iter().map(|l| (*l).to_owned()).collect(), v);
    assert_eq!(
        store.view_jobs_by_status_agent().expect("jobs"),
        [
            row(&["done", "analyst"], 1.0),
            row(&["failed", "developer"], 2.0),
            row(&["failed", "tester"], 1.0)
        ]
    );
    let mut tasks = store.view_tasks_by_stage().expect("tasks");
    tasks.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        tasks,
        [
            row(&["analysis"], 1.0),
            row(&["deploy"], 2.0),
            row(&["development"], 1.0),
            row(&["done"], 1.0)
        ]
    );
    assert_eq!(
        store
            .view_deliveries_by_source_status()
            .expect("deliveries"),
        [
            row(&["gitea", "pending"], 1.0),
            row(&["plane", "pending"], 1.0),
            row(&["plane", "processed"], 1.0)
        ]
    );
    // A run without job or task counts under the empty repository.
    assert_eq!(
        store.view_cost_by_repo_stage().expect("cost"),
        [
            row(&["", ""], 0.0),
            row(&["demo", "development"], 1.5),
            row(&["other", "analysis"], 0.5)
        ]
    );
    let tokens = store.view_tokens_by_repo_stage_kind().expect("tokens");
    assert_eq!(tokens.len(), 12);
    assert_eq!(
        tokens[4..8],
        [
            row(&["demo", "development", "cache_creation"], 0.0),
            row(&["demo", "development", "cache_read"], 5.0),
            row(&["demo", "development", "input"], 100.0),
            row(&["demo", "development", "output"], 10.0)
        ]
    );
    assert_eq!(
        store.view_runs_by_repo_stage_outcome().expect("runs"),
        [
            row(&["", "", "success"], 1.0),
            row(&["demo", "development", "success"], 1.0),
            row(&["demo", "development", "unfinished"], 1.0),
            row(&["other", "analysis", "failure"], 1.0)
        ]
    );

    // A run still going counts up to now, its cost as unknown.
    let totals = store.view_run_totals(&[1, 2, 3], 100).expect("totals");
    assert_eq!(
        totals,
        HashMap::from([
            (
                1,
                RunTotals {
                    runs: 2,
                    secs: 80,
                    first: Some(10),
                    known: 1.5,
                    unknown: 1
                }
            ),
            (
                2,
                RunTotals {
                    runs: 1,
                    secs: 20,
                    first: Some(0),
                    known: 0.5,
                    unknown: 0
                }
            )
        ])
    );
    assert_eq!(
        store.view_done_at(&[1, 3]).expect("done"),
        HashMap::from([(3, 80)])
    );

    let waiting: Vec<(i64, Option<i64>, bool, bool)> = store
        .view_attention_tasks()
        .expect("tasks")
        .iter()
        .map(|t| (t.id, t.escalated_at, t.analysis_waits, t.deploy_initiated))
        .collect();
    assert_eq!(
        waiting,
        [
            (1, Some(5), false, false),
            (2, None, true, false),
            (4, None, false, false),
            (5, None, false, true)
        ]
    );
    assert_eq!(
        store.view_failed_jobs().expect("failed"),
        [
            FailedJob {
                job_id: 11,
                task_id: Some(1),
                agent: "developer".into(),
                since: 30,
                error: "boom".into()
            },
            FailedJob {
                job_id: 12,
                task_id: None,
                agent: "developer".into(),
                since: 3,
                error: String::new()
            }
        ]
    );
}
