//! The ledger of the PostgreSQL backend against a real server: the
//! contract every backend keeps, and the same answers as SQLite's, in the
//! same order, for the same rows and operations, on a database whose
//! collation orders text unlike SQLite's too.

use std::collections::BTreeMap;

use crate::storage::ledger::{DeadRun, Ledger, NewRun, RunEnd};
use crate::storage::postgres::testing::{self, pg_rows, sqlite_rows};
use crate::storage::postgres::{Store, Tx};

#[test]
fn postgres_keeps_the_ledger_contract() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            tx.batch(crate::storage::ledger::CONTRACT_ROWS)?;
            crate::storage::ledger::check_contract(tx);
            Ok(())
        })
        .expect("write");
}

/// Rows both dialects read: stages without a name, named '' and differing
/// only in case, durations below zero, an `orch-died` outcome in capitals
/// (SQLite's LIKE ignores ASCII case), runs without job or task, running
/// jobs whose run is finished or not, and more failed jobs than the stuck
/// view shows.
const FIXTURE: &str = "
INSERT INTO tasks (id, work_item_id, repo, stage, created_at, updated_at)
VALUES (1, 'A-1', 'demo', 'development', 0, 0), (2, 'B-2', 'demo', 'review', 0, 0),
       (3, 'C-3', 'other', 'done', 0, 0), (4, 'D-4', 'other', 'cancelled', 0, 0),
       (5, 'E-5', 'Demo', 'testing', 0, 0), (6, 'F-6', 'demo', 'analysis', 0, 0),
       (7, 'G-7', 'demo', 'development', 0, 0), (8, 'H-8', 'demo', 'development', 0, 0),
       (9, 'I-9', 'demo', 'development', 0, 0), (10, 'J-10', 'demo', 'development', 0, 0),
       (11, 'K-11', 'demo', 'development', 0, 0), (12, 'L-12', 'demo', 'development', 0, 0);
INSERT INTO jobs (id, agent, repo, task_id, stage, status, created_at, finished_at, error)
VALUES (10, 'developer', 'demo', 1, 'development', 'done', 0, 60, NULL),
       (12, 'tester', 'demo', 1, 'testing', 'queued', 0, NULL, NULL),
       (13, 'developer', 'demo', NULL, NULL, 'failed', 0, 5, 'no task'),
       (20, 'reviewer', 'demo', 2, 'review', 'failed', 0, 25, 'boom'),
       (30, 'tester', 'other', 3, 'testing', 'failed', 0, 1, 'late'),
       (40, 'developer', 'other', 4, 'development', 'failed', 0, 1, NULL),
       (50, 'tester', 'Demo', 5, 'testing', 'done', 0, 1, NULL),
       (52, 'tester', 'Demo', 5, 'testing', 'failed', 0, 1, 'x'),
       (60, 'analyst', 'demo', 6, 'analysis', 'done', 0, 1, NULL),
       (61, 'analyst', 'demo', 6, 'analysis', 'failed', 0, 1, 'y'),
       (62, 'analyst', 'demo', 6, 'analysis', 'cancelled', 0, 1, NULL),
       (70, 'developer', 'demo', 7, 'development', 'failed', 0, 1, 'e7'),
       (80, 'developer', 'demo', 8, 'development', 'failed', 0, 1, 'e8'),
       (90, 'developer', 'demo', 9, 'development', 'failed', 0, 1, 'e9'),
       (100, 'developer', 'demo', 10, 'development', 'failed', 0, 1, NULL),
       (110, 'developer', 'demo', 11, 'development', 'failed', 0, 1, 'e11'),
       (120, 'developer', 'demo', 12, 'development', 'failed', 0, 1, 'e12');
INSERT INTO jobs (id, agent, repo, task_id, stage, status, created_at, started_at, claim_token, run_id)
VALUES (11, 'developer', 'demo', 1, 'development', 'running', 0, 70, 'tok', 102),
       (53, 'tester', 'Demo', 5, 'testing', 'running', 0, 1, 'tok2', 510);
INSERT INTO agent_runs (id, job_id, task_id, agent, stage, started_at, finished_at, outcome,
                        cost_usd, input_tokens, output_tokens, output_path, exit_code)
