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
