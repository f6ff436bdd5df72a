//! The outbox of the PostgreSQL backend against a real server: the
//! contract every backend keeps, the same answers as SQLite's to the same
//! operations, and each message leased once and each key pushed once when
//! two sessions deliver at once, as deliverers on two hosts would.

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::storage::outbox::{Message, Outbox};
use crate::storage::postgres::testing::{self, TestDb};
use crate::storage::postgres::{Store, get};

/// The tasks the tracker messages are about.
const TASKS: &str = "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                     VALUES (1, 'A-1', 'demo', 0, 0), (2, 'B-2', 'demo', 0, 0);";

#[test]
fn postgres_keeps_the_outbox_contract() {
    let Some(mut store) = testing::store() else {
        return;
    };
    store
        .write(|tx| {
            // The contract's tracker messages are about task 1.
            tx.batch(
                "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 0, 0);",
            )?;
            crate::storage::outbox::check_contract(tx);
            Ok(())
        })
        .expect("write");
}

fn state(task_id: i64, state: &str) -> Message {
    Message::State {
        task_id,
        state: state.to_owned(),
    }
}

/// The same operations on any backend, with what each answered (its
/// `Debug` text); `raw` runs a statement both dialects read, for rows no
/// operation writes (payloads that are not a message).
fn scenario(store: &impl Outbox, raw: &dyn Fn(&str)) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: &str, v: &dyn std::fmt::Debug| seen.push(format!("{what}: {v:?}"));
    let comment = Message::Comment {
        task_id: 1,
        author: "dev".into(),
        body: "done".into(),
    };
    let notify = Message::Notify { text: "hi".into() };
    for (key, message, at) in [
        ("s1", state(1, "In Review"), 10),
        ("c1", comment, 11),
        ("s2", state(1, "Done"), 12),
        ("s1", state(1, "Done"), 12),
        ("t1", state(2, "Todo"), 13),
        ("n1", notify, 14),
        ("t2", state(2, "In Progress"), 15),
        ("t3", state(2, "In Review"), 15),
    ] {
        note(key, &store.outbox_push(key, &message, at).expect("push"));
    }
    // A notification that is not JSON, and a tracker payload that is JSON
    // but no object: neither is a state change, and neither breaks the
    // retirement.
    raw(
        "INSERT INTO outbox (dedup_key, channel, task_id, payload, next_attempt_at, created_at)
         VALUES ('bad', 'notifier', NULL, 'not json', 16, 16),
                ('odd', 'tracker', 2, '[1]', 17, 17)",
    );
    note("oldest", &store.outbox_oldest_pending().expect("oldest"));
    note(
        "retired",
        &store.outbox_retire_superseded().expect("retire"),
    );
    note(
        "retired again",
        &store.outbox_retire_superseded().expect("retire"),
    );
    let pending = store.outbox_pending().expect("pending");
    note("pending", &pending);
    // s2 and n1 were the only messages written at 12 and 14.
    let written_at = |at: i64| -> i64 {
        let all = store.outbox_list(None, 100).expect("list");
        all.iter().find(|m| m.created_at == at).expect("there").id
    };
    let (s2, n1) = (written_at(12), written_at(14));
    note("lease", &store.outbox_lease(s2, 20).expect("lease"));
    note("lease again", &store.outbox_lease(s2, 20).expect("lease"));
    note("attempts", &store.outbox_attempts(s2).expect("attempts"));
    store.outbox_fail(s2, "503", false, 50).expect("fail");
    note("lease early", &store.outbox_lease(s2, 49).expect("lease"));
    note("lease due", &store.outbox_lease(s2, 50).expect("lease"));
    store.outbox_mark_delivered(s2, 51).expect("delivered");
    store.outbox_fail(s2, "late", true, 60).expect("fail");
    note("pending", &store.outbox_pending().expect("pending"));
    for p in &pending {
        if serde_json::from_str::<Message>(&p.payload).is_err() {
            store.outbox_bury(p.id, "unreadable").expect("bury");
        }
    }
    store.outbox_fail(n1, "403", true, 70).expect("fail");
    note("dead", &store.outbox_dead().expect("dead"));
    note("counts", &store.outbox_counts().expect("counts"));
    note("list", &store.outbox_list(None, 100).expect("list"));
    note(
        "dead list",
        &store.outbox_list(Some("dead"), 100).expect("list"),
    );
    note(
        "delivered, 2",
        &store.outbox_list(Some("delivered"), 2).expect("list"),
    );
    note(
        "revive delivered",
        &store.outbox_revive(Some(s2), 80).expect("revive"),
    );
    note(
        "revive one",
        &store.outbox_revive(Some(n1), 80).expect("revive"),
    );
    note(
        "revive all",
        &store.outbox_revive(None, 90).expect("revive"),
    );
    note("pending", &store.outbox_pending().expect("pending"));
    note("attempts", &store.outbox_attempts(n1).expect("attempts"));
    note("gone", &store.outbox_attempts(9_999).is_err());
    note("oldest", &store.outbox_oldest_pending().expect("oldest"));
    note("counts", &store.outbox_counts().expect("counts"));
    seen
}

