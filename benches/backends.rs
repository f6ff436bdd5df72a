//! Backend benchmark: claims per second on PostgreSQL against SQLite, with 8
//! and 32 concurrent claimers, in one run (docs/scaling.md).
//!
//! Run it with `cargo bench --bench backends`. It needs a PostgreSQL server:
//! `BENCH_PG_URL` (or `ORCH_TEST_PG_URL`) names one, else the bench starts
//! the throwaway server of `scripts/pg-test-server.sh`. For each claimer
//! count it drains `BENCH_JOBS` (2,000) freshly seeded jobs with that many
//! concurrent loops of the real `orch claim` binary, once on a SQLite file
//! and once on a fresh PostgreSQL database (`ORCH_DB_URL`), the two drains
//! alternating so both see the same machine, then checks exactly-once: as
//! many successful claims as jobs, every job `running` with `attempts = 1`
//! and a claim token of its own.
//!
//! Each `orch claim` is a whole short-lived process, as under systemd: on
//! PostgreSQL it connects (TCP, startup, authentication), reads the schema
//! version, takes its owner lock (a session advisory lock on a second
//! session) and claims under the claim lock. The figures are what a worker
//! host sees, not what the server can do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the jobs live for one drain.
enum Store {
    Sqlite(PathBuf),
    Postgres {
        url: String,
        admin: String,
        name: String,
    },
}

impl Store {
    fn label(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "SQLite    ",
            Store::Postgres { .. } => "PostgreSQL",
        }
    }
}

/// An `orch` command for `state_dir` on `store`, with open gates.
fn orch(state_dir: &Path, store: &Store) -> Command {
    let mut c = Command::new(ORCH);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCH_") {
            c.env_remove(k);
        }
    }
    c.env("ORCH_STATE_DIR", state_dir)
        .env("ORCH_MAX_CONCURRENCY", "1000000")
        .env("ORCH_SERIAL_GATE_ENABLED", "false")
        .env("ORCH_TASK_DEPS_ENABLED", "false")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Store::Postgres { url, .. } = store {
        c.env("ORCH_DB_URL", url);
    }
    c
}

