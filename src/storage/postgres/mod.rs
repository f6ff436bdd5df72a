//! The PostgreSQL backend: one queue shared by workers on several hosts
//! (issue #19, docs/scaling.md). Every concept's interface is implemented
//! for [`Tx`], a transaction of a [`Store`], with its SQL kept here, one
//! module per concept, as the SQLite backend does in `storage::sqlite`.
//!
//! **Connections.** [`Store::open`] connects with the synchronous `postgres`
//! client (orch's processes are short-lived; it runs its own small runtime),
//! a 5 s connect timeout, and TCP keepalives on both ends. The client probes
//! an idle connection after 10 s, every 5 s, 3 times, and gives up on
//! unacknowledged data after 30 s (`TCP_USER_TIMEOUT`), so a worker notices a
//! dead server. The same values are sent as the session's server settings
//! (`-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5
//! -c tcp_keepalives_count=3 -c tcp_user_timeout=30000`), and that is the
//! side that matters for correctness: a worker's liveness will be a session
//! advisory lock, which the server holds until it notices the session is
//! gone. A host that dies without closing its sockets (power loss, network
//! partition) therefore loses its sessions, and their advisory locks, within
//! about idle + interval × count = 10 + 5 × 3 = 25 s, or 30 s
//! (`tcp_user_timeout`) when the server was sending data the dead host never
//! acknowledged. Options given in the URL come after these and win.
//! `application_name` is `orch` unless the URL names one.
//!
//! **Transactions.** [`Store::write`] runs its closure in a `READ COMMITTED`
//! transaction, committed when the closure returns `Ok` and rolled back
//! otherwise; [`Store::read`] in a `REPEATABLE READ, READ ONLY` one, so a
//! view sees one snapshot. The client needs `&mut` for every statement
//! while the storage traits take `&self`, so [`Tx`] keeps the transaction
//! in a `RefCell`; no statement runs while another is borrowed.
//! [`Tx::savepoint`] runs a closure as one unit inside a `Tx` (a savepoint
//! and a `Tx` of its own): what `storage::Transact` will be on PostgreSQL
//! once `Tx` implements every concept, and so `storage::Executor`.
//!
//! **Types.** The client is strict: `BIGINT` binds and reads as `i64`,
//! `BOOLEAN` as `bool`, `DOUBLE PRECISION` as `f64`, `BYTEA` as bytes. Every
//! integer column is `BIGINT` (see [`schema`]), so every integer is bound
//! as `i64`, and a parameter whose type the server cannot infer is cast in
//! the SQL (`$4::bigint`).
//!
//! TLS is not set up yet (`NoTls`): use a trusted network, a Unix socket or
//! a TLS-terminating proxy until it is.

mod counters;
mod deliveries;
mod deploys;
mod jobs;
mod leases;
mod ledger;
mod local_tracker;
mod outbox;
mod post_deploys;
pub mod schema;
mod tasks;
mod views;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use postgres::types::{FromSql, ToSql};
use postgres::{Client, Config, IsolationLevel, NoTls, Row, Transaction};

use crate::storage::{Error, Result};

/// How long connecting may take before it fails (as busy: retry later).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server-side session settings that bound how long the server keeps
/// the session of a dead client host (module doc): keepalive probes after
/// 10 s idle, every 5 s, 3 of them; unacknowledged data for at most 30 s.
pub const SERVER_OPTIONS: &str = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 \
     -c tcp_keepalives_count=3 -c tcp_user_timeout=30000";

/// The connection settings orch uses for `url` (`postgres://…` or
/// `key=value` form): [`CONNECT_TIMEOUT`] unless the URL sets one, client
/// keepalives, [`SERVER_OPTIONS`] before the URL's own options, and
/// `application_name=orch` unless the URL names one.
pub fn config(url: &str) -> Result<Config> {
    let mut config: Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{SERVER_OPTIONS} {own}"),
        _ => SERVER_OPTIONS.to_owned(),
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("orch");
    }
    Ok(config)
}

/// Where `config` points, for messages: hosts, ports and database, never
/// the password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "PostgreSQL at {} port {} database {}",
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("(default)")
    )
}

/// An open, migrated orch database on PostgreSQL: one session.
pub struct Store {
    /// The session, outside any transaction: statements through it
    /// autocommit one by one, as SQLite's connection does outside
    /// `Db::write`.
    auto: Tx<'static>,
    /// Set by a statement that inserts or updates a job (every `Tx` of
    /// this store shares it).
    jobs_changed: Arc<AtomicBool>,
    /// [`describe`] of the settings it was opened with.
    shown: String,
}

