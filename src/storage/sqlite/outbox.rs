//! [`Outbox`] on SQLite: the `outbox` table, whose unique `dedup_key` keeps
//! each message single and whose `(status, next_attempt_at)` index serves
//! the delivery pass; payloads are JSON text, read with `json_extract`.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use crate::storage::outbox::{Listed, Message, Outbox, Pending};
use crate::storage::{Error, Result};

impl Outbox for Connection {
    fn outbox_push(&self, key: &str, message: &Message, now: i64) -> Result<bool> {
        let payload = serde_json::to_string(message).map_err(|e| Error::Backend(Box::new(e)))?;
        let n = self.execute(
            "INSERT OR IGNORE INTO outbox (dedup_key, channel, task_id, payload, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![key, message.channel(), message.task_id(), payload, now],
        )?;
        Ok(n == 1)
    }

    fn outbox_retire_superseded(&self) -> Result<usize> {
        Ok(self.execute(
            "UPDATE outbox SET status = 'delivered', delivered_at = NULL,
                 last_error = 'superseded by a newer state change (#' ||
                     (SELECT max(n.id) FROM outbox n WHERE n.task_id = outbox.task_id
                      AND n.channel = 'tracker' AND json_extract(n.payload, '$.kind') = 'state') || ')'
             WHERE status = 'pending' AND channel = 'tracker'
               AND json_extract(payload, '$.kind') = 'state'
               AND EXISTS (SELECT 1 FROM outbox n WHERE n.task_id = outbox.task_id
                           AND n.id > outbox.id AND n.channel = 'tracker'
                           AND n.status IN ('pending', 'delivered')
                           AND json_extract(n.payload, '$.kind') = 'state')",
            [],
        )?)
    }

    fn outbox_pending(&self) -> Result<Vec<Pending>> {
        let mut stmt = self.prepare(
            "SELECT id, CASE WHEN channel = 'tracker' THEN task_id END, payload, next_attempt_at
             FROM outbox WHERE status = 'pending' ORDER BY id LIMIT 1000",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Pending {
                id: r.get(0)?,
                task_id: r.get(1)?,
                payload: r.get(2)?,
                next_attempt_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_bury(&self, id: i64, error: &str) -> Result<()> {
        self.execute(
            "UPDATE outbox SET status = 'dead', last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    fn outbox_attempts(&self, id: i64) -> Result<i64> {
        Ok(
            self.query_row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })?,
        )
    }

    fn outbox_fail(&self, id: i64, error: &str, dead: bool, next_attempt_at: i64) -> Result<()> {
        self.execute(
            "UPDATE outbox SET status = CASE WHEN ?3 THEN 'dead' ELSE status END,
                 next_attempt_at = ?4, last_error = ?2
             WHERE id = ?1 AND status = 'pending'",
            params![id, error, dead, next_attempt_at],
        )?;
        Ok(())
    }

    fn outbox_lease(&self, id: i64, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2 + 60
             WHERE id = ?1 AND status = 'pending' AND next_attempt_at <= ?2",
            params![id, now],
        )? == 1)
    }

    fn outbox_mark_delivered(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE outbox SET status = 'delivered', delivered_at = ?2, last_error = NULL WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    fn outbox_oldest_pending(&self) -> Result<Option<i64>> {
        Ok(self.query_row(
            "SELECT min(created_at) FROM outbox WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    fn outbox_counts(&self) -> Result<BTreeMap<String, i64>> {
        let mut stmt = self.prepare("SELECT status, count(*) FROM outbox GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_dead(&self) -> Result<(i64, Option<i64>)> {
        Ok(self.query_row(
            "SELECT count(*), min(created_at) FROM outbox WHERE status = 'dead'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    fn outbox_list(&self, status: Option<&str>, limit: u32) -> Result<Vec<Listed>> {
        let mut stmt = self.prepare(&format!(
            "SELECT id, channel, task_id, status, attempts, last_error, payload, created_at
             FROM outbox WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT {limit}"
        ))?;
        let rows = stmt.query_map([status], |r| {
            let payload: String = r.get(6)?;
            Ok(Listed {
                id: r.get(0)?,
                channel: r.get(1)?,
                task_id: r.get(2)?,
                status: r.get(3)?,
                attempts: r.get(4)?,
                last_error: r.get(5)?,
                payload: serde_json::from_str(&payload)
                    .unwrap_or(serde_json::Value::String(payload)),
                created_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_revive(&self, id: Option<i64>, now: i64) -> Result<usize> {
        Ok(match id {
            Some(id) => self.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2
                 WHERE id = ?1 AND status <> 'delivered'",
                params![id, now],
            )?,
            None => self.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?1
                 WHERE status = 'dead'",
                [now],
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_outbox_contract() {
        let (_dir, db) = crate::storage::test_db();
        // The contract's tracker messages are about task 1.
        db.sqlite()
            .execute_batch(
                "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 0, 0);",
            )
            .expect("task");
        crate::storage::outbox::check_contract(db.sqlite());
    }
}
