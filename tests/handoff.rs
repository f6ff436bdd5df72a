//! Hand-off without idle gaps and without a daemon: a worker keeps claiming
//! while work is claimable (`run-agent --next --until-idle`), and a commit
//! that queues work leaves a wake-up file that `orch-worker@.path` turns into
//! a worker start. The path unit is played here by a loop with systemd's
//! semantics for `DirectoryNotEmpty=`: start the service when the directory
//! is not empty and the service is not running, and check again when it
//! stops. Latency is measured in `benches/handoff.rs`, not here.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Env;

fn demo_env() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    env
}

fn wake_pending(env: &Env) -> bool {
    std::fs::read_dir(env.state().join("wake")).is_ok_and(|mut d| d.next().is_some())
}

fn count(env: &Env, sql: &str) -> i64 {
    env.sql_i64(sql)
}

/// After the human approval, one worker activation runs every stage from
/// architecture to done: each successor is claimed as soon as it is
/// committed, each exactly once.
#[test]
fn one_activation_runs_every_claimable_stage_in_turn() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env.orch().args(["run-agent", "--next"]).assert().success();
    env.orch()
        .args(["advance", "--task", "1", "--approve"])
        .assert()
        .success();
    let out = env
        .orch()
        .args(["run-agent", "--next", "--until-idle", "--json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON report per line"))
        .collect();
    let stages: Vec<&str> = reports
        .iter()
        .map(|r| r["stage"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        stages,
        [
            "architecture",
            "development",
            "review",
            "testing",
            "deploy-staging",
            "deploy"
        ]
    );
    assert_eq!(env.json(&["task", "show", "1"])["task"]["stage"], "done");
    assert_eq!(
        count(&env, "SELECT count(*) FROM jobs"),
        7,
        "one job per stage"
    );
    assert_eq!(count(&env, "SELECT count(*) FROM agent_runs"), 7);
    // Nothing left: the next activation has nothing to do.
    env.orch()
        .args(["run-agent", "--next", "--until-idle"])
        .assert()
        .code(3);
}

/// A commit that queues a job leaves the wake-up; the worker takes it before
/// it claims, so an empty queue leaves none behind.
#[test]
fn queued_work_leaves_a_wake_up_that_the_worker_takes() {
    let env = demo_env();
    assert!(!wake_pending(&env), "nothing queued yet");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    assert!(wake_pending(&env), "task create queued the analyst");
    env.orch()
        .args(["run-agent", "--next", "--until-idle"])
        .assert()
        .success();
    assert!(!wake_pending(&env), "the worker took the wake-up");
    env.orch()
        .args(["job", "enqueue", "--agent", "analyst", "--task", "1"])
        .assert()
        .success();
    assert!(wake_pending(&env), "job enqueue wakes too");
}

/// systemd's `DirectoryNotEmpty=`: start the worker when a wake-up is
/// pending and none runs; check again whenever it stops.
fn path_unit(env: &Env, until: Instant) -> u32 {
    let mut starts = 0;
    while Instant::now() < until {
        if wake_pending(env) {
            starts += 1;
            let _ = env
                .orch_std()
                .args(["run-agent", "--next", "--until-idle"])
                .output()
                .expect("worker");
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    starts
}

/// No wake-up is lost to the race between a worker's last empty claim and
/// a commit: tasks created at random moments while workers start and stop
/// all get their analyst run, with no timer at all.
#[test]
fn no_wake_up_is_lost_between_a_last_claim_and_a_new_commit() {
    let env = demo_env();
    let tasks = 8;
    let creator = {
        let state = env.state().to_path_buf();
        let db_url = env.db_url().map(str::to_owned);
        std::thread::spawn(move || {
            let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
            for i in 0..tasks {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                std::thread::sleep(Duration::from_millis(seed % 400));
                create_task(&state, db_url.as_deref(), i);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut starts = 0;
    while Instant::now() < deadline {
        starts += path_unit(&env, Instant::now() + Duration::from_millis(200));
        let done = count(
            &env,
            "SELECT count(*) FROM jobs WHERE agent = 'analyst' AND status = 'done'",
        );
        if creator.is_finished() && done == tasks && !wake_pending(&env) {
            break;
        }
    }
    creator.join().expect("creator");
    assert_eq!(
        count(&env, "SELECT count(*) FROM jobs WHERE status = 'queued'"),
        0,
        "a queued job was never woken for"
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM jobs WHERE agent = 'analyst' AND status = 'done'"
        ),
        tasks
    );
    assert!(starts >= 1);
}

fn create_task(state: &Path, db_url: Option<&str>, i: i64) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
        .args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            &format!("t{i}"),
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .env("ORCH_STATE_DIR", state)
        .env("ORCH_SANDBOX_WRITABLE", state.join("shared"))
        .envs(db_url.map(|url| ("ORCH_DB_URL", url)))
        .output()
        .expect("task create");
    assert!(out.status.success(), "{out:?}");
}
