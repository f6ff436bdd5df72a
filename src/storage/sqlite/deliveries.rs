//! [`Deliveries`] on SQLite: the `webhook_deliveries` table, whose unique
//! indexes on `(source, delivery_id)` and `(source, content_hash)` decide
//! what is a duplicate.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::storage::Result;
use crate::storage::deliveries::{Deliveries, Delivery, DuplicateBy, Stored};

impl Deliveries for Connection {
    fn delivery_store(
        &self,
        source: &str,
        event: Option<&str>,
        delivery_id: Option<&str>,
        content_hash: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Stored> {
        // One `INSERT … ON CONFLICT DO NOTHING` against both unique indexes,
        // then, only on conflict, a look-up of the row that was there first
        // (rows are never deleted, so it finds one).
        let inserted: Option<i64> = self
            .query_row(
                "INSERT INTO webhook_deliveries (source, event, delivery_id, content_hash, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO NOTHING
                 RETURNING id",
                params![source, event, delivery_id, content_hash, body, now],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = inserted {
            return Ok(Stored::New(id));
        }
        if let Some(d) = delivery_id
            && let Some(id) = self
                .query_row(
                    "SELECT id FROM webhook_deliveries WHERE source = ?1 AND delivery_id = ?2",
                    params![source, d],
                    |r| r.get(0),
                )
                .optional()?
        {
            return Ok(Stored::Duplicate {
                id,
                by: DuplicateBy::DeliveryId,
            });
        }
        let id = self.query_row(
            "SELECT id FROM webhook_deliveries WHERE source = ?1 AND content_hash = ?2",
            params![source, content_hash],
            |r| r.get(0),
        )?;
        Ok(Stored::Duplicate {
            id,
            by: DuplicateBy::Content,
        })
    }

    fn delivery_pending(&self, limit: u32) -> Result<Vec<Delivery>> {
        let mut stmt = self.prepare_cached(&format!(
            "SELECT id, source, event, delivery_id, body, status, attempts, received_at
             FROM webhook_deliveries WHERE status = 'pending' ORDER BY id LIMIT {limit}"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(Delivery {
                id: r.get(0)?,
                source: r.get(1)?,
                event: r.get(2)?,
                delivery_id: r.get(3)?,
                body: r.get(4)?,
                status: r.get(5)?,
                attempts: r.get(6)?,
                received_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delivery_settle(&self, id: i64, status: &str, note: &str, now: i64) -> Result<()> {
        self.execute(
            "UPDATE webhook_deliveries SET status = ?2, attempts = attempts + 1, error = ?3,
                 processed_at = CASE WHEN ?2 = 'pending' THEN NULL ELSE ?4 END
             WHERE id = ?1",
            params![id, status, note, now],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_deliveries_contract() {
        let (_dir, db) = crate::storage::test_db();
        crate::storage::deliveries::check_contract(db.sqlite());
    }
}
