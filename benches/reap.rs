//! Reaper benchmark: how fast a dead owner's job is requeued, and what one
//! `orch reap` costs when every running job's owner is alive.
//!
//! Run it with `cargo bench --bench reap`. It prints, in one run:
//!
//! - (a) the time from SIGKILL of an `orch run-agent` owner to its job being
//!   `queued` again by one `orch reap` (goal: under 1 s after reap starts),
//!   median of `BENCH_KILLS` (5) kills, against one `/bin/true` spawn;
//! - (b) the wall time of one `orch reap` over `BENCH_LIVE_JOBS` (10,000)
//!   running jobs whose owners all hold their locks (goal: under 0.2 s),
//!   median of 5 passes, checking that none was reaped.
//!
//! The live owners of (b) are this process: it takes one real worker lock per
//! job (raising its open-file limit), exactly as 10,000 workers would.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn orch(state: &Path) -> Command {
    let mut c = Command::new(ORCH);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCH_") {
            c.env_remove(k);
        }
    }
    c.env("ORCH_STATE_DIR", state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn job_status(db: &Path, id: i64) -> String {
    rusqlite::Connection::open(db)
        .expect("open")
        .query_row("SELECT status FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .expect("status")
}

fn kill_to_requeue(kills: u64) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    assert!(
        orch(state)
            .args(["demo", "--setup-only"])
            .stdout(Stdio::null())
            .status()
            .expect("demo")
            .success()
    );
    let ok = orch(state)
        .env("ORCH_MAX_ATTEMPTS", "1000")
        .args(["task", "create", "--repo", "demo", "--title", "bench"])
        .stdout(Stdio::null())
        .status()
        .expect("task")
        .success();
    assert!(ok);
    let db = state.join("orch.db");
    let mut reaps = Vec::new();
    let mut spawns = Vec::new();
    for _ in 0..kills {
        let mut worker = orch(state)
            .env("ORCH_AGENT_CMD", "sleep 60")
            .args(["run-agent", "--job", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker");
        // Wait until the agent runs (its pid is recorded).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid: Option<i64> = rusqlite::Connection::open(&db)
                .expect("open")
                .query_row("SELECT pid FROM jobs WHERE id = 1", [], |r| r.get(0))
                .expect("pid");
            if pid.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the agent never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        worker.kill().expect("SIGKILL the owner");
        worker.wait().expect("wait");
        let t0 = Instant::now();
        let ok = orch(state)
            .args(["reap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("reap")
            .success();
        let took = t0.elapsed();
        assert!(ok, "orch reap failed");
        assert_eq!(
            job_status(&db, 1),
            "queued",
            "the job was not requeued by one reap"
        );
        reaps.push(took);
        let t0 = Instant::now();
        Command::new("/bin/true").status().expect("true");
        spawns.push(t0.elapsed());
    }
    (median(reaps), median(spawns))
}

fn live_pass(jobs: u64) -> Duration {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = jobs + 256;
    assert!(
        hard >= want,
        "RLIMIT_NOFILE hard limit {hard} < {want}; raise it (ulimit -Hn)"
    );
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    assert!(
        orch(state)
            .arg("init")
            .stdout(Stdio::null())
            .status()
            .expect("init")
            .success()
    );
    let locks_dir = state.join("locks");
    let locks: Vec<orch::liveness::WorkerLock> = (0..jobs)
        .map(|_| orch::liveness::WorkerLock::acquire(&locks_dir).expect("lock"))
        .collect();
    {
        let mut conn = rusqlite::Connection::open(state.join("orch.db")).expect("open");
        let tx = conn.transaction().expect("begin");
        let now = orch::storage::now();
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO jobs (agent, repo, status, attempts, claim_token, owner_pid, started_at, created_at)
                     VALUES ('developer', 'demo', 'running', 1, ?1, ?2, ?3, ?3)",
                )
                .expect("prepare");
            for l in &locks {
                stmt.execute(rusqlite::params![l.token(), std::process::id(), now])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let mut passes = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let out = orch(state).args(["reap", "--json"]).output().expect("reap");
        passes.push(t0.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["running"], jobs, "pass saw {} running", v["running"]);
        assert!(
            v["reaped"].as_array().is_none_or(Vec::is_empty),
            "a live job was reaped"
        );
    }
    drop(locks);
    median(passes)
}

fn main() {
    let kills = env_num("BENCH_KILLS", 5);
    let live = env_num("BENCH_LIVE_JOBS", 10_000);
    println!("orch reap bench: binary {ORCH}");
    let (reap, spawn) = kill_to_requeue(kills);
    println!(
        "(a) SIGKILL of the owner → job queued by one `orch reap`: {:.1} ms (median of {kills}), /bin/true {:.2} ms, ratio {:.1}x; goal < 1000 ms {}",
        ms(reap),
        ms(spawn),
        reap.as_secs_f64() / spawn.as_secs_f64().max(1e-9),
        if reap < Duration::from_secs(1) {
            "PASS"
        } else {
            "MISS"
        }
    );
    let pass = live_pass(live);
    println!(
        "(b) one `orch reap` over {live} running jobs with live owners: {:.1} ms (median of 5), none reaped; goal < 200 ms {}",
        ms(pass),
        if pass < Duration::from_millis(200) {
            "PASS"
        } else {
            "MISS"
        }
    );
}
