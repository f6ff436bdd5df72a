//! The PostgreSQL backend's foundation against a real server: the schema
//! (the same as SQLite's, migrated once under concurrent first runs, a
//! newer one refused), the session settings, transactions, and how its
//! errors map to `storage::Error`.

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::thread;

use super::{Store, get, schema, testing};
use crate::storage::Error;

#[test]
fn postgres_migrations_parallel_sqlites() {
    // Version N means the same schema on either backend.
    assert_eq!(
        schema::MIGRATIONS.len(),
        crate::storage::schema::MIGRATIONS.len()
    );
}

/// A column as both backends can describe it: name, type, NOT NULL.
type Column = (String, &'static str, bool);

fn sqlite_columns() -> BTreeMap<String, Vec<Column>> {
    let (_dir, db) = crate::storage::test_db();
    let mut stmt = db
        .sqlite()
        .prepare(
            "SELECT m.name, c.name, c.type, c.\"notnull\" OR c.pk > 0
             FROM sqlite_schema m, pragma_table_info(m.name) c
             WHERE m.type = 'table' ORDER BY m.name, c.cid",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            let ty: String = r.get(2)?;
            let ty = match ty.as_str() {
                "INTEGER" => "bigint",
                "TEXT" => "text",
                "REAL" => "double precision",
                "BLOB" => "bytea",
                _ => "unmapped",
            };
            Ok((r.get::<_, String>(0)?, (r.get(1)?, ty, r.get(3)?)))
        })
        .expect("columns");
    let mut tables: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    for row in rows {
        let (table, column) = row.expect("row");
        tables.entry(table).or_default().push(column);
    }
    tables
}

/// Indexes as both backends can describe them: name, unique, partial.
fn sqlite_indexes() -> Vec<(String, bool, bool)> {
    let (_dir, db) = crate::storage::test_db();
    let mut stmt = db
        .sqlite()
        .prepare(
            "SELECT name, sql LIKE 'CREATE UNIQUE%', sql LIKE '%WHERE%' FROM sqlite_schema
             WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("indexes")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

#[test]
fn postgres_schema_matches_sqlites() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let (columns, indexes) = store
        .read(|tx| {
            let mut tables: BTreeMap<String, Vec<Column>> = BTreeMap::new();
            for r in tx.query(
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'NO'
                 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name <> 'schema_version'
                 ORDER BY table_name, ordinal_position",
                &[],
            )? {
                let ty: String = get(&r, 2)?;
                let ty = match ty.as_str() {
                    "bigint" => "bigint",
                    "text" => "text",
                    "double precision" => "double precision",
                    "bytea" => "bytea",
                    _ => "unmapped",
                };
                tables
                    .entry(get(&r, 0)?)
                    .or_default()
                    .push((get(&r, 1)?, ty, get(&r, 3)?));
            }
            // Primary keys and UNIQUE columns make their own indexes on
            // either backend (`*_pkey`/`*_key` here, autoindexes there).
            let indexes = tx
                .query(
                    "SELECT indexname::text, indexdef LIKE 'CREATE UNIQUE%', indexdef LIKE '%WHERE%'
                     FROM pg_indexes WHERE schemaname = current_schema()
                       AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'
                     ORDER BY indexname",
                    &[],
                )?
                .iter()
                .map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)))
                .collect::<crate::storage::Result<Vec<(String, bool, bool)>>>()?;
            Ok((tables, indexes))
        })
        .expect("read");
    assert_eq!(columns, sqlite_columns());
    assert_eq!(indexes, sqlite_indexes());
}

#[test]
fn postgres_concurrent_first_runs_migrate_once() {
    // Several rounds, each on a new database opened by three sessions at
    // once: the interleavings differ from round to round.
    for _ in 0..4 {
        let Some(db) = testing::database() else {
            return;
        };
        migrate_concurrently(&db, 3);
    }
}

fn migrate_concurrently(db: &testing::TestDb, sessions: usize) {
    let start = Barrier::new(sessions);
    let versions: Vec<i64> = thread::scope(|s| {
        let runs: Vec<_> = (0..sessions)
            .map(|_| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let mut store =
                        Store::open_config(db.config()).unwrap_or_else(|e| panic!("open: {e:#}"));
                    store.schema_version().expect("version")
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("run")).collect()
    });
    let latest = schema::latest();
    assert_eq!(versions, vec![latest; sessions]);
    let mut store = db.open();
    let recorded = store
        .read(|tx| {
            tx.query("SELECT version FROM schema_version ORDER BY version", &[])?
                .iter()
                .map(|r| Ok(get(r, 0)?))
                .collect::<anyhow::Result<Vec<i64>>>()
        })
        .expect("versions");
    assert_eq!(recorded, (1..=latest).collect::<Vec<_>>());
}