#[test]
fn postgres_outbox_answers_as_sqlites() {
    let Some(mut store) = testing::store() else {
        return;
    };
    let (_dir, db) = crate::storage::test_db();
    let conn = db.sqlite();
    conn.execute_batch(TASKS).expect("tasks");
    let sqlite = scenario(conn, &|sql| conn.execute_batch(sql).expect("raw"));
    let postgres = store
        .write(|tx| {
            tx.batch(TASKS)?;
            Ok(scenario(tx, &|sql| tx.batch(sql).expect("raw")))
        })
        .expect("write");
    assert_eq!(postgres, sqlite);
}

#[test]
fn postgres_refuses_to_retire_past_a_corrupt_tracker_payload_as_sqlite_does() {
    // Only tracker payloads are parsed; one that is not JSON fails the
    // retirement on either backend (SQLite's json_extract: malformed JSON).
    let Some(mut store) = testing::store() else {
        return;
    };
    let corrupt =
        "INSERT INTO outbox (dedup_key, channel, task_id, payload, next_attempt_at, created_at)
                   VALUES ('bad', 'tracker', 1, 'not json', 1, 1)";
    let (_dir, db) = crate::storage::test_db();
    db.sqlite().execute_batch(TASKS).expect("tasks");
    db.sqlite().execute_batch(corrupt).expect("corrupt");
    assert!(db.sqlite().outbox_retire_superseded().is_err());
    let retired = store.write(|tx| {
        tx.batch(TASKS)?;
        tx.batch(corrupt)?;
        Ok(tx.outbox_retire_superseded()?)
    });
    assert!(retired.is_err(), "{retired:?}");
}

/// Push `messages` state changes (task 1 and 2 in turn), due at 10.
fn push_many(store: &mut Store, messages: usize) -> Vec<i64> {
    store
        .write(|tx| {
            tx.batch(TASKS)?;
            for i in 0..messages {
                let task = 1 + (i % 2) as i64;
                tx.outbox_push(&format!("m{i}"), &state(task, &format!("S{i}")), 10)?;
            }
            Ok(tx.outbox_pending()?.iter().map(|p| p.id).collect())
        })
        .expect("push")
}

