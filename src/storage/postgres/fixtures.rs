//! Test fixtures shared by the concepts' PostgreSQL tests: a job row for
//! the contracts' `add_job` (jobs are another concept's), and two sessions
//! racing for one operation, the second's statement made to wait on the
//! first's uncommitted change, so a guard's re-check after the wait is what
//! the test sees (an exactly-once operation must answer once).

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use super::testing::TestDb;
use super::{Tx, get};
use crate::storage::Result;

/// A job of `task_id` in `tx`, as the contracts' `add_job` wants it:
/// `queued`, or `running` with `token`. Its id.
pub(crate) fn add_job(
    tx: &Tx<'_>,
    task_id: i64,
    agent: &str,
    status: &str,
    token: Option<&str>,
) -> i64 {
    let row = tx
        .query_one(
            "INSERT INTO jobs (agent, repo, task_id, status, claim_token, created_at)
             VALUES ($1, 'demo', $2, $3, $4, 0)
             RETURNING id",
            &[&agent, &task_id, &status, &token],
        )
        .expect("job");
    get(&row, 0).expect("job id")
}

/// How long [`race`] waits for the second session to block.
const BLOCK_WITHIN: Duration = Duration::from_secs(20);

/// Run `op` on two sessions of `db` at once: the first runs it in its
/// transaction and, before committing, lets the second start its own; the
/// first commits only once the second session is seen waiting on a lock
/// (`pg_stat_activity`, from a third session). So the second's statement
/// waited for the first's change and ran against it. The two answers, the
/// first's first. Panics if the second never blocks.
pub(crate) fn race<T: Send>(db: &TestDb, op: &(dyn Fn(&Tx<'_>) -> Result<T> + Sync)) -> (T, T) {
    let mut first = db.open();
    let mut second = db.open();
    let mut watcher = db.open();
    let second_pid: i32 = second
        .read(|tx| Ok(get(&tx.query_one("SELECT pg_backend_pid()", &[])?, 0)?))
        .expect("pid");
    let go = Barrier::new(2);
    thread::scope(|s| {
        let go = &go;
        let other = s.spawn(move || {
            go.wait();
            second.write(|tx| Ok(op(tx)?)).expect("second session")
        });
        let mine = first
            .write(|tx| {
                let out = op(tx)?;
                go.wait();
                let since = Instant::now();
                loop {
                    let waiting: i64 = watcher.read(|w| {
                        Ok(get(
                            &w.query_one(
                                "SELECT count(*) FROM pg_stat_activity
                                 WHERE pid = $1 AND wait_event_type = 'Lock'",
                                &[&second_pid],
                            )?,
                            0,
                        )?)
                    })?;
                    if waiting > 0 {
                        break;
                    }
                    assert!(
                        since.elapsed() < BLOCK_WITHIN,
                        "the second session never waited on the first's lock"
                    );
                    thread::sleep(Duration::from_millis(5));
                }
                Ok(out)
            })
            .expect("first session");
        (mine, other.join().expect("second session"))
    })
}
