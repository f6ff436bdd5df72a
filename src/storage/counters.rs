//! Persistent counters (reaped, deferrals, leases reclaimed, …) that survive
//! the short-lived processes which bump them, shown by `orch status`: their
//! row type and the interface every backend implements (SQLite:
//! `storage::sqlite::counters`).

use super::Executor;
use std::collections::BTreeMap;

use super::Result;

/// One counter: a running total, and optionally the JSON detail of its last event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counter {
    /// Total since the database was created.
    pub value: i64,
    /// JSON detail of the last event, e.g. `{"job_id": 7, "outcome": "queued"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<serde_json::Value>,
    /// When it last changed (epoch seconds).
    pub updated_at: i64,
}

/// The persistent counters of a backend.
pub trait Counters {
    /// Add `by` to counter `name` (created at `by` if new), and record
    /// `detail` as its last event when given.
    fn counter_bump(
        &self,
        name: &str,
        by: i64,
        detail: Option<&serde_json::Value>,
        now: i64,
    ) -> Result<()>;

    /// Every counter, by name.
    fn counter_all(&self) -> Result<BTreeMap<String, Counter>>;
}

/// Add `by` to counter `name`, and record `detail` as its last event when given.
pub fn bump(
    conn: &dyn Executor,
    name: &str,
    by: i64,
    detail: Option<&serde_json::Value>,
    now: i64,
) -> Result<()> {
    conn.counter_bump(name, by, detail, now)
}

/// Every counter, by name.
pub fn all(conn: &dyn Executor) -> Result<BTreeMap<String, Counter>> {
    conn.counter_all()
}

/// The contract every backend's [`Counters`] keeps, run by each backend's
/// tests on a store with no counter.
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Counters) {
    let detail = serde_json::json!({ "job_id": 7 });
    store
        .counter_bump("reaped_total", 1, Some(&detail), 100)
        .expect("bump");
    store
        .counter_bump("reaped_total", 2, None, 200)
        .expect("bump");
    store
        .counter_bump("other_total", 5, None, 300)
        .expect("bump");
    let all = store.counter_all().expect("all");
    assert_eq!(
        all.get("reaped_total"),
        Some(&Counter {
            value: 3,
            // A bump without detail keeps the last event's.
            last: Some(detail),
            updated_at: 200,
        })
    );
    assert_eq!(all.get("other_total").map(|c| c.value), Some(5));
    assert_eq!(all.len(), 2);
}
