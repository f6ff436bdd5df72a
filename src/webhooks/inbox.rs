//! The inbox: table `webhook_deliveries`. A delivery is stored once, however
//! often it arrives: a repeated `(source, delivery id)` (Gitea's redelivery)
//! and a repeated `(source, sha256 of the raw body)` (Plane's retries, which
//! get a fresh delivery id each time) are both duplicates. The unique indexes
//! decide, so two concurrent ingests of the same delivery store one row.

use sha2::{Digest as _, Sha256};

use crate::storage;
use crate::storage::Executor;
pub use crate::storage::deliveries::{Delivery, DuplicateBy, Stored};

/// Lower-case hex SHA-256 of `body`: the content key of the inbox.
pub fn content_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Store a delivery unless the inbox already has it (see the module doc).
/// Run it inside a write transaction (`Db::write`). An empty `delivery_id`
/// is stored as NULL (no delivery-id dedup for it).
pub fn store(
    conn: &dyn Executor,
    source: &str,
    event: Option<&str>,
    delivery_id: Option<&str>,
    body: &[u8],
    now: i64,
) -> storage::Result<Stored> {
    let delivery_id = delivery_id.filter(|d| !d.is_empty());
    conn.delivery_store(source, event, delivery_id, &content_hash(body), body, now)
}

/// Up to `limit` deliveries still `pending`, oldest first.
pub fn pending(conn: &dyn Executor, limit: u32) -> storage::Result<Vec<Delivery>> {
    conn.delivery_pending(limit)
}

/// Record one processing attempt of delivery `id`: its new `status` and why.
pub fn settle(
    conn: &dyn Executor,
    id: i64,
    status: &str,
    note: &str,
    now: i64,
) -> storage::Result<()> {
    conn.delivery_settle(id, status, note, now)
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
