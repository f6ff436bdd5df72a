//! The state store every short-lived `orch` process shares: one SQLite
//! file on one host (docs/architecture.md, decision 1), or one PostgreSQL
//! database for workers on several hosts (docs/scaling.md).
//!
//! All access goes through [`Db`], which opens the configured backend and
//! hands out a [`Executor`]: the sum of one interface per concept (jobs,
//! tasks, leases, …), each declared in its own module here with its row
//! types and a contract every backend keeps. Each backend keeps its SQL
//! together, one module per concept: `sqlite/` and `postgres/`. Domain code
//! never writes SQL.
//!
//! Every process compiles its statements anew, so their compile cost is
//! part of every command's start-up. Two rules follow. A `LIMIT` is written
//! into the SQL, never bound: SQLite compiles a statement with a bound
//! `LIMIT` a second time once the value is known. And a view reads sets in
//! one statement (`WHERE id IN (SELECT value FROM json_each(?1))`, see
//! [`json_array`]), never one statement per row.

pub mod counters;
pub mod deliveries;
pub mod deploys;
mod error;
pub mod jobs;
pub mod leases;
pub mod ledger;
pub mod local_tracker;
pub mod outbox;
pub mod post_deploys;
pub mod postgres;
pub mod schema;
mod sqlite;
pub mod tasks;
pub mod views;
pub mod wake;

pub use error::{Error, Result};

/// Everything a backend stores, as one interface: the sum of the concepts'
/// traits. Domain code takes `&dyn Executor`, whichever backend is behind
/// it and whether or not a transaction is open; a transaction is an
/// executor too, so a fenced commit that touches jobs, tasks, leases and the
/// outbox stays one transaction on any backend.
pub trait Executor:
    jobs::Jobs
    + tasks::Tasks
    + leases::Leases
    + counters::Counters
    + deliveries::Deliveries
    + outbox::Outbox
    + ledger::Ledger
    + views::Views
    + deploys::Deploys
    + post_deploys::PostDeploys
    + local_tracker::LocalTracker
    + Transact
{
}

/// Several operations as one transaction, from an executor that has none
/// open (a connection reading outside [`Db::write`]): a re-read and the
/// write it decides commit together or not at all.
pub trait Transact {
    /// Run `f` in one write transaction, committed if it returns `Ok`.
    fn transact(
        &self,
        f: &mut dyn FnMut(&dyn Executor) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
}

impl<T> Executor for T where
    T: jobs::Jobs
        + tasks::Tasks
        + leases::Leases
        + counters::Counters
        + deliveries::Deliveries
        + outbox::Outbox
        + ledger::Ledger
        + views::Views
        + deploys::Deploys
        + post_deploys::PostDeploys
        + local_tracker::LocalTracker
        + Transact
        + ?Sized
{
}

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sqlite::db::{Health, health};

/// `items` (ids, tokens) as a JSON array: the one parameter a query reads
/// a set from (`WHERE id IN (SELECT value FROM json_each(?1))`), so one
/// statement, compiled once, serves any number of rows.
pub fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    // Numbers and strings always serialize.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// An open, migrated orch database, on either backend.
pub struct Db {
    backend: Backend,
}

enum Backend {
    Sqlite(sqlite::db::SqliteDb),
    Postgres(Box<PgDb>),
}

/// A PostgreSQL store, with what waking this host's workers needs.
struct PgDb {
    store: postgres::Store,
    /// Where it is, for messages (never the password).
    shown: String,
    /// The state directory of this host, whose workers a commit that
    /// changed a job wakes ([`wake`]).
    state_dir: PathBuf,
}

impl PgDb {
    fn wake_if_jobs_changed(&self) {
        if self.store.take_jobs_changed() {
            wake::notify(&self.state_dir);
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        self.wake_if_jobs_changed();
    }
}

impl Db {
    /// Open the SQLite database at `path`, creating or migrating it forward as needed.
    pub fn open(path: &Path, busy_timeout: Duration, missing: Missing) -> anyhow::Result<Db> {
        Ok(Db {
            backend: Backend::Sqlite(sqlite::db::SqliteDb::open(path, busy_timeout, missing)?),
        })
    }

