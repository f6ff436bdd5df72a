//! How one `orch run-agent` ended, for the person or script that started
//! it: a small set of [`Ending`]s, each with its exit code, and a few plain
//! lines saying what ran, how it ended, which gates passed or failed and why,
//! and what happens next with the command to use.
//!
//! The run report ([`super::worker::RunReport`]) records everything; this
//! module only reads it (and the job row after the run) so that a timer, a
//! script and a person all learn the same thing: a green exit code means the
//! pipeline moved on, and each kind of "not yet" has its own code
//! (docs/exit-codes.md).

use serde::Serialize;

use crate::error::exit;
use crate::pipeline::engine::Committed;
use crate::pipeline::evaluate::Decision;
use crate::pipeline::worker::RunReport;
use crate::queue::{self, Job};
use crate::storage;
use crate::storage::Executor;
pub use crate::storage::ledger::StuckJob;

/// Exit code of `run-agent`: the run was fine but the stage did not pass
/// (a gate failed, an artifact said no, or it must wait and retry).
pub const EXIT_GATES: u8 = 4;
/// Exit code of `run-agent`: the agent failed, or was killed (timeout,
/// stall, signal).
pub const EXIT_AGENT: u8 = 5;
/// Exit code of `run-agent`: the job was claimed but its agent was not
/// started (task over budget, sandbox unavailable).
pub const EXIT_REFUSED: u8 = 6;

/// How a job's run ended, as `run-agent` reports it (`ending` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Every gate passed: the task moved to its next stage (or to done).
    Advanced,
    /// The work is complete; a human decides next (analysis approval,
    /// Confirm Deploy).
    AwaitingHuman,
    /// The job ended without a gate decision: the task had moved on or was
    /// cancelled, or a reserved job (deploy finalizer, post-deploy monitor)
    /// did its work.
    Finished,
    /// A gate failed: the agent runs again (or the job failed for good).
    GatesFailed,
    /// An artifact said no: back to development (or escalated to a human).
    RolledBack,
    /// Not the agent's fault, not through yet (merge lease held by another
    /// task, deploy hook still running): retried later without an attempt.
    RetryLater,
    /// The agent failed (non-zero exit, failed result, API error).
    AgentFailed,
    /// The agent was stopped: wall or stall timeout, or a signal.
    AgentKilled,
    /// The job was claimed but no agent was started: task over budget, or
    /// the sandbox is required and unavailable.
    Refused,
    /// orch could not finish the job (worktree, push or gate evaluation
    /// failed, or another process ended the job first).
    Error,
}

impl Ending {
    /// The exit code of `run-agent` for this ending.
    pub fn exit_code(self) -> u8 {
        match self {
            Ending::Advanced | Ending::AwaitingHuman | Ending::Finished => exit::OK,
            Ending::GatesFailed | Ending::RolledBack | Ending::RetryLater => EXIT_GATES,
            Ending::AgentFailed | Ending::AgentKilled => EXIT_AGENT,
            Ending::Refused => EXIT_REFUSED,
            Ending::Error => exit::FAILURE,
        }
    }

    /// The ending of a job whose gates were evaluated and committed.
    pub fn of_decision(decision: &Decision, committed: &Committed) -> Ending {
        if *committed == Committed::LostClaim {
            return Ending::Error;
        }
        match decision {
            Decision::Advance { .. } => Ending::Advanced,
            Decision::AwaitHuman { .. } | Decision::AwaitConfirmDeploy { .. } => {
                Ending::AwaitingHuman
            }
            Decision::Retry { .. } => Ending::GatesFailed,
            Decision::RetryLater { .. } => Ending::RetryLater,
            Decision::Rollback { .. } => Ending::RolledBack,
            Decision::Terminal => Ending::Finished,
        }
    }

