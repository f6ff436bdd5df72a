//! The embedded tracker: task states and comments live in the orch database,
//! so writing them is part of the same transaction as everything else.

use rusqlite::{Connection, OptionalExtension as _, params};

/// A comment on a task.
#[derive(Debug, Clone, serde::Serialize)]
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

/// Add a comment once: a second call with the same `external_id` is a no-op.
pub fn comment(
    conn: &Connection,
    task_id: i64,
    author: &str,
    body: &str,
    external_id: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO tracker_comments (task_id, author, body, external_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![task_id, author, body, external_id, now],
    )?;
    Ok(n == 1)
}

/// Set the task's tracker state (e.g. "Approved", "Needs Input").
pub fn set_state(conn: &Connection, task_id: i64, state: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE tasks SET tracker_state = ?2, updated_at = ?3 WHERE id = ?1",
        params![task_id, state, now],
    )?;
    Ok(())
}

/// The task's tracker state.
pub fn state(conn: &Connection, task_id: i64) -> rusqlite::Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT tracker_state FROM tasks WHERE id = ?1",
            [task_id],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// The comments of a task, oldest first.
pub fn comments(conn: &Connection, task_id: i64) -> rusqlite::Result<Vec<Comment>> {
    let mut stmt = conn.prepare(
        "SELECT id, author, body, created_at FROM tracker_comments
         WHERE task_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([task_id], |r| {
        Ok(Comment {
            id: r.get(0)?,
            author: r.get(1)?,
            body: r.get(2)?,
            created_at: r.get(3)?,
        })
    })?;
    rows.collect()
}
