//! The tasks of the PostgreSQL backend against a real server: the contract
//! every backend keeps, and the operations that must happen once (a task's
//! id, its cancel mark, the first STOP request) raced from two sessions.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::storage::postgres::fixtures::{add_job, race};
use crate::storage::postgres::testing;
use crate::storage::tasks::{NewTaskRow, Tasks as _};

#[test]
fn postgres_keeps_the_tasks_contract() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            crate::storage::tasks::check_contract(tx, &|task, agent, status, token| {
                add_job(tx, task, agent, status, token)
            });
            Ok(())
        })
        .expect("write");
}

fn row<'a>(work_item_id: &'a str, repo: &'a str) -> NewTaskRow<'a> {
    NewTaskRow {
        work_item_id,
        title: "Title",
        description: "",
        repo,
        branch: "feature/x",
        stage: "analysis",
        plane_id: None,
        plane_issue_id: None,
        plane_project_id: None,
        depends_on: None,
    }
}

/// What `pipeline::task::create` does for a generated work-item id: read
/// the next number, build the id from it, insert. Returns (number, id).
fn create(tx: &crate::storage::postgres::Tx<'_>, repo: &str) -> crate::storage::Result<(i64, i64)> {
    let n = tx.task_next_number()?;
    let id = tx.task_insert(&row(&format!("ORCH-{n}"), repo), true, 10)?;
    Ok((n, id))
}

#[test]
fn postgres_gives_a_task_the_number_it_read_under_concurrent_creation() {
    let Some(mut store) = testing::store() else {
        return;
    };
    // Explicit ids (as fixtures and copied databases have) do not move the
    // identity sequence; the next task still gets one more than the largest.
    store
        .write(|tx| {
            tx.batch(
                "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 0, 0), (2, 'A-2', 'demo', 0, 0);",
            )?;
            Ok(())
        })
        .expect("fixture");
    assert_eq!(
        store.write(|tx| Ok(create(tx, "demo")?)).expect("create"),
        (3, 3)
    );
    // A rolled-back creation hands its number back, as on SQLite.
    let rolled_back = store.write(|tx| -> anyhow::Result<()> {
        create(tx, "demo")?;
        anyhow::bail!("roll back")
    });
    assert!(rolled_back.is_err());
    // Two sessions creating at once in the same repository both succeed,
    // each with the number it read as its id and work-item suffix.
    let (first, second) = race(store.db(), &|tx| create(tx, "demo"));
    assert_eq!((first, second), ((4, 4), (5, 5)));
    let ids: Vec<(i64, String)> = store
        .read(|tx| {
            Ok(tx
                .task_list(None, None, 10)?
                .into_iter()
                .map(|t| (t.id, t.work_item_id))
                .collect())
        })
        .expect("list");
    assert_eq!(
        ids,
        [
            (5, "ORCH-5".to_owned()),
            (4, "ORCH-4".to_owned()),
            (3, "ORCH-3".to_owned()),
            (2, "A-2".to_owned()),
            (1, "A-1".to_owned()),
        ]
    );
}

#[test]
fn postgres_marks_a_task_cancelled_once_under_concurrent_cancels() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let task = store
        .write(|tx| {
            let mut r = row("A-1", "demo");
            r.plane_id = Some("PL-1");
            r.plane_issue_id = Some("uuid-1");
            Ok(tx.task_insert(&r, true, 10)?)
        })
        .expect("task");
    let (first, second) = race(store.db(), &|tx| {
        tx.task_cancel_mark(task, "analysis", "stop", 500)
    });
    assert_eq!((first, second), (true, false));
    let (t, history) = store
        .read(|tx| Ok((tx.task_get(task)?.expect("task"), tx.task_history(task)?)))
        .expect("read");
    let tomb = format!("#cancelled-{task}");
    assert_eq!(
        (
            t.stage.as_str(),
            t.work_item_id,
            t.plane_id,
            t.plane_issue_id
        ),
        (
            "cancelled",
            format!("A-1{tomb}"),
            Some(format!("PL-1{tomb}")),
            Some(format!("uuid-1{tomb}"))
        ),
        "tombstoned once"
    );
    assert_eq!(
        history.iter().filter(|h| h.kind == "cancel").count(),
        1,
        "one cancel transition"
    );
}

#[test]
fn postgres_keeps_the_first_stop_request_under_concurrent_requests() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let task = store
        .write(|tx| Ok(tx.task_insert(&row("A-1", "demo"), true, 10)?))
        .expect("task");
    let clock = AtomicI64::new(400);
    race(store.db(), &|tx| {
        tx.task_cancel_request_keep_first(task, clock.fetch_add(10, Ordering::SeqCst))
    });
    let t = store
        .read(|tx| Ok(tx.task_get(task)?.expect("task")))
        .expect("read");
    assert_eq!((t.cancel_requested_at, t.updated_at), (Some(400), 410));
    assert_eq!(
        store
            .read(|tx| Ok(tx.task_cancel_pending()?))
            .expect("pending"),
        [task]
    );
}
