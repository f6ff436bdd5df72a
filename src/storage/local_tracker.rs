//! The embedded tracker as a backend stores it: comments on a task (each
//! once per external id) and the task's tracker state. Writing them is part
//! of the caller's transaction like everything else (`backends::tracker::local`
//! is the tracker); this is the interface every backend implements (SQLite:
//! `storage::sqlite::local_tracker`).

use serde::Serialize;

use super::Result;

/// A comment on a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comment {
    /// Comment id.
    pub id: i64,
    /// Who wrote it (an agent name, `orch`, or a person).
    pub author: String,
    /// The text.
    pub body: String,
    /// When (epoch seconds).
    pub created_at: i64,
}

/// The local tracker of a backend.
pub trait LocalTracker {
    /// Add a comment to task `task_id` unless one with `external_id` exists;
    /// whether it was added.
    fn tracker_comment(
        &self,
        task_id: i64,
        author: &str,
        body: &str,
        external_id: &str,
        now: i64,
    ) -> Result<bool>;

    /// The comments of task `task_id`, oldest first.
    fn tracker_comments(&self, task_id: i64) -> Result<Vec<Comment>>;

    /// Set the tracker state of task `task_id` (e.g. "Approved").
    fn tracker_set_state(&self, task_id: i64, state: &str, now: i64) -> Result<()>;

    /// The tracker state of task `task_id` (`None` if unset or no such task).
    fn tracker_state(&self, task_id: i64) -> Result<Option<String>>;
}

/// The contract every backend's [`LocalTracker`] keeps, run by each
/// backend's tests on a store whose only task is task 1.
#[cfg(test)]
pub(crate) fn check_contract(store: &impl LocalTracker) {
    assert_eq!(store.tracker_state(1).expect("state"), None);
    assert_eq!(store.tracker_state(2).expect("state"), None, "no task 2");
    store.tracker_set_state(1, "Approved", 100).expect("set");
    assert_eq!(
        store.tracker_state(1).expect("state").as_deref(),
        Some("Approved")
    );
    assert!(
        store
            .tracker_comment(1, "orch", "first", "outbox-1", 110)
            .expect("comment")
    );
    assert!(
        !store
            .tracker_comment(1, "orch", "again", "outbox-1", 120)
            .expect("comment"),
        "once per external id"
    );
    assert!(
        store
            .tracker_comment(1, "ann", "second", "outbox-2", 130)
            .expect("comment")
    );
    let comments = store.tracker_comments(1).expect("comments");
    assert_eq!(
        comments
            .iter()
            .map(|c| (c.author.as_str(), c.body.as_str(), c.created_at))
            .collect::<Vec<_>>(),
        [("orch", "first", 110), ("ann", "second", 130)]
    );
    assert!(store.tracker_comments(2).expect("comments").is_empty());
}
