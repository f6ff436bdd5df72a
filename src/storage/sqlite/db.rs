//! Opening the SQLite file the same way every time (WAL, busy timeout,
//! `synchronous=NORMAL`, foreign keys, migrations by `user_version`) and
//! running every write in a `BEGIN IMMEDIATE` transaction: a deferred
//! transaction that later upgrades to a writer gets `SQLITE_BUSY` without
//! waiting, which is the classic way to surface "database is locked" to a
//! user. `storage::Db` hands this out when no PostgreSQL URL is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::OrchError;
use crate::storage::{Executor, Missing, schema, wake};

/// An open, migrated SQLite database.
pub(crate) struct SqliteDb {
    conn: Connection,
    path: PathBuf,
    /// Set by SQLite's update hook when a statement inserted or changed a
    /// job; taken after the commit to wake idle workers ([`wake`]).
    jobs_changed: Arc<AtomicBool>,
}

/// Writes made outside [`SqliteDb::write`] (single statements in autocommit)
/// wake workers when the process lets go of the database.
impl Drop for SqliteDb {
    fn drop(&mut self) {
        self.wake_if_jobs_changed();
    }
}

impl SqliteDb {
    /// Open the database at `path`, creating or migrating it forward as needed.
    pub(crate) fn open(
        path: &Path,
        busy_timeout: Duration,
        missing: Missing,
    ) -> anyhow::Result<SqliteDb> {
        let exists = path.exists();
        if !exists && missing == Missing::Refuse {
            return Err(OrchError::NotFound(format!(
                "no orch database at {} (run `orch init` first)",
                path.display()
            ))
            .into());
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if missing == Missing::Create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(busy_timeout)?;
        // The last connection to close checkpoints and deletes the WAL
        // (SQLite's default, kept on purpose): each process is usually the
        // first to open the database, and the first connection rebuilds the
        // WAL index by reading the whole log, so a log never reset would grow
        // with every commit and be re-read and re-checkpointed by every
        // process. Skipping the close checkpoint was measured no faster.
        let mut db = SqliteDb {
            conn,
            path: path.to_path_buf(),
            jobs_changed: Arc::new(AtomicBool::new(false)),
        };
        db.prepare(busy_timeout, missing)
            .with_context(|| format!("opening database {}", path.display()))?;
        let flag = Arc::clone(&db.jobs_changed);
        db.conn.update_hook(Some(
            move |action: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
                if table == "jobs" && action != rusqlite::hooks::Action::SQLITE_DELETE {
                    flag.store(true, Ordering::Relaxed);
                }
            },
        ))?;
        Ok(db)
    }

