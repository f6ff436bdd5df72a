//! [`Counters`] on SQLite: the `counters` table, one row per name, bumped
//! with one `INSERT … ON CONFLICT`.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use crate::storage::Result;
use crate::storage::counters::{Counter, Counters};

impl Counters for Connection {
    fn counter_bump(
        &self,
        name: &str,
        by: i64,
        detail: Option<&serde_json::Value>,
        now: i64,
    ) -> Result<()> {
        let detail = detail.map(serde_json::Value::to_string);
        self.execute(
            "INSERT INTO counters(name, value, detail, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET value = value + ?2,
                 detail = coalesce(?3, detail), updated_at = ?4",
            params![name, by, detail, now],
        )?;
        Ok(())
    }

    fn counter_all(&self) -> Result<BTreeMap<String, Counter>> {
        let mut stmt = self.prepare("SELECT name, value, detail, updated_at FROM counters")?;
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
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_counters_contract() {
        let (_dir, db) = crate::storage::test_db();
        crate::storage::counters::check_contract(db.sqlite());
    }
}
