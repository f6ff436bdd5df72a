//! The ledger as a backend stores it: the agent runs (table `agent_runs`),
//! what they cost, and the budget blocks of their tasks, with the reads the
//! run views make of jobs and tasks. What a cost means and who is charged
//! for an unknown one is the pipeline's (`pipeline::budget`); how runs are
//! shown is `pipeline::runs`'s. This is the row types and the interface
//! every backend implements (SQLite: `storage::sqlite::ledger`).

use std::collections::HashMap;

use serde::Serialize;

use super::Result;

/// The outcome of a run whose worker died before recording the run's end
/// starts with this (`orch-died: …`); the reaper writes it.
pub const ORCH_DIED: &str = "orch-died";

/// The cost of one stage of a task.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageCost {
    /// The stage.
    pub stage: String,
    /// Agent runs on it.
    pub runs: i64,
    /// Their known cost, in USD.
    pub cost_usd: f64,
    /// Runs whose cost is unknown.
    pub unknown_runs: i64,
    /// Of those, runs cut off by their worker's death ([`ORCH_DIED`]).
    pub orch_died_unknown_runs: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
}

/// The end of a run whose worker died, recovered from what the run left.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadRun {
    /// What it cost, if that can be known.
    pub cost_usd: Option<f64>,
    /// Input tokens, if reported.
    pub input_tokens: Option<i64>,
    /// Output tokens, if reported.
    pub output_tokens: Option<i64>,
    /// The run's outcome: `success` when the log ends in Claude Code's
    /// success result (the CLI prints it as its last act, so the run did its
    /// work), else `orch-died: <how the cost was found>`.
    pub outcome: String,
    /// Whether the log shows the run succeeded (see `outcome`).
    pub succeeded: bool,
}

/// One agent run, as the run views read it (a row of `agent_runs`).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRun {
    /// The run's id (`ORCH_RUN_ID`).
    pub id: i64,
    /// Which run of its job this is, from 1.
    pub number: i64,
    /// The job.
    pub job_id: Option<i64>,
    /// The task.
    pub task_id: Option<i64>,
    /// The agent.
    pub agent: String,
    /// The stage it worked on.
    pub stage: Option<String>,
    /// The agent's process group, once started.
    pub pid: Option<i64>,
    /// Start (epoch seconds).
    pub started_at: i64,
    /// End (epoch seconds), once recorded.
    pub finished_at: Option<i64>,
    /// How the run was judged (`success`, `failure: …`, `transient: …`).
    pub outcome: Option<String>,
    /// The agent's exit code.
    pub exit_code: Option<i64>,
    /// The signal that killed it.
    pub signal: Option<i64>,
    /// `wall` or `stall` when stopped for time.
    pub timed_out: Option<String>,
    /// Cost reported by the agent, in USD.
    pub cost_usd: Option<f64>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// The run's log.
    pub output_path: Option<String>,
}

/// The durations of one stage's finished runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDurations {
    /// The stage (empty for runs without one).
    pub stage: String,
    /// Runs that took at most each bound asked for (cumulative).
    pub buckets: Vec<u64>,
    /// Runs.
    pub count: u64,
    /// Their durations added up, in seconds.
    pub sum_s: i64,
}

/// What one stage's finished runs cost.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRunCost {
    /// The stage (empty for runs without one).
    pub stage: String,
    /// The sum of the known costs, in USD.
    pub known_usd: f64,
    /// Runs whose cost is unknown.
    pub unknown_runs: i64,
}

/// A job that failed for good and holds its task up: nothing is queued for
/// the task after it, and the task is not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StuckJob {
    /// The failed job.
    pub job_id: i64,
    /// Its agent.
    pub agent: String,
    /// Its task.
    pub task_id: i64,
    /// Its last error.
    pub error: Option<String>,
}

/// A run about to start, as the worker records it.
#[derive(Debug, Clone, Copy)]
pub struct NewRun<'a> {
    /// The job.
    pub job_id: i64,
    /// The task.
    pub task_id: i64,
    /// The agent.
    pub agent: &'a str,
    /// The stage it works on.
    pub stage: &'a str,
    /// The command line, as shown to operators.
    pub command: &'a str,
    /// The run's log.
    pub output_path: &'a str,
    /// The agent session id orch chose.
    pub session_id: &'a str,
    /// Start (epoch seconds).
    pub started_at: i64,
}

