//! The tracker: where tasks come from and where orch reports back (comments,
//! states such as "Needs Input"). The local tracker keeps both in the
//! database; Plane arrives with the integrations release.

pub mod local;

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
}
