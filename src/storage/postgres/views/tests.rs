//! The views of the PostgreSQL backend against a real server: the
//! contract every backend keeps, and the same figures as SQLite's, in the
//! same order, for the same rows, on a database whose collation orders
//! text unlike SQLite's too.

use std::collections::BTreeMap;

use crate::storage::postgres::{Store, get, testing};
use crate::storage::views::Views;

#[test]
fn postgres_keeps_the_views_contract() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            tx.batch(&crate::storage::views::contract_rows("'\\x00'"))?;
            crate::storage::views::check_contract(tx);
            Ok(())
        })
        .expect("write");
}

/// Rows both dialects read: labels that differ only in case or sort
/// differently by byte than by language, runs whose repository comes from
/// their job, their task or nothing, stages without a name and named '',
/// outcomes without a reason, with an empty kind or none, durations below
/// zero, every kind of task the attention view weighs, and failed jobs
/// that are their task's latest or not.
const FIXTURE: &str = "
INSERT INTO tasks (id, work_item_id, repo, stage, created_at, updated_at, escalated_at,
                   blocked_reason, cancel_requested_at)
VALUES (1, 'A-1', 'demo', 'development', 0, 6, 5, NULL, NULL),
       (2, 'B-2', 'other', 'analysis', 0, 7, NULL, NULL, NULL),
       (3, 'C-3', 'demo', 'done', 0, 80, 4, NULL, NULL),
       (4, 'D-4', 'Demo', 'deploy', 0, 8, NULL, NULL, NULL),
       (5, 'E-5', 'demo', 'deploy', 0, 9, NULL, 'over budget', NULL),
       (6, 'F-6', 'b', 'analysis', 0, 10, NULL, NULL, 3),
       (7, 'G-7', 'b', 'analysis', 0, 11, NULL, NULL, NULL),
       (8, 'H-8', 'a', 'review', 0, 12, NULL, 'held', NULL),
       (9, 'I-9', 'a', 'created', 0, 13, 2, NULL, NULL),
       (10, 'J-10', 'a', 'cancelled', 0, 14, 2, 'gone', NULL),
       (11, 'K-11', 'Zed', 'testing', 0, 15, NULL, NULL, NULL);
INSERT INTO deploys (task_id, initiated_at) VALUES (5, 50), (4, NULL);
INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, at)
VALUES (3, 'deploy', 'done', 'advance', 70), (3, 'deploy', 'done', 'advance', 80),
       (1, 'created', 'analysis', 'start', 1), (10, 'deploy', 'done', 'advance', 90),
       (4, 'done', 'deploy', 'rollback', 95);
INSERT INTO jobs (id, agent, repo, task_id, stage, status, created_at, finished_at, error)
VALUES (10, 'analyst', 'other', 2, 'analysis', 'done', 0, 20, NULL),
       (11, 'developer', 'demo', 1, 'development', 'failed', 0, 30, 'boom'),
       (12, 'developer', 'demo', NULL, NULL, 'failed', 3, NULL, NULL),
       (13, 'tester', 'demo', 3, 'testing', 'failed', 0, 60, 'no'),
       (14, 'Developer', 'Demo', 4, 'deploy', 'failed', 0, 61, ''),
       (15, 'analyst', 'b', 6, 'analysis', 'done', 0, 62, NULL),
       (16, 'analyst', 'b', 7, 'analysis', 'done', 0, 63, NULL),
       (17, 'analyst', 'b', 7, 'analysis', 'queued', 0, NULL, NULL),
       (18, 'reviewer', 'a', 8, 'review', 'failed', 0, 64, 'first'),
       (19, 'reviewer', 'a', 8, 'review', 'cancelled', 0, 65, NULL),
       (20, 'tester', 'Zed', 11, 'testing', 'failed', 0, 66, 'last'),
       (21, 'tester', 'a', 10, 'testing', 'failed', 5, NULL, NULL),
       (22, 'z-agent', 'a', NULL, NULL, 'failed', 8, 9, 'x');
INSERT INTO agent_runs (id, job_id, task_id, agent, stage, started_at, finished_at, outcome, cost_usd,
                        input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens)
