//! The jobs of the PostgreSQL backend against a real server: the contract
//! every backend keeps, and the claim under concurrent claimers, each on
//! its own session as workers on several hosts would be.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::Duration;

use crate::storage::jobs::{Claimer, Gates, Jobs as _, NewJob};
use crate::storage::postgres::testing::{self, TestDb};
use crate::storage::postgres::{Tx, get};

#[test]
fn postgres_keeps_the_jobs_contract() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            crate::storage::jobs::check_contract(tx);
            Ok(())
        })
        .expect("write");
}

fn job(repo: &str, task_id: Option<i64>) -> NewJob<'_> {
    NewJob {
        agent: "developer",
        repo,
        task_id,
        stage: None,
        task_content: "do it",
        max_attempts: 2,
    }
}

#[test]
fn postgres_claims_each_job_exactly_once_under_concurrent_claimers() {
    const JOBS: usize = 200;
    const CLAIMERS: usize = 8;
    let Some(mut store) = testing::store() else {
        return;
    };
    let mut ids = store
        .write(|tx| {
            (0..JOBS)
                .map(|_| Ok(tx.job_insert(&job("demo", None), 1)?))
                .collect::<anyhow::Result<Vec<i64>>>()
        })
        .expect("insert");
    let gates = Gates {
        max_concurrency: 1_000,
        serial: false,
        task_deps: false,
    };
    let start = Barrier::new(CLAIMERS);
    let db = store.db();
    let claimed: Vec<Vec<i64>> = thread::scope(|s| {
        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|i| {
                let start = &start;
                s.spawn(move || {
                    let mut mine = db.open();
                    let token = format!("claimer-{i}");
                    let me = Claimer {
                        token: &token,
                        pid: i as u32,
                        boot_id: "boot",
                    };
                    start.wait();
                    let mut got = Vec::new();
                    while let Some(job) = mine
                        .write(|tx| Ok(tx.job_claim(me, gates, 2)?))
                        .expect("claim")
                    {
                        assert_eq!(job.claim_token.as_deref(), Some(token.as_str()));
                        assert_eq!(job.attempts, 1);
                        got.push(job.id);
                    }
                    got
                })
            })
            .collect();
        claimers
            .into_iter()
            .map(|c| c.join().expect("claimer"))
            .collect()
    });
    let mut all: Vec<i64> = claimed.iter().flatten().copied().collect();
    all.sort_unstable();
    ids.sort_unstable();
    assert_eq!(all, ids, "every job claimed, and none twice");
    let running = store.read(|tx| Ok(tx.job_running()?)).expect("running");
    assert_eq!(running.len(), JOBS);
    assert!(running.iter().all(|j| j.attempts == 1));
    eprintln!(
        "claims per claimer: {:?}",
        claimed.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// The worst value of a gate's count over running jobs (running jobs in
/// all, per repository, per task), as the transaction sees it.
fn worst(tx: &Tx<'_>, sql: &str) -> anyhow::Result<i64> {
    Ok(get(&tx.query_one(sql, &[])?, 0)?)
}

/// `CLAIMERS` sessions claim until every queued job is done, each holding
/// a claimed job a few milliseconds before ending it. After every claim,
/// inside the claim's transaction, and in a separate observer session, the
/// gate's count (`sql`) must stay at most `limit`; returns the highest
/// count seen.
fn claim_all_under_gate(db: &TestDb, gates: Gates, sql: &str, limit: i64) -> i64 {
    const CLAIMERS: usize = 8;
    let peak = AtomicI64::new(0);
    let done = AtomicBool::new(false);
    let violations = Mutex::new(Vec::new());
    let start = Barrier::new(CLAIMERS + 1);
    thread::scope(|s| {
        let (peak, done, violations, start) = (&peak, &done, &violations, &start);
        let observer = s.spawn(move || {
            let mut watch = db.open();
            start.wait();
            while !done.load(Ordering::Relaxed) {
                let seen = watch.read(|tx| worst(tx, sql)).expect("observe");
                if seen > limit {
                    violations.lock().expect("lock").push(("observer", seen));
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|i| {
                s.spawn(move || {
                    let mut mine = db.open();
                    let token = format!("claimer-{i}");
                    let me = Claimer {
                        token: &token,
                        pid: i as u32,
                        boot_id: "boot",
                    };
                    start.wait();
                    loop {
                        let claimed = mine
                            .write(|tx| {
                                let Some(job) = tx.job_claim(me, gates, 2)? else {
                                    return Ok(None);
                                };
                                Ok(Some((job, worst(tx, sql)?)))
                            })
                            .expect("claim");
                        if let Some((job, seen)) = claimed {
                            peak.fetch_max(seen, Ordering::Relaxed);
                            if seen > limit {
                                violations.lock().expect("lock").push(("claimer", seen));
                            }
                            thread::sleep(Duration::from_millis(15));
                            let ended = mine
                                .write(|tx| Ok(tx.job_end(job.id, &token, "done", None, 3)?))
                                .expect("end");
                            assert!(ended);
                        } else {
                            let queued = mine
                                .read(|tx| Ok(tx.job_counts()?.get("queued").copied()))
                                .expect("counts");
                            if queued.is_none() {
                                break;
                            }
                            thread::sleep(Duration::from_millis(2));
                        }
                    }
                })
            })
            .collect();
        for c in claimers {
            c.join().expect("claimer");
        }
        done.store(true, Ordering::Relaxed);
        observer.join().expect("observer");
    });
    let violations = violations.into_inner().expect("lock");
    assert!(
        violations.is_empty(),
        "the gate allowed more than {limit}: {violations:?}"
    );
    peak.into_inner()
}

#[test]
fn postgres_keeps_max_concurrency_under_concurrent_claimers() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            for i in 0..40 {
                tx.job_insert(&job(["a", "b", "c", "d"][i % 4], None), 1)?;
            }
            Ok(())
        })
        .expect("insert");
    let gates = Gates {
        max_concurrency: 3,
        serial: false,
        task_deps: false,
    };
    let peak = claim_all_under_gate(
        store.db(),
        gates,
        "SELECT count(*) FROM jobs WHERE status = 'running'",
        3,
    );
    assert_eq!(peak, 3, "eight claimers fill all three places");
    let counts = store.read(|tx| Ok(tx.job_counts()?)).expect("counts");
    assert_eq!(counts.get("done"), Some(&40));
}

#[test]
fn postgres_keeps_the_serial_gate_under_concurrent_claimers() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            for i in 0..24 {
                tx.job_insert(&job(["a", "b", "c"][i % 3], None), 1)?;
            }
            Ok(())
        })
        .expect("insert");
    let gates = Gates {
        max_concurrency: 100,
        serial: true,
        task_deps: false,
    };
    let peak = claim_all_under_gate(
        store.db(),
        gates,
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM jobs
         WHERE status = 'running' GROUP BY repo) per_repo",
        1,
    );
    assert_eq!(peak, 1);
    let counts = store.read(|tx| Ok(tx.job_counts()?)).expect("counts");
    assert_eq!(counts.get("done"), Some(&24));
}