VALUES (100, 10, 1, 'developer', 'development', 10, 40, 'success', 1.5, 100, 10, NULL, 0),
       (101, 10, 1, 'developer', 'development', 50, 60, 'failure: x', NULL, NULL, NULL, NULL, 1),
       (102, 11, 1, 'developer', 'development', 70, NULL, NULL, NULL, NULL, NULL, '/s/agent.log', NULL),
       (103, 20, 2, 'reviewer', 'review', 20, 25, 'orch-died: cut off', NULL, NULL, NULL, NULL, NULL),
       (104, 20, 2, 'reviewer', 'Review', 30, 28, 'ORCH-DIED: upper', NULL, 3, NULL, NULL, NULL),
       (105, 20, 2, 'reviewer', NULL, 40, 45, 'transient: t', 0.25, 5, 6, NULL, 75),
       (106, 20, 2, 'reviewer', '', 46, 47, 'success', 0.5, NULL, 1, NULL, 0),
       (107, NULL, 1, 'x', 'développement', 0, 3, 'success', 2.0, 1, 1, NULL, 0),
       (108, NULL, NULL, 'x', 'Zeta', 0, 100, 'success', NULL, NULL, NULL, NULL, 0),
       (109, 12, 1, 'tester', 'testing', 80, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
       (510, 53, 5, 'tester', 'testing', 0, 5, 'success', 0.25, 2, 2, '/s/510.log', 0),
       (603, 61, 6, 'analyst', 'analysis', 0, 1, 'failure: z', 0.125, 1, 1, NULL, 1),
       (605, 60, 6, 'analyst', 'analysis', 2, 3, 'success', 0.125, 1, 1, NULL, 0);
";

const TASK_IDS: [i64; 13] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const JOB_IDS: [i64; 20] = [
    10, 11, 12, 13, 20, 30, 40, 50, 52, 53, 60, 61, 62, 70, 80, 90, 100, 110, 120, 999,
];
const RUN_IDS: [i64; 14] = [
    100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 510, 603, 605, 999,
];

/// Everything the ledger reads, as text, in the order it answered (sets
/// without an order sorted).
fn reads(store: &impl Ledger) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: String, v: &dyn std::fmt::Debug| seen.push(format!("{what}: {v:?}"));
    for job in JOB_IDS {
        note(
            format!("runs of job {job}"),
            &store.ledger_runs_of_job(job).expect("runs"),
        );
        note(
            format!("count of job {job}"),
            &store.ledger_run_count_of_job(job).expect("count"),
        );
        for run in RUN_IDS {
            note(
                format!("live {job} {run}"),
                &store.ledger_run_is_live(job, run).expect("live"),
            );
        }
    }
    for task in TASK_IDS {
        note(
            format!("runs of task {task}"),
            &store.ledger_runs_of_task(task).expect("runs"),
        );
        note(
            format!("job to show {task}"),
            &store.ledger_job_to_show(task).expect("job"),
        );
    }
    for run in RUN_IDS {
        note(format!("run {run}"), &store.ledger_run(run).expect("run"));
        note(
            format!("log {run}"),
            &store.ledger_unfinished_run_log(run).expect("log"),
        );
    }
    let mut running = store.ledger_runs_of_running_jobs().expect("running");
    running.sort_by_key(|r| r.run_id);
    note("running".into(), &running);
    note(
        "stage costs".into(),
        &store.ledger_stage_costs(&TASK_IDS).expect("costs"),
    );
    note(
        "stage costs of 2, 6".into(),
        &store.ledger_stage_costs(&[6, 2]).expect("costs"),
    );
    note(
        "stage costs of none".into(),
        &store.ledger_stage_costs(&[]).expect("costs"),
    );
    note("total".into(), &store.ledger_total_cost().expect("total"));
    let spent: BTreeMap<i64, f64> = store
        .ledger_spent_by_task()
        .expect("spent")
        .into_iter()
        .collect();
    note("spent".into(), &spent);
    note(
        "durations".into(),
        &store.ledger_run_durations(&[0, 5, 30]).expect("durations"),
    );
    note(
        "durations, one bound".into(),
        &store.ledger_run_durations(&[-1]).expect("durations"),
    );
    note(
        "run costs".into(),
        &store.ledger_run_costs().expect("costs"),
    );
    note("stuck".into(), &store.ledger_stuck_failed().expect("stuck"));
    seen
}