    /// The ending of a job that ended without evaluating gates: `Finished`
    /// unless someone else ended it or it failed.
    pub fn of_committed(committed: &Committed) -> Ending {
        match committed {
            Committed::LostClaim
            | Committed::Applied {
                job: Some(queue::Finished::Failed),
                ..
            } => Ending::Error,
            _ => Ending::Finished,
        }
    }

    /// The ending of an agent that did not succeed.
    pub fn of_agent(timed_out: bool, signal: Option<i32>) -> Ending {
        if timed_out || signal.is_some() {
            Ending::AgentKilled
        } else {
            Ending::AgentFailed
        }
    }

    /// A few words on this ending.
    fn words(self) -> &'static str {
        match self {
            Ending::Advanced => "advanced: every gate passed",
            Ending::AwaitingHuman => "waiting for a human",
            Ending::Finished => "finished without a gate decision",
            Ending::GatesFailed => "gates failed",
            Ending::RolledBack => "rolled back: an artifact said no",
            Ending::RetryLater => "not through yet: retried later",
            Ending::AgentFailed => "the agent failed",
            Ending::AgentKilled => "the agent was stopped",
            Ending::Refused => "refused: no agent was started",
            Ending::Error => "orch could not finish the job",
        }
    }
}

/// The lines `run-agent` prints for people: what ran, how it ended, each
/// gate, the outcome, and what happens next. `job_after` is the job row
/// read after the run.
pub fn lines(conn: &dyn Executor, r: &RunReport, job_after: Option<&Job>) -> Vec<String> {
    let attempt = job_after.map_or_else(String::new, |j| {
        format!(", attempt {}/{}", j.attempts, j.max_attempts)
    });
    let mut out = vec![format!(
        "job {} ({} on stage {}, task {}{attempt})",
        r.job_id,
        r.agent,
        r.stage.as_deref().unwrap_or("-"),
        r.task_id.map_or_else(|| "-".to_owned(), |t| t.to_string()),
    )];
    out.push(match r.run_id {
        Some(run) => format!(
            "  run {run}: {}{} after {:.1}s",
            run_ending(r),
            r.cost_usd
                .filter(|c| *c > 0.0)
                .map_or_else(String::new, |c| format!(", cost ${c:.4}")),
            r.duration_s
        ),
        None => format!("  no agent run: {}", or_dash(&r.run_verdict)),
    });
    if let Some(e) = &r.evaluation {
        for g in &e.gates {
            out.push(format!("  gate {} {}: {}", g.gate, g.verdict, g.reason));
        }
    }
    out.push(format!("  outcome: {}", r.ending.words()));
    out.push(format!("  next: {}", next_step(conn, r, job_after)));
    if let Some(log) = &r.log_path {
        out.push(format!("  log: {log} (`orch logs {}`)", r.job_id));
    }
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// How the agent process ended, in words.
fn run_ending(r: &RunReport) -> String {
    let how = match (&r.timed_out, r.exit_code, r.signal) {
        (Some(t), _, _) => format!("stopped by the {t} timeout"),
        (None, Some(c), _) => format!("agent exited with code {c}"),
        (None, None, Some(s)) => format!("agent killed by signal {s}"),
        (None, None, None) => "agent not run again".to_owned(),
    };
    format!("{how} ({})", or_dash(&r.run_verdict))
}

/// What happens next, with the command to use.
fn next_step(conn: &dyn Executor, r: &RunReport, job: Option<&Job>) -> String {
    let task = r.task_id.map_or_else(|| "-".to_owned(), |t| t.to_string());
    match (&r.committed, r.ending) {
        (Committed::LostClaim, _) => format!(
            "another process ended job {} first; nothing was written (`orch job show {}`)",
            r.job_id, r.job_id
        ),
        (
            Committed::Applied {
                escalated: true, ..
            },
            _,
        ) => format!(
            "task {task} was escalated to a human (too many rollbacks): see `orch task show {task}`, then `orch task resume --task {task}`"
        ),
        (_, Ending::Advanced | Ending::RolledBack) => moved(conn, r, &task),
        (_, Ending::AwaitingHuman) => awaiting(r, &task),
        (Committed::StageMoved { stage, .. }, _) => {
            format!("nothing: task {task} is on {stage} now")
        }
        (_, Ending::Refused) if r.run_verdict.contains("over budget") => format!(
            "task {task} is blocked over budget: `orch task show {task}`, then `orch task resume --task {task} --budget USD`"
        ),
        _ => job_next(r, job),
    }
}

/// After an advance or a rollback: where the task is and the job queued there.
fn moved(conn: &dyn Executor, r: &RunReport, task: &str) -> String {
    let Committed::Applied {
        stage, next_job, ..
    } = &r.committed
    else {
        return format!("see `orch task show {task}`");
    };
    let next = next_job
        .and_then(|id| queue::get(conn, id).ok().flatten())
        .map_or_else(
            || "no job queued".to_owned(),
            |j| format!("job {} ({}) queued", j.id, j.agent),
        );
    format!("task {task} is on {stage}; {next}")
}

/// Waiting for a human: the question and the command that answers it.
fn awaiting(r: &RunReport, task: &str) -> String {
    let decision = r.evaluation.as_ref().map(|e| &e.decision);
    match decision {
        Some(Decision::AwaitConfirmDeploy { staging_sha }) => format!(
            "staging passed at {staging_sha}; confirm the production deploy with `orch advance --task {task} --confirm-deploy`"
        ),
        Some(Decision::AwaitHuman { reason }) if r.stage.as_deref() == Some("analysis") => {
            reason.clone()
        }
        Some(Decision::AwaitHuman { reason }) => {
            format!("{reason} (then `orch advance --task {task}`)")
        }
        _ => format!("see `orch task show {task}`"),
    }
}

/// After a failure: whether the job runs again, or failed for good.
fn job_next(r: &RunReport, job: Option<&Job>) -> String {
    let id = r.job_id;
    let Some(job) = job else {
        return format!("see `orch job show {id}`");
    };
    let why = match r.run_id {
        Some(run) if matches!(r.ending, Ending::AgentFailed | Ending::AgentKilled) => {
            format!("; what the agent did: `orch logs --run {run}`")
        }
        _ => String::new(),
    };
    match job.status.as_str() {
        "queued" => format!(
            "job {id} is queued again (attempts used {}/{}): a worker runs it, or `orch run-agent --job {id}` now{why}",
            job.attempts, job.max_attempts
        ),
        "failed" => format!(
            "job {id} failed for good: see `orch job show {id}`, fix the cause, then `orch job retry {id}`{why}"
        ),
        other => format!("job {id} is {other} (`orch job show {id}`){why}"),
    }
}

/// Up to five failed jobs that are the last job of an unfinished task,
/// newest first: why `run-agent --next` may find nothing while tasks wait.
pub fn stuck_failed(conn: &dyn Executor) -> storage::Result<Vec<StuckJob>> {
    conn.ledger_stuck_failed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_map_to_documented_exit_codes() {
        let codes: Vec<(Ending, u8)> = [
            Ending::Advanced,
            Ending::AwaitingHuman,
            Ending::Finished,
            Ending::GatesFailed,
            Ending::RolledBack,
            Ending::RetryLater,
            Ending::AgentFailed,
            Ending::AgentKilled,
            Ending::Refused,
            Ending::Error,
        ]
        .into_iter()
        .map(|e| (e, e.exit_code()))
        .collect();
        assert_eq!(
            codes.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            [0, 0, 0, 4, 4, 4, 5, 5, 6, 1]
        );
        assert_eq!(
            serde_json::to_value(Ending::AwaitingHuman).expect("json"),
            "awaiting_human"
        );
        assert_eq!(Ending::of_agent(true, None), Ending::AgentKilled);
        assert_eq!(Ending::of_agent(false, Some(9)), Ending::AgentKilled);
        assert_eq!(Ending::of_agent(false, None), Ending::AgentFailed);
    }
}
