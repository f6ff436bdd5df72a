//! The durable job queue (docs/queue.md).
//!
//! Every function that changes a job takes the open write transaction, so the
//! caller can commit the job's change together with the task's advance, the
//! next job and the outbox rows (docs/architecture.md, decision 3). Every change to a claimed
//! job is *fenced* by its claim token: `WHERE id = ? AND status = 'running'
//! AND claim_token = ?`. Whoever commits first wins; the loser changes nothing
//! and learns it from the return value.
//!
//! The run-ownership invariant (`queued` ⇒ no run id, no owner, no pid, no
//! start time) is a CHECK constraint of the table, and every path back to
//! `queued` clears ownership with the one [`CLEAR_OWNERSHIP`] fragment.

pub mod backoff;

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde::Serialize;

pub use backoff::Backoff;

use crate::storage::{counters, schema};

/// SQL assignments that remove every trace of a run from a job row,
/// including a pending finalize-only continuation ([`requeue_for_finalize`]):
/// a job requeued any other way runs its agent again.
pub const CLEAR_OWNERSHIP: &str = "run_id = NULL, pid = NULL, started_at = NULL, \
     finished_at = NULL, claim_token = NULL, owner_pid = NULL, owner_boot_id = NULL, \
     finalize_run_id = NULL";

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
    /// Token naming the owner's lock file while running.
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
    /// [`requeue_for_finalize`]).
    pub finalize_run_id: Option<i64>,
}

const JOB_COLUMNS: &str = "id, agent, repo, task_id, stage, status, attempts, max_attempts, \
     transient_attempts, available_at, task_content, claim_token, owner_pid, owner_boot_id, \
     run_id, pid, created_at, started_at, finished_at, error, finalize_run_id";

impl Job {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
        Ok(Job {
            id: r.get(0)?,
            agent: r.get(1)?,
            repo: r.get(2)?,
            task_id: r.get(3)?,
            stage: r.get(4)?,
            status: r.get(5)?,
            attempts: r.get(6)?,
            max_attempts: r.get(7)?,
            transient_attempts: r.get(8)?,
            available_at: r.get(9)?,
            task_content: r.get(10)?,
            claim_token: r.get(11)?,
            owner_pid: r.get(12)?,
            owner_boot_id: r.get(13)?,
            run_id: r.get(14)?,
            pid: r.get(15)?,
            created_at: r.get(16)?,
            started_at: r.get(17)?,
            finished_at: r.get(18)?,
            error: r.get(19)?,
            finalize_run_id: r.get(20)?,
        })
    }

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

