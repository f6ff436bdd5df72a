//! Owner liveness across hosts: PostgreSQL session advisory locks.
//!
//! A lock file proves an owner's life only to processes on its own host.
//! When workers on several hosts share one queue, the proof has to live
//! where all of them can see it, and a session advisory lock is the exact
//! analogue of the file lock (docs/scaling.md): a worker opens a connection
//! of its own, takes `pg_try_advisory_lock(key)` on it before it claims, and
//! keeps that session open for the job's whole run; the key, as 16 hex
//! digits, is the job's `claim_token`. The server drops the lock with the
//! session: at once when the owner process dies on a live host (its kernel
//! closes the socket, the idle backend reads end-of-file and exits), and
//! within about `tcp_keepalives_idle + tcp_keepalives_interval ×
//! tcp_keepalives_count` = 10 + 5 × 3 = 25 s when the owner's host dies or
//! drops off the network (30 s, `tcp_user_timeout`, when data sent to it is
//! unacknowledged). Anyone can test a lock without blocking, and without
//! taking it, by reading `pg_locks` from a connection of their own.
//!
//! A probe or a census that cannot reach the database returns the error: it
//! never answers "dead", so a reaper that cannot ask requeues nothing.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use postgres::{Client, NoTls};

use super::lock::Liveness;

/// Length in hex digits of an advisory token: the 64-bit lock key.
const TOKEN_LEN: usize = 16;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server side of the bound on a dead host's lock: the server probes an
/// idle holder's connection after 10 s, then every 5 s, and drops the session
/// after 3 unanswered probes (25 s), or once data it sent stays
/// unacknowledged for 30 s. `idle_session_timeout=0` because a holder's
/// session is idle by design for the whole run: a server configured to end
/// idle sessions must not end this one (PostgreSQL 14 or later).
const HOLDER_OPTIONS: &str = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 \
     -c tcp_keepalives_count=3 -c tcp_user_timeout=30000 -c idle_session_timeout=0";

/// A probe reads `pg_locks`, which takes no lock it could wait on; the
/// timeout only bounds a server that has stopped answering.
const PROBER_OPTIONS: &str = "-c statement_timeout=5000";

/// The advisory locks of this database taken with one 64-bit key
/// (`objsubid = 1`; the two-key form has 2), held rather than waited for.
const HELD_KEYS: &str = "locktype = 'advisory' AND granted AND objsubid = 1 \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The 64-bit key of a lock as `pg_locks` splits it: high half in `classid`,
/// low half in `objid`.
const KEY: &str = "((classid::bigint << 32) | objid::bigint)";

/// The longest `application_name` the server keeps (`NAMEDATALEN - 1`);
/// longer names are cut, which would make a holder's name ambiguous.
const MAX_APPLICATION_NAME: usize = 63;

/// The PostgreSQL database whose session advisory locks prove owners alive,
/// with this process's connection for asking about them (opened on first
/// use, reused, reopened after it fails).
pub struct Advisory {
    config: postgres::Config,
    prober: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Advisory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // postgres::Config's Debug redacts the password.
        f.debug_struct("Advisory")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A dedicated session holding one advisory lock: the owner's proof of life
/// for as long as it stays open.
pub struct Session {
    client: Client,
    key: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &token_of(self.key))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The claim token this session's lock stands for.
    pub fn token(&self) -> String {
        token_of(self.key)
    }

    /// Unlock, then close the session. Errors are ignored: a session that
    /// ends, however it ends, releases its lock.
    pub fn release(mut self) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key]);
        let _ = self.client.close();
    }
}

impl Advisory {
    /// The database at `url` (a `postgresql://` URL or a `key=value`
    /// connection string). Nothing is opened until it is used.
    pub fn new(url: &str) -> anyhow::Result<Advisory> {
        let config = url
            .parse::<postgres::Config>()
            .context("parsing the PostgreSQL URL for owner locks")?;
        Ok(Advisory {
            config,
            prober: Mutex::new(None),
        })
    }

    /// Open a dedicated session and take a fresh advisory lock on it.
    pub fn acquire(&self) -> anyhow::Result<Session> {
        let name = holder_name(std::process::id()).unwrap_or_else(|| "orch".to_owned());
        let config = self.connection(HOLDER_OPTIONS, &name);
        let mut client = config
            .connect(NoTls)
            .context("connecting to PostgreSQL to hold an owner lock")?;
        // A taken key is astronomically unlikely; a few tries bound a server
        // that somehow refuses every one.
        for _ in 0..8 {
            let key = random_key().context("reading /dev/urandom")?;
            let taken: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .and_then(|row| row.try_get(0))
                .context("taking an advisory lock")?;
            if taken {
                return Ok(Session { client, key });
            }
        }
        anyhow::bail!("PostgreSQL refused 8 fresh advisory lock keys in a row")
    }