    /// Open the database at `path` for reading only: the connection is
    /// `SQLITE_OPEN_READ_ONLY` and `query_only`, so no statement through it
    /// can change a row, and nothing is created or migrated. A missing file,
    /// a foreign one or a schema other than this binary's is refused.
    pub(crate) fn open_read_only(path: &Path, busy_timeout: Duration) -> anyhow::Result<SqliteDb> {
        if !path.exists() {
            return Err(OrchError::NotFound(format!(
                "no orch database at {} (run `orch init` first)",
                path.display()
            ))
            .into());
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("opening database {} read-only", path.display()))?;
        conn.busy_timeout(busy_timeout)?;
        conn.pragma_update(None, "query_only", true)?;
        let deadline = Instant::now() + busy_timeout;
        let (app_id, version) = loop {
            let read = conn.query_row(
                "SELECT (SELECT application_id FROM pragma_application_id()),
                        (SELECT user_version FROM pragma_user_version())",
                [],
                |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)),
            );
            match read.map_err(not_a_database) {
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let latest = schema::MIGRATIONS.len() as i64;
        if app_id != schema::APPLICATION_ID {
            anyhow::bail!("{} is not an orch database", path.display());
        }
        if version != latest {
            anyhow::bail!(
                "database schema version {version} is not this orch's ({latest}); run `orch init` with the same orch to migrate it"
            );
        }
        Ok(SqliteDb {
            conn,
            path: path.to_path_buf(),
            jobs_changed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The file this database lives in.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite connection itself, for tests that set up rows no
    /// operation writes.
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &Connection {
        &self.conn
    }

    /// The store, for reads. Writes go through [`SqliteDb::write`].
    pub(crate) fn conn(&self) -> &dyn Executor {
        &self.conn
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction and commit it.
    ///
    /// The transaction is rolled back if `f` fails. Keep `f` short: never spawn
    /// a process or make a network call inside it.
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&dyn Executor) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(busy_is_temporary)?;
        let out = f(&*tx)?;
        tx.commit().map_err(busy_is_temporary)?;
        self.wake_if_jobs_changed();
        Ok(out)
    }

    /// After a commit that inserted or changed a job, wake idle workers.
    /// A rolled-back change may leave the flag set: a spurious wake-up costs
    /// one short worker run, a lost one costs a timer period.
    fn wake_if_jobs_changed(&self) {
        if self.jobs_changed.swap(false, Ordering::Relaxed)
            && let Some(state_dir) = self.path.parent()
        {
            wake::notify(state_dir);
        }
    }

    /// Run `f` in one read transaction, so it sees a single consistent snapshot.
    pub(crate) fn read<T>(
        &mut self,
        f: impl FnOnce(&dyn Executor) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(busy_is_temporary)?;
        let out = f(&*tx)?;
        tx.commit().map_err(busy_is_temporary)?;
        Ok(out)
    }

    fn prepare(&mut self, busy_timeout: Duration, missing: Missing) -> anyhow::Result<()> {
        // Opening right after a crash (WAL recovery) or while the last
        // connection cleans up can be busy even for readers: retry until the
        // busy timeout, like the busy handler does for ordinary statements.
        let deadline = Instant::now() + busy_timeout;
        loop {
            match self.try_prepare(missing) {
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_prepare(&mut self, missing: Missing) -> anyhow::Result<()> {
        // One statement, so one snapshot: a concurrent `orch init` that commits
        // between separate reads would otherwise look like a foreign database.
        let (app_id, version, tables): (i32, i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT application_id FROM pragma_application_id()),
                        (SELECT user_version FROM pragma_user_version()),
                        (SELECT count(*) FROM sqlite_schema WHERE type = 'table')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(not_a_database)?;
        let latest = schema::MIGRATIONS.len() as i64;
        if app_id != schema::APPLICATION_ID {
            if app_id != 0 || version != 0 || tables != 0 {
                return Err(anyhow::anyhow!(
                    "{} is an SQLite database but not an orch database (application_id {app_id:#x}, {tables} tables); refusing to touch it",
                    self.path.display()
                ));
            }
            if missing == Missing::Refuse {
                return Err(OrchError::NotFound(format!(
                    "{} is an empty file, not an initialised orch database (run `orch init`)",
                    self.path.display()
                ))
                .into());
            }
        }
        if version > latest {
            return Err(anyhow::anyhow!(
                "database schema version {version} is newer than this orch understands ({latest}); upgrade orch"
            ));
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.pragma_update(None, "foreign_keys", true)?;
        if version < latest {
            let mode: String =
                self.conn
                    .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                log::warn!("database journal mode is {mode}, not WAL (network file system?)");
            }
            self.migrate()?;
        }
        Ok(())
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Re-read inside the write lock: a concurrent `orch` may have migrated already.
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version).unwrap_or(0);
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql)
                .with_context(|| format!("applying schema migration {}", i + 1))?;
        }
        tx.pragma_update(None, "application_id", schema::APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", schema::MIGRATIONS.len() as i64)?;
        tx.commit()?;
        Ok(())
    }

    /// The schema version of this database.
    pub(crate) fn schema_version(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }
}

/// What `orch doctor` learns about a database file without changing it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// `PRAGMA application_id` matches orch's.
    pub is_orch: bool,
    /// `PRAGMA user_version`.
    pub schema_version: i64,
    /// The schema version this binary writes.
    pub latest_version: i64,
    /// The rows of `PRAGMA quick_check` (`["ok"]` when healthy).
    pub quick_check: Vec<String>,
    /// `PRAGMA journal_mode` (`wal` expected).
    pub journal_mode: String,
}

/// Inspect the database at `path` read-only: no migration, no write.
pub fn health(path: &Path, busy_timeout: Duration) -> anyhow::Result<Health> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening database {} read-only", path.display()))?;
    conn.busy_timeout(busy_timeout)?;
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(not_a_database)?;
    let schema_version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let journal_mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let quick_check = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Health {
        is_orch: app_id == schema::APPLICATION_ID,
        schema_version,
        latest_version: schema::MIGRATIONS.len() as i64,
        quick_check,
        journal_mode: journal_mode.to_ascii_lowercase(),
    })
}

fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    })
}

fn busy_is_temporary(err: rusqlite::Error) -> anyhow::Error {
    let busy = matches!(&err, rusqlite::Error::SqliteFailure(e, _)
        if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked));
    if busy {
        anyhow::Error::new(err).context(OrchError::Temporary(
            "the database stayed locked past the busy timeout; retry later".into(),
        ))
    } else {
        err.into()
    }
}

fn not_a_database(err: rusqlite::Error) -> anyhow::Error {
    let notadb = matches!(&err, rusqlite::Error::SqliteFailure(e, _)
        if matches!(e.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt));
    if notadb {
        anyhow::Error::new(err)
            .context("not an orch database: the file is not SQLite, or it is corrupt")
    } else {
        err.into()
    }
}