/// Insert a `queued` job and return its id.
pub fn enqueue(conn: &Connection, job: &NewJob<'_>, now: i64) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO jobs (agent, repo, task_id, stage, task_content, max_attempts, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            job.agent,
            job.repo,
            job.task_id,
            job.stage,
            job.task_content,
            job.max_attempts.max(1),
            now
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The reserved agent that neither counts against nor waits for
/// `max_concurrency` and the serial gate (`pipeline::post_deploy::MONITOR_AGENT`).
pub const UNGATED_AGENT: &str = "post-deploy-monitor";

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

impl Gates {
    /// The gates as configured.
    pub fn from_config(c: &crate::config::Config) -> Gates {
        Gates {
            max_concurrency: c.max_concurrency,
            serial: c.serial_gate_enabled,
            task_deps: c.task_deps_enabled,
        }
    }
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

/// The per-job eligibility rules, shared by the claim and by the diagnosis of
/// why nothing was claimed, so the two can never disagree. `j` is the
/// candidate; `?1` the serial flag, `?2` the dependency flag, `?3` now.
///
/// The post-deploy monitor ([`UNGATED_AGENT`]) is outside the serial gate and
/// `max_concurrency`, both ways: it only probes production for a few seconds
/// on a `done` task, and must not wait an agent's hour while its window runs.
const ELIGIBLE: &str = "
    j.status = 'queued' AND j.available_at <= ?3
    AND (?1 = 0 OR j.agent = 'post-deploy-monitor' OR NOT EXISTS (
          SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.repo = j.repo
                                 AND r.agent <> 'post-deploy-monitor'))
    AND (?1 = 0 OR coalesce(j.stage, '') NOT IN ('deploy-staging', 'deploy') OR NOT EXISTS (
          SELECT 1 FROM merge_leases l WHERE l.repo = j.repo AND l.task_id IS NOT j.task_id))
    AND (j.task_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM tasks b WHERE b.id = j.task_id AND (b.blocked_reason IS NOT NULL
              OR (b.cancel_requested_at IS NOT NULL AND b.stage NOT IN ('done', 'cancelled')
                  AND j.agent <> 'deploy-finalizer'))))
    AND (?2 = 0 OR j.task_id IS NULL OR (
          NOT EXISTS (SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.task_id = j.task_id)
          AND NOT EXISTS (SELECT 1 FROM tasks t JOIN tasks d ON d.id = t.depends_on
                          WHERE t.id = j.task_id AND d.stage <> 'done')))";

/// Claim the oldest eligible job for `claimer`, in one statement.
///
/// Returns `None` when nothing is claimable; [`diagnose`] says why.
pub fn claim(
    conn: &Connection,
    claimer: Claimer<'_>,
    gates: Gates,
    now: i64,
) -> rusqlite::Result<Option<Job>> {
    let sql = format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1,
             claim_token = ?4, owner_pid = ?5, owner_boot_id = ?6, started_at = ?3,
             finished_at = NULL, run_id = NULL, pid = NULL
         WHERE id = (
             SELECT j.id FROM jobs j
             WHERE {ELIGIBLE}
               AND (j.agent = 'post-deploy-monitor' OR (SELECT count(*) FROM jobs c
                    WHERE c.status = 'running' AND c.agent <> 'post-deploy-monitor') < ?7)
             ORDER BY j.id LIMIT 1)
           AND status = 'queued'
         RETURNING {JOB_COLUMNS}"
    );
    conn.query_row(
        &sql,
        params![
            gates.serial,
            gates.task_deps,
            now,
            claimer.token,
            claimer.pid,
            claimer.boot_id,
            gates.max_concurrency
        ],
        Job::from_row,
    )
    .optional()
}

/// Why [`claim`] found nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unclaimable {
    /// No job is queued.
    Empty,
    /// `max_concurrency` jobs are running already.
    ConcurrencyFull {
        /// Jobs running.
        running: i64,
        /// The limit.
        max_concurrency: u32,
    },
    /// Every queued job is backing off after a transient failure.
    BackingOff {
        /// Jobs queued.
        queued: i64,
        /// Seconds until the first becomes available.
        next_in_s: i64,
    },
    /// Queued jobs exist but the serial or dependency gate holds them.
    Gated {
        /// Jobs queued and available.
        queued: i64,
        /// Jobs held by the serial gate.
        serial: i64,
        /// Jobs held by the task-dependency gate.
        task_deps: i64,
        /// Jobs of tasks blocked over budget (until `orch task resume`).
        blocked: i64,
    },
}

impl std::fmt::Display for Unclaimable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unclaimable::Empty => write!(f, "no job is queued"),
            Unclaimable::ConcurrencyFull {
                running,
                max_concurrency,
            } => write!(
                f,
                "concurrency full: {running} running, max_concurrency {max_concurrency}"
            ),
            Unclaimable::BackingOff { queued, next_in_s } => write!(
                f,
                "{queued} queued job(s) backing off after transient failures; next available in {next_in_s}s"
            ),
            Unclaimable::Gated {
                queued,
                serial,
                task_deps,
                blocked,
            } => write!(
                f,
                "{queued} queued job(s) gated: {serial} by the serial gate (repository busy or merge lease held by another task), {task_deps} by the task-dependency gate, {blocked} of tasks blocked over budget"
            ),
        }
    }
}

