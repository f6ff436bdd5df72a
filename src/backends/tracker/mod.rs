//! The tracker: where tasks come from and where orch reports back (comments,
//! states such as "Needs Input"). The local tracker keeps both in the
//! database; [`plane`] talks to Plane's REST API.

pub mod local;
pub mod plane;

/// Tracker states orch reads or sets, by their board names.
pub mod state {
    /// The human gate of analysis.
    pub const APPROVED: &str = "Approved";
    /// Rejected by the human.
    pub const REJECTED: &str = "Rejected";
    /// Waiting for a human (escalation).
    pub const NEEDS_INPUT: &str = "Needs Input";
    /// Waiting for the human's review of the analysis.
    pub const IN_REVIEW: &str = "In Review";
    /// Work in progress.
    pub const IN_PROGRESS: &str = "In Progress";
    /// Finished.
    pub const DONE: &str = "Done";
    /// New work, waiting for the analysis stage to pick it up.
    pub const TO_ANALYSE: &str = "To Analyse";
    /// Blocked on something outside the pipeline.
    pub const BLOCKED: &str = "Blocked";
    /// The operator's go-ahead for a self-deploy (seed ORCH-059).
    pub const CONFIRM_DEPLOY: &str = "Confirm Deploy";
    /// The operator's kill-switch for one task (seed ORCH-090).
    pub const STOP: &str = "STOP";
    /// Abandoned.
    pub const CANCELLED: &str = "Cancelled";
}

/// Logical keys of tracker states: what orch code asks for, whatever the
/// state's id on a given board.
pub mod key {
    /// "To Analyse".
    pub const TO_ANALYSE: &str = "to_analyse";
    /// "In Progress".
    pub const IN_PROGRESS: &str = "in_progress";
    /// "Approved".
    pub const APPROVED: &str = "approved";
    /// "Rejected".
    pub const REJECTED: &str = "rejected";
    /// "Needs Input".
    pub const NEEDS_INPUT: &str = "needs_input";
    /// "In Review".
    pub const IN_REVIEW: &str = "in_review";
    /// "Blocked".
    pub const BLOCKED: &str = "blocked";
    /// "Confirm Deploy". Fail closed: a board without it has no such key.
    pub const CONFIRM_DEPLOY: &str = "confirm_deploy";
    /// "STOP".
    pub const STOP: &str = "stop";
    /// "Done".
    pub const DONE: &str = "done";
    /// "Cancelled".
    pub const CANCELLED: &str = "cancelled";
}

/// How orch uses a board state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// orch moves issues to it: the board must have it, or those state
    /// changes are refused by Plane and dead-lettered.
    Sets,
    /// A person moves issues to it to ask orch for something: without it
    /// that request cannot be made from the board.
    Reads(&'static str),
}

/// The board contract: every state name orch sets or reads, exact and
/// case-sensitive (docs/integrations.md, "The board"). `orch doctor` checks
/// each declared Plane project against it.
pub const CONTRACT: &[(&str, Use)] = &[
    (state::IN_REVIEW, Use::Sets),
    (state::NEEDS_INPUT, Use::Sets),
    (state::BLOCKED, Use::Sets),
    (state::DONE, Use::Sets),
    (state::TO_ANALYSE, Use::Reads("start a task")),
    (state::APPROVED, Use::Reads("approve an analysis")),
    (state::REJECTED, Use::Reads("reject an analysis")),
    (
        state::CONFIRM_DEPLOY,
        Use::Reads("confirm the self-hosting repository's production deploy"),
    ),
    (state::STOP, Use::Reads("stop a task")),
];

/// Board name → logical key, exact and case-sensitive (docs/integrations.md, the state table).
pub const BOARD_KEYS: &[(&str, &str)] = &[
    (state::TO_ANALYSE, key::TO_ANALYSE),
    (state::IN_PROGRESS, key::IN_PROGRESS),
    (state::APPROVED, key::APPROVED),
    (state::REJECTED, key::REJECTED),
    (state::NEEDS_INPUT, key::NEEDS_INPUT),
    (state::IN_REVIEW, key::IN_REVIEW),
    (state::BLOCKED, key::BLOCKED),
    (state::CONFIRM_DEPLOY, key::CONFIRM_DEPLOY),
    (state::STOP, key::STOP),
    (state::DONE, key::DONE),
    (state::CANCELLED, key::CANCELLED),
];

/// The logical key of a board state name; `None` for names orch does not use.
pub fn key_for_name(name: &str) -> Option<&'static str> {
    BOARD_KEYS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The board name of a logical key.
pub fn name_for_key(key: &str) -> Option<&'static str> {
    BOARD_KEYS.iter().find(|(_, k)| *k == key).map(|(n, _)| *n)
}

/// The task's state key in Plane (`approved`, `needs_input`, …) when the
/// tracker is Plane and the task came from a Plane issue; `None` otherwise.
pub fn remote_state_key(
    ctx: &crate::context::Ctx,
    task: &crate::pipeline::task::Task,
) -> anyhow::Result<Option<String>> {
    if ctx.config.tracker != "plane" {
        return Ok(None);
    }
    let (Some(project), Some(issue)) = (
        task.plane_project_id.as_deref(),
        task.plane_issue_id.as_deref(),
    ) else {
        return Ok(None);
    };
    let client = plane::PlaneClient::from_config(
        &ctx.config,
        std::time::Duration::from_secs(ctx.config.http_timeout_s),
    )?
    .with_board_cache(ctx.state_dir.join("cache"));
    let issue = client.get_issue(project, issue)?;
    client.key_of_state(project, &issue.state_id)
}
