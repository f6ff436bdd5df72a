//! Seed 004 (ORCH-126): the run-ownership invariant of `queued` jobs,
//! TC-01…TC-10 as properties of our store.
//!
//! Our schema makes the invariant a CHECK constraint, which is stronger than
//! the seeds' "every path clears ownership": an impossible queued row cannot
//! be written at all. To exercise the self-heal we seed such rows the only way
//! left — hand-written SQL with `PRAGMA ignore_check_constraints` (on
//! PostgreSQL: the constraint dropped for the write and added back `NOT
//! VALID`, so it binds every later write but not the seeded row).

mod common;

use common::Env;
use orch::liveness::{Liveness, WorkerLock};
use orch::queue::{self, Backoff, Claimer, Finished, Gates, Job, Outcome};
use orch::storage::{Db, now};
use predicates::prelude::*;

const OPEN: Gates = Gates {
    max_concurrency: 100,
    serial: false,
    task_deps: false,
};
const BACKOFF: Backoff = Backoff {
    base_s: 30,
    max_s: 1800,
};

fn claim(env: &Env, db: &mut Db) -> (WorkerLock, Job) {
    let lock = env.locks().acquire().expect("lock");
    let claimer = Claimer {
        token: lock.token(),
        pid: std::process::id(),
        boot_id: "test-boot",
    };
    let job = db
        .write(|tx| Ok(queue::claim(tx, claimer, OPEN, now())?))
        .expect("claim")
        .expect("a job was claimable");
    (lock, job)
}

fn get(db: &Db, id: i64) -> Job {
    queue::get(db.conn(), id).expect("get").expect("exists")
}

fn assert_clean_queued(job: &Job) {
    assert_eq!(job.status, "queued");
    assert_eq!(job.run_id, None, "run_id");
    assert_eq!(job.pid, None, "pid");
    assert_eq!(job.started_at, None, "started_at");
    assert_eq!(job.finished_at, None, "finished_at");
    assert_eq!(job.claim_token, None, "claim_token");
    assert_eq!(job.owner_pid, None, "owner_pid");
    assert!(!job.is_impossible_queued());
}

/// Write an impossible queued row the way an operator's hand-edit could.
fn seed_impossible(env: &Env, id: i64, run_id: i64, pid: i64) {
    let update = format!(
        "UPDATE jobs SET status = 'queued', run_id = {run_id}, pid = {pid},
             claim_token = 'stale' WHERE id = {id};"
    );
    if common::on_postgres() {
        env.exec(&format!(
            "ALTER TABLE jobs DROP CONSTRAINT jobs_queued_owns_no_run;
             {update}
             ALTER TABLE jobs ADD CONSTRAINT jobs_queued_owns_no_run
                 CHECK (status <> 'queued' OR (run_id IS NULL AND pid IS NULL
                     AND started_at IS NULL AND finished_at IS NULL AND claim_token IS NULL
                     AND owner_pid IS NULL AND owner_boot_id IS NULL)) NOT VALID;"
        ));
    } else {
        env.exec(&format!(
            "PRAGMA ignore_check_constraints = ON; {update} PRAGMA ignore_check_constraints = OFF;"
        ));
    }
}

#[test]
fn orch126_database_refuses_an_impossible_queued_row() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let db = env.db();
    let err = env
        .try_exec(&format!(
            "UPDATE jobs SET pid = 35, run_id = 759 WHERE id = {id}"
        ))
        .expect_err("CHECK constraint must refuse it");
    assert!(err.to_lowercase().contains("check"), "{err}");
    assert_clean_queued(&get(&db, id));
}

#[test]
fn orch126_tc01_requeue_of_a_running_job_clears_stale_ownership() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let mut db = env.db();
    let (lock, job) = claim(&env, &mut db);
    assert_eq!(job.id, id);
    db.write(|tx| Ok(queue::set_run(tx, id, lock.token(), 759, Some(35))?))
        .expect("set run");
    let out = db
        .write(|tx| {
            Ok(queue::finish(
                tx,
                id,
                lock.token(),
                &Outcome::Retry("reaped: owner dead".into()),
                BACKOFF,
                5,
                now(),
            )?)
        })
        .expect("requeue");
    assert_eq!(out, Finished::Requeued);
    let job = get(&db, id);
    assert_clean_queued(&job);
    assert_eq!(job.error.as_deref(), Some("reaped: owner dead"));
}

#[test]
fn orch126_tc02_requeue_resets_ownership_even_after_a_run_was_recorded_and_keeps_the_error() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let mut db = env.db();
    let (lock, _) = claim(&env, &mut db);
    db.write(|tx| Ok(queue::set_run(tx, id, lock.token(), 760, Some(42))?))
        .expect("set run");
    db.write(|tx| {
        Ok(queue::finish(
            tx,
            id,
            lock.token(),
            &Outcome::Retry("exit_code=1".into()),
            BACKOFF,
            5,
            now(),
        )?)
    })
    .expect("finish");
    let job = get(&db, id);
    assert_clean_queued(&job);
    assert_eq!(job.error.as_deref(), Some("exit_code=1"));
}