/// Explain why nothing is claimable right now.
pub fn diagnose(conn: &Connection, gates: Gates, now: i64) -> rusqlite::Result<Unclaimable> {
    let queued: i64 = conn.query_row(
        "SELECT count(*) FROM jobs WHERE status = 'queued'",
        [],
        |r| r.get(0),
    )?;
    if queued == 0 {
        return Ok(Unclaimable::Empty);
    }
    let running: i64 = conn.query_row(
        "SELECT count(*) FROM jobs WHERE status = 'running' AND agent <> ?1",
        [UNGATED_AGENT],
        |r| r.get(0),
    )?;
    if running >= i64::from(gates.max_concurrency) {
        return Ok(Unclaimable::ConcurrencyFull {
            running,
            max_concurrency: gates.max_concurrency,
        });
    }
    let available: i64 = conn.query_row(
        "SELECT count(*) FROM jobs WHERE status = 'queued' AND available_at <= ?1",
        [now],
        |r| r.get(0),
    )?;
    if available == 0 {
        let next: i64 = conn.query_row(
            "SELECT min(available_at) FROM jobs WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        return Ok(Unclaimable::BackingOff {
            queued,
            next_in_s: (next - now).max(0),
        });
    }
    let count_eligible = |serial: bool, deps: bool| -> rusqlite::Result<i64> {
        conn.query_row(
            &format!("SELECT count(*) FROM jobs j WHERE {ELIGIBLE}"),
            params![serial, deps, now],
            |r| r.get(0),
        )
    };
    let open = count_eligible(false, false)?;
    let serial_held = open - count_eligible(gates.serial, false)?;
    let deps_held = open - count_eligible(false, gates.task_deps)?;
    Ok(Unclaimable::Gated {
        queued: available,
        serial: serial_held,
        task_deps: deps_held,
        blocked: available - open,
    })
}

/// Record the agent run of a claimed job (fenced). Returns false if the claim was lost.
pub fn set_run(
    conn: &Connection,
    job_id: i64,
    token: &str,
    run_id: i64,
    pid: Option<u32>,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE jobs SET run_id = ?3, pid = ?4
         WHERE id = ?1 AND status = 'running' AND claim_token = ?2",
        params![job_id, token, run_id, pid],
    )?;
    Ok(n == 1)
}

/// A terminal or retry outcome for a claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job succeeded.
    Done,
    /// The job failed for good.
    Failed(String),
    /// Try again if attempts remain (else fail): the permanent-failure path.
    Retry(String),
    /// A transient failure (e.g. API overloaded): back off, do not consume an attempt.
    Transient(String),
    /// The job's owner died (orch was killed: OOM, a cgroup kill, a power
    /// cut) and its agent gave no verdict: that is not the agent failing.
    /// Back to `queued` at once without spending an attempt; each death
    /// counts against `max_transient_attempts`, so a job that kills its
    /// worker every time still ends (failed).
    OwnerDied(String),
    /// Not a failure: the job has more to do later (a post-deploy monitor
    /// between checks). Back to `queued`, available at `until`; spends
    /// neither an attempt nor the transient budget, so a long schedule is
    /// never cut short by `max_transient_attempts`.
    RetryAt {
        /// Earliest next claim (epoch seconds).
        until: i64,
        /// Why it waits (kept in the job's `error` column for operators).
        note: String,
    },
}

impl Outcome {
    /// The outcome's text (the error or note), empty for `Done`.
    pub fn text(&self) -> &str {
        match self {
            Outcome::Failed(e)
            | Outcome::Retry(e)
            | Outcome::Transient(e)
            | Outcome::OwnerDied(e) => e,
            Outcome::RetryAt { note, .. } => note,
            Outcome::Done => "",
        }
    }
}

/// What [`finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finished {
    /// Marked `done`.
    Done,
    /// Marked `failed`.
    Failed,
    /// Back to `queued` (ownership cleared).
    Requeued,
    /// The fence did not match: someone else ended this claim. Nothing changed.
    LostClaim,
}

