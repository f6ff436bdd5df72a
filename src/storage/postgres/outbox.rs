//! [`Outbox`] on PostgreSQL: the `outbox` table, whose unique `dedup_key`
//! keeps each message single (`INSERT … ON CONFLICT DO NOTHING`) and whose
//! `(status, next_attempt_at)` index serves the delivery pass. Payloads
//! stay JSON text, read with `payload::json ->> 'kind'` where SQLite uses
//! `json_extract`; that cast sits in a `CASE` on the tracker channel, so,
//! as on SQLite (whose `AND` stops at the first false term), only tracker
//! payloads are parsed. A lease is one conditional `UPDATE`: a second
//! session leasing the same message waits for the first to commit, then
//! re-checks the condition on the leased row (no longer due) and changes
//! nothing, so each lease is taken once under `READ COMMITTED`.

use std::collections::BTreeMap;

use postgres::Row;

use super::{Tx, get};
use crate::storage::outbox::{Listed, Message, Outbox, Pending};
use crate::storage::{Error, Result};

/// The kind of a tracker message's payload (`state`, `comment`), `NULL` for
/// other channels; the argument is the row's table or alias.
macro_rules! tracker_kind {
    ($t:literal) => {
        concat!(
            "CASE WHEN ",
            $t,
            ".channel = 'tracker' THEN ",
            $t,
            ".payload::json ->> 'kind' END"
        )
    };
}

/// The rows changed by a statement, as the trait counts them.
fn outbox_changed(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn outbox_listed(r: &Row) -> Result<Listed> {
    let payload: String = get(r, 6)?;
    Ok(Listed {
        id: get(r, 0)?,
        channel: get(r, 1)?,
        task_id: get(r, 2)?,
        status: get(r, 3)?,
        attempts: get(r, 4)?,
        last_error: get(r, 5)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        created_at: get(r, 7)?,
    })
}

impl Outbox for Tx<'_> {
    fn outbox_push(&self, key: &str, message: &Message, now: i64) -> Result<bool> {
        let payload = serde_json::to_string(message).map_err(|e| Error::Backend(Box::new(e)))?;
        // `INSERT OR IGNORE` on SQLite. A concurrent push of the same key
        // waits for the first to commit, then does nothing. The NOT EXISTS
        // spares the id: PostgreSQL draws the identity before it finds the
        // conflict, so a plain `ON CONFLICT DO NOTHING` would leave a gap in
        // the ids for every repeated key, where SQLite's ids stay dense.
        let n = self.execute(
            "INSERT INTO outbox (dedup_key, channel, task_id, payload, next_attempt_at, created_at)
             SELECT $1, $2, $3, $4, $5, $5
             WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE dedup_key = $1)
             ON CONFLICT DO NOTHING",
            &[&key, &message.channel(), &message.task_id(), &payload, &now],
        )?;
        Ok(n == 1)
    }

    fn outbox_retire_superseded(&self) -> Result<usize> {
        let n = self.execute(
            concat!(
                "UPDATE outbox SET status = 'delivered', delivered_at = NULL,
                     last_error = 'superseded by a newer state change (#' ||
                         (SELECT max(n.id)::text FROM outbox n WHERE n.task_id = outbox.task_id
                          AND n.channel = 'tracker' AND ",
                tracker_kind!("n"),
                " = 'state') || ')'
                 WHERE status = 'pending' AND channel = 'tracker' AND ",
                tracker_kind!("outbox"),
                " = 'state'
                   AND EXISTS (SELECT 1 FROM outbox n WHERE n.task_id = outbox.task_id
                               AND n.id > outbox.id AND n.channel = 'tracker'
                               AND n.status IN ('pending', 'delivered') AND ",
                tracker_kind!("n"),
                " = 'state')"
            ),
            &[],
        )?;
        Ok(outbox_changed(n))
    }

    fn outbox_pending(&self) -> Result<Vec<Pending>> {
        self.query(
            "SELECT id, CASE WHEN channel = 'tracker' THEN task_id END, payload, next_attempt_at
             FROM outbox WHERE status = 'pending' ORDER BY id LIMIT 1000",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(Pending {
                id: get(r, 0)?,
                task_id: get(r, 1)?,
                payload: get(r, 2)?,
                next_attempt_at: get(r, 3)?,
            })
        })
        .collect()
    }

    fn outbox_bury(&self, id: i64, error: &str) -> Result<()> {
        self.execute(
            "UPDATE outbox SET status = 'dead', last_error = $2 WHERE id = $1",
            &[&id, &error],
        )?;
        Ok(())
    }

    fn outbox_attempts(&self, id: i64) -> Result<i64> {
        get(
            &self.query_one("SELECT attempts FROM outbox WHERE id = $1", &[&id])?,
            0,
        )
    }

    fn outbox_fail(&self, id: i64, error: &str, dead: bool, next_attempt_at: i64) -> Result<()> {
        self.execute(
            "UPDATE outbox SET status = CASE WHEN $3 THEN 'dead' ELSE status END,
                 next_attempt_at = $4, last_error = $2
             WHERE id = $1 AND status = 'pending'",
            &[&id, &error, &dead, &next_attempt_at],
        )?;
        Ok(())
    }

    fn outbox_lease(&self, id: i64, now: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2::bigint + 60
             WHERE id = $1 AND status = 'pending' AND next_attempt_at <= $2",
            &[&id, &now],
        )? == 1)
    }

    fn outbox_mark_delivered(&self, id: i64, now: i64) -> Result<()> {
        self.execute(
            "UPDATE outbox SET status = 'delivered', delivered_at = $2, last_error = NULL
             WHERE id = $1",
            &[&id, &now],
        )?;
        Ok(())
    }

    fn outbox_oldest_pending(&self) -> Result<Option<i64>> {
        get(
            &self.query_one(
                "SELECT min(created_at) FROM outbox WHERE status = 'pending'",
                &[],
            )?,
            0,
        )
    }

    fn outbox_counts(&self) -> Result<BTreeMap<String, i64>> {
        self.query("SELECT status, count(*) FROM outbox GROUP BY status", &[])?
            .iter()
            .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
            .collect()
    }

    fn outbox_dead(&self) -> Result<(i64, Option<i64>)> {
        let r = self.query_one(
            "SELECT count(*), min(created_at) FROM outbox WHERE status = 'dead'",
            &[],
        )?;
        Ok((get(&r, 0)?, get(&r, 1)?))
    }

    fn outbox_list(&self, status: Option<&str>, limit: u32) -> Result<Vec<Listed>> {
        self.query(
            "SELECT id, channel, task_id, status, attempts, last_error, payload, created_at
             FROM outbox WHERE ($1::text IS NULL OR status = $1) ORDER BY id DESC LIMIT $2",
            &[&status, &i64::from(limit)],
        )?
        .iter()
        .map(outbox_listed)
        .collect()
    }

    fn outbox_revive(&self, id: Option<i64>, now: i64) -> Result<usize> {
        let n = match id {
            Some(id) => self.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2
                 WHERE id = $1 AND status <> 'delivered'",
                &[&id, &now],
            )?,
            None => self.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1
                 WHERE status = 'dead'",
                &[&now],
            )?,
        };
        Ok(outbox_changed(n))
    }
}

#[cfg(test)]
mod tests;