    /// Open the SQLite database at `path` for reading only: no statement
    /// through it can change a row, and nothing is created or migrated. A
    /// missing file, a foreign one or a schema other than this binary's is
    /// refused.
    pub fn open_read_only(path: &Path, busy_timeout: Duration) -> anyhow::Result<Db> {
        Ok(Db {
            backend: Backend::Sqlite(sqlite::db::SqliteDb::open_read_only(path, busy_timeout)?),
        })
    }

    /// Open the PostgreSQL database at `url` (`postgres://…`), migrating it
    /// forward as needed (a database with no orch schema yet only with
    /// [`Missing::Create`]); `state_dir` is this host's, whose workers a
    /// commit that changed a job wakes.
    pub fn open_postgres(url: &str, state_dir: &Path, missing: Missing) -> anyhow::Result<Db> {
        let store = postgres::Store::open_with(url, missing == Missing::Create, false)?;
        Ok(Db::over_postgres(store, state_dir))
    }

    /// Open the PostgreSQL database at `url` for reading only: every
    /// transaction of the session is read-only, and nothing is migrated.
    pub fn open_postgres_read_only(url: &str, state_dir: &Path) -> anyhow::Result<Db> {
        let store = postgres::Store::open_with(url, false, true)?;
        Ok(Db::over_postgres(store, state_dir))
    }

    fn over_postgres(store: postgres::Store, state_dir: &Path) -> Db {
        Db {
            backend: Backend::Postgres(Box::new(PgDb {
                shown: store.describe(),
                store,
                state_dir: state_dir.to_path_buf(),
            })),
        }
    }

    /// The SQLite file, when the database is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(db) => Some(db.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Where the database is, for people: the file, or the server and
    /// database (never a password).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(db) => db.path().display().to_string(),
            Backend::Postgres(pg) => pg.shown.clone(),
        }
    }

    /// The store, for reads and single writes that each commit on their
    /// own. Writes that belong together go through [`Db::write`].
    pub fn conn(&self) -> &dyn Executor {
        match &self.backend {
            Backend::Sqlite(db) => db.conn(),
            Backend::Postgres(pg) => pg.store.auto(),
        }
    }

    /// The SQLite connection itself, for tests that set up rows no
    /// operation writes.
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &rusqlite::Connection {
        match &self.backend {
            Backend::Sqlite(db) => db.sqlite(),
            Backend::Postgres(_) => panic!("not a SQLite database"),
        }
    }

    /// Run `f` in one write transaction and commit it (SQLite: `BEGIN
    /// IMMEDIATE`; PostgreSQL: `READ COMMITTED`), then wake this host's
    /// idle workers if a job changed.
    ///
    /// The transaction is rolled back if `f` fails. Keep `f` short: never spawn
    /// a process or make a network call inside it.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&dyn Executor) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match &mut self.backend {
            Backend::Sqlite(db) => db.write(f),
            Backend::Postgres(pg) => {
                let out = pg.store.write(|tx| f(tx))?;
                pg.wake_if_jobs_changed();
                Ok(out)
            }
        }
    }

    /// Run `f` in one read transaction, so it sees a single consistent snapshot.
    pub fn read<T>(
        &mut self,
        f: impl FnOnce(&dyn Executor) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match &mut self.backend {
            Backend::Sqlite(db) => db.read(f),
            Backend::Postgres(pg) => pg.store.read(|tx| f(tx)),
        }
    }

    /// The schema version of this database.
    pub fn schema_version(&mut self) -> anyhow::Result<i64> {
        match &mut self.backend {
            Backend::Sqlite(db) => db.schema_version(),
            Backend::Postgres(pg) => pg.store.schema_version(),
        }
    }
}

/// How to treat a database file that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Create it (`orch init`).
    Create,
    /// Refuse with "run `orch init` first".
    Refuse,
}

/// A new database in a temporary directory, for unit tests (the directory
/// goes when the first value is dropped).
#[cfg(test)]
pub(crate) fn test_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(
        &dir.path().join("orch.db"),
        Duration::from_secs(5),
        Missing::Create,
    )
    .expect("open");
    (dir, db)
}

/// How a contract test adds a job to the store under test, until jobs have
/// their own interface: `add_job(task_id, agent, status, claim_token)`
/// returns the new job's id.
#[cfg(test)]
pub(crate) type AddJob<'a> = &'a dyn Fn(i64, &str, &str, Option<&str>) -> i64;

/// Current time in epoch seconds: the one clock every process uses.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
