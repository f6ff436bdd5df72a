//! Queue benchmark: how close `orch` gets to the cost of spawning a process.
//!
//! Run it with `cargo bench --bench queue` (a release build; Cargo builds the
//! `orch` binary first and hands its path over in `CARGO_BIN_EXE_orch`, so the
//! bench builds nothing itself). It prints, in one run:
//!
//! - (a) `BENCH_WORKERS` (8) concurrent loops of `orch claim` draining
//!   `BENCH_JOBS` (2,000) queued jobs → claims/s, against the same 8 loops
//!   spawning `/bin/true` → the ratio (goal ≥ 0.5). Exactly-once is checked
//!   afterwards: as many successful claims as jobs, every job `running` with
//!   `attempts = 1` and its own claim token, nothing left `queued`. The same
//!   drain by the floor (this bench re-executed as a process that only opens
//!   the database and claims with one `UPDATE`) says how much of the gap is
//!   orch's and how much any process that claims from SQLite pays.
//! - (b) `orch status` wall time per call (`BENCH_STATUS_CALLS`, 100 calls, each
//!   alternating with a `/bin/true` spawn so both see the same machine) on a
//!   small queue and on the drained one (2,000 running jobs whose owners are
//!   gone), against one `/bin/true` spawn → the ratios (goal ≤ 5×).
//!
//! The jobs are seeded with one SQL transaction on the database that
//! `orch init` created (enqueueing 2,000 jobs through `orch job enqueue` would
//! measure the seeding, not the claims). The gates are opened through the
//! environment exactly as an operator would: `ORCH_MAX_CONCURRENCY`,
//! `ORCH_SERIAL_GATE_ENABLED=false`, `ORCH_TASK_DEPS_ENABLED=false`.
//!
//! Figures measured on the reference machine are in docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");
const NOOP: &str = "/bin/true";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An `orch` command for `state_dir`, with a clean `ORCH_*` environment and open gates.
fn orch(state_dir: &Path) -> Command {
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
    c
}

fn init(state_dir: &Path) {
    let ok = orch(state_dir)
        .arg("init")
        .status()
        .expect("spawn orch init")
        .success();
    assert!(ok, "orch init failed");
}

/// Enqueue `n` jobs in one transaction.
fn seed(db: &Path, n: u64) {
    let mut conn = rusqlite::Connection::open(db).expect("open database");
    let tx = conn.transaction().expect("begin");
    {
        let mut stmt = tx
            .prepare("INSERT INTO jobs (agent, repo, created_at) VALUES ('developer', ?1, 0)")
            .expect("prepare");
        for i in 0..n {
            stmt.execute([format!("repo{}", i % 16)]).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// `workers` loops, each running `make()` until it exits with 3 (nothing to
/// do) or, when `per_worker` is set, that many times. Returns (successes, time).
fn race(
    workers: u64,
    per_worker: Option<u64>,
    make: &(dyn Fn() -> Command + Sync),
) -> (u64, Duration) {
    let ok = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut i = 0;
                loop {
                    if per_worker.is_some_and(|n| i >= n) {
                        break;
                    }
                    i += 1;
                    let status = make().status().expect("spawn");
                    match status.code() {
                        Some(0) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(3) => break,
                        other => panic!("unexpected exit status {other:?}"),
                    }
                }
            });
        }
    });
    (ok.load(Ordering::Relaxed), start.elapsed())
}