#[test]
fn postgres_refuses_a_newer_schema() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let newer = schema::latest() + 1;
    store
        .write(|tx| {
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&newer],
            )?;
            Ok(())
        })
        .expect("write");
    let err = Store::open_config(store.db().config())
        .err()
        .expect("a newer schema is refused");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!(
            "database schema version {newer} is newer than this orch understands"
        )),
        "{message}"
    );
}

#[test]
fn postgres_refuses_a_foreign_database() {
    let Some(db) = testing::database() else {
        return;
    };
    let mut config = db.config().clone();
    config.options("");
    let mut client = config.connect(postgres::NoTls).expect("connect");
    client
        .batch_execute("CREATE TABLE invoices (id BIGINT PRIMARY KEY)")
        .expect("foreign table");
    let err = Store::open_config(db.config())
        .err()
        .expect("a foreign database is refused");
    assert!(
        format!("{err:#}").contains("not an orch database"),
        "{err:#}"
    );
}

#[test]
fn postgres_sessions_carry_the_keepalive_settings() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let settings = store
        .read(|tx| {
            let r = tx.query_one(
                "SELECT current_setting('tcp_keepalives_idle'),
                        current_setting('tcp_keepalives_interval'),
                        current_setting('tcp_keepalives_count'),
                        current_setting('tcp_user_timeout'),
                        current_setting('application_name')",
                &[],
            )?;
            (0..5)
                .map(|i| Ok(get::<String>(&r, i)?))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .expect("settings");
    assert_eq!(settings, ["10", "5", "3", "30000", "orch"]);
}

#[test]
fn postgres_run_ownership_invariant_is_a_check() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let err = store
        .write(|tx| {
            tx.execute(
                "INSERT INTO jobs (agent, repo, created_at, claim_token) VALUES ('a', 'r', 0, 't')",
                &[],
            )?;
            Ok(())
        })
        .expect_err("a queued job that owns a run is refused");
    let err = err.downcast::<Error>().expect("a storage error");
    assert!(!err.is_busy());
    assert!(
        format!("{err:?}").contains("jobs_queued_owns_no_run"),
        "{err:?}"
    );
}

#[test]
fn postgres_write_rolls_back_a_failed_closure_and_read_is_read_only() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let failed: anyhow::Result<()> = store.write(|tx| {
        tx.execute(
            "INSERT INTO counters (name, value, updated_at) VALUES ('x', 1, 0)",
            &[],
        )?;
        anyhow::bail!("changed my mind")
    });
    assert!(failed.is_err());
    let n: i64 = store
        .read(|tx| {
            Ok(get(
                &tx.query_one("SELECT count(*) FROM counters", &[])?,
                0,
            )?)
        })
        .expect("count");
    assert_eq!(n, 0);
    let refused = store.read(|tx| {
        tx.execute(
            "INSERT INTO counters (name, value, updated_at) VALUES ('x', 1, 0)",
            &[],
        )?;
        Ok(())
    });
    assert!(refused.is_err(), "a read transaction cannot write");
}

#[test]
fn postgres_errors_map_to_busy_or_backend() {
    let Some(mut store) = testing::store() else {
        return;
    };
    // Nothing listens on a port just freed: the server cannot be reached.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let unreachable = Store::open(&format!("postgres://orch@127.0.0.1:{port}/postgres"))
        .err()
        .expect("nothing listens there");
    assert!(is_busy(&unreachable), "{unreachable:#}");
    // A row another session holds, asked for with NOWAIT: lock not available.
    let mut other = store.db().open();
    store
        .write(|tx| {
            tx.batch("INSERT INTO counters (name, value, updated_at) VALUES ('held', 1, 0)")?;
            Ok(())
        })
        .expect("insert");
    other
        .write(|held| {
            held.batch("SELECT 1 FROM counters WHERE name = 'held' FOR UPDATE")?;
            let locked = store.write(|tx| {
                tx.batch("SELECT 1 FROM counters WHERE name = 'held' FOR UPDATE NOWAIT")?;
                Ok(())
            });
            assert!(locked.as_ref().is_err_and(is_busy), "{locked:?}");
            Ok(())
        })
        .expect("hold");
    // Two REPEATABLE READ writers of one row: the later one cannot be
    // serialized after the first.
    let mut a = store
        .db()
        .config()
        .connect(postgres::NoTls)
        .expect("connect");
    let mut b = store
        .db()
        .config()
        .connect(postgres::NoTls)
        .expect("connect");
    let mut ta = repeatable_read(&mut a);
    ta.query("SELECT value FROM counters WHERE name = 'held'", &[])
        .expect("snapshot");
    let mut tb = repeatable_read(&mut b);
    tb.execute("UPDATE counters SET value = 2 WHERE name = 'held'", &[])
        .expect("update");
    tb.commit().expect("commit");
    let conflict = ta
        .execute("UPDATE counters SET value = 3 WHERE name = 'held'", &[])
        .expect_err("a serialization failure");
    assert!(Error::from(conflict).is_busy());
    // Bad SQL is not worth a retry.
    let bad = store.write(|tx| {
        tx.batch("SELEKT 1")?;
        Ok(())
    });
    assert!(bad.as_ref().is_err_and(|e| !is_busy(e)), "{bad:?}");
}