/// Connect with `config`, saying where on failure.
fn connect(config: &Config) -> anyhow::Result<Client> {
    config
        .connect(NoTls)
        .map_err(Error::from)
        .with_context(|| format!("connecting to {}", describe(config)))
}

impl Store {
    /// Connect to the database at `url` and bring its schema forward
    /// ([`schema::prepare`]); a schema newer than this binary is refused.
    pub fn open(url: &str) -> anyhow::Result<Store> {
        let config = config(url).context("reading the PostgreSQL URL")?;
        Store::open_config(&config)
    }

    /// Connect to the database at `url` as orch's commands do: `create`
    /// lets a database with no orch schema yet be given one (`orch init`),
    /// else it is refused; `read_only` makes every transaction of the
    /// session read-only (the server refuses a write) and migrates nothing.
    pub fn open_with(url: &str, create: bool, read_only: bool) -> anyhow::Result<Store> {
        let mut config = config(url).context("reading the PostgreSQL URL")?;
        let shown = describe(&config);
        if read_only {
            let options = format!(
                "{} -c default_transaction_read_only=on",
                config.get_options().unwrap_or_default()
            );
            config.options(&options);
        }
        let mut client = connect(&config)?;
        let version = schema::version(&mut client)
            .with_context(|| format!("opening {shown}"))?
            .unwrap_or(0);
        if version == 0 && !create {
            return Err(crate::error::OrchError::NotFound(format!(
                "{shown} holds no orch schema (run `orch init` first)"
            ))
            .into());
        }
        if read_only {
            let latest = schema::latest();
            if version != latest {
                anyhow::bail!(
                    "database schema version {version} is not this orch's ({latest}); run `orch init` with the same orch to migrate it"
                );
            }
        } else {
            schema::prepare(&mut client).with_context(|| format!("opening {shown}"))?;
        }
        Ok(Store::over(client, shown))
    }

    /// [`Store::open`] with settings already made by [`config`].
    pub fn open_config(config: &Config) -> anyhow::Result<Store> {
        let mut client = connect(config)?;
        schema::prepare(&mut client).with_context(|| format!("opening {}", describe(config)))?;
        Ok(Store::over(client, describe(config)))
    }

    fn over(client: Client, shown: String) -> Store {
        let jobs_changed = Arc::new(AtomicBool::new(false));
        Store {
            auto: Tx {
                session: RefCell::new(Session::Client(Box::new(client))),
                jobs_changed: Arc::clone(&jobs_changed),
            },
            jobs_changed,
            shown,
        }
    }

    /// Where this store is, for messages: server, port and database, never
    /// the password.
    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    /// Whether a statement inserted or updated a job since the last call:
    /// the analogue of SQLite's update hook, so a commit that made work
    /// claimable wakes this host's idle workers.
    pub fn take_jobs_changed(&self) -> bool {
        self.jobs_changed.swap(false, Ordering::Relaxed)
    }

    /// The session, for statements that each commit on their own.
    pub fn auto(&self) -> &Tx<'static> {
        &self.auto
    }

    fn client(&mut self) -> &mut Client {
        match self.auto.session.get_mut() {
            Session::Client(client) => client,
            Session::Transaction(_) => unreachable!("a store's own session is never a transaction"),
        }
    }

    /// Run `f` in one `READ COMMITTED` transaction and commit it; roll it
    /// back if `f` fails. Keep `f` short: never spawn a process or make a
    /// network call inside it (a claim's lock is held until it ends).
    pub fn write<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let jobs_changed = Arc::clone(&self.jobs_changed);
        let tx = self
            .client()
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .map_err(Error::from)?;
        Tx::run(tx, jobs_changed, f)
    }

    /// Run `f` in one `REPEATABLE READ, READ ONLY` transaction, so it sees a
    /// single consistent snapshot and cannot change a row.
    pub fn read<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let jobs_changed = Arc::clone(&self.jobs_changed);
        let tx = self
            .client()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(Error::from)?;
        Tx::run(tx, jobs_changed, f)
    }

    /// The schema version of this database.
    pub fn schema_version(&mut self) -> anyhow::Result<i64> {
        Ok(schema::version(self.client())?.unwrap_or(0))
    }
}

