//! Jobs as a backend stores them: the row, what a claim needs to know, and
//! the interface every backend implements (SQLite: `storage::sqlite::jobs`).
//!
//! What a job's outcome means (retry budgets, backoff, owner deaths) is the
//! queue's (`crate::queue`); a backend only carries out whole operations:
//! claim the oldest eligible job, end a claim if its fence still holds,
//! requeue it with ownership cleared. Every change to a claimed job is
//! fenced by its claim token (`id`, `status = 'running'`, `claim_token`) and
//! reports whether the fence held, so two processes racing over one job
//! never both win.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Result;

/// The reserved agent that neither counts against nor waits for
/// `max_concurrency` and the serial gate (the post-deploy monitor).
pub const UNGATED_AGENT: &str = "post-deploy-monitor";

/// One row of the `jobs` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Job id.
    pub id: i64,
    /// Agent that runs it (`analyst`, `developer`, …).
    pub agent: String,
    /// Repository it acts on.
    pub repo: String,
    /// Task it belongs to, if any.
    pub task_id: Option<i64>,
    /// Stage whose gate decides its outcome.
    pub stage: Option<String>,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub status: String,
    /// Claims so far (a claim is an attempt).
    pub attempts: i64,
    /// Attempts allowed before a failure is final.
    pub max_attempts: i64,
    /// Transient failures so far.
    pub transient_attempts: i64,
    /// Earliest claim time (epoch seconds).
    pub available_at: i64,
    /// The task text handed to the agent.
    pub task_content: String,
    /// Token naming the owner's lock while running.
    pub claim_token: Option<String>,
    /// Pid of the `orch` process that claimed it (diagnostics).
    pub owner_pid: Option<i64>,
    /// Boot id of the owner (diagnostics).
    pub owner_boot_id: Option<String>,
    /// The agent run of this attempt.
    pub run_id: Option<i64>,
    /// Pid (= process group) of the agent of this attempt.
    pub pid: Option<i64>,
    /// Enqueue time (epoch seconds).
    pub created_at: i64,
    /// Claim time of this attempt.
    pub started_at: Option<i64>,
    /// End time of a terminal outcome.
    pub finished_at: Option<i64>,
    /// Last error.
    pub error: Option<String>,
    /// The successful agent run this job finalizes instead of running its
    /// agent again (its worker died before finalizing it; see
    /// [`Jobs::job_requeue_for_finalize`]).
    pub finalize_run_id: Option<i64>,
}

impl Job {
    /// Whether the run-ownership invariant is violated (a `queued` row that still carries a run).
    pub fn is_impossible_queued(&self) -> bool {
        self.status == "queued"
            && (self.run_id.is_some()
                || self.pid.is_some()
                || self.started_at.is_some()
                || self.finished_at.is_some()
                || self.claim_token.is_some()
                || self.owner_pid.is_some()
                || self.owner_boot_id.is_some())
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Agent that runs it.
    pub agent: &'a str,
    /// Repository it acts on.
    pub repo: &'a str,
    /// Task it belongs to.
    pub task_id: Option<i64>,
    /// Stage whose gate decides its outcome.
    pub stage: Option<&'a str>,
    /// Task text for the agent.
    pub task_content: &'a str,
    /// Attempts allowed.
    pub max_attempts: u32,
}

/// The scheduling rules a claim respects (docs/queue.md defines them).
#[derive(Debug, Clone, Copy)]
pub struct Gates {
    /// At most this many jobs run at once, across every repository.
    pub max_concurrency: u32,
    /// Serial gate: one running job per repository; `deploy-staging`/`deploy`
    /// jobs wait while another task of the repository holds its merge lease.
    pub serial: bool,
    /// Task-dependency gate: a task's jobs run one at a time, and only once the
    /// task it depends on is `done`.
    pub task_deps: bool,
}

/// Who is claiming: the token of the lock the claimer already holds.
#[derive(Debug, Clone, Copy)]
pub struct Claimer<'a> {
    /// The claimer's lock token.
    pub token: &'a str,
    /// The claimer's pid.
    pub pid: u32,
    /// The claimer's boot id.
    pub boot_id: &'a str,
}

/// What a view needs to know of a running job's owner, without the rest of
/// its row (a status over thousands of running jobs reads only this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningOwner {
    /// The job.
    pub job_id: i64,
    /// Its task, if any.
    pub task_id: Option<i64>,
    /// The token of its owner's lock (absent only on rows older than tokens).
    pub claim_token: Option<String>,
    /// When it was claimed (when it was created, if it never started).
    pub since: i64,
}

/// A claimed job's attempt counters, read under its fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Claims so far.
    pub attempts: i64,
    /// Claims allowed.
    pub max_attempts: i64,
    /// Transient failures (and owner deaths) so far.
    pub transient: i64,
}