/// End a claimed job with `outcome`, fenced by its claim token.
///
/// Retry and transient outcomes fall through to `failed` once their budget is
/// spent. A lost fence changes nothing and returns [`Finished::LostClaim`].
pub fn finish(
    conn: &Connection,
    job_id: i64,
    token: &str,
    outcome: &Outcome,
    backoff: Backoff,
    max_transient_attempts: u32,
    now: i64,
) -> rusqlite::Result<Finished> {
    let fence = "WHERE id = ?1 AND status = 'running' AND claim_token = ?2";
    let terminal = |status: &str, error: Option<&str>| -> rusqlite::Result<usize> {
        conn.execute(
            &format!(
                "UPDATE jobs SET status = ?3, finished_at = ?4, error = coalesce(?5, error) {fence}"
            ),
            params![job_id, token, status, now, error],
        )
    };
    let Some((attempts, max_attempts, transient)) = conn
        .query_row(
            &format!("SELECT attempts, max_attempts, transient_attempts FROM jobs {fence}"),
            params![job_id, token],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(Finished::LostClaim);
    };
    let changed = match outcome {
        Outcome::Done => (terminal("done", None)?, Finished::Done),
        Outcome::Failed(e) => (terminal("failed", Some(e))?, Finished::Failed),
        Outcome::Retry(e) if attempts < max_attempts => (
            conn.execute(
                &format!(
                    "UPDATE jobs SET status = 'queued', error = ?3, {CLEAR_OWNERSHIP} {fence}"
                ),
                params![job_id, token, e],
            )?,
            Finished::Requeued,
        ),
        Outcome::Transient(e) if transient < i64::from(max_transient_attempts) => {
            let delay = backoff.delay_s(transient as u32, crate::liveness::random_unit());
            (
                conn.execute(
                    &format!(
                        "UPDATE jobs SET status = 'queued', error = ?3,
                             transient_attempts = transient_attempts + 1,
                             attempts = max(attempts - 1, 0), available_at = ?4,
                             {CLEAR_OWNERSHIP} {fence}"
                    ),
                    params![job_id, token, e, now + delay as i64],
                )?,
                Finished::Requeued,
            )
        }
        Outcome::OwnerDied(e) if transient < i64::from(max_transient_attempts) => (
            conn.execute(
                &format!(
                    "UPDATE jobs SET status = 'queued', error = ?3,
                         transient_attempts = transient_attempts + 1,
                         attempts = max(attempts - 1, 0), available_at = 0,
                         {CLEAR_OWNERSHIP} {fence}"
                ),
                params![job_id, token, e],
            )?,
            Finished::Requeued,
        ),
        Outcome::Retry(e) | Outcome::Transient(e) | Outcome::OwnerDied(e) => {
            (terminal("failed", Some(e))?, Finished::Failed)
        }
        Outcome::RetryAt { until, note } => (
            conn.execute(
                &format!(
                    "UPDATE jobs SET status = 'queued', error = ?3,
                         attempts = max(attempts - 1, 0), available_at = ?4,
                         {CLEAR_OWNERSHIP} {fence}"
                ),
                params![job_id, token, note, until],
            )?,
            Finished::Requeued,
        ),
    };
    Ok(if changed.0 == 1 {
        changed.1
    } else {
        Finished::LostClaim
    })
}

/// Operator retry of a `failed` job: back to `queued` with a fresh attempt budget.
pub fn retry(conn: &Connection, job_id: i64) -> anyhow::Result<()> {
    let job = get(conn, job_id)?
        .ok_or_else(|| crate::error::OrchError::NotFound(format!("job {job_id} not found")))?;
    if job.status != "failed" {
        let why = match job.status.as_str() {
            "cancelled" => "its task was cancelled; a cancelled job is never revived".to_owned(),
            "running" => "it is running; `orch reap` requeues it if its owner dies".to_owned(),
            other => format!("it is {other}"),
        };
        return Err(crate::error::OrchError::Usage(format!(
            "job {job_id} cannot be retried: {why}"
        ))
        .into());
    }
    conn.execute(
        &format!(
            "UPDATE jobs SET status = 'queued', attempts = 0, transient_attempts = 0,
                 available_at = 0, {CLEAR_OWNERSHIP}
             WHERE id = ?1 AND status = 'failed'"
        ),
        [job_id],
    )?;
    Ok(())
}

