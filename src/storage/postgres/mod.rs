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
mod jobs;
mod leases;
mod ledger;
mod outbox;
pub mod schema;
mod views;

use std::cell::RefCell;
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
    client: Client,
}

impl Store {
    /// Connect to the database at `url` and bring its schema forward
    /// ([`schema::prepare`]); a schema newer than this binary is refused.
    pub fn open(url: &str) -> anyhow::Result<Store> {
        let config = config(url).context("reading the PostgreSQL URL")?;
        Store::open_config(&config)
    }

    /// [`Store::open`] with settings already made by [`config`].
    pub fn open_config(config: &Config) -> anyhow::Result<Store> {
        let client = config
            .connect(NoTls)
            .map_err(Error::from)
            .with_context(|| format!("connecting to {}", describe(config)))?;
        let mut store = Store { client };
        schema::prepare(&mut store.client)
            .with_context(|| format!("opening {}", describe(config)))?;
        Ok(store)
    }

    /// Run `f` in one `READ COMMITTED` transaction and commit it; roll it
    /// back if `f` fails. Keep `f` short: never spawn a process or make a
    /// network call inside it (a claim's lock is held until it ends).
    pub fn write<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .map_err(Error::from)?;
        Tx::run(tx, f)
    }

    /// Run `f` in one `REPEATABLE READ, READ ONLY` transaction, so it sees a
    /// single consistent snapshot and cannot change a row.
    pub fn read<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(Error::from)?;
        Tx::run(tx, f)
    }

    /// The schema version of this database.
    pub fn schema_version(&mut self) -> anyhow::Result<i64> {
        Ok(schema::version(&mut self.client)?.unwrap_or(0))
    }
}

/// A transaction of a [`Store`]: what every concept's interface is
/// implemented for on PostgreSQL.
pub struct Tx<'a> {
    tx: RefCell<Transaction<'a>>,
}

impl<'a> Tx<'a> {
    /// Run `f` in `tx`, then commit; a failure of `f` rolls back (dropping
    /// the transaction does).
    fn run<T>(
        tx: Transaction<'a>,
        f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let tx = Tx {
            tx: RefCell::new(tx),
        };
        let out = f(&tx)?;
        tx.tx.into_inner().commit().map_err(Error::from)?;
        Ok(out)
    }

    /// Run `f` as one unit inside this transaction: in a savepoint, with a
    /// new [`Tx`] wrapping it, released when `f` returns `Ok` and rolled
    /// back to (this transaction goes on, its earlier work kept) when `f`
    /// fails, a failed statement's error included. This is
    /// `storage::Transact` on PostgreSQL: a `Tx` is always inside a
    /// transaction already, so "one transaction" is a nested one. While `f`
    /// runs, this `Tx` is borrowed: `f` works through the `Tx` it is given.
    pub fn savepoint<T>(&self, f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut outer = self.tx.borrow_mut();
        let inner = outer.transaction().map_err(Error::from)?;
        Tx::run(inner, f)
    }

    /// Run one statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        Ok(self.tx.borrow_mut().execute(sql, params)?)
    }

    /// Run one query; all its rows.
    pub(crate) fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        Ok(self.tx.borrow_mut().query(sql, params)?)
    }

    /// Run one query of at most one row.
    pub(crate) fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        Ok(self.tx.borrow_mut().query_opt(sql, params)?)
    }

    /// Run one query of exactly one row.
    pub(crate) fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        Ok(self.tx.borrow_mut().query_one(sql, params)?)
    }

    /// Run statements without parameters (test fixtures).
    #[cfg(test)]
    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.tx.borrow_mut().batch_execute(sql)?)
    }
}

/// Column `idx` of `row` as a `T`, failing (not panicking) on a type the
/// column does not hold.
pub(crate) fn get<'r, T: FromSql<'r>>(row: &'r Row, idx: usize) -> Result<T> {
    Ok(row.try_get(idx)?)
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
