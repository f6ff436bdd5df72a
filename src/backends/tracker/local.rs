//! The embedded tracker: task states and comments live in the orch database,
//! so writing them is part of the same transaction as everything else.

use crate::storage;
use crate::storage::Executor;
pub use crate::storage::local_tracker::Comment;

/// Add a comment once: a second call with the same `external_id` is a no-op.
pub fn comment(
    conn: &dyn Executor,
    task_id: i64,
    author: &str,
    body: &str,
    external_id: &str,
    now: i64,
) -> storage::Result<bool> {
    conn.tracker_comment(task_id, author, body, external_id, now)
}

/// Set the task's tracker state (e.g. "Approved", "Needs Input").
pub fn set_state(conn: &dyn Executor, task_id: i64, state: &str, now: i64) -> storage::Result<()> {
    conn.tracker_set_state(task_id, state, now)
}

/// The task's tracker state.
pub fn state(conn: &dyn Executor, task_id: i64) -> storage::Result<Option<String>> {
    conn.tracker_state(task_id)
}

/// The comments of a task, oldest first.
pub fn comments(conn: &dyn Executor, task_id: i64) -> storage::Result<Vec<Comment>> {
    conn.tracker_comments(task_id)
}