/// Flip a task's `queued` (and unless `only_queued`, `running`) jobs to `cancelled`.
pub fn cancel_for_task(
    conn: &Connection,
    task_id: i64,
    only_queued: bool,
    now: i64,
) -> rusqlite::Result<usize> {
    let statuses = if only_queued {
        "('queued')"
    } else {
        "('queued', 'running')"
    };
    conn.execute(
        &format!(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?2, available_at = 0
             WHERE task_id = ?1 AND status IN {statuses}"
        ),
        params![task_id, now],
    )
}

/// Queued rows that violate the run-ownership invariant.
///
/// The CHECK constraint makes these impossible to write; they can only come
/// from hand-written SQL with `PRAGMA ignore_check_constraints` or a database
/// imported from elsewhere. Kept as defence in depth (ORCH-126 D4).
pub fn find_impossible_queued(conn: &Connection) -> rusqlite::Result<Vec<Job>> {
    select(conn, &format!("WHERE {IMPOSSIBLE_QUEUED} ORDER BY id"), [])
}

/// The predicate of an impossible queued row; the same text as the partial
/// index `jobs_impossible_queued`, so the sweep is an index lookup.
const IMPOSSIBLE_QUEUED: &str = "status = 'queued' AND (run_id IS NOT NULL
    OR pid IS NOT NULL OR started_at IS NOT NULL OR finished_at IS NOT NULL
    OR claim_token IS NOT NULL OR owner_pid IS NOT NULL OR owner_boot_id IS NOT NULL)";

/// Whether any queued row violates the run-ownership invariant (a cheap read).
pub fn any_impossible_queued(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM jobs WHERE {IMPOSSIBLE_QUEUED})"),
        [],
        |r| r.get(0),
    )
}

/// Heal impossible queued rows (they stay `queued`, ownership cleared) and
/// return the ids healed. Idempotent: a second call returns nothing.
pub fn sanitize_impossible_queued(conn: &Connection, now: i64) -> crate::storage::Result<Vec<i64>> {
    let ids: Vec<i64> = find_impossible_queued(conn)?
        .into_iter()
        .map(|j| j.id)
        .collect();
    for id in &ids {
        conn.execute(
            &format!("UPDATE jobs SET {CLEAR_OWNERSHIP} WHERE id = ?1 AND status = 'queued'"),
            [id],
        )?;
    }
    if !ids.is_empty() {
        let detail = serde_json::json!({ "count": ids.len(), "job_ids": ids, "at": now });
        counters::bump(
            conn,
            "impossible_queued_total",
            ids.len() as i64,
            Some(&detail),
            now,
        )?;
        log::warn!(
            "healed {} queued job(s) that still carried run ownership: {ids:?}",
            ids.len()
        );
    }
    Ok(ids)
}

/// One job by id.
pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Job>> {
    Ok(select(conn, "WHERE id = ?1", [id])?.into_iter().next())
}

/// Jobs with `status` (all when `None`), newest first, at most `limit`.
pub fn list(conn: &Connection, status: Option<&str>, limit: u32) -> rusqlite::Result<Vec<Job>> {
    select(
        conn,
        &format!("WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT {limit}"),
        [status],
    )
}

/// The jobs of one task, oldest first.
pub fn for_task(conn: &Connection, task_id: i64) -> rusqlite::Result<Vec<Job>> {
    select(conn, "WHERE task_id = ?1 ORDER BY id", [task_id])
}

/// Every running job, oldest first.
pub fn running(conn: &Connection) -> rusqlite::Result<Vec<Job>> {
    select(conn, "WHERE status = 'running' ORDER BY id", [])
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

/// The columns [`RunningOwner::from_row`] reads, in its order.
const OWNER_COLUMNS: &str = "id, task_id, claim_token, coalesce(started_at, created_at)";

impl RunningOwner {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RunningOwner> {
        Ok(RunningOwner {
            job_id: r.get(0)?,
            task_id: r.get(1)?,
            claim_token: r.get(2)?,
            since: r.get(3)?,
        })
    }
}

/// Every running job's owner, by job id.
pub fn running_owners(conn: &Connection) -> rusqlite::Result<Vec<RunningOwner>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {OWNER_COLUMNS} FROM jobs WHERE status = 'running'"
    ))?;
    let rows = stmt.query_map([], RunningOwner::from_row)?;
    // Sorted here: SQLite would sort through a temporary B-tree (the
    // status index is ordered by availability), at several times the cost.
    let mut owners = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    owners.sort_unstable_by_key(|o| o.job_id);
    Ok(owners)
}

