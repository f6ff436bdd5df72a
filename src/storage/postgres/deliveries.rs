//! [`Deliveries`] on PostgreSQL: the `webhook_deliveries` table, whose
//! unique indexes on `(source, delivery_id)` and `(source, content_hash)`
//! decide what is a duplicate.

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::deliveries::{Deliveries, Delivery, DuplicateBy, Stored};

impl Deliveries for Tx<'_> {
    fn delivery_store(
        &self,
        source: &str,
        event: Option<&str>,
        delivery_id: Option<&str>,
        content_hash: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Stored> {
        // One `INSERT … ON CONFLICT DO NOTHING` against both unique indexes
        // (a concurrent insert of the same delivery waits for the first to
        // commit, then does nothing), then, only on conflict, a look-up of
        // the row that was there first: in READ COMMITTED that statement
        // sees it (rows are never deleted).
        let inserted = self.query_opt(
            "INSERT INTO webhook_deliveries (source, event, delivery_id, content_hash, body, received_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING
             RETURNING id",
            &[&source, &event, &delivery_id, &content_hash, &body, &now],
        )?;
        if let Some(row) = inserted {
            return Ok(Stored::New(get(&row, 0)?));
        }
        if let Some(d) = delivery_id
            && let Some(row) = self.query_opt(
                "SELECT id FROM webhook_deliveries WHERE source = $1 AND delivery_id = $2",
                &[&source, &d],
            )?
        {
            return Ok(Stored::Duplicate {
                id: get(&row, 0)?,
                by: DuplicateBy::DeliveryId,
            });
        }
        let row = self.query_one(
            "SELECT id FROM webhook_deliveries WHERE source = $1 AND content_hash = $2",
            &[&source, &content_hash],
        )?;
        Ok(Stored::Duplicate {
            id: get(&row, 0)?,
            by: DuplicateBy::Content,
        })
    }

    fn delivery_pending(&self, limit: u32) -> Result<Vec<Delivery>> {
        self.query(
            "SELECT id, source, event, delivery_id, body, status, attempts, received_at
             FROM webhook_deliveries WHERE status = 'pending' ORDER BY id LIMIT $1",
            &[&i64::from(limit)],
        )?
        .iter()
        .map(|r| {
            Ok(Delivery {
                id: get(r, 0)?,
                source: get(r, 1)?,
                event: get(r, 2)?,
                delivery_id: get(r, 3)?,
                body: get(r, 4)?,
                status: get(r, 5)?,
                attempts: get(r, 6)?,
                received_at: get(r, 7)?,
            })
        })
        .collect()
    }

    fn delivery_settle(&self, id: i64, status: &str, note: &str, now: i64) -> Result<()> {
        self.execute(
            "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, error = $3,
                 processed_at = CASE WHEN $2 = 'pending' THEN NULL ELSE $4::bigint END
             WHERE id = $1",
            &[&id, &status, &note, &now],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_keeps_the_deliveries_contract() {
        let Some(mut store) = super::super::testing::store() else {
            return;
        };
        store
            .write(|tx| {
                crate::storage::deliveries::check_contract(tx);
                Ok(())
            })
            .expect("write");
    }
}
