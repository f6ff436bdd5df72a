//! A throwaway PostgreSQL database per test, on the server named by
//! `ORCH_TEST_PG_URL` (`scripts/pg-test-server.sh start` prints one; CI
//! starts it). Without that variable the PostgreSQL tests say loudly that
//! they skip, unless `ORCH_TEST_PG_REQUIRED=1`, where they fail.

use std::sync::atomic::{AtomicU64, Ordering};

/// Names each test database of this process apart.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh database, dropped (best effort) when this value goes.
pub struct Database {
    admin: String,
    name: String,
    /// The URL orch connects to (`ORCH_DB_URL`).
    pub url: String,
}

/// A fresh database on the test server, or `None` (after saying so) when
/// no server is configured and none is required.
pub fn fresh(test: &str) -> Option<Database> {
    let admin = match std::env::var("ORCH_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("ORCH_TEST_PG_REQUIRED").as_deref() != Ok("1"),
                "ORCH_TEST_PG_REQUIRED=1 but ORCH_TEST_PG_URL is unset (scripts/pg-test-server.sh start)"
            );
            eprintln!(
                "!! SKIPPED {test}: ORCH_TEST_PG_URL is unset (scripts/pg-test-server.sh start)"
            );
            return None;
        }
    };
    let name = format!(
        "orch_it_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut client =
        postgres::Client::connect(&admin, postgres::NoTls).expect("connect to the test server");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    let slash = admin
        .rfind('/')
        .expect("ORCH_TEST_PG_URL ends in /<database>");
    let url = format!("{}/{name}", &admin[..slash]);
    Some(Database { admin, name, url })
}

impl Database {
    /// A session on this database, for what a test checks or sets up.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to the test database")
    }

    /// The one integer `sql` selects.
    pub fn i64(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).expect(sql).get(0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let dropped = postgres::Client::connect(&self.admin, postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// A row as JSON, each column as `Env::rows` gives it on SQLite: integers
/// and `NUMERIC`s of no fraction (what `sum()` of a `BIGINT` gives) as
/// integers, floats as floats, text as strings, booleans as 0 and 1 (SQLite
/// has none), NULL and bytes as `null`.
pub fn json_row(row: &postgres::Row) -> Vec<serde_json::Value> {
    use postgres::types::Type;
    use serde_json::{Value, json};
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_();
            let v = |got: Result<Option<Value>, postgres::Error>| {
                got.unwrap_or_else(|e| panic!("column {i} ({ty}): {e}"))
                    .unwrap_or(Value::Null)
            };
            match *ty {
                Type::INT8 => v(row
                    .try_get::<_, Option<i64>>(i)
                    .map(|x| x.map(|x| json!(x)))),
                Type::INT4 => v(row
                    .try_get::<_, Option<i32>>(i)
                    .map(|x| x.map(|x| json!(x)))),
                Type::INT2 => v(row
                    .try_get::<_, Option<i16>>(i)
                    .map(|x| x.map(|x| json!(x)))),
                Type::FLOAT8 => v(row
                    .try_get::<_, Option<f64>>(i)
                    .map(|x| x.map(|x| json!(x)))),
                Type::FLOAT4 => v(row
                    .try_get::<_, Option<f32>>(i)
                    .map(|x| x.map(|x| json!(x)))),
                Type::BOOL => v(row
                    .try_get::<_, Option<bool>>(i)
                    .map(|x| x.map(|x| json!(i64::from(x))))),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => v(row
                    .try_get::<_, Option<String>>(i)
                    .map(|x| x.map(|x| json!(x)))),
                Type::NUMERIC => v(row.try_get::<_, Option<Numeric>>(i).map(|x| x.map(|n| n.0))),
                Type::BYTEA => Value::Null,
                _ => panic!("column {i}: no JSON mapping for type {ty}"),
            }
        })
        .collect()
}

/// A `NUMERIC` read from its binary form: an integer when it has no
/// fraction and fits in `i64`, else a float.
struct Numeric(serde_json::Value);

impl<'a> postgres::types::FromSql<'a> for Numeric {
    fn from_sql(
        _: &postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // ndigits, weight, sign, dscale (each 16 bits), then ndigits
        // base-10000 digits, the first weighted 10000^weight.
        let word = |at: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            let b = raw.get(at..at + 2).ok_or("short NUMERIC")?;
            Ok(i16::from_be_bytes([b[0], b[1]]))
        };
        let (ndigits, weight, sign) = (word(0)?, word(2)?, word(4)? as u16);
        if sign == 0xC000 {
            return Ok(Numeric(serde_json::Value::Null)); // NaN
        }
        let negative = sign == 0x4000;
        let mut int: Option<i128> = Some(0);
        let mut float = 0f64;
        for d in 0..ndigits {
            let digit = i128::from(word(8 + 2 * d as usize)?);
            let power = i32::from(weight) - i32::from(d);
            float += digit as f64 * 10000f64.powi(power);
            int = match (int, power) {
                (Some(n), p) if p >= 0 => 10000i128
                    .checked_pow(p as u32)
                    .and_then(|m| n.checked_add(digit * m)),
                (n, _) if digit == 0 => n,
                _ => None,
            };
        }
        let sign = if negative { -1 } else { 1 };
        Ok(Numeric(
            match int.and_then(|n| i64::try_from(n * sign).ok()) {
                Some(n) => serde_json::json!(n),
                None => serde_json::json!(float * sign as f64),
            },
        ))
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        *ty == postgres::types::Type::NUMERIC
    }
}
