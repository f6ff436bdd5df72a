//! The inbox: table `webhook_deliveries`. A delivery is stored once, however
//! often it arrives: a repeated `(source, delivery id)` (Gitea's redelivery)
//! and a repeated `(source, sha256 of the raw body)` (Plane's retries, which
//! get a fresh delivery id each time) are both duplicates. The unique indexes
//! decide, so two concurrent ingests of the same delivery store one row.

use rusqlite::{Connection, OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

/// What [`store`] did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new row, with this id.
    New(i64),
    /// Already in the inbox as delivery `id`; nothing was written.
    Duplicate {
        /// The row that was there first.
        id: i64,
        /// What matched.
        by: DuplicateBy,
    },
}

/// Why a delivery is a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateBy {
    /// Same source and delivery id.
    DeliveryId,
    /// Same source and identical raw body.
    Content,
}

impl DuplicateBy {
    /// `"delivery id"` or `"content"`, as in "same delivery id".
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicateBy::DeliveryId => "delivery id",
            DuplicateBy::Content => "content",
        }
    }
}

impl std::fmt::Display for DuplicateBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored delivery, as the processor reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Row id.
    pub id: i64,
    /// `plane` or `gitea`.
    pub source: String,
    /// The event header (`issue`, `pull_request`, …), if one was sent.
    pub event: Option<String>,
    /// The delivery-id header, if one was sent.
    pub delivery_id: Option<String>,
    /// The raw body, byte for byte as signed.
    pub body: Vec<u8>,
    /// `pending`, `processed`, `ignored` or `failed`.
    pub status: String,
    /// Processing attempts so far.
    pub attempts: i64,
    /// When it was stored (epoch seconds).
    pub received_at: i64,
}

/// Lower-case hex SHA-256 of `body`: the content key of the inbox.
pub fn content_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Store a delivery unless the inbox already has it.
///
/// One `INSERT … ON CONFLICT DO NOTHING` against both unique indexes, then,
/// only on conflict, a look-up of the row that was there first. Run it inside
/// a write transaction (`Db::write`) so the look-up sees what the insert saw;
/// rows are never deleted, so it finds one either way. An empty `delivery_id`
/// is stored as NULL (no delivery-id dedup for it).
pub fn store(
    conn: &Connection,
    source: &str,
    event: Option<&str>,
    delivery_id: Option<&str>,
    body: &[u8],
    now: i64,
) -> rusqlite::Result<Stored> {
    let delivery_id = delivery_id.filter(|d| !d.is_empty());
    let hash = content_hash(body);
    let inserted: Option<i64> = conn
        .query_row(
            "INSERT INTO webhook_deliveries (source, event, delivery_id, content_hash, body, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO NOTHING
             RETURNING id",
            params![source, event, delivery_id, hash, body, now],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = inserted {
        return Ok(Stored::New(id));
    }
    if let Some(d) = delivery_id
        && let Some(id) = conn
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
    let id = conn.query_row(
        "SELECT id FROM webhook_deliveries WHERE source = ?1 AND content_hash = ?2",
        params![source, hash],
        |r| r.get(0),
    )?;
    Ok(Stored::Duplicate {
        id,
        by: DuplicateBy::Content,
    })
}

/// Up to `limit` deliveries still `pending`, oldest first.
pub fn pending(conn: &Connection, limit: u32) -> rusqlite::Result<Vec<Delivery>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, source, event, delivery_id, body, status, attempts, received_at
         FROM webhook_deliveries WHERE status = 'pending' ORDER BY id LIMIT {limit}"
    ))?;
    stmt.query_map([], |r| {
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
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_db as db;

    #[test]
    fn content_hash_is_sha256_hex() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn dedup_by_delivery_id_then_by_content_per_source() {
        let (_dir, mut db) = db();
        let body = br#"{"a":1}"#;
        let r = db
            .write(|tx| {
                Ok([
                    store(tx, "plane", Some("issue"), Some("d1"), body, 10)?,
                    store(tx, "plane", Some("issue"), Some("d1"), br#"{"a":2}"#, 11)?,
                    store(tx, "plane", Some("issue"), Some("d2"), body, 12)?,
                    store(tx, "plane", None, None, body, 13)?,
                    store(tx, "gitea", Some("push"), Some("d1"), body, 14)?,
                    store(tx, "gitea", Some("push"), Some(""), br#"{"b":1}"#, 15)?,
                ])
            })
            .expect("store");
        let Stored::New(first) = r[0] else {
            panic!("{:?}", r[0])
        };
        let dup = |by| Stored::Duplicate { id: first, by };
        assert_eq!(r[1], dup(DuplicateBy::DeliveryId));
        assert_eq!(r[2], dup(DuplicateBy::Content));
        assert_eq!(r[3], dup(DuplicateBy::Content));
        assert!(matches!(r[4], Stored::New(id) if id != first));
        assert!(matches!(r[5], Stored::New(_)));

        let p = pending(db.conn(), 10).expect("pending");
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].id, first);
        assert_eq!(p[0].body, body);
        assert_eq!(p[0].event.as_deref(), Some("issue"));
        assert_eq!(p[0].delivery_id.as_deref(), Some("d1"));
        assert_eq!(p[0].status, "pending");
        assert_eq!(p[0].attempts, 0);
        assert_eq!(p[0].received_at, 10);
        assert_eq!(p[2].delivery_id, None, "an empty delivery id is NULL");
        assert_eq!(pending(db.conn(), 1).expect("pending").len(), 1);
    }
}