/// The PostgreSQL server to use: the URL given, or the throwaway one.
fn server_url() -> String {
    for var in ["BENCH_PG_URL", "ORCH_TEST_PG_URL"] {
        if let Ok(url) = std::env::var(var)
            && !url.is_empty()
        {
            return url;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-server.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/pg-test-server.sh");
    assert!(out.status.success(), "could not start a PostgreSQL server");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A fresh database on the server at `admin`, and its URL.
fn fresh_database(admin: &str, n: u64) -> Store {
    let name = format!("orch_bench_{}_{n}", std::process::id());
    let mut client = postgres::Client::connect(admin, postgres::NoTls).expect("connect");
    // One statement per call: a multi-statement string is one transaction,
    // and neither statement may run inside one.
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .expect("drop database");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let url = match admin.rfind('/') {
        Some(i) if admin.starts_with("postgres") && i > "postgres://".len() => {
            format!("{}/{name}", &admin[..i])
        }
        _ => panic!("BENCH_PG_URL must be a postgres:// URL ending in /<database>"),
    };
    Store::Postgres {
        url,
        admin: admin.to_owned(),
        name,
    }
}

fn init(state: &Path, store: &Store) {
    let ok = orch(state, store)
        .arg("init")
        .status()
        .expect("spawn orch init")
        .success();
    assert!(ok, "orch init failed");
}

/// Enqueue `n` jobs in one transaction.
fn seed(store: &Store, n: u64) {
    match store {
        Store::Sqlite(db) => {
            let mut conn = rusqlite::Connection::open(db).expect("open database");
            let tx = conn.transaction().expect("begin");
            tx.execute(
                "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?1)
                 INSERT INTO jobs (agent, repo, created_at)
                 SELECT 'developer', 'repo' || (i % 16), 0 FROM g",
                [n as i64],
            )
            .expect("seed");
            tx.commit().expect("commit");
        }
        Store::Postgres { url, .. } => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
            client
                .execute(
                    "INSERT INTO jobs (agent, repo, created_at)
                     SELECT 'developer', 'repo' || (g % 16), 0 FROM generate_series(1, $1::bigint) g",
                    &[&(n as i64)],
                )
                .expect("seed");
        }
    }
}

/// (running jobs with attempts = 1, distinct claim tokens, queued jobs).
fn census(store: &Store) -> (i64, i64, i64) {
    let sql = "SELECT (SELECT count(*) FROM jobs WHERE status = 'running' AND attempts = 1),
                      (SELECT count(DISTINCT claim_token) FROM jobs WHERE status = 'running'),
                      (SELECT count(*) FROM jobs WHERE status = 'queued')";
    match store {
        Store::Sqlite(db) => rusqlite::Connection::open(db)
            .expect("open")
            .query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("census"),
        Store::Postgres { url, .. } => {
            let row = postgres::Client::connect(url, postgres::NoTls)
                .expect("connect")
                .query_one(sql, &[])
                .expect("census");
            (row.get(0), row.get(1), row.get(2))
        }
    }
}

/// Drain `jobs` with `claimers` concurrent `orch claim` loops; claims/s.
fn drain(state: &Path, store: &Store, jobs: u64, claimers: u64) -> f64 {
    let _ = std::fs::remove_dir_all(state);
    init(state, store);
    seed(store, jobs);
    let ok = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..claimers {
            s.spawn(|| {
                loop {
                    let status = orch(state, store)
                        .arg("claim")
                        .status()
                        .expect("spawn orch claim");
                    match status.code() {
                        Some(0) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(3) => break,
                        other => panic!("orch claim exited with {other:?}"),
                    }
                }
            });
        }
    });
    let took = start.elapsed();
    let claims = ok.load(Ordering::Relaxed);
    let rate = claims as f64 / took.as_secs_f64();
    let (once, tokens, queued) = census(store);
    let exact = claims == jobs && once == jobs as i64 && tokens == jobs as i64 && queued == 0;
    println!(
        "  {} {claimers:>2} claimers: {claims} claims in {:.2} s = {rate:>5.0} claims/s; exactly-once {}",
        store.label(),
        took.as_secs_f64(),
        if exact { "held" } else { "VIOLATED" }
    );
    assert!(
        exact,
        "exactly-once violated: {claims} claims, {once} running once, {tokens} tokens, {queued} queued"
    );
    rate
}

fn drop_database(store: &Store) {
    if let Store::Postgres { admin, name, .. } = store {
        let dropped = postgres::Client::connect(admin, postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop {name}: {e}");
        }
    }
}

fn main() {
    let jobs = env_num("BENCH_JOBS", 2000);
    let admin = server_url();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "orch backends bench: {jobs} jobs per drain, {} CPUs, binary {ORCH}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let mut rows = Vec::new();
    for (round, claimers) in [8u64, 32].into_iter().enumerate() {
        let sqlite_state = dir.path().join(format!("sqlite-{claimers}"));
        let sqlite = Store::Sqlite(sqlite_state.join("orch.db"));
        let pg_state = dir.path().join(format!("pg-{claimers}"));
        let pg = fresh_database(&admin, round as u64);
        let on_sqlite = drain(&sqlite_state, &sqlite, jobs, claimers);
        let on_pg = drain(&pg_state, &pg, jobs, claimers);
        drop_database(&pg);
        rows.push((claimers, on_sqlite, on_pg));
    }
    println!("claimers | SQLite claims/s | PostgreSQL claims/s | PostgreSQL / SQLite");
    for (claimers, on_sqlite, on_pg) in rows {
        println!(
            "{claimers:>8} | {on_sqlite:>15.0} | {on_pg:>19.0} | {:>19.2}",
            on_pg / on_sqlite
        );
    }
}
