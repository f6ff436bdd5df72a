//! `orch gates check`: a dry run of a task's current gates against its
//! worktree as it is now.
//!
//! When an agent keeps failing a gate, the person fixing it (or the prompt)
//! needs every problem at once, not one per attempt. This runs each exit
//! gate of the task's stage in turn, without stopping at the first failure,
//! and lists every problem of every artifact (see [`gates::findings`]). It
//! changes nothing: no job, transition, tracker call or test run. The gates
//! that would run a command or talk to a forge (`check_ci_green`,
//! `check_branch_mergeable`, a configured `check_staging_image_fresh`) are
//! marked "not checked"; `check_analysis_approved` reads the local tracker
//! state only.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backends::tracker;
use crate::context::Ctx;
use crate::gates::{self, Findings, Gate, GateResult, Verdict};
use crate::pipeline::Stage;
use crate::pipeline::task::Task;
use crate::storage::Executor;
use crate::workspace::Workspace;

/// What one gate says in a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// The gate.
    pub gate: Gate,
    /// `pass`, `fail`, `reject`, or `not_checked`.
    pub status: &'static str,
    /// The gate's reason (its first problem when it fails).
    pub reason: String,
    /// Every problem found (empty unless `fail`).
    pub problems: Vec<String>,
}

/// The dry run of a task's current gates.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The task.
    pub task_id: i64,
    /// Its work item.
    pub work_item_id: String,
    /// The stage whose exit gates were checked.
    pub stage: String,
    /// The worktree read.
    pub worktree: String,
    /// Its artifact directory (`docs/work-items/<work item>`).
    pub artifact_dir: String,
    /// Every gate of the stage, in the pipeline's order.
    pub gates: Vec<Checked>,
    /// Whether every checked gate passed (gates not checked are not counted).
    pub passed: bool,
}

impl Checked {
    fn from_findings(f: Findings) -> Checked {
        Checked {
            gate: f.result.gate,
            status: f.result.verdict.as_str(),
            reason: f.result.reason,
            problems: f.problems,
        }
    }

    fn from_result(r: GateResult) -> Checked {
        let problems = if r.verdict == Verdict::Fail {
            vec![r.reason.clone()]
        } else {
            Vec::new()
        };
        Checked {
            gate: r.gate,
            status: r.verdict.as_str(),
            reason: r.reason,
            problems,
        }
    }

    fn not_checked(gate: Gate, why: impl Into<String>) -> Checked {
        Checked {
            gate,
            status: "not_checked",
            reason: why.into(),
            problems: Vec::new(),
        }
    }
}

/// The exit gates of `stage`, in the order the pipeline runs them.
pub fn gates_of(stage: Stage) -> &'static [Gate] {
    match stage {
        Stage::Analysis => &[Gate::AnalysisComplete, Gate::AnalysisApproved],
        Stage::Architecture => &[Gate::ArchitectureDone],
        Stage::Development => &[Gate::CiGreen],
        Stage::Review => &[Gate::ReviewApproved],
        Stage::Testing => &[Gate::TestsPassed],
        Stage::DeployStaging => &[
            Gate::StagingStatus,
            Gate::StagingImageFresh,
            Gate::BranchMergeable,
        ],
        Stage::Deploy => &[Gate::DeployStatus],
        Stage::Created | Stage::Done | Stage::Cancelled => &[],
    }
}

/// Dry-run the gates of `task`'s stage; `None` when the stage has none
/// (created, done, cancelled).
pub fn check(ctx: &Ctx, conn: &dyn Executor, task: &Task) -> anyhow::Result<Option<DryRun>> {
    let stage = task.stage();
    let list = gates_of(stage);
    if list.is_empty() {
        return Ok(None);
    }
    let ws = Workspace::new(&ctx.repos_dir(), &task.repo, ctx.config.repo(&task.repo)?)?;
    let worktree = ws.worktree_dir(&task.work_item_id)?;
    let artifacts = artifact_dir(&worktree, &task.work_item_id);
    let mut checked = Vec::with_capacity(list.len());
    for &gate in list {
        let found = match &artifacts {
            Ok(dir) => gates::findings(gate, dir).map(Checked::from_findings),
            Err(reason) => gate
                .artifact_check()
                .map(|_| Checked::from_result(GateResult::fail(gate, reason.clone()))),
        };
        checked.push(match found {
            Some(c) => c,
            None => other_gate(ctx, conn, task, gate)?,
        });
    }
    let passed = checked
        .iter()
        .all(|c| c.status == "pass" || c.status == "not_checked");
    Ok(Some(DryRun {
        task_id: task.id,
        work_item_id: task.work_item_id.clone(),
        stage: stage.as_str().to_owned(),
        worktree: worktree.display().to_string(),
        artifact_dir: gates::artifact_dir(&worktree, &task.work_item_id)
            .display()
            .to_string(),
        gates: checked,
        passed,
    }))
}

/// The artifact directory, or the one problem that stands for every
/// artifact gate (no worktree yet, no `docs/work-items/<id>`).
fn artifact_dir(worktree: &Path, work_item_id: &str) -> Result<PathBuf, String> {
    if !worktree.is_dir() {
        return Err(format!(
            "the worktree {} does not exist (no agent has run for this task on this machine)",
            worktree.display()
        ));
    }
    gates::resolve_artifact_dir(worktree, work_item_id)
}

/// The gates the pipeline implements, as far as a dry run may go.
fn other_gate(ctx: &Ctx, conn: &dyn Executor, task: &Task, gate: Gate) -> anyhow::Result<Checked> {
    Ok(match gate {
        Gate::AnalysisApproved => {
            let local = tracker::local::state(conn, task.id)?;
            if local.as_deref() == Some(tracker::state::APPROVED) {
                Checked::from_result(GateResult::pass(gate, "approved via status"))
            } else if ctx.config.tracker == "plane" && task.plane_issue_id.is_some() {
                Checked::not_checked(
                    gate,
                    "the Plane issue's status is not read in a dry run (local state: not approved)",
                )
            } else {
                Checked::from_result(GateResult::fail(
                    gate,
                    format!(
                        "tracker state is {}, not \"Approved\" (a human approves with `orch advance --task {} --approve`)",
                        local.map_or_else(|| "unset".to_owned(), |s| format!("{s:?}")),
                        task.id
                    ),
                ))
            }
        }
        Gate::CiGreen => {
            let command = ctx.config.repo(&task.repo)?.test_command.clone();
            Checked::not_checked(
                gate,
                format!("runs the repository's tests (`{command}`): not run in a dry run"),
            )
        }
        Gate::StagingImageFresh if ctx.config.staging_image_check_cmd.trim().is_empty() => {
            Checked::from_result(GateResult::pass(
                gate,
                "not configured (staging_image_check_cmd is empty)",
            ))
        }
        Gate::StagingImageFresh => {
            Checked::not_checked(gate, "runs staging_image_check_cmd: not run in a dry run")
        }
        Gate::BranchMergeable => Checked::not_checked(
            gate,
            "fetches main and merges under the merge lease: not done in a dry run",
        ),
        other => Checked::not_checked(other, "not checked in a dry run"),
    })
}