#[test]
fn postgres_keeps_the_task_gate_under_concurrent_claimers() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            tx.batch(
                "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 0, 0), (2, 'A-2', 'demo', 0, 0),
                        (3, 'A-3', 'demo', 0, 0);",
            )?;
            for i in 0..24 {
                tx.job_insert(&job("demo", Some(i % 3 + 1)), 1)?;
            }
            Ok(())
        })
        .expect("insert");
    let gates = Gates {
        max_concurrency: 100,
        serial: false,
        task_deps: true,
    };
    let peak = claim_all_under_gate(
        store.db(),
        gates,
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM jobs
         WHERE status = 'running' GROUP BY task_id) per_task",
        1,
    );
    assert_eq!(peak, 1);
}

#[test]
fn postgres_claim_skips_a_row_another_writer_holds() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let (first, second) = store
        .write(|tx| {
            Ok((
                tx.job_insert(&job("demo", None), 1)?,
                tx.job_insert(&job("demo", None), 1)?,
            ))
        })
        .expect("insert");
    let gates = Gates {
        max_concurrency: 10,
        serial: false,
        task_deps: false,
    };
    let me = Claimer {
        token: "t",
        pid: 1,
        boot_id: "boot",
    };
    let mut other = store.db().open();
    // Another session holds the first job's row (an operator's change in
    // flight); the claim takes the next one instead of waiting.
    other
        .write(|held| {
            held.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&first])?;
            let claimed = store
                .write(|tx| Ok(tx.job_claim(me, gates, 2)?))
                .expect("claim");
            assert_eq!(claimed.map(|j| j.id), Some(second));
            Ok(())
        })
        .expect("hold");
}

#[test]
fn postgres_finalize_requeue_keeps_the_run_it_finalizes() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            let id = tx.job_insert(&job("demo", None), 1)?;
            tx.execute(
                "INSERT INTO agent_runs (id, job_id, agent, started_at) VALUES (7, $1, 'developer', 1)",
                &[&id],
            )?;
            let me = Claimer {
                token: "t",
                pid: 1,
                boot_id: "boot",
            };
            let gates = Gates {
                max_concurrency: 1,
                serial: false,
                task_deps: false,
            };
            tx.job_claim(me, gates, 2)?;
            assert!(tx.job_set_run(id, "t", 7, Some(99))?);
            assert!(tx.job_requeue_for_finalize(id, "t", 7, true, "owner died")?);
            let back = tx.job_get(id)?.expect("job");
            assert_eq!(
                (
                    back.status.as_str(),
                    back.finalize_run_id,
                    back.attempts,
                    back.transient_attempts,
                    back.run_id
                ),
                ("queued", Some(7), 0, 1, None)
            );
            assert!(!back.is_impossible_queued());
            // Any other requeue clears the continuation.
            tx.job_claim_queued(id, me, 3)?;
            assert!(tx.job_release_claim(id, "t")?);
            assert_eq!(tx.job_get(id)?.and_then(|j| j.finalize_run_id), None);
            Ok(())
        })
        .expect("write");
}

/// A statement that changes a job flags the store (its commit wakes idle
/// workers); one that matches no row — an empty claim, a lost fence — does
/// not, as SQLite's per-row update hook does not fire for it.
#[test]
fn postgres_only_a_statement_that_changed_a_job_flags_a_wake_up() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let gates = Gates {
        max_concurrency: 10,
        serial: false,
        task_deps: false,
    };
    let me = Claimer {
        token: "t",
        pid: 1,
        boot_id: "boot",
    };
    assert!(!store.take_jobs_changed(), "a fresh store");
    let empty = store
        .write(|tx| Ok(tx.job_claim(me, gates, 2)?))
        .expect("claim");
    assert!(empty.is_none());
    assert!(!store.take_jobs_changed(), "an empty claim changed nothing");
    store
        .write(|tx| Ok(tx.job_insert(&job("demo", None), 1)?))
        .expect("insert");
    assert!(store.take_jobs_changed(), "an insert");
    let claimed = store
        .write(|tx| Ok(tx.job_claim(me, gates, 2)?))
        .expect("claim")
        .expect("a job");
    assert!(store.take_jobs_changed(), "a claim");
    let lost = store
        .auto()
        .job_set_pid(claimed.id, "another token", 42)
        .expect("fenced write");
    assert!(!lost, "the fence refused it");
    assert!(!store.take_jobs_changed(), "a fenced write that lost");
}
