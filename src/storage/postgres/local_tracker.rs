//! [`LocalTracker`] on PostgreSQL: comments in `tracker_comments`, whose
//! unique `external_id` makes a comment once (`INSERT … ON CONFLICT DO
//! NOTHING`: a concurrent insert of the same comment waits for the first to
//! commit, then does nothing), and the state in `tasks.tracker_state`.

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::local_tracker::{Comment, LocalTracker};

impl LocalTracker for Tx<'_> {
    fn tracker_comment(
        &self,
        task_id: i64,
        author: &str,
        body: &str,
        external_id: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self.execute(
            "INSERT INTO tracker_comments (task_id, author, body, external_id, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&task_id, &author, &body, &external_id, &now],
        )?;
        Ok(n == 1)
    }

    fn tracker_comments(&self, task_id: i64) -> Result<Vec<Comment>> {
        self.query(
            "SELECT id, author, body, created_at FROM tracker_comments
             WHERE task_id = $1 ORDER BY id",
            &[&task_id],
        )?
        .iter()
        .map(|r| {
            Ok(Comment {
                id: get(r, 0)?,
                author: get(r, 1)?,
                body: get(r, 2)?,
                created_at: get(r, 3)?,
            })
        })
        .collect()
    }

    fn tracker_set_state(&self, task_id: i64, state: &str, now: i64) -> Result<()> {
        self.execute(
            "UPDATE tasks SET tracker_state = $2, updated_at = $3 WHERE id = $1",
            &[&task_id, &state, &now],
        )?;
        Ok(())
    }

    fn tracker_state(&self, task_id: i64) -> Result<Option<String>> {
        Ok(self
            .query_opt("SELECT tracker_state FROM tasks WHERE id = $1", &[&task_id])?
            .map(|r| get::<Option<String>>(&r, 0))
            .transpose()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::local_tracker::LocalTracker as _;
    use crate::storage::postgres::{fixtures, testing};

    const TASK_1: &str = "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                          VALUES (1, 'A-1', 'demo', 0, 0);";

    #[test]
    fn postgres_keeps_the_local_tracker_contract() {
        let Some(mut store) = testing::store() else {
            return;
        };
        store
            .write(|tx| {
                tx.batch(TASK_1)?;
                crate::storage::local_tracker::check_contract(tx);
                Ok(())
            })
            .expect("write");
    }

    #[test]
    fn postgres_adds_a_comment_once_under_concurrent_writers() {
        let Some(mut store) = testing::store() else {
            return;
        };
        store.write(|tx| Ok(tx.batch(TASK_1)?)).expect("task");
        let (first, second) = fixtures::race(store.db(), &|tx| {
            tx.tracker_comment(1, "orch", "hello", "outbox-1", 100)
        });
        assert_eq!((first, second), (true, false));
        let comments = store
            .read(|tx| Ok(tx.tracker_comments(1)?))
            .expect("comments");
        assert_eq!(comments.len(), 1);
    }

    #[test]
    fn postgres_refuses_a_comment_on_a_missing_task() {
        // As on SQLite (foreign keys on): ignoring a duplicate is not
        // ignoring every failure.
        let Some(mut store) = testing::store() else {
            return;
        };
        let refused = store.write(|tx| Ok(tx.tracker_comment(9, "orch", "x", "outbox-9", 1)?));
        assert!(refused.is_err());
    }
}