fn repeatable_read(client: &mut postgres::Client) -> postgres::Transaction<'_> {
    client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .expect("begin")
}

fn is_busy(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<Error>().is_some_and(Error::is_busy))
}

/// The counters `tx` sees, by name.
fn counter_names(tx: &super::Tx<'_>) -> anyhow::Result<Vec<String>> {
    use crate::storage::counters::Counters as _;
    Ok(tx.counter_all()?.into_keys().collect())
}

#[test]
fn postgres_savepoint_keeps_its_work_or_undoes_only_its_own() {
    use crate::storage::counters::Counters as _;
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            tx.counter_bump("before", 1, None, 0)?;
            let answer = tx.savepoint(|sp| {
                sp.counter_bump("kept", 1, None, 0)?;
                Ok(42)
            })?;
            assert_eq!(answer, 42);
            let failed: anyhow::Result<()> = tx.savepoint(|sp| {
                sp.counter_bump("undone", 1, None, 0)?;
                anyhow::bail!("changed my mind")
            });
            assert_eq!(
                failed.expect_err("it failed").to_string(),
                "changed my mind"
            );
            // A statement the server refuses aborts PostgreSQL's whole
            // transaction, unless it ran in a savepoint: then only the
            // savepoint's work is undone and the transaction goes on.
            let refused = tx.savepoint(|sp| {
                sp.counter_bump("undone too", 1, None, 0)?;
                sp.batch(
                    "INSERT INTO jobs (agent, repo, created_at, claim_token) VALUES ('a', 'r', 0, 't')",
                )?;
                Ok(())
            });
            let refused = refused.expect_err("the CHECK refuses it");
            assert!(
                refused
                    .downcast_ref::<Error>()
                    .is_some_and(|e| !e.is_busy()),
                "{refused:?}"
            );
            tx.counter_bump("after", 1, None, 0)?;
            // Nested: an inner failure leaves the outer savepoint's work.
            tx.savepoint(|outer| {
                outer.counter_bump("outer", 1, None, 0)?;
                let inner: anyhow::Result<()> = outer.savepoint(|inner| {
                    inner.counter_bump("inner", 1, None, 0)?;
                    anyhow::bail!("inner fails")
                });
                assert!(inner.is_err());
                outer.counter_bump("outer again", 1, None, 0)?;
                // The savepoint sees the transaction's work, and its own.
                assert_eq!(
                    counter_names(outer)?,
                    ["after", "before", "kept", "outer", "outer again"]
                );
                Ok(())
            })?;
            Ok(())
        })
        .expect("write");
    let names = store.read(counter_names).expect("read");
    assert_eq!(names, ["after", "before", "kept", "outer", "outer again"]);
}

#[test]
fn postgres_savepoint_work_goes_with_its_transaction() {
    use crate::storage::counters::Counters as _;
    let Some(mut store) = testing::store() else {
        return;
    };
    let failed: anyhow::Result<()> = store.write(|tx| {
        tx.savepoint(|sp| {
            sp.counter_bump("released", 1, None, 0)?;
            Ok(())
        })?;
        anyhow::bail!("the transaction fails after the savepoint")
    });
    assert!(failed.is_err());
    // Released is not committed: the transaction it is part of rolled back.
    assert!(store.read(counter_names).expect("read").is_empty());
    // A savepoint of a read transaction reads, and cannot write.
    let written = store.read(|tx| {
        tx.savepoint(|sp| {
            sp.counter_bump("x", 1, None, 0)?;
            Ok(())
        })
    });
    assert!(
        written.is_err(),
        "a read transaction's savepoint cannot write"
    );
}

#[test]
fn postgres_savepoint_makes_a_re_read_and_its_write_one_unit() {
    // What Transact is for (pipeline::lease's reclaim): re-read, decide and
    // write through the concepts' operations on the savepoint's Tx.
    use crate::storage::leases::{Holder, Leases as _};
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            tx.batch(
                "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 0, 0);",
            )?;
            let holder = Holder {
                task_id: 1,
                branch: "b",
                work_item_id: "A-1",
                job_id: None,
            };
            let lease = tx.lease_take("demo", holder, 5)?.expect("taken");
            let released = tx.savepoint(|sp| {
                if sp.lease_get("demo")?.as_ref() != Some(&lease) {
                    return Ok(false);
                }
                Ok(sp.lease_release("demo", &lease.branch)?)
            })?;
            assert!(released);
            assert_eq!(tx.lease_get("demo")?, None);
            Ok(())
        })
        .expect("write");
}