/// How many running jobs have an owner whose token is in `alive` (a JSON
/// array of tokens, see [`crate::storage::json_array`]): one index lookup
/// per token.
pub fn running_count_in(conn: &Connection, alive: &str) -> rusqlite::Result<usize> {
    conn.query_row(
        "SELECT count(*) FROM jobs INDEXED BY jobs_running_token
         WHERE status = 'running' AND claim_token IN (SELECT value FROM json_each(?1))",
        [alive],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| usize::try_from(n).unwrap_or(0))
}

/// The first `limit` running jobs, longest running first, whose owner's
/// token is in `alive` (a JSON array of tokens) or, with `among_alive`
/// false, is not. Reads the index in order and stops at `limit`.
pub fn running_owners_page(
    conn: &Connection,
    alive: &str,
    among_alive: bool,
    limit: usize,
) -> rusqlite::Result<Vec<RunningOwner>> {
    let test = if among_alive {
        "claim_token IN (SELECT value FROM json_each(?1))"
    } else {
        "(claim_token IS NULL OR claim_token NOT IN (SELECT value FROM json_each(?1)))"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {OWNER_COLUMNS} FROM jobs INDEXED BY jobs_running_since
         WHERE status = 'running' AND {test}
         ORDER BY coalesce(started_at, created_at), id LIMIT {limit}"
    ))?;
    let rows = stmt.query_map([alive], RunningOwner::from_row)?;
    rows.collect()
}

/// The jobs with these ids (those that exist), by id, in one query.
pub fn by_ids(conn: &Connection, ids: &[i64]) -> rusqlite::Result<Vec<Job>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    select(
        conn,
        "WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
        [crate::storage::json_array(ids)],
    )
}

/// Number of jobs per status, with a zero for every status that has none.
pub fn counts(conn: &Connection) -> rusqlite::Result<BTreeMap<String, i64>> {
    let mut out: BTreeMap<String, i64> = schema::JOB_STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), 0))
        .collect();
    let mut stmt = conn.prepare("SELECT status, count(*) FROM jobs GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (status, n) = row?;
        out.insert(status, n);
    }
    Ok(out)
}

fn select(
    conn: &Connection,
    tail: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs {tail}"))?;
    let rows = stmt.query_map(params, Job::from_row)?;
    rows.collect()
}

/// What [`claim_by_id`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimById {
    /// The job is now ours.
    Claimed(Box<Job>),
    /// The job cannot be taken; the text says why.
    Refused(String),
}