/// How a run ended, as the worker judged it.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// End (epoch seconds).
    pub finished_at: i64,
    /// The agent's exit code.
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// `wall` or `stall` when stopped for time.
    pub timed_out: Option<String>,
    /// The verdict (`success`, `failure: …`, `transient: …`).
    pub outcome: String,
    /// Whether the agent's result event said it failed.
    pub is_error: Option<bool>,
    /// Cost reported by the agent, in USD.
    pub cost_usd: Option<f64>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// Cache-read input tokens.
    pub cache_read_tokens: Option<i64>,
    /// Cache-creation input tokens.
    pub cache_creation_tokens: Option<i64>,
    /// Turns the agent took.
    pub num_turns: Option<i64>,
    /// The session id the agent reported (kept when absent).
    pub session_id: Option<String>,
}

/// What the reaper needs of a running job's recorded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    /// The run.
    pub run_id: i64,
    /// The agent's exit code, once recorded.
    pub exit_code: Option<i64>,
    /// End, once recorded.
    pub finished_at: Option<i64>,
    /// Whether the recorded verdict is `success`.
    pub succeeded: bool,
}

/// The agent runs, their costs and the budget blocks of a backend.
pub trait Ledger {
    /// Record a run about to start; its id.
    fn ledger_start_run(&self, run: &NewRun<'_>) -> Result<i64>;

    /// How many runs `job_id` has recorded.
    fn ledger_run_count_of_job(&self, job_id: i64) -> Result<i64>;

    /// Record the pid (process group) of a started run's agent.
    fn ledger_set_run_pid(&self, run_id: i64, pid: u32) -> Result<()>;

    /// Record how a run ended.
    fn ledger_end_run(&self, run_id: i64, end: &RunEnd) -> Result<()>;

    /// The recorded run of every running job that has one.
    fn ledger_runs_of_running_jobs(&self) -> Result<Vec<RunState>>;

    /// The costs of the runs of the tasks in `task_ids`, per task and stage
    /// (`(task id, cost)`), in one statement whatever their number.
    fn ledger_stage_costs(&self, task_ids: &[i64]) -> Result<Vec<(i64, StageCost)>>;

    /// The known cost of every run there is, and how many runs' cost is
    /// unknown.
    fn ledger_total_cost(&self) -> Result<(f64, i64)>;

    /// The known cost of every task that has runs, by task id.
    fn ledger_spent_by_task(&self) -> Result<HashMap<i64, f64>>;

    /// The log of run `run_id` if the run is not finished: `None` if it is
    /// finished or gone, `Some(None)` if it has no log.
    fn ledger_unfinished_run_log(&self, run_id: i64) -> Result<Option<Option<String>>>;

    /// Record the recovered end of run `run_id`, whose worker died, at
    /// `now`, if it is not finished yet; whether it was recorded.
    fn ledger_record_dead_run(&self, run_id: i64, run: &DeadRun, now: i64) -> Result<bool>;

    /// Block task `task_id` (on `stage`) for `reason` unless it is blocked
    /// already, recording the transition; whether it was blocked now.
    fn ledger_block(&self, task_id: i64, stage: &str, reason: &str, now: i64) -> Result<bool>;

    /// Unblock task `task_id` (on `stage`), with a new budget if given,
    /// recording the transition with `reason`.
    fn ledger_resume(
        &self,
        task_id: i64,
        stage: &str,
        budget_usd: Option<f64>,
        reason: &str,
        now: i64,
    ) -> Result<()>;

    /// Every run of job `job_id`, oldest first.
    fn ledger_runs_of_job(&self, job_id: i64) -> Result<Vec<AgentRun>>;

    /// Every run of task `task_id`, oldest first.
    fn ledger_runs_of_task(&self, task_id: i64) -> Result<Vec<AgentRun>>;

    /// Run `run_id`, if it exists.
    fn ledger_run(&self, run_id: i64) -> Result<Option<AgentRun>>;

    /// Whether run `run_id` is unfinished and the running job `job_id` is
    /// running it.
    fn ledger_run_is_live(&self, job_id: i64, run_id: i64) -> Result<bool>;

    /// The duration histogram of finished runs per stage, by stage, with a
    /// bucket for each upper bound in `bounds_s` (seconds, ascending).
    fn ledger_run_durations(&self, bounds_s: &[i64]) -> Result<Vec<StageDurations>>;

    /// Known cost and unknown-cost runs of finished runs per stage, by stage.
    fn ledger_run_costs(&self) -> Result<Vec<StageRunCost>>;

    /// Up to five failed jobs that are the last job of an unfinished task,
    /// newest first.
    fn ledger_stuck_failed(&self) -> Result<Vec<StuckJob>>;

    /// The job of task `task_id` whose log to show: its running one, else
    /// the one of its latest run, else its latest job; `None` without jobs.
    fn ledger_job_to_show(&self, task_id: i64) -> Result<Option<i64>>;
}

/// The rows [`check_contract`] expects, in SQL both backends run.
#[cfg(test)]
pub(crate) const CONTRACT_ROWS: &str = "INSERT INTO tasks (id, work_item_id, repo, stage, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 'development', 0, 0), (2, 'B-2', 'demo', 'review', 0, 0);
                 INSERT INTO jobs (id, agent, repo, task_id, stage, status, created_at, finished_at, error)
                 VALUES (10, 'developer', 'demo', 1, 'development', 'done', 0, 60, NULL),
                        (20, 'reviewer', 'demo', 2, 'review', 'failed', 0, 25, 'boom');
                 INSERT INTO jobs (id, agent, repo, task_id, stage, status, created_at, started_at,
                                   claim_token, run_id)
                 VALUES (11, 'developer', 'demo', 1, 'development', 'running', 0, 70, 'tok', 102);
                 INSERT INTO agent_runs (id, job_id, task_id, agent, stage, started_at, finished_at,
                                         outcome, cost_usd, input_tokens, output_tokens, output_path)
                 VALUES (100, 10, 1, 'developer', 'development', 10, 40, 'success', 1.5, 100, 10, NULL),
                        (101, 10, 1, 'developer', 'development', 50, 60, 'failure: x', NULL, NULL, NULL, NULL),
                        (102, 11, 1, 'developer', 'development', 70, NULL, NULL, NULL, NULL, NULL, '/s/agent.log'),
                        (103, 20, 2, 'reviewer', 'review', 20, 25, 'orch-died: cut off', NULL, NULL, NULL, NULL);";

/// The contract every backend's [`Ledger`] keeps, run by each backend's
/// tests on a store holding exactly:
///
/// - task 1 on `development` and task 2 on `review`;
/// - job 10 (task 1, `done`), job 11 (task 1, `running` run 102) and job 20
///   (task 2, reviewer, `failed` with error `boom`);
/// - agent runs 100 (job 10, development, 10 → 40 s, $1.5, 100 in and 10
///   out tokens), 101 (job 10, development, 50 → 60 s, cost unknown), 102
///   (job 11, development, started at 70, log `/s/agent.log`) and 103
///   (job 20, review, 20 → 25 s, outcome `orch-died: …`, cost unknown).
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Ledger) {
    let ids = |runs: Vec<AgentRun>| runs.iter().map(|r| (r.id, r.number)).collect::<Vec<_>>();
    assert_eq!(
        ids(store.ledger_runs_of_job(10).expect("runs")),
        [(100, 1), (101, 2)]
    );
    assert_eq!(
        ids(store.ledger_runs_of_task(1).expect("runs")),
        [(100, 1), (101, 2), (102, 1)]
    );
    let first = store.ledger_run(100).expect("run").expect("there");
    assert_eq!(
        (
            first.agent.as_str(),
            first.stage.as_deref(),
            first.finished_at,
            first.cost_usd,
            first.input_tokens
        ),
        (
            "developer",
            Some("development"),
            Some(40),
            Some(1.5),
            Some(100)
        )
    );
    assert_eq!(store.ledger_run(999).expect("run"), None);
    assert!(store.ledger_run_is_live(11, 102).expect("live"));
    assert!(!store.ledger_run_is_live(10, 101).expect("live"));

    // Costs: an unknown cost is counted, never summed as zero.
    let mut costs: Vec<(i64, String, i64, f64, i64, i64, i64)> = store
        .ledger_stage_costs(&[1, 2])
        .expect("costs")
        .into_iter()
        .map(|(t, c)| {
            let unknown = (c.unknown_runs, c.orch_died_unknown_runs);
            (
                t,
                c.stage,
                c.runs,
                c.cost_usd,
                unknown.0,
                unknown.1,
                c.input_tokens,
            )
        })
        .collect();
    costs.sort_by_key(|c| c.0);
    assert_eq!(
        costs,
        [
            (1, "development".to_owned(), 3, 1.5, 2, 0, 100),
            (2, "review".to_owned(), 1, 0.0, 1, 1, 0)
        ]
    );
    assert_eq!(store.ledger_stage_costs(&[2]).expect("costs").len(), 1);
    assert_eq!(store.ledger_total_cost().expect("total"), (1.5, 3));
    assert_eq!(
        store.ledger_spent_by_task().expect("spent"),
        HashMap::from([(1, 1.5), (2, 0.0)])
    );

    // Finished runs only, per stage.
    assert_eq!(
        store.ledger_run_durations(&[10, 30]).expect("durations"),
        [
            StageDurations {
                stage: "development".into(),
                buckets: vec![1, 2],
                count: 2,
                sum_s: 40
            },
            StageDurations {
                stage: "review".into(),
                buckets: vec![1, 1],
                count: 1,
                sum_s: 5
            }
        ]
    );
    assert_eq!(
        store.ledger_run_costs().expect("costs"),
        [
            StageRunCost {
                stage: "development".into(),
                known_usd: 1.5,
                unknown_runs: 1
            },
            StageRunCost {
                stage: "review".into(),
                known_usd: 0.0,
                unknown_runs: 1
            }
        ]
    );

    assert_eq!(
        store.ledger_stuck_failed().expect("stuck"),
        [StuckJob {
            job_id: 20,
            agent: "reviewer".into(),
            task_id: 2,
            error: Some("boom".into())
        }]
    );
    assert_eq!(store.ledger_job_to_show(1).expect("job"), Some(11));
    assert_eq!(store.ledger_job_to_show(2).expect("job"), Some(20));
    assert_eq!(store.ledger_job_to_show(3).expect("job"), None);

    // A dead worker's run is settled once.
    assert_eq!(
        store.ledger_unfinished_run_log(102).expect("log"),
        Some(Some("/s/agent.log".to_owned()))
    );
    assert_eq!(store.ledger_unfinished_run_log(100).expect("log"), None);
    let dead = DeadRun {
        cost_usd: Some(0.25),
        input_tokens: Some(7),
        output_tokens: None,
        outcome: "success".into(),
        succeeded: true,
    };
    assert!(
        store
            .ledger_record_dead_run(102, &dead, 90)
            .expect("record")
    );
    assert!(
        !store
            .ledger_record_dead_run(102, &dead, 91)
            .expect("record")
    );
    let settled = store.ledger_run(102).expect("run").expect("there");
    assert_eq!(
        (
            settled.finished_at,
            settled.exit_code,
            settled.cost_usd,
            settled.outcome.as_deref()
        ),
        (Some(90), Some(0), Some(0.25), Some("success"))
    );
    assert_eq!(store.ledger_unfinished_run_log(102).expect("log"), None);

    // A task is blocked once until it is resumed.
    assert!(
        store
            .ledger_block(1, "development", "over budget", 95)
            .expect("block")
    );
    assert!(
        !store
            .ledger_block(1, "development", "again", 96)
            .expect("block")
    );
    store
        .ledger_resume(1, "development", Some(10.0), "resumed", 97)
        .expect("resume");
    assert!(
        store
            .ledger_block(1, "development", "over budget", 98)
            .expect("block")
    );
}
