//! [`Counters`] on PostgreSQL: the `counters` table, one row per name,
//! bumped with one `INSERT … ON CONFLICT`.

use std::collections::BTreeMap;

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::counters::{Counter, Counters};

impl Counters for Tx<'_> {
    fn counter_bump(
        &self,
        name: &str,
        by: i64,
        detail: Option<&serde_json::Value>,
        now: i64,
    ) -> Result<()> {
        let detail = detail.map(serde_json::Value::to_string);
        self.execute(
            "INSERT INTO counters (name, value, detail, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value,
                 detail = coalesce(excluded.detail, counters.detail),
                 updated_at = excluded.updated_at",
            &[&name, &by, &detail, &now],
        )?;
        Ok(())
    }

    fn counter_all(&self) -> Result<BTreeMap<String, Counter>> {
        self.query("SELECT name, value, detail, updated_at FROM counters", &[])?
            .iter()
            .map(|r| {
                let detail: Option<String> = get(r, 2)?;
                Ok((
                    get(r, 0)?,
                    Counter {
                        value: get(r, 1)?,
                        last: detail.and_then(|d| serde_json::from_str(&d).ok()),
                        updated_at: get(r, 3)?,
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_keeps_the_counters_contract() {
        let Some(mut store) = super::super::testing::store() else {
            return;
        };
        store
            .write(|tx| {
                crate::storage::counters::check_contract(tx);
                Ok(())
            })
            .expect("write");
    }
}