#[test]
fn orch126_tc03_transient_failure_resets_ownership_and_keeps_the_backoff() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let mut db = env.db();
    let (lock, _) = claim(&env, &mut db);
    let before = now();
    db.write(|tx| Ok(queue::set_run(tx, id, lock.token(), 1, Some(99))?))
        .expect("set run");
    let out = db
        .write(|tx| {
            Ok(queue::finish(
                tx,
                id,
                lock.token(),
                &Outcome::Transient("API overloaded".into()),
                BACKOFF,
                5,
                before,
            )?)
        })
        .expect("transient");
    assert_eq!(out, Finished::Requeued);
    let job = get(&db, id);
    assert_clean_queued(&job);
    assert_eq!(job.transient_attempts, 1);
    assert_eq!(
        job.attempts, 0,
        "a transient failure does not consume an attempt"
    );
    // 30 s ± 20 %.
    assert!(
        (before + 24..=before + 36).contains(&job.available_at),
        "available_at {} not in backoff window after {before}",
        job.available_at
    );
    assert_eq!(job.error.as_deref(), Some("API overloaded"));
    // Backing off: not claimable, and the diagnosis says so.
    let lock2 = env.locks().acquire().expect("lock");
    let claimer = Claimer {
        token: lock2.token(),
        pid: 1,
        boot_id: "b",
    };
    assert!(
        db.write(|tx| Ok(queue::claim(tx, claimer, OPEN, now())?))
            .expect("claim")
            .is_none()
    );
    let why = queue::diagnose(db.conn(), OPEN, now()).expect("diagnose");
    assert!(
        matches!(why, queue::Unclaimable::BackingOff { .. }),
        "{why:?}"
    );
}

#[test]
fn orch126_tc04_fenced_requeue_wins_once_and_the_guard_holds() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let mut db = env.db();
    let (lock, _) = claim(&env, &mut db);
    let requeue = |db: &mut Db| {
        db.write(|tx| {
            Ok(queue::finish(
                tx,
                id,
                lock.token(),
                &Outcome::Retry("reaped".into()),
                BACKOFF,
                5,
                now(),
            )?)
        })
        .expect("finish")
    };
    assert_eq!(requeue(&mut db), Finished::Requeued);
    assert_clean_queued(&get(&db, id));
    assert_eq!(
        requeue(&mut db),
        Finished::LostClaim,
        "second call must lose"
    );
    // A stale token can never end a later claim either.
    let (lock2, job2) = claim(&env, &mut db);
    assert_eq!(job2.id, id);
    assert_eq!(requeue(&mut db), Finished::LostClaim);
    assert_eq!(get(&db, id).status, "running");
    assert_eq!(get(&db, id).claim_token.as_deref(), Some(lock2.token()));
}

#[test]
fn orch126_tc05_claim_clears_a_stale_pid_before_the_spawn() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let mut db = env.db();
    seed_impossible(&env, id, 759, 35);
    let (lock, job) = claim(&env, &mut db);
    assert_eq!(job.id, id);
    assert_eq!(job.status, "running");
    assert_eq!(job.pid, None);
    assert_eq!(job.run_id, None);
    assert!(job.started_at.is_some());
    assert_eq!(job.claim_token.as_deref(), Some(lock.token()));
}

#[test]
fn orch126_tc06_claim_works_with_the_serial_gate_off() {
    let env = Env::new();
    env.write_config("serial_gate_enabled = false\ntask_deps_enabled = false");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "analyse me"])
        .assert()
        .success();
    let claimed = env.json(&["claim"]);
    assert_eq!(claimed["claimed"]["agent"], "analyst");
    let status = env.json(&["status"]);
    assert_eq!(status["counts"]["queued"], 0);
    assert_eq!(status["counts"]["running"], 1);
}

#[test]
fn orch126_tc07_a_fresh_claim_without_pid_is_alive_while_its_lock_is_held() {
    let env = Env::new();
    env.enqueue_many(1);
    let mut db = env.db();
    let (lock, job) = claim(&env, &mut db);
    assert_eq!(job.pid, None, "no agent pid yet");
    let locks = env.locks();
    let token = job.claim_token.clone().expect("token");
    assert_eq!(locks.probe(&token).expect("probe"), Liveness::Alive);
    let status = env.json(&["status"]);
    assert_eq!(status["running"][0]["owner"], "alive");
    lock.release();
    assert_eq!(locks.probe(&token).expect("probe"), Liveness::Dead);
    assert_eq!(env.json(&["status"])["running"][0]["owner"], "dead");
}