VALUES (100, 11, 1, 'developer', 'development', 10, 40, 'success', 1.5, 100, 10, 5, NULL),
       (101, 11, 1, 'developer', 'development', 50, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
       (102, 10, 2, 'analyst', 'analysis', 0, 20, 'failure: x', 0.5, 1, 2, NULL, 7),
       (103, NULL, NULL, 'x', NULL, 0, 1, 'success', NULL, NULL, NULL, NULL, NULL),
       (104, NULL, 4, 'x', 'Deploy', 5, 3, 'weird', 0.25, 4, NULL, 1, 1),
       (105, 14, 4, 'Developer', 'deploy', 200, NULL, NULL, NULL, 8, 8, 8, 8),
       (106, 14, NULL, 'Developer', '', 0, 2, ':no kind', 0.125, NULL, NULL, NULL, NULL),
       (107, 15, 6, 'analyst', 'analysis', 3, 9, 'transient: later', NULL, 2, 2, NULL, NULL),
       (108, 20, 11, 'tester', 'Testing', 1, 4, 'failure:x:y', 2.0, 1, 1, 1, 1),
       (109, 22, NULL, 'z-agent', NULL, 1, 2, 'success', 0.5, NULL, NULL, NULL, NULL);
INSERT INTO webhook_deliveries (source, content_hash, body, status, received_at)
VALUES ('plane', 'h1', '\\x00', 'pending', 0), ('plane', 'h2', '\\x00', 'processed', 0),
       ('gitea', 'h1', '\\x00', 'pending', 0), ('Plane', 'h1', '\\x00', 'failed', 0),
       ('gitea', 'h2', '\\x00', 'ignored', 0), ('gitea', 'h3', '\\x00', 'ignored', 0);
";

fn sorted<V>(map: std::collections::HashMap<i64, V>) -> BTreeMap<i64, V> {
    map.into_iter().collect()
}

/// Every view, as text, in the order it answered (maps sorted).
fn figures(store: &impl Views) -> Vec<String> {
    let ids: Vec<i64> = (0..=12).collect();
    vec![
        format!("{:?}", store.view_jobs_by_status_agent().expect("jobs")),
        format!("{:?}", store.view_tasks_by_stage().expect("tasks")),
        format!(
            "{:?}",
            store
                .view_deliveries_by_source_status()
                .expect("deliveries")
        ),
        format!("{:?}", store.view_cost_by_repo_stage().expect("cost")),
        format!(
            "{:?}",
            store.view_tokens_by_repo_stage_kind().expect("tokens")
        ),
        format!(
            "{:?}",
            store.view_runs_by_repo_stage_outcome().expect("runs")
        ),
        format!(
            "{:?}",
            sorted(store.view_run_totals(&ids, 100).expect("totals"))
        ),
        format!(
            "{:?}",
            sorted(store.view_run_totals(&[4, 11], 0).expect("totals"))
        ),
        format!(
            "{:?}",
            sorted(store.view_run_totals(&[], 100).expect("totals"))
        ),
        format!("{:?}", sorted(store.view_done_at(&ids).expect("done"))),
        format!("{:?}", sorted(store.view_done_at(&[]).expect("done"))),
        format!("{:?}", store.view_attention_tasks().expect("attention")),
        format!("{:?}", store.view_failed_jobs().expect("failed")),
    ]
}

fn on_sqlite() -> Vec<String> {
    let (_dir, db) = crate::storage::test_db();
    db.sqlite().execute_batch(FIXTURE).expect("fixture");
    figures(db.sqlite())
}

fn on_postgres(store: &mut Store) -> Vec<String> {
    store
        .write(|tx| {
            tx.batch(FIXTURE)?;
            Ok(())
        })
        .expect("fixture");
    // The views are read in the read-only transaction the views use.
    store.read(|tx| Ok(figures(tx))).expect("read")
}

fn assert_same(postgres: &[String], sqlite: &[String]) {
    assert_eq!(postgres.len(), sqlite.len());
    for (p, s) in postgres.iter().zip(sqlite) {
        assert_eq!(p, s);
    }
}

#[test]
fn postgres_views_answer_as_sqlites() {
    let Some(mut store) = testing::store() else {
        return;
    };
    assert_same(&on_postgres(&mut store), &on_sqlite());
}

#[test]
fn postgres_views_order_as_sqlite_under_another_collation() {
    let Some(mut store) = testing::collated_store() else {
        return;
    };
    let differs: bool = store
        .read(|tx| Ok(get(&tx.query_one("SELECT 'a' < 'B'", &[])?, 0)?))
        .expect("collation");
    assert!(differs, "the database orders 'a' before 'B', unlike SQLite");
    assert_same(&on_postgres(&mut store), &on_sqlite());
}