/// Median wall time of `a` and of `b`, run alternately so that both see the
/// same machine (a shared VM's speed drifts by tens of percent over seconds).
fn paired(calls: u64, a: &dyn Fn() -> Command, b: &dyn Fn() -> Command) -> (Duration, Duration) {
    let time = |make: &dyn Fn() -> Command| {
        let start = Instant::now();
        let ok = make().status().expect("spawn").success();
        assert!(ok, "command failed");
        start.elapsed()
    };
    let (mut ta, mut tb): (Vec<Duration>, Vec<Duration>) =
        (0..calls.max(1)).map(|_| (time(a), time(b))).unzip();
    ta.sort();
    tb.sort();
    (ta[ta.len() / 2], tb[tb.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verify_exactly_once(db: &Path, n: u64, claims: u64) {
    let conn = rusqlite::Connection::open(db).expect("open database");
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    let running = q("SELECT count(*) FROM jobs WHERE status = 'running'");
    let queued = q("SELECT count(*) FROM jobs WHERE status = 'queued'");
    let once = q("SELECT count(*) FROM jobs WHERE status = 'running' AND attempts = 1");
    let tokens = q("SELECT count(DISTINCT claim_token) FROM jobs WHERE status = 'running'");
    let n = n as i64;
    println!(
        "  exactly-once: claims {claims}, running {running}, attempts=1 {once}, distinct tokens {tokens}, queued {queued}"
    );
    assert_eq!(claims as i64, n, "successful claims != jobs");
    assert_eq!(running, n, "not every job is running");
    assert_eq!(once, n, "a job was claimed more than once");
    assert_eq!(tokens, n, "two jobs share a claim token");
    assert_eq!(queued, 0, "jobs left queued");
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// Drain `jobs` freshly seeded jobs with `workers` concurrent `orch claim`
/// loops, verify exactly-once, and return claims/s.
/// Who claims in [`drain`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claimer {
    /// `orch claim`.
    Orch,
    /// The floor: this bench binary re-executed as [`floor_claim`].
    Floor,
}

fn drain(state: &Path, jobs: u64, workers: u64, claimer: Claimer) -> f64 {
    let _ = std::fs::remove_dir_all(state);
    init(state);
    let db = state.join("orch.db");
    seed(&db, jobs);
    let floor = std::env::current_exe().expect("this bench's path");
    let (claims, took) = race(workers, None, &|| match claimer {
        Claimer::Orch => {
            let mut c = orch(state);
            c.arg("claim");
            c
        }
        Claimer::Floor => {
            let mut c = Command::new(&floor);
            c.env(FLOOR_DB, &db).stdout(Stdio::null());
            c
        }
    });
    let rate = claims as f64 / took.as_secs_f64();
    println!(
        "  {}  {claims} claims in {:.2} s = {rate:.0} claims/s",
        match claimer {
            Claimer::Orch => "orch claim",
            Claimer::Floor => "floor     ",
        },
        took.as_secs_f64()
    );
    verify_exactly_once(&db, jobs, claims);
    rate
}

/// Set to a database path, this bench binary claims one job there and exits.
const FLOOR_DB: &str = "BENCH_FLOOR_DB";

/// The least any claiming process can do, as a reference for `orch claim`:
/// start (a Rust binary linking SQLite, like orch), open the database, claim
/// the oldest queued job with one `UPDATE` in one `BEGIN IMMEDIATE`
/// transaction, exit (0 claimed, 3 nothing left). No configuration, no
/// command line, no lock file, no gates.
fn floor_claim(db: &std::ffi::OsStr) -> ! {
    let mut conn = rusqlite::Connection::open(db).expect("open database");
    conn.busy_timeout(Duration::from_secs(30))
        .expect("busy timeout");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("begin");
    let claimed = tx
        .execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                 claim_token = ?1, owner_pid = ?2, owner_boot_id = 'bench', started_at = 0
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1)
               AND status = 'queued'",
            rusqlite::params![format!("floor{}", std::process::id()), std::process::id()],
        )
        .expect("claim");
    tx.commit().expect("commit");
    std::process::exit(if claimed == 1 { 0 } else { 3 })
}

fn main() {
    if let Some(db) = std::env::var_os(FLOOR_DB) {
        floor_claim(&db);
    }
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let jobs = env_num("BENCH_JOBS", 2000);
    let workers = env_num("BENCH_WORKERS", 8);
    let status_calls = env_num("BENCH_STATUS_CALLS", 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let state: PathBuf = dir.path().join("state");
    println!(
        "orch queue bench: {jobs} jobs, {workers} concurrent loops, {} CPUs, binary {ORCH}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let noop = || {
        let mut c = Command::new(NOOP);
        c.stdout(Stdio::null());
        c
    };

    // (a) claims/s vs spawns/s.
    println!("(a) drain with {workers} concurrent loops");
    let (spawns, spawn_took) = race(workers, Some(jobs.div_ceil(workers)), &noop);
    let spawns_per_s = spawns as f64 / spawn_took.as_secs_f64();
    println!(
        "  {NOOP}   {spawns} spawns in {:.2} s = {spawns_per_s:.0} spawns/s",
        spawn_took.as_secs_f64()
    );
    let claims_per_s = drain(&state, jobs, workers, Claimer::Orch);
    let ratio_a = claims_per_s / spawns_per_s;
    println!(
        "  ratio {ratio_a:.2} (goal >= 0.5) {}",
        verdict(ratio_a >= 0.5)
    );
    let floor_per_s = drain(&state, jobs, workers, Claimer::Floor);
    println!(
        "  floor ratio {:.2}: the most any process that opens this database and claims can reach; orch claim is {:.0}% of it",
        floor_per_s / spawns_per_s,
        100.0 * claims_per_s / floor_per_s
    );

    // (b) status wall time vs one no-op spawn, each measured next to the other.
    println!("(b) `orch status` wall time per call (median of {status_calls})");
    let status = |state: &Path| {
        let state = state.to_path_buf();
        move || {
            let mut c = orch(&state);
            c.arg("status");
            c
        }
    };
    let (status_full, noop_full) = paired(status_calls, &status(&state), &noop);
    let _ = std::fs::remove_dir_all(&state);
    init(&state);
    seed(&state.join("orch.db"), 3);
    let (status_small, noop_small) = paired(status_calls, &status(&state), &noop);
    for (what, status, noop) in [
        ("3 queued jobs", status_small, noop_small),
        (&format!("{jobs} running jobs")[..], status_full, noop_full),
    ] {
        let ratio = ms(status) / ms(noop);
        println!(
            "  status, {what:<18} {:.2} ms vs {NOOP} {:.2} ms: ratio {ratio:.1}x (goal <= 5x) {}",
            ms(status),
            ms(noop),
            verdict(ratio <= 5.0)
        );
    }
}