#[test]
fn orch126_tc08_sanitize_impossible_queued_is_idempotent() {
    let env = Env::new();
    let ids = env.enqueue_many(3);
    let mut db = env.db();
    seed_impossible(&env, ids[1], 759, 35);
    let found = queue::find_impossible_queued(db.conn()).expect("find");
    assert_eq!(found.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[1]]);
    let healed = db
        .write(|tx| Ok(queue::sanitize_impossible_queued(tx, now())?))
        .expect("sanitize");
    assert_eq!(healed, [ids[1]]);
    assert_clean_queued(&get(&db, ids[1]));
    let again = db
        .write(|tx| Ok(queue::sanitize_impossible_queued(tx, now())?))
        .expect("sanitize");
    assert!(again.is_empty());
    assert!(
        queue::find_impossible_queued(db.conn())
            .expect("find")
            .is_empty()
    );
}

#[test]
fn orch126_tc08b_sanitize_sweep_counts_and_shows_in_status_and_honours_its_kill_switch() {
    let env = Env::new();
    let ids = env.enqueue_many(2);
    seed_impossible(&env, ids[0], 759, 35);
    // Kill-switch off: the reaper's sweep does nothing.
    env.orch()
        .env("ORCH_IMPOSSIBLE_QUEUED_SANITIZE_ENABLED", "false")
        .args(["reap", "--json"])
        .assert()
        .success();
    let status = env.json(&["status"]);
    assert!(status["counters"].get("impossible_queued_total").is_none());

    // Switch on: one reaper pass heals the row, once.
    env.orch().args(["reap", "--json"]).assert().success();
    env.orch().args(["reap", "--json"]).assert().success();
    let status = env.json(&["status"]);
    let counter = &status["counters"]["impossible_queued_total"];
    assert_eq!(counter["value"], 1);
    assert_eq!(counter["last"]["count"], 1);
    assert_eq!(counter["last"]["job_ids"][0], ids[0]);
    assert!(
        queue::find_impossible_queued(env.db().conn())
            .expect("find")
            .is_empty()
    );
    env.orch()
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("impossible_queued_total"));
}

#[test]
fn orch126_tc09_a_launch_failure_requeues_clean_and_the_job_is_claimable_again() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let mut db = env.db();
    let (lock, _) = claim(&env, &mut db);
    db.write(|tx| {
        Ok(queue::finish(
            tx,
            id,
            lock.token(),
            &Outcome::Retry("launch error: ensure_worktree failed".into()),
            BACKOFF,
            5,
            now(),
        )?)
    })
    .expect("finish");
    lock.release();
    assert_clean_queued(&get(&db, id));
    let (_lock2, again) = claim(&env, &mut db);
    assert_eq!(again.id, id);
    assert_eq!(again.attempts, 2);
}

#[test]
fn orch126_tc10_terminal_outcomes_keep_run_and_start_and_stamp_finish() {
    let env = Env::new();
    let ids = env.enqueue_many(3);
    let mut db = env.db();
    for (outcome, status) in [
        (Outcome::Done, "done"),
        (Outcome::Failed("red".into()), "failed"),
    ] {
        let (lock, job) = claim(&env, &mut db);
        db.write(|tx| Ok(queue::set_run(tx, job.id, lock.token(), 7, Some(4242))?))
            .expect("set run");
        db.write(|tx| {
            Ok(queue::finish(
                tx,
                job.id,
                lock.token(),
                &outcome,
                BACKOFF,
                5,
                now(),
            )?)
        })
        .expect("finish");
        let after = get(&db, job.id);
        assert_eq!(after.status, status);
        assert_eq!(after.run_id, Some(7));
        assert!(after.started_at.is_some());
        assert!(after.finished_at.is_some());
    }
    // The healthy queued job is never flagged.
    assert_clean_queued(&get(&db, ids[2]));
    assert!(
        queue::find_impossible_queued(db.conn())
            .expect("find")
            .is_empty()
    );
}

#[test]
fn retry_budget_spent_fails_the_job() {
    let env = Env::new();
    let id = env.enqueue_many(1)[0];
    let mut db = env.db();
    for expected in [Finished::Requeued, Finished::Failed] {
        let (lock, _) = claim(&env, &mut db);
        let out = db
            .write(|tx| {
                Ok(queue::finish(
                    tx,
                    id,
                    lock.token(),
                    &Outcome::Retry("exit_code=1".into()),
                    BACKOFF,
                    5,
                    now(),
                )?)
            })
            .expect("finish");
        assert_eq!(out, expected);
    }
    assert_eq!(get(&db, id).status, "failed");
    // An operator retry brings it back with a fresh budget.
    env.orch()
        .args(["job", "retry", &id.to_string()])
        .assert()
        .success();
    let job = get(&db, id);
    assert_clean_queued(&job);
    assert_eq!(job.attempts, 0);
}

#[test]
fn orch090_tc03_tc12_cancelled_jobs_are_never_claimed_or_revived() {
    let env = Env::new();
    env.write_config("serial_gate_enabled = false");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "t"])
        .assert()
        .success();
    let mut db = env.db();
    let n = db
        .write(|tx| Ok(queue::cancel_for_task(tx, 1, false, now())?))
        .expect("cancel");
    assert_eq!(n, 1);
    env.orch().arg("claim").assert().code(3);
    env.orch()
        .args(["job", "retry", "1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("never revived"));
}