#[test]
fn postgres_two_deliverers_lease_each_message_once() {
    const MESSAGES: usize = 300;
    let Some(mut store) = testing::store() else {
        return;
    };
    let ids = push_many(&mut store, MESSAGES);
    assert_eq!(ids.len(), MESSAGES);
    let db = store.db();
    let start = Barrier::new(2);
    let delivered: Vec<Vec<i64>> = thread::scope(|s| {
        let deliverers: Vec<_> = (0..2)
            .map(|_| {
                let (start, ids) = (&start, &ids);
                s.spawn(move || {
                    let mut mine = db.open();
                    start.wait();
                    // Both walk the messages in the same order, as a
                    // delivery pass does, so they race for each one.
                    let mut got = Vec::new();
                    for &id in ids {
                        if mine
                            .write(|tx| Ok(tx.outbox_lease(id, 20)?))
                            .expect("lease")
                        {
                            mine.write(|tx| Ok(tx.outbox_mark_delivered(id, 21)?))
                                .expect("delivered");
                            got.push(id);
                        }
                    }
                    got
                })
            })
            .collect();
        deliverers
            .into_iter()
            .map(|d| d.join().expect("deliverer"))
            .collect()
    });
    let mut all: Vec<i64> = delivered.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, ids, "every message delivered, and none twice");
    let (counts, attempts) = store
        .read(|tx| {
            let attempts: Vec<i64> = tx
                .query("SELECT attempts FROM outbox ORDER BY id", &[])?
                .iter()
                .map(|r| get(r, 0))
                .collect::<crate::storage::Result<_>>()?;
            Ok((tx.outbox_counts()?, attempts))
        })
        .expect("read");
    assert_eq!(counts.get("delivered"), Some(&(MESSAGES as i64)));
    assert!(attempts.iter().all(|&a| a == 1), "{attempts:?}");
    eprintln!(
        "leases per deliverer: {:?}",
        delivered.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// Wait until a session of `db` waits for a row lock.
fn wait_for_a_lock_wait(db: &TestDb) {
    let mut watch = db.open();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = watch
            .read(|tx| {
                Ok(get(
                    &tx.query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                        &[],
                    )?,
                    0,
                )?)
            })
            .expect("watch");
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no session ever waited");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Session A leases a message and holds its transaction open while B
/// leases the same message, then commits (`commit`) or rolls back; what
/// B's lease answered.
fn lease_against_an_open_lease(commit: bool) -> Option<bool> {
    let mut store = testing::store()?;
    let id = push_many(&mut store, 1)[0];
    let db = store.db();
    let mut a = db.open();
    Some(thread::scope(|s| {
        let mut b = None;
        let ended = a.write(|tx| {
            assert!(tx.outbox_lease(id, 20)?);
            b = Some(s.spawn(|| {
                let mut b = db.open();
                b.write(|tx| Ok(tx.outbox_lease(id, 20)?)).expect("lease")
            }));
            wait_for_a_lock_wait(db);
            anyhow::ensure!(commit, "rolled back on purpose");
            Ok(())
        });
        assert_eq!(ended.is_ok(), commit, "{ended:?}");
        b.expect("spawned").join().expect("b")
    }))
}

#[test]
fn postgres_a_lease_waits_for_a_concurrent_one_and_takes_it_only_if_that_rolls_back() {
    let Some(after_commit) = lease_against_an_open_lease(true) else {
        return;
    };
    assert!(!after_commit, "a committed lease is taken once");
    let after_rollback = lease_against_an_open_lease(false).expect("store");
    assert!(after_rollback, "a rolled-back lease leaves the message due");
}

#[test]
fn postgres_two_sessions_pushing_the_same_keys_add_each_once() {
    const KEYS: usize = 200;
    let Some(mut store) = testing::store() else {
        return;
    };
    store.write(|tx| Ok(tx.batch(TASKS)?)).expect("tasks");
    let db = store.db();
    let start = Barrier::new(2);
    let added: usize = thread::scope(|s| {
        let pushers: Vec<_> = (0..2)
            .map(|_| {
                let start = &start;
                s.spawn(move || {
                    let mut mine = db.open();
                    start.wait();
                    (0..KEYS)
                        .filter(|i| {
                            mine.write(|tx| {
                                Ok(tx.outbox_push(&format!("k{i}"), &state(1, "Done"), 10)?)
                            })
                            .expect("push")
                        })
                        .count()
                })
            })
            .collect();
        pushers.into_iter().map(|p| p.join().expect("pusher")).sum()
    });
    assert_eq!(added, KEYS, "each key added by one session");
    let counts = store.read(|tx| Ok(tx.outbox_counts()?)).expect("counts");
    assert_eq!(counts.get("pending"), Some(&(KEYS as i64)));
}
