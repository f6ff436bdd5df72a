//! `orch claim` through the real binary: exactly-once under concurrency,
//! owner death on SIGKILL, FIFO order, and every gate with its diagnosis.

mod common;

use std::collections::HashSet;
use std::process::Stdio;

use common::Env;
use predicates::prelude::*;

/// 8 concurrent claimer loops drain 2,000 jobs: each job is claimed exactly
/// once, none is lost, and no process ever reports a busy database.
#[test]
fn eight_concurrent_claimers_drain_two_thousand_jobs_exactly_once() {
    const JOBS: usize = 2000;
    const WORKERS: usize = 8;
    let env = Env::new();
    env.write_config(
        "max_concurrency = 100000\nserial_gate_enabled = false\ntask_deps_enabled = false",
    );
    let ids: HashSet<i64> = env.enqueue_many(JOBS).into_iter().collect();

    let handles: Vec<_> = (0..WORKERS)
        .map(|_| {
            let state = env.state().to_path_buf();
            let db_url = env.db_url().map(str::to_owned);
            std::thread::spawn(move || {
                let mut claimed = Vec::new();
                loop {
                    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
                        .env_clear()
                        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                        .env("ORCH_STATE_DIR", &state)
                        .envs(db_url.as_deref().map(|url| ("ORCH_DB_URL", url)))
                        .args(["claim", "--json"])
                        .stdin(Stdio::null())
                        .output()
                        .expect("run orch claim");
                    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
                    assert!(
                        !stderr.contains("busy") && !stderr.contains("locked"),
                        "busy database surfaced: {stderr}"
                    );
                    match out.status.code() {
                        Some(0) => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&out.stdout).expect("json");
                            claimed.push(v["claimed"]["id"].as_i64().expect("id"));
                        }
                        Some(3) => return claimed,
                        other => panic!("orch claim exited {other:?}: {stderr}"),
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().expect("worker thread"));
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), JOBS, "claims made");
    assert_eq!(unique.len(), JOBS, "a job was claimed twice");
    assert_eq!(unique, ids, "a job was lost");
    let status = env.json(&["status", "--recent", "0"]);
    assert_eq!(status["counts"]["running"], JOBS as i64);
    assert_eq!(status["counts"]["queued"], 0);
}

/// A claimer SIGKILLed right after its claim leaves a job whose owner
/// `orch status` reports dead at once.
#[test]
fn claimer_killed_after_claim_is_reported_dead_at_once() {
    let env = Env::new();
    env.enqueue_many(1);
    let status = env
        .orch()
        .env("ORCH_CRASH_AT", "claim.committed")
        .arg("claim")
        .output()
        .expect("run");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status.status),
        Some(9),
        "claimer should have died by SIGKILL"
    );
    let v = env.json(&["status"]);
    assert_eq!(v["counts"]["running"], 1);
    assert_eq!(v["running"][0]["owner"], "dead");
    env.orch()
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("DEAD"));
}

#[test]
fn claims_are_fifo_and_count_attempts() {
    let env = Env::new();
    env.write_config("max_concurrency = 10\nserial_gate_enabled = false");
    let ids = env.enqueue_many(3);
    for id in ids {
        let v = env.json(&["claim"]);
        assert_eq!(v["claimed"]["id"], id);
        assert_eq!(v["claimed"]["attempts"], 1);
        assert_eq!(v["claimed"]["status"], "running");
    }
}

#[test]
fn nothing_queued_exits_3_and_says_empty() {
    let env = Env::new();
    env.orch()
        .arg("claim")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("no job is queued"));
    let out = env.orch().args(["claim", "--json"]).output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["claimed"], serde_json::Value::Null);
    assert_eq!(v["why"]["reason"], "empty");
}

#[test]
fn concurrency_full_exits_3_and_says_so() {
    let env = Env::new();
    env.write_config("serial_gate_enabled = false");
    env.enqueue_many(2);
    env.orch().arg("claim").assert().success();
    let out = env.orch().args(["claim", "--json"]).output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["why"]["reason"], "concurrency_full");
    assert_eq!(v["why"]["running"], 1);
    assert_eq!(v["why"]["max_concurrency"], 1);
}

#[test]
fn serial_gate_allows_one_running_job_per_repo() {
    let env = Env::new();
    std::fs::write(
        env.state().join("orch.toml"),
        format!(
            "max_concurrency = 10\ntask_deps_enabled = false\n\
             [repos.demo]\nremote = {:?}\n[repos.other]\nremote = {:?}\n",
            common::remote("/x"),
            common::remote("/y")
        ),
    )
    .expect("config");
    for repo in ["demo", "demo", "other"] {
        env.orch()
            .args(["job", "enqueue", "--agent", "developer", "--repo", repo])
            .assert()
            .success();
    }
    assert_eq!(env.json(&["claim"])["claimed"]["id"], 1);
    // Job 2 (demo) is held by the serial gate; job 3 (other) is claimable.
    assert_eq!(env.json(&["claim"])["claimed"]["id"], 3);
    let out = env.orch().args(["claim", "--json"]).output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["why"]["reason"], "gated");
    assert_eq!(v["why"]["serial"], 1);
    // With the gate off, it is claimable.
    env.orch()
        .env("ORCH_SERIAL_GATE_ENABLED", "false")
        .arg("claim")
        .assert()
        .success();
}