    /// Whether some session holds the lock of `token`. A token that is not
    /// 16 lowercase hex digits names no lock: its owner is dead.
    pub fn probe(&self, token: &str) -> anyhow::Result<Liveness> {
        let Some(key) = key_of(token) else {
            return Ok(Liveness::Dead);
        };
        let sql =
            format!("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE {HELD_KEYS} AND {KEY} = $1)");
        let held: bool = self
            .ask(|c| c.query_one(&sql, &[&key])?.try_get(0))
            .context("probing an owner's advisory lock")?;
        Ok(if held {
            Liveness::Alive
        } else {
            Liveness::Dead
        })
    }

    /// The key of every advisory lock held in this database.
    pub fn held_keys(&self) -> anyhow::Result<HashSet<i64>> {
        let sql = format!("SELECT DISTINCT {KEY} FROM pg_locks WHERE {HELD_KEYS}");
        self.ask(|c| c.query(&sql, &[])?.iter().map(|r| r.try_get(0)).collect())
            .context("listing the held advisory locks")
    }

    /// Whether the session holding the lock of `token` was opened by process
    /// `pid` of this host: its `application_name` is ours for that pid. A
    /// pid on another host is never ours to signal, whatever its number.
    pub fn pid_holds(&self, token: &str, pid: i64) -> anyhow::Result<bool> {
        let (Some(key), Ok(pid)) = (key_of(token), u32::try_from(pid)) else {
            return Ok(false);
        };
        // Without our host's name we cannot tell our sessions from another
        // host's; a name the server cuts could name another pid.
        let Some(name) = holder_name(pid).filter(|n| n.len() <= MAX_APPLICATION_NAME) else {
            return Ok(false);
        };
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $2 \
             AND pid IN (SELECT pid FROM pg_locks WHERE {HELD_KEYS} AND {KEY} = $1))"
        );
        self.ask(|c| c.query_one(&sql, &[&key, &name])?.try_get(0))
            .context("asking which process holds an advisory lock")
    }

    /// Run `question` on the prober connection, opening it first if there is
    /// none or it has closed; a failed question drops the connection so the
    /// next one starts afresh.
    fn ask<T>(
        &self,
        question: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> anyhow::Result<T> {
        let mut slot = self.prober.lock().unwrap_or_else(PoisonError::into_inner);
        let mut client = match slot.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let host = hostname().unwrap_or_default();
                let name = format!("orch-probe:{host}:{}", std::process::id());
                self.connection(PROBER_OPTIONS, &name)
                    .connect(NoTls)
                    .context("connecting to PostgreSQL to probe owner locks")?
            }
        };
        let answer = question(&mut client)?;
        *slot = Some(client);
        Ok(answer)
    }

    /// The configured connection with our timeouts, keepalives, server
    /// `options` (after any the URL gave) and `application_name`.
    fn connection(&self, options: &str, application_name: &str) -> postgres::Config {
        let mut config = self.config.clone();
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {options}"),
            _ => options.to_owned(),
        };
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30))
            .options(&options)
            .application_name(application_name);
        config
    }
}

/// The 64-bit lock key a token stands for; `None` unless the token is 16
/// lowercase hex digits (the only form [`token_of`] writes).
pub fn key_of(token: &str) -> Option<i64> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if token.len() != TOKEN_LEN || !token.bytes().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(token, 16).ok().map(|k| k as i64)
}

/// The token of a lock key: 16 lowercase hex digits.
pub fn token_of(key: i64) -> String {
    format!("{:016x}", key as u64)
}

/// A random lock key.
fn random_key() -> std::io::Result<i64> {
    Ok(i64::from_le_bytes(super::random_bytes::<8>()?))
}

/// The `application_name` of the session process `pid` of this host holds
/// its lock on, `orch:<hostname>:<pid>`; `None` if this host's name cannot
/// be read.
fn holder_name(pid: u32) -> Option<String> {
    hostname().map(|host| format!("orch:{host}:{pid}"))
}

/// This host's name, if it can be read and is not empty.
fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
}

/// The URL of the PostgreSQL server for tests, from `ORCH_TEST_PG_URL`, or
/// `None` after a loud skip; with `ORCH_TEST_PG_REQUIRED=1` a missing URL
/// fails the test instead.
#[cfg(test)]
pub(crate) fn test_server() -> Option<String> {
    match std::env::var("ORCH_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert_ne!(
                std::env::var("ORCH_TEST_PG_REQUIRED").as_deref(),
                Ok("1"),
                "ORCH_TEST_PG_REQUIRED=1 but ORCH_TEST_PG_URL is not set"
            );
            eprintln!(
                "SKIPPED: no PostgreSQL server for the advisory lock tests; \
                 set ORCH_TEST_PG_URL=postgresql://… to run them"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
