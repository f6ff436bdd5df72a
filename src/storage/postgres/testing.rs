//! Throwaway PostgreSQL databases for the backend's tests: each test gets
//! a database of its own (`orch_test_<random>`) on the server named by
//! `ORCH_TEST_PG_URL`, dropped when the test ends, so tests run in
//! parallel without seeing each other's rows or advisory locks.
//!
//! Start a server with `scripts/pg-test-server.sh start` (it prints the
//! URL). Without `ORCH_TEST_PG_URL` the PostgreSQL tests say loudly that
//! they skip and pass, unless `ORCH_TEST_PG_REQUIRED=1` (CI), where they
//! fail.

use std::hash::{BuildHasher as _, Hasher as _};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::{Config, NoTls};

use super::Store;

/// A fresh, empty database on the test server, dropped (best effort) on drop.
pub(crate) struct TestDb {
    admin: Config,
    config: Config,
    name: String,
}

impl TestDb {
    /// The settings that connect to this database.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// A new session on this database, migrated.
    pub(crate) fn open(&self) -> Store {
        Store::open_config(&self.config).unwrap_or_else(|e| panic!("open the test database: {e:#}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let dropped = self.admin.connect(NoTls).and_then(|mut c| {
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

/// A migrated [`Store`] on a fresh database; derefs to the store.
pub(crate) struct TestStore {
    // Declared first, so the session closes before the database is dropped.
    store: Store,
    db: TestDb,
}

impl TestStore {
    /// The database this store is connected to.
    pub(crate) fn db(&self) -> &TestDb {
        &self.db
    }
}

impl Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl DerefMut for TestStore {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.store
    }
}

/// The test server's URL, or `None` (after a loud message) when the
/// PostgreSQL tests are to skip; panics when they are required.
fn server_url() -> Option<String> {
    let url = std::env::var("ORCH_TEST_PG_URL").unwrap_or_default();
    if !url.trim().is_empty() {
        return Some(url);
    }
    let required = std::env::var("ORCH_TEST_PG_REQUIRED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "ORCH_TEST_PG_REQUIRED=1 but ORCH_TEST_PG_URL is not set (scripts/pg-test-server.sh start prints one)"
    );
    eprintln!(
        "!! SKIPPED: ORCH_TEST_PG_URL is not set, so this PostgreSQL test did not run. \
         Run: export ORCH_TEST_PG_URL=$(scripts/pg-test-server.sh start)"
    );
    None
}

/// A database name no other test (or run) uses.
fn fresh_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    format!("orch_test_{:016x}", h.finish())
}

/// A fresh, empty (not migrated) database, or `None` when skipping.
pub(crate) fn database() -> Option<TestDb> {
    database_with("")
}

/// [`database`] created with `options` after `CREATE DATABASE <name>`
/// (a locale, say).
fn database_with(options: &str) -> Option<TestDb> {
    let url = server_url()?;
    let admin = super::config(&url).expect("ORCH_TEST_PG_URL is not a PostgreSQL URL");
    let name = fresh_name();
    let mut client = admin
        .connect(NoTls)
        .expect("connect to the server of ORCH_TEST_PG_URL");
    client
        .batch_execute(&format!("CREATE DATABASE {name} {options}"))
        .expect("create a test database");
    let mut config = admin.clone();
    config.dbname(&name);
    Some(TestDb {
        admin,
        config,
        name,
    })
}

/// A migrated store on a fresh database, or `None` when skipping.
pub(crate) fn store() -> Option<TestStore> {
    Some(store_on(database()?))
}

/// A migrated store on a fresh database whose default collation is ICU's
/// `en-US`, which orders text unlike SQLite's bytes (`a` before `B`,
/// punctuation almost ignored): orderings that must be SQLite's are tested
/// on it. `None` when skipping.
pub(crate) fn collated_store() -> Option<TestStore> {
    Some(store_on(database_with(
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
    )?))
}

fn store_on(db: TestDb) -> TestStore {
    TestStore {
        store: db.open(),
        db,
    }
}

/// The rows of `sql` on PostgreSQL as text, each value written as
/// [`sqlite_rows`] writes SQLite's (`NULL`, integers and text as they are,
/// floats with `{:?}`), so the two backends' rows compare.
pub(crate) fn pg_rows(tx: &super::Tx<'_>, sql: &str) -> Vec<Vec<String>> {
    use postgres::types::Type;
    fn text<T: ToString>(v: Option<T>) -> String {
        v.map_or_else(|| "NULL".to_owned(), |v| v.to_string())
    }
    let rows = tx.query(sql, &[]).expect("query");
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| match *r.columns()[i].type_() {
                    Type::INT8 => text(r.get::<_, Option<i64>>(i)),
                    Type::INT4 => text(r.get::<_, Option<i32>>(i)),
                    Type::FLOAT8 => text(r.get::<_, Option<f64>>(i).map(|f| format!("{f:?}"))),
                    Type::BOOL => text(r.get::<_, Option<bool>>(i).map(i64::from)),
                    _ => text(r.get::<_, Option<String>>(i)),
                })
                .collect()
        })
        .collect()
}

/// The rows of `sql` on SQLite as text (see [`pg_rows`]).
pub(crate) fn sqlite_rows(conn: &rusqlite::Connection, sql: &str) -> Vec<Vec<String>> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn.prepare(sql).expect("prepare");
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    ValueRef::Null => "NULL".to_owned(),
                    ValueRef::Integer(v) => v.to_string(),
                    ValueRef::Real(f) => format!("{f:?}"),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                })
            })
            .collect()
    })
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}
