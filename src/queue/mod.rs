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
//! `queued` clears ownership. The statements are the backend's
//! ([`crate::storage::jobs::Jobs`]); what an outcome means is decided here.

pub mod backoff;

use std::collections::BTreeMap;

use serde::Serialize;

pub use crate::storage::jobs::{Claimer, Gates, Job, NewJob, RunningOwner, UNGATED_AGENT};
pub use backoff::Backoff;

use crate::storage::Executor;
use crate::storage::jobs::Requeue;
use crate::storage::{Result, counters, schema};

/// Insert a `queued` job and return its id.
pub fn enqueue(conn: &dyn Executor, job: &NewJob<'_>, now: i64) -> Result<i64> {
    conn.job_insert(job, now)
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

/// Claim the oldest eligible job for `claimer`, in one statement.
///
/// Returns `None` when nothing is claimable; [`diagnose`] says why.
pub fn claim(
    conn: &dyn Executor,
    claimer: Claimer<'_>,
    gates: Gates,
    now: i64,
) -> Result<Option<Job>> {
    conn.job_claim(claimer, gates, now)
}

/// Why a claim found nothing.
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
pub fn diagnose(conn: &dyn Executor, gates: Gates, now: i64) -> Result<Unclaimable> {
    let queued = conn.job_count_queued()?;
    if queued == 0 {
        return Ok(Unclaimable::Empty);
    }
    let running = conn.job_running_gated()?;
    if running >= i64::from(gates.max_concurrency) {
        return Ok(Unclaimable::ConcurrencyFull {
            running,
            max_concurrency: gates.max_concurrency,
        });
    }
    let available = conn.job_count_available(now)?;
    if available == 0 {
        return Ok(Unclaimable::BackingOff {
            queued,
            next_in_s: (conn.job_next_available()? - now).max(0),
        });
    }
    // Each gate alone, against none: how many jobs that gate holds.
    let open = conn.job_count_eligible(false, false, now)?;
    let serial_held = open - conn.job_count_eligible(gates.serial, false, now)?;
    let deps_held = open - conn.job_count_eligible(false, gates.task_deps, now)?;
    Ok(Unclaimable::Gated {
        queued: available,
        serial: serial_held,
        task_deps: deps_held,
        blocked: available - open,
    })
}

/// Record the agent run of a claimed job (fenced). Returns false if the claim was lost.
pub fn set_run(
    conn: &dyn Executor,
    job_id: i64,
    token: &str,
    run_id: i64,
    pid: Option<u32>,
) -> Result<bool> {
    conn.job_set_run(job_id, token, run_id, pid)
}

/// Record the pid of a claimed job's agent (fenced). Returns false if the claim was lost.
pub fn set_pid(conn: &dyn Executor, job_id: i64, token: &str, pid: u32) -> Result<bool> {
    conn.job_set_pid(job_id, token, pid)
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

/// What a claimed job's row becomes for an outcome, given its counters.
enum Change<'a> {
    End(&'static str, Option<&'a str>),
    Requeue(Requeue<'a>),
}

impl<'a> Change<'a> {
    /// Retry and transient outcomes fall through to `failed` once their
    /// budget is spent.
    fn of(outcome: &'a Outcome, budget: Budget, backoff: Backoff, now: i64) -> Change<'a> {
        let requeue = |error, refund_attempt, transient, available_at| {
            Change::Requeue(Requeue {
                error,
                refund_attempt,
                transient,
                available_at,
            })
        };
        let transient_left = budget.transient < i64::from(budget.max_transient);
        match outcome {
            Outcome::Done => Change::End("done", None),
            Outcome::Failed(e) => Change::End("failed", Some(e)),
            Outcome::Retry(e) if budget.attempts < budget.max_attempts => {
                requeue(e, false, false, None)
            }
            Outcome::Transient(e) if transient_left => {
                let delay =
                    backoff.delay_s(budget.transient as u32, crate::liveness::random_unit());
                requeue(e, true, true, Some(now + delay as i64))
            }
            Outcome::OwnerDied(e) if transient_left => requeue(e, true, true, Some(0)),
            Outcome::Retry(e) | Outcome::Transient(e) | Outcome::OwnerDied(e) => {
                Change::End("failed", Some(e))
            }
            Outcome::RetryAt { until, note } => requeue(note, true, false, Some(*until)),
        }
    }
}

/// A claimed job's counters against its limits.
#[derive(Clone, Copy)]
struct Budget {
    attempts: i64,
    max_attempts: i64,
    transient: i64,
    max_transient: u32,
}

/// End a claimed job with `outcome`, fenced by its claim token.
///
/// Retry and transient outcomes fall through to `failed` once their budget is
/// spent. A lost fence changes nothing and returns [`Finished::LostClaim`].
pub fn finish(
    conn: &dyn Executor,
    job_id: i64,
    token: &str,
    outcome: &Outcome,
    backoff: Backoff,
    max_transient_attempts: u32,
    now: i64,
) -> Result<Finished> {
    let Some(counters) = conn.job_attempts(job_id, token)? else {
        return Ok(Finished::LostClaim);
    };
    let budget = Budget {
        attempts: counters.attempts,
        max_attempts: counters.max_attempts,
        transient: counters.transient,
        max_transient: max_transient_attempts,
    };
    let (held, finished) = match Change::of(outcome, budget, backoff, now) {
        Change::End(status, error) => (
            conn.job_end(job_id, token, status, error, now)?,
            if status == "done" {
                Finished::Done
            } else {
                Finished::Failed
            },
        ),
        Change::Requeue(requeue) => (
            conn.job_requeue(job_id, token, requeue)?,
            Finished::Requeued,
        ),
    };
    Ok(if held { finished } else { Finished::LostClaim })
}

/// Operator retry of a `failed` job: back to `queued` with a fresh attempt budget.
pub fn retry(conn: &dyn Executor, job_id: i64) -> anyhow::Result<()> {
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
    conn.job_revive_failed(job_id)?;
    Ok(())
}

/// Flip a task's `queued` (and unless `only_queued`, `running`) jobs to `cancelled`.
pub fn cancel_for_task(
    conn: &dyn Executor,
    task_id: i64,
    only_queued: bool,
    now: i64,
) -> Result<usize> {
    conn.job_cancel_for_task(task_id, only_queued, now)
}

/// Queued rows that violate the run-ownership invariant.
///
/// The CHECK constraint makes these impossible to write; they can only come
/// from hand-written SQL with `PRAGMA ignore_check_constraints` or a database
/// imported from elsewhere. Kept as defence in depth (ORCH-126 D4).
pub fn find_impossible_queued(conn: &dyn Executor) -> Result<Vec<Job>> {
    conn.job_impossible_queued()
}

/// Whether any queued row violates the run-ownership invariant (a cheap read).
pub fn any_impossible_queued(conn: &dyn Executor) -> Result<bool> {
    conn.job_any_impossible_queued()
}

/// Heal impossible queued rows (they stay `queued`, ownership cleared) and
/// return the ids healed. Idempotent: a second call returns nothing.
pub fn sanitize_impossible_queued(conn: &dyn Executor, now: i64) -> Result<Vec<i64>> {
    let ids: Vec<i64> = find_impossible_queued(conn)?
        .into_iter()
        .map(|j| j.id)
        .collect();
    for id in &ids {
        conn.job_clear_queued_ownership(*id)?;
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
pub fn get(conn: &dyn Executor, id: i64) -> Result<Option<Job>> {
    conn.job_get(id)
}

/// Jobs with `status` (all when `None`), newest first, at most `limit`.
pub fn list(conn: &dyn Executor, status: Option<&str>, limit: u32) -> Result<Vec<Job>> {
    conn.job_list(status, limit)
}

/// The jobs of one task, oldest first.
pub fn for_task(conn: &dyn Executor, task_id: i64) -> Result<Vec<Job>> {
    conn.job_for_task(task_id)
}

/// Every running job, oldest first.
pub fn running(conn: &dyn Executor) -> Result<Vec<Job>> {
    conn.job_running()
}

/// Every running job's owner, by job id.
pub fn running_owners(conn: &dyn Executor) -> Result<Vec<RunningOwner>> {
    conn.job_running_owners()
}

/// How many running jobs have an owner whose token is in `alive`.
pub fn running_count_in(conn: &dyn Executor, alive: &[String]) -> Result<usize> {
    conn.job_running_count_in(alive)
}

/// The first `limit` running jobs, longest running first, whose owner's
/// token is in `alive` or, with `among_alive` false, is not. Reads the
/// index in order and stops at `limit`.
pub fn running_owners_page(
    conn: &dyn Executor,
    alive: &[String],
    among_alive: bool,
    limit: usize,
) -> Result<Vec<RunningOwner>> {
    conn.job_running_owners_page(alive, among_alive, limit)
}

/// The jobs with these ids (those that exist), by id, in one query.
pub fn by_ids(conn: &dyn Executor, ids: &[i64]) -> Result<Vec<Job>> {
    conn.job_by_ids(ids)
}

/// Number of jobs per status, with a zero for every status that has none.
pub fn counts(conn: &dyn Executor) -> Result<BTreeMap<String, i64>> {
    let mut out: BTreeMap<String, i64> = schema::JOB_STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), 0))
        .collect();
    out.extend(conn.job_counts()?);
    Ok(out)
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
    conn: &dyn Executor,
    locks: &crate::liveness::Locks,
    job_id: i64,
    claimer: Claimer<'_>,
    max_concurrency: u32,
    now: i64,
) -> anyhow::Result<ClaimById> {
    let Some(job) = get(conn, job_id)? else {
        return Err(crate::error::OrchError::NotFound(format!("job {job_id} not found")).into());
    };
    match job.status.as_str() {
        "queued" => {
            let running = conn.job_running_gated()?;
            if job.agent != UNGATED_AGENT && running >= i64::from(max_concurrency) {
                return Ok(ClaimById::Refused(format!(
                    "concurrency full: {running} running, max_concurrency {max_concurrency}"
                )));
            }
            Ok(conn.job_claim_queued(job_id, claimer, now)?.map_or_else(
                || ClaimById::Refused(format!("job {job_id} was claimed by someone else")),
                |j| ClaimById::Claimed(Box::new(j)),
            ))
        }
        "running" => {
            let old = job.claim_token.clone().unwrap_or_default();
            if locks.probe(&old)? == crate::liveness::Liveness::Alive {
                return Ok(ClaimById::Refused(format!(
                    "job {job_id} is running and its owner (pid {}) is alive",
                    job.owner_pid.unwrap_or(0)
                )));
            }
            Ok(conn.job_adopt(job_id, &old, claimer, now)?.map_or_else(
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
pub fn cancel_claimed(conn: &dyn Executor, job_id: i64, token: &str, now: i64) -> Result<bool> {
    conn.job_end(job_id, token, "cancelled", None, now)
}

/// Requeue a claimed job whose agent run `run_id` succeeded but whose owner
/// died before finalizing it, as a finalize-only continuation: the next
/// worker that claims it commits, pushes and evaluates that run's result
/// without running the agent again. Fenced by the dead owner's token.
///
/// Attempts: the first continuation of an agent run gives back the attempt
/// its claim spent, so the continuation's claim re-spends it and a job whose
/// worker died after a successful run costs what an uncrashed one does. The
/// attempt is given back either way: the agent's run succeeded, and a
/// finalizing worker's death is an owner death (`Outcome::OwnerDied`),
/// counted in `transient_attempts` (`death_of_a_continuation`); the caller
/// fails the job once those are spent. Returns whether the fence held.
pub fn requeue_for_finalize(
    conn: &dyn Executor,
    job_id: i64,
    token: &str,
    run_id: i64,
    death_of_a_continuation: bool,
    note: &str,
) -> Result<bool> {
    conn.job_requeue_for_finalize(job_id, token, run_id, death_of_a_continuation, note)
}

/// Give a claim back untouched: the job returns to `queued` without spending
/// its attempt (the run never started), fenced by the claim token.
pub fn release_claim(conn: &dyn Executor, job_id: i64, token: &str) -> Result<bool> {
    conn.job_release_claim(job_id, token)
}