#[test]
fn task_dependency_gate_waits_for_the_dependency_to_be_done() {
    let env = Env::new();
    env.write_config("max_concurrency = 10\nserial_gate_enabled = false");
    env.orch()
        .args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            "first",
            "--no-start",
        ])
        .assert()
        .success();
    env.orch()
        .args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            "second",
            "--depends-on",
            "1",
        ])
        .assert()
        .success();
    let out = env.orch().args(["claim", "--json"]).output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["why"]["reason"], "gated");
    assert_eq!(v["why"]["task_deps"], 1);
    env.exec("UPDATE tasks SET stage = 'done' WHERE id = 1");
    assert_eq!(env.json(&["claim"])["claimed"]["task_id"], 2);
}

#[test]
fn a_task_runs_one_job_at_a_time_under_the_dependency_gate() {
    let env = Env::new();
    env.write_config("max_concurrency = 10\nserial_gate_enabled = false");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "t"])
        .assert()
        .success();
    env.orch()
        .args(["job", "enqueue", "--agent", "analyst", "--task", "1"])
        .assert()
        .success();
    env.orch().arg("claim").assert().success();
    env.orch().arg("claim").assert().code(3);
}

#[test]
fn the_merge_lease_of_another_task_holds_deploy_jobs_under_the_serial_gate() {
    let env = Env::new();
    env.write_config("max_concurrency = 10\ntask_deps_enabled = false");
    for title in ["holder", "waiter"] {
        env.orch()
            .args([
                "task",
                "create",
                "--repo",
                "demo",
                "--title",
                title,
                "--no-start",
            ])
            .assert()
            .success();
    }
    env.orch()
        .args([
            "job",
            "enqueue",
            "--agent",
            "deployer",
            "--task",
            "2",
            "--stage",
            "deploy-staging",
        ])
        .assert()
        .success();
    env.exec(
        "INSERT INTO merge_leases (repo, task_id, branch, token, acquired_at)
         VALUES ('demo', 1, 'feature/DEMO-1-holder', 'tok', 0)",
    );
    env.orch().arg("claim").assert().code(3);
    env.exec("DELETE FROM merge_leases");
    env.orch().arg("claim").assert().success();
}

/// Processes that run one after another (as timers start them) each rebuild
/// SQLite's WAL index from the whole log, so the log must not keep growing:
/// 80 claims in a row, each a commit of several pages, leave a WAL of at most
/// a few commits (with the close checkpoint skipped it grew by every commit,
/// 2.5 MiB here, and every process read and checkpointed all of it again).
#[test]
fn the_wal_stays_small_when_processes_run_one_after_another() {
    if common::sqlite_only("the WAL is the SQLite file's") {
        return;
    }
    let env = Env::new();
    env.write_config(
        "max_concurrency = 100000\nserial_gate_enabled = false\ntask_deps_enabled = false",
    );
    env.enqueue_many(100);
    let wal = env.state().join("orch.db-wal");
    let mut largest = 0;
    for _ in 0..80 {
        env.orch().args(["claim"]).assert().success();
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(largest <= 256 * 1024, "the WAL grew to {largest} bytes");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status = 'running'"),
        80
    );
}

/// A claimer SIGKILLed after its claim leaves its lock file. The file stays
/// while its job runs (the reaper reads it as "not handed over"), and the
/// reap that ends the job removes it; a file someone holds is never touched,
/// and a leftover of a job long gone is removed too.
#[test]
fn the_reaper_removes_only_the_lock_files_of_dead_owners_whose_job_ended() {
    if common::sqlite_only(
        "lock files: on PostgreSQL owners hold advisory locks, which leave nothing to sweep",
    ) {
        return;
    }
    let env = Env::new();
    env.enqueue_many(1);
    let killed = env
        .orch()
        .env("ORCH_CRASH_AT", "claim.committed")
        .arg("claim")
        .output()
        .expect("run");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9)
    );
    let locks = env.state().join("locks");
    let files = || -> HashSet<String> {
        std::fs::read_dir(&locks)
            .expect("locks dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()
    };
    let left = files();
    assert_eq!(left.len(), 1, "the killed claimer's file: {left:?}");
    let held = orch::liveness::WorkerLock::acquire(&locks).expect("lock");
    let stale = format!("{}.lock", "c".repeat(32));
    std::fs::write(locks.join(&stale), "").expect("stale file");

    // The reaper off: the job keeps running, and so does its file.
    let out = env
        .orch()
        .env("ORCH_REAPER_ENABLED", "false")
        .args(["reap", "--json"])
        .output()
        .expect("reap");
    let off: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(off["lock_files_removed"], 1, "{off}");
    assert!(left.is_subset(&files()), "a running job's file stays");
    assert!(!files().contains(&stale));

    // The pass that requeues the job removes its file; the held one stays.
    let on = env.json(&["reap"]);
    assert_eq!(on["reaped"][0]["outcome"], "queued", "{on}");
    assert_eq!(on["lock_files_removed"], 1, "{on}");
    assert_eq!(files(), HashSet::from([format!("{}.lock", held.token())]));
    held.release();
}