/// The same writes on any backend, with what each answered.
fn writes(store: &impl Ledger) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: &str, v: &dyn std::fmt::Debug| seen.push(format!("{what}: {v:?}"));
    let run = |job_id: i64, session_id: &'static str, started_at: i64| NewRun {
        job_id,
        task_id: 1,
        agent: "developer",
        stage: "development",
        command: "claude -p",
        output_path: "/s/new.log",
        session_id,
        started_at,
    };
    let first = store
        .ledger_start_run(&run(10, "sess", 200))
        .expect("start");
    note("first", &first);
    store.ledger_set_run_pid(first, u32::MAX).expect("pid");
    store
        .ledger_end_run(
            first,
            &RunEnd {
                finished_at: 260,
                exit_code: Some(-1),
                signal: Some(9),
                timed_out: Some("wall".into()),
                outcome: "failure: y".into(),
                is_error: Some(true),
                cost_usd: Some(0.75),
                input_tokens: Some(1),
                output_tokens: Some(2),
                cache_read_tokens: Some(3),
                cache_creation_tokens: Some(4),
                num_turns: Some(5),
                session_id: None,
            },
        )
        .expect("end");
    let second = store.ledger_start_run(&run(11, "s2", 300)).expect("start");
    note("second", &second);
    store
        .ledger_end_run(
            second,
            &RunEnd {
                finished_at: 301,
                outcome: "success".into(),
                is_error: Some(false),
                session_id: Some("reported".into()),
                ..RunEnd::default()
            },
        )
        .expect("end");
    note(
        "count of 10",
        &store.ledger_run_count_of_job(10).expect("count"),
    );
    let dead = |succeeded: bool, outcome: &str| DeadRun {
        cost_usd: succeeded.then_some(0.5),
        input_tokens: Some(7),
        output_tokens: None,
        outcome: outcome.into(),
        succeeded,
    };
    for (run, succeeded, outcome, at) in [
        (102, true, "success", 400),
        (109, false, "orch-died: no result", 401),
        (109, true, "success", 402),
        (100, true, "success", 403),
    ] {
        note(
            &format!("dead {run}"),
            &store
                .ledger_record_dead_run(run, &dead(succeeded, outcome), at)
                .expect("dead"),
        );
    }
    note(
        "block 1",
        &store
            .ledger_block(1, "development", "over budget", 500)
            .expect("block"),
    );
    note(
        "block 1 again",
        &store
            .ledger_block(1, "development", "again", 501)
            .expect("block"),
    );
    store
        .ledger_resume(1, "development", Some(10.0), "more money", 502)
        .expect("resume");
    store
        .ledger_resume(2, "review", None, "not blocked", 503)
        .expect("resume");
    note(
        "block 1 anew",
        &store
            .ledger_block(1, "development", "over", 504)
            .expect("block"),
    );
    seen
}

/// The rows the writes changed, in both dialects.
const CHANGED: [&str; 3] = [
    "SELECT id, job_id, task_id, agent, stage, command, pid, started_at, finished_at, exit_code,
            signal, timed_out, output_path, session_id, outcome, is_error, cost_usd, input_tokens,
            output_tokens, cache_read_tokens, cache_creation_tokens, num_turns
     FROM agent_runs ORDER BY id",
    "SELECT id, blocked_reason, budget_usd, updated_at FROM tasks ORDER BY id",
    "SELECT id, task_id, from_stage, to_stage, kind, reason, job_id, at FROM task_transitions ORDER BY id",
];

/// What SQLite answers for [`FIXTURE`]: reads, writes, reads after them,
/// and the changed rows.
fn on_sqlite() -> Vec<String> {
    let (_dir, db) = crate::storage::test_db();
    let conn = db.sqlite();
    conn.execute_batch(FIXTURE).expect("fixture");
    let mut seen = reads(conn);
    seen.extend(writes(conn));
    seen.extend(reads(conn));
    for sql in CHANGED {
        seen.push(format!("{:?}", sqlite_rows(conn, sql)));
    }
    seen
}

/// The same on PostgreSQL: after the fixture's explicit ids, the identity
/// goes on from the highest, as SQLite's next rowid does.
fn on_postgres(store: &mut Store) -> Vec<String> {
    store
        .write(|tx: &Tx<'_>| {
            tx.batch(FIXTURE)?;
            tx.batch(
                "SELECT setval(pg_get_serial_sequence('agent_runs', 'id'), max(id)) FROM agent_runs",
            )?;
            let mut seen = reads(tx);
            seen.extend(writes(tx));
            seen.extend(reads(tx));
            for sql in CHANGED {
                seen.push(format!("{:?}", pg_rows(tx, sql)));
            }
            Ok(seen)
        })
        .expect("write")
}

fn assert_same(postgres: &[String], sqlite: &[String]) {
    assert_eq!(postgres.len(), sqlite.len());
    for (p, s) in postgres.iter().zip(sqlite) {
        assert_eq!(p, s);
    }
}

#[test]
fn postgres_ledger_answers_as_sqlites() {
    let Some(mut store) = testing::store() else {
        return;
    };
    assert_same(&on_postgres(&mut store), &on_sqlite());
}

#[test]
fn postgres_ledger_orders_as_sqlite_under_another_collation() {
    let Some(mut store) = testing::collated_store() else {
        return;
    };
    let differs: bool = store
        .read(|tx| {
            Ok(crate::storage::postgres::get(
                &tx.query_one("SELECT 'a' < 'B'", &[])?,
                0,
            )?)
        })
        .expect("collation");
    assert!(differs, "the database orders 'a' before 'B', unlike SQLite");
    assert_same(&on_postgres(&mut store), &on_sqlite());
}