/// Claim one particular job: an operator's explicit choice, which overrides
/// FIFO order, the serial and dependency gates and a transient backoff, but
/// not `max_concurrency`. A `running` job whose owner is dead (its lock is
/// free) is adopted with a new claim, which counts as a new attempt.
pub fn claim_by_id(
    conn: &Connection,
    locks_dir: &std::path::Path,
    job_id: i64,
    claimer: Claimer<'_>,
    max_concurrency: u32,
    now: i64,
) -> anyhow::Result<ClaimById> {
    let Some(job) = get(conn, job_id)? else {
        return Err(crate::error::OrchError::NotFound(format!("job {job_id} not found")).into());
    };
    let claim_sets = "status = 'running', attempts = attempts + 1, claim_token = ?2, \
         owner_pid = ?3, owner_boot_id = ?4, started_at = ?5, finished_at = NULL, \
         run_id = NULL, pid = NULL";
    match job.status.as_str() {
        "queued" => {
            let running: i64 = conn.query_row(
                "SELECT count(*) FROM jobs WHERE status = 'running' AND agent <> ?1",
                [UNGATED_AGENT],
                |r| r.get(0),
            )?;
            if job.agent != UNGATED_AGENT && running >= i64::from(max_concurrency) {
                return Ok(ClaimById::Refused(format!(
                    "concurrency full: {running} running, max_concurrency {max_concurrency}"
                )));
            }
            let claimed = conn
                .query_row(
                    &format!(
                        "UPDATE jobs SET {claim_sets} WHERE id = ?1 AND status = 'queued'
                         RETURNING {JOB_COLUMNS}"
                    ),
                    params![job_id, claimer.token, claimer.pid, claimer.boot_id, now],
                    Job::from_row,
                )
                .optional()?;
            Ok(claimed.map_or_else(
                || ClaimById::Refused(format!("job {job_id} was claimed by someone else")),
                |j| ClaimById::Claimed(Box::new(j)),
            ))
        }
        "running" => {
            let old = job.claim_token.clone().unwrap_or_default();
            if crate::liveness::probe(locks_dir, &old)? == crate::liveness::Liveness::Alive {
                return Ok(ClaimById::Refused(format!(
                    "job {job_id} is running and its owner (pid {}) is alive",
                    job.owner_pid.unwrap_or(0)
                )));
            }
            let adopted = conn
                .query_row(
                    &format!(
                        "UPDATE jobs SET {claim_sets}
                         WHERE id = ?1 AND status = 'running' AND claim_token = ?6
                         RETURNING {JOB_COLUMNS}"
                    ),
                    params![
                        job_id,
                        claimer.token,
                        claimer.pid,
                        claimer.boot_id,
                        now,
                        old
                    ],
                    Job::from_row,
                )
                .optional()?;
            Ok(adopted.map_or_else(
                || ClaimById::Refused(format!("job {job_id} changed hands meanwhile")),
                |j| ClaimById::Claimed(Box::new(j)),
            ))
        }
        other => Ok(ClaimById::Refused(format!(
            "job {job_id} is {other}; nothing to do"
        ))),
    }
}

/// End a claimed job as `cancelled` (its task was cancelled), fenced.
pub fn cancel_claimed(
    conn: &Connection,
    job_id: i64,
    token: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = ?3
         WHERE id = ?1 AND status = 'running' AND claim_token = ?2",
        params![job_id, token, now],
    )? == 1)
}

/// Requeue a claimed job whose agent run `run_id` succeeded but whose owner
/// died before finalizing it, as a finalize-only continuation: the next
/// worker that claims it commits, pushes and evaluates that run's result
/// without running the agent again. Fenced by the dead owner's token.
///
/// Attempts: the first continuation of an agent run gives back the attempt
/// its claim spent (`give_back`), so the continuation's claim re-spends it and
/// a job whose worker died after a successful run costs what an uncrashed one
/// does. A continuation whose own worker was killed is requeued without
/// give-back: every killed finalization spends an attempt, and the caller
/// fails the job once they are spent. Returns whether the fence held.
pub fn requeue_for_finalize(
    conn: &Connection,
    job_id: i64,
    token: &str,
    run_id: i64,
    death_of_a_continuation: bool,
    note: &str,
) -> rusqlite::Result<bool> {
    // The attempt is given back either way: the agent's run succeeded, and
    // a finalizing worker's death is an owner death (`Outcome::OwnerDied`),
    // counted in `transient_attempts`. SQLite applies the rightmost
    // assignment of a column: `finalize_run_id` is set after CLEAR_OWNERSHIP
    // cleared it.
    Ok(conn.execute(
        &format!(
            "UPDATE jobs SET status = 'queued', attempts = max(attempts - 1, 0), error = ?5,
                 transient_attempts = transient_attempts + ?4, available_at = 0,
                 {CLEAR_OWNERSHIP}, finalize_run_id = ?3
             WHERE id = ?1 AND status = 'running' AND claim_token = ?2"
        ),
        params![
            job_id,
            token,
            run_id,
            i64::from(death_of_a_continuation),
            note
        ],
    )? == 1)
}

/// Give a claim back untouched: the job returns to `queued` without spending
/// its attempt (the run never started), fenced by the claim token.
pub fn release_claim(conn: &Connection, job_id: i64, token: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        &format!(
            "UPDATE jobs SET status = 'queued', attempts = max(attempts - 1, 0), {CLEAR_OWNERSHIP}
             WHERE id = ?1 AND status = 'running' AND claim_token = ?2"
        ),
        params![job_id, token],
    )? == 1)
}