/// What a [`Tx`] runs its statements on.
enum Session<'a> {
    /// A session outside any transaction (each statement commits).
    Client(Box<Client>),
    /// An open transaction (or savepoint).
    Transaction(Transaction<'a>),
}

/// Run `$call` on whichever client `$session` holds.
macro_rules! on_session {
    ($session:expr, |$c:ident| $call:expr) => {
        match &mut *$session.borrow_mut() {
            Session::Client($c) => $call,
            Session::Transaction($c) => $call,
        }
    };
}

/// A transaction of a [`Store`], or its session outside one: what every
/// concept's interface is implemented for on PostgreSQL.
pub struct Tx<'a> {
    session: RefCell<Session<'a>>,
    /// The store's flag: a job was inserted or updated.
    jobs_changed: Arc<AtomicBool>,
}

impl<'a> Tx<'a> {
    /// Run `f` in `tx`, then commit; a failure of `f` rolls back (dropping
    /// the transaction does).
    fn run<T>(
        tx: Transaction<'a>,
        jobs_changed: Arc<AtomicBool>,
        f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let tx = Tx {
            session: RefCell::new(Session::Transaction(tx)),
            jobs_changed,
        };
        let out = f(&tx)?;
        match tx.session.into_inner() {
            Session::Transaction(tx) => tx.commit().map_err(Error::from)?,
            Session::Client(_) => {}
        }
        Ok(out)
    }

    /// Run `f` as one unit: in a new transaction when this is a session
    /// outside one, else in a savepoint with a new [`Tx`] wrapping it,
    /// released when `f` returns `Ok` and rolled back to (the outer
    /// transaction goes on, its earlier work kept) when `f` fails. This is
    /// `storage::Transact` on PostgreSQL. While `f` runs, this `Tx` is
    /// borrowed: `f` works through the `Tx` it is given.
    pub fn savepoint<T>(&self, f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut session = self.session.borrow_mut();
        let inner = match &mut *session {
            Session::Client(client) => client.transaction(),
            Session::Transaction(tx) => tx.transaction(),
        }
        .map_err(Error::from)?;
        Tx::run(inner, Arc::clone(&self.jobs_changed), f)
    }

    /// Note a statement that inserted or updated a job (see
    /// [`Store::take_jobs_changed`]): `changed` says whether it touched a
    /// row (a count above 0, or a row back from `RETURNING`). As SQLite's
    /// update hook fires per row, a statement that matched nothing — an
    /// empty claim — is no change: its wake-up would start an idle worker
    /// whose empty claim wakes the next, for ever.
    fn note(&self, sql: &str, changed: bool) {
        let sql = sql.trim_start();
        if changed && (sql.starts_with("UPDATE jobs") || sql.starts_with("INSERT INTO jobs")) {
            self.jobs_changed.store(true, Ordering::Relaxed);
        }
    }

    /// Run one statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let n = on_session!(self.session, |c| c.execute(sql, params))?;
        self.note(sql, n > 0);
        Ok(n)
    }

    /// Run one query; all its rows.
    pub(crate) fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let rows = on_session!(self.session, |c| c.query(sql, params))?;
        self.note(sql, !rows.is_empty());
        Ok(rows)
    }

    /// Run one query of at most one row.
    pub(crate) fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let row = on_session!(self.session, |c| c.query_opt(sql, params))?;
        self.note(sql, row.is_some());
        Ok(row)
    }

    /// Run one query of exactly one row.
    pub(crate) fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let row = on_session!(self.session, |c| c.query_one(sql, params))?;
        self.note(sql, true);
        Ok(row)
    }

    /// Run statements without parameters (test fixtures).
    #[cfg(test)]
    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        Ok(on_session!(self.session, |c| c.batch_execute(sql))?)
    }
}

/// Column `idx` of `row` as a `T`, failing (not panicking) on a type the
/// column does not hold.
pub(crate) fn get<'r, T: FromSql<'r>>(row: &'r Row, idx: usize) -> Result<T> {
    Ok(row.try_get(idx)?)
}

#[cfg(test)]
mod fixtures;

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;

impl crate::storage::Transact for Tx<'_> {
    fn transact(
        &self,
        f: &mut dyn FnMut(&dyn crate::storage::Executor) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.savepoint(|tx| f(tx))
    }
}
