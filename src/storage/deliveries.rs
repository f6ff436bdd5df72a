//! Webhook deliveries as a backend stores them: each stored once, however
//! often it arrives (the inbox's rules are `webhooks::inbox`'s); this is the
//! interface every backend implements (SQLite: `storage::sqlite::deliveries`).

use super::Result;

/// What storing a delivery did.
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

/// The webhook inbox of a backend.
pub trait Deliveries {
    /// Store a delivery unless one with the same `(source, delivery_id)` or
    /// the same `(source, content_hash)` is stored already, in one atomic
    /// step: two concurrent stores of the same delivery store one.
    /// `delivery_id` is `None` for none (no delivery-id dedup).
    fn delivery_store(
        &self,
        source: &str,
        event: Option<&str>,
        delivery_id: Option<&str>,
        content_hash: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Stored>;

    /// Up to `limit` deliveries still `pending`, oldest first.
    fn delivery_pending(&self, limit: u32) -> Result<Vec<Delivery>>;

    /// Record one processing attempt of delivery `id`: its new `status`
    /// (`pending` again, `processed`, `ignored` or `failed`) and a note.
    fn delivery_settle(&self, id: i64, status: &str, note: &str, now: i64) -> Result<()>;
}

/// The contract every backend's [`Deliveries`] keeps, run by each backend's
/// tests on an empty inbox.
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Deliveries) {
    let body: &[u8] = br#"{"a":1}"#;
    let put = |source, id, hash, body: &[u8], at| {
        store
            .delivery_store(source, Some("issue"), id, hash, body, at)
            .expect("store")
    };
    let Stored::New(first) = put("plane", Some("d1"), "h1", body, 10) else {
        panic!("the first delivery is new");
    };
    let dup = |by| Stored::Duplicate { id: first, by };
    assert_eq!(
        put("plane", Some("d1"), "h2", b"other", 11),
        dup(DuplicateBy::DeliveryId)
    );
    assert_eq!(
        put("plane", Some("d2"), "h1", body, 12),
        dup(DuplicateBy::Content)
    );
    assert_eq!(
        put("plane", None, "h1", body, 13),
        dup(DuplicateBy::Content)
    );
    // Per source.
    assert!(matches!(put("gitea", Some("d1"), "h1", body, 14), Stored::New(id) if id != first));
    let pending = store.delivery_pending(10).expect("pending");
    assert_eq!(pending.len(), 2);
    let p = &pending[0];
    assert_eq!(
        (
            p.id,
            p.source.as_str(),
            p.body.as_slice(),
            p.status.as_str(),
            p.attempts,
            p.received_at
        ),
        (first, "plane", body, "pending", 0, 10)
    );
    assert_eq!(store.delivery_pending(1).expect("pending").len(), 1);
    // A failed attempt leaves it pending and counts; a settled one leaves.
    store
        .delivery_settle(first, "pending", "busy", 20)
        .expect("settle");
    assert_eq!(store.delivery_pending(10).expect("pending")[0].attempts, 1);
    store
        .delivery_settle(first, "processed", "acted", 21)
        .expect("settle");
    let left = store.delivery_pending(10).expect("pending");
    assert!(left.iter().all(|d| d.id != first));
}
