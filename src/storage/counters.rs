//! Persistent counters (reaped, deferrals, leases reclaimed, …) that survive
//! the short-lived processes which bump them, shown by `orch status`.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

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

/// Add `by` to counter `name`, and record `detail` as its last event when given.
pub fn bump(
    conn: &Connection,
    name: &str,
    by: i64,
    detail: Option<&serde_json::Value>,
    now: i64,
) -> rusqlite::Result<()> {
    let detail = detail.map(serde_json::Value::to_string);
    conn.execute(
        "INSERT INTO counters(name, value, detail, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET value = value + ?2,
             detail = coalesce(?3, detail), updated_at = ?4",
        params![name, by, detail, now],
    )?;
    Ok(())
}

/// Every counter, by name.
pub fn all(conn: &Connection) -> rusqlite::Result<BTreeMap<String, Counter>> {
    let mut stmt = conn.prepare("SELECT name, value, detail, updated_at FROM counters")?;
    let rows = stmt.query_map([], |r| {
        let detail: Option<String> = r.get(2)?;
        Ok((
            r.get::<_, String>(0)?,
            Counter {
                value: r.get(1)?,
                last: detail.and_then(|d| serde_json::from_str(&d).ok()),
                updated_at: r.get(3)?,
            },
        ))
    })?;
    rows.collect()
}
