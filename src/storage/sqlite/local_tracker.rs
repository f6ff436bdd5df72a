//! [`LocalTracker`] on SQLite: comments in `tracker_comments` (its unique
//! `external_id` makes a comment once), the state in `tasks.tracker_state`.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::storage::Result;
use crate::storage::local_tracker::{Comment, LocalTracker};

impl LocalTracker for Connection {
    fn tracker_comment(
        &self,
        task_id: i64,
        author: &str,
        body: &str,
        external_id: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self.execute(
            "INSERT OR IGNORE INTO tracker_comments (task_id, author, body, external_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task_id, author, body, external_id, now],
        )?;
        Ok(n == 1)
    }

    fn tracker_comments(&self, task_id: i64) -> Result<Vec<Comment>> {
        let mut stmt = self.prepare(
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
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn tracker_set_state(&self, task_id: i64, state: &str, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET tracker_state = ?2, updated_at = ?3 WHERE id = ?1",
            params![task_id, state, now],
        )?;
        Ok(())
    }

    fn tracker_state(&self, task_id: i64) -> Result<Option<String>> {
        Ok(self
            .query_row(
                "SELECT tracker_state FROM tasks WHERE id = ?1",
                [task_id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_local_tracker_contract() {
        let (_dir, db) = crate::storage::test_db();
        db.sqlite()
            .execute_batch(
                "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 0, 0);",
            )
            .expect("task");
        crate::storage::local_tracker::check_contract(db.sqlite());
    }
}