/// How a claimed job goes back to `queued` (ownership always cleared).
#[derive(Debug, Clone, Copy)]
pub struct Requeue<'a> {
    /// Kept in the job's `error` column for operators.
    pub error: &'a str,
    /// Give back the attempt the claim spent (not the agent's failure).
    pub refund_attempt: bool,
    /// Count it against the transient budget.
    pub transient: bool,
    /// The earliest next claim; `None` keeps the job's availability.
    pub available_at: Option<i64>,
}

/// The jobs of a backend.
pub trait Jobs {
    /// Insert a `queued` job and return its id.
    fn job_insert(&self, job: &NewJob<'_>, now: i64) -> Result<i64>;

    /// Claim the oldest job eligible under `gates` for `claimer`, in one
    /// statement: `running`, one more attempt, owned by the claimer.
    fn job_claim(&self, claimer: Claimer<'_>, gates: Gates, now: i64) -> Result<Option<Job>>;

    /// How many jobs are queued.
    fn job_count_queued(&self) -> Result<i64>;

    /// How many queued jobs are available at `now` (not backing off).
    fn job_count_available(&self, now: i64) -> Result<i64>;

    /// When the first queued job becomes available (0 with none queued).
    fn job_next_available(&self) -> Result<i64>;

    /// How many queued jobs [`Jobs::job_claim`] could take at `now` under
    /// the serial gate (`serial`) and the task-dependency gate (`task_deps`),
    /// `max_concurrency` aside.
    fn job_count_eligible(&self, serial: bool, task_deps: bool, now: i64) -> Result<i64>;

    /// Claim one particular `queued` job, outside FIFO order and the gates.
    fn job_claim_queued(&self, job_id: i64, claimer: Claimer<'_>, now: i64) -> Result<Option<Job>>;

    /// Take a `running` job over from the owner of `old_token` (found dead),
    /// as a new claim; `None` if it changed hands meanwhile.
    fn job_adopt(
        &self,
        job_id: i64,
        old_token: &str,
        claimer: Claimer<'_>,
        now: i64,
    ) -> Result<Option<Job>>;

    /// How many jobs hold a place under `max_concurrency` (running, not ungated).
    fn job_running_gated(&self) -> Result<i64>;

    /// Record the agent run (and, once known, its pid) of a claimed job. Fenced.
    fn job_set_run(&self, job_id: i64, token: &str, run_id: i64, pid: Option<u32>) -> Result<bool>;

    /// Record the pid of a claimed job's agent. Fenced.
    fn job_set_pid(&self, job_id: i64, token: &str, pid: u32) -> Result<bool>;

    /// A claimed job's attempt counters, if the fence holds.
    fn job_attempts(&self, job_id: i64, token: &str) -> Result<Option<Attempts>>;

    /// End a claimed job as `done`, `failed` or `cancelled`, keeping its
    /// last error unless `error` is given. Fenced.
    fn job_end(
        &self,
        job_id: i64,
        token: &str,
        status: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool>;

    /// Put a claimed job back to `queued` as `requeue` says. Fenced.
    fn job_requeue(&self, job_id: i64, token: &str, requeue: Requeue<'_>) -> Result<bool>;

    /// Requeue a claimed job as a finalize-only continuation of its
    /// successful run `run_id`: its attempt given back, one more transient
    /// if `death_of_a_continuation`. Fenced by the dead owner's token.
    fn job_requeue_for_finalize(
        &self,
        job_id: i64,
        token: &str,
        run_id: i64,
        death_of_a_continuation: bool,
        note: &str,
    ) -> Result<bool>;

    /// Give a claim back untouched (the run never started): `queued`, its
    /// attempt given back. Fenced.
    fn job_release_claim(&self, job_id: i64, token: &str) -> Result<bool>;

    /// A `failed` job back to `queued` with a fresh attempt budget.
    fn job_revive_failed(&self, job_id: i64) -> Result<bool>;

    /// Flip a task's `queued` (and unless `only_queued`, `running`) jobs to
    /// `cancelled`; how many.
    fn job_cancel_for_task(&self, task_id: i64, only_queued: bool, now: i64) -> Result<usize>;

    /// Queued rows that violate the run-ownership invariant, by id.
    fn job_impossible_queued(&self) -> Result<Vec<Job>>;

    /// Whether any queued row violates the run-ownership invariant.
    fn job_any_impossible_queued(&self) -> Result<bool>;

    /// Clear the run ownership of a `queued` job.
    fn job_clear_queued_ownership(&self, job_id: i64) -> Result<bool>;

    /// One job by id.
    fn job_get(&self, id: i64) -> Result<Option<Job>>;

    /// Jobs with `status` (all when `None`), newest first, at most `limit`.
    fn job_list(&self, status: Option<&str>, limit: u32) -> Result<Vec<Job>>;

    /// The jobs of one task, oldest first.
    fn job_for_task(&self, task_id: i64) -> Result<Vec<Job>>;

    /// Every running job, oldest first.
    fn job_running(&self) -> Result<Vec<Job>>;

    /// Every running job's owner, by job id.
    fn job_running_owners(&self) -> Result<Vec<RunningOwner>>;

    /// How many running jobs have an owner whose token is in `alive`.
    fn job_running_count_in(&self, alive: &[String]) -> Result<usize>;

    /// The first `limit` running jobs, longest running first, whose owner's
    /// token is in `alive` or, with `among_alive` false, is not.
    fn job_running_owners_page(
        &self,
        alive: &[String],
        among_alive: bool,
        limit: usize,
    ) -> Result<Vec<RunningOwner>>;

    /// The jobs with these ids (those that exist), by id.
    fn job_by_ids(&self, ids: &[i64]) -> Result<Vec<Job>>;

    /// Number of jobs per status present.
    fn job_counts(&self) -> Result<BTreeMap<String, i64>>;
}

/// The contract every backend's [`Jobs`] keeps, run by each backend's tests
/// on a store with no job.
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Jobs) {
    let gates = Gates {
        max_concurrency: 2,
        serial: false,
        task_deps: false,
    };
    let new = |agent| NewJob {
        agent,
        repo: "demo",
        task_id: None,
        stage: None,
        task_content: "do it",
        max_attempts: 2,
    };
    let a = store.job_insert(&new("analyst"), 10).expect("insert");
    let b = store.job_insert(&new("developer"), 11).expect("insert");
    let me = Claimer {
        token: "t1",
        pid: 1,
        boot_id: "boot",
    };
    // FIFO, one attempt per claim, fenced by the token.
    let first = store.job_claim(me, gates, 20).expect("claim").expect("job");
    assert_eq!((first.id, first.attempts), (a, 1));
    assert_eq!(first.claim_token.as_deref(), Some("t1"));
    assert!(!store.job_set_run(a, "other", 5, None).expect("fence"));
    assert!(store.job_set_run(a, "t1", 5, Some(42)).expect("set"));
    assert!(store.job_set_pid(a, "t1", 43).expect("pid"));
    assert_eq!(
        store.job_attempts(a, "t1").expect("attempts"),
        Some(Attempts {
            attempts: 1,
            max_attempts: 2,
            transient: 0
        })
    );
    // A transient requeue gives the attempt back and clears ownership.
    let requeue = Requeue {
        error: "overloaded",
        refund_attempt: true,
        transient: true,
        available_at: Some(100),
    };
    assert!(store.job_requeue(a, "t1", requeue).expect("requeue"));
    assert!(!store.job_requeue(a, "t1", requeue).expect("fence"));
    let back = store.job_get(a).expect("get").expect("job");
    assert_eq!(
        (back.status.as_str(), back.attempts, back.transient_attempts),
        ("queued", 0, 1)
    );
    assert!(!back.is_impossible_queued());
    // Backing off: the next claim takes the later job.
    let second = store.job_claim(me, gates, 30).expect("claim").expect("job");
    assert_eq!(second.id, b);
    assert_eq!(store.job_count_queued().expect("count"), 1);
    assert_eq!(store.job_count_available(30).expect("count"), 0);
    assert_eq!(store.job_next_available().expect("next"), 100);
    // Available at 100, and held then only by the serial gate (b runs in
    // the same repository).
    assert_eq!(
        store.job_count_eligible(false, true, 100).expect("count"),
        1
    );
    assert_eq!(
        store.job_count_eligible(true, false, 100).expect("count"),
        0
    );
    assert_eq!(store.job_running_gated().expect("count"), 1);
    let owners = store.job_running_owners().expect("owners");
    assert_eq!(owners.len(), 1);
    let alive = ["t1".to_owned()];
    assert_eq!(store.job_running_count_in(&alive).expect("count"), 1);
    assert!(
        store
            .job_running_owners_page(&alive, false, 10)
            .expect("page")
            .is_empty()
    );
    assert!(
        store
            .job_end(b, "t1", "failed", Some("red"), 40)
            .expect("end")
    );
    assert!(store.job_revive_failed(b).expect("revive"));
    assert_eq!(store.job_counts().expect("counts").get("queued"), Some(&2));
    // An operator claim ignores the backoff; a dead owner's job is adopted.
    let mine = store
        .job_claim_queued(a, me, 50)
        .expect("claim")
        .expect("job");
    assert_eq!(mine.id, a);
    let heir = Claimer { token: "t2", ..me };
    let adopted = store.job_adopt(a, "t1", heir, 60).expect("adopt");
    assert_eq!(adopted.map(|j| j.attempts), Some(2));
    assert!(store.job_release_claim(a, "t2").expect("release"));
    assert_eq!(store.job_by_ids(&[a, b, 99]).expect("ids").len(), 2);
    assert_eq!(store.job_list(Some("queued"), 1).expect("list").len(), 1);
    assert!(!store.job_any_impossible_queued().expect("sweep"));
}
