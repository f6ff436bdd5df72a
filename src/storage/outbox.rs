//! The outbox as a backend stores it: messages written in the same
//! transaction as the change they report, each under a dedup key, then
//! leased, delivered, retried or given up on. When and how a message is sent
//! is the domain's (`crate::outbox`); this is the message type and the
//! interface every backend implements (SQLite: `storage::sqlite::outbox`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Result;

/// A message waiting for delivery (stored as its JSON, the `payload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// A comment on the task's tracker issue.
    Comment {
        /// The task.
        task_id: i64,
        /// Who speaks (an agent name or `orch`).
        author: String,
        /// The text.
        body: String,
    },
    /// Move the task's tracker issue to a state.
    State {
        /// The task.
        task_id: i64,
        /// The state's board name.
        state: String,
    },
    /// Tell the humans.
    Notify {
        /// The text.
        text: String,
    },
}

impl Message {
    /// Where it goes: `tracker` or `notifier` (the `channel` column).
    pub fn channel(&self) -> &'static str {
        match self {
            Message::Comment { .. } | Message::State { .. } => "tracker",
            Message::Notify { .. } => "notifier",
        }
    }

    /// The task it is about, if any (the `task_id` column).
    pub fn task_id(&self) -> Option<i64> {
        match self {
            Message::Comment { task_id, .. } | Message::State { task_id, .. } => Some(*task_id),
            Message::Notify { .. } => None,
        }
    }
}

/// A message still pending, as a delivery pass reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Message id.
    pub id: i64,
    /// The task, for tracker messages only (they go in order per task).
    pub task_id: Option<i64>,
    /// The message as stored (JSON of a [`Message`], unless corrupt).
    pub payload: String,
    /// When it is due (epoch seconds).
    pub next_attempt_at: i64,
}

/// One outbox message, as `orch outbox list` shows it.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Message id.
    pub id: i64,
    /// `tracker` or `notifier`.
    pub channel: String,
    /// The task it is about.
    pub task_id: Option<i64>,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// The message (JSON; a payload that is not JSON as a string).
    pub payload: serde_json::Value,
    /// When it was written (epoch seconds).
    pub created_at: i64,
}

/// The outbox of a backend.
pub trait Outbox {
    /// Queue `message` under `key`, due at `now`. A key already present is
    /// not queued again; returns whether a message was added.
    fn outbox_push(&self, key: &str, message: &Message, now: i64) -> Result<bool>;

    /// Retire, as delivered and never sent, every pending tracker state
    /// change that a newer one for the same task (pending or delivered)
    /// follows, naming the newest in `last_error`. Returns how many.
    fn outbox_retire_superseded(&self) -> Result<usize>;

    /// The first 1000 pending messages, oldest first, due or not.
    fn outbox_pending(&self) -> Result<Vec<Pending>>;

    /// Give message `id` up at once (`dead`), for `error`.
    fn outbox_bury(&self, id: i64, error: &str) -> Result<()>;

    /// The delivery attempts of message `id` so far (an error if it is gone).
    fn outbox_attempts(&self, id: i64) -> Result<i64>;

    /// Record a failed delivery of message `id`, if still pending: its
    /// `error`, when it is due again, and whether it is now `dead`.
    fn outbox_fail(&self, id: i64, error: &str, dead: bool, next_attempt_at: i64) -> Result<()>;

    /// Take message `id` for 60 s from `now` and count the attempt, if it is
    /// pending and due; whether it was.
    fn outbox_lease(&self, id: i64, now: i64) -> Result<bool>;

    /// Mark message `id` delivered at `now`, clearing its last error.
    fn outbox_mark_delivered(&self, id: i64, now: i64) -> Result<()>;

    /// When the oldest pending message was written, if one is pending.
    fn outbox_oldest_pending(&self) -> Result<Option<i64>>;

    /// How many messages there are per status present.
    fn outbox_counts(&self) -> Result<BTreeMap<String, i64>>;

    /// How many messages are dead, and when the oldest of them was written.
    fn outbox_dead(&self) -> Result<(i64, Option<i64>)>;

    /// The newest `limit` messages, of `status` only if given.
    fn outbox_list(&self, status: Option<&str>, limit: u32) -> Result<Vec<Listed>>;

    /// Put message `id` (if not delivered), or with `None` every dead
    /// message, back in line, due at `now`, attempts reset. Returns how many.
    fn outbox_revive(&self, id: Option<i64>, now: i64) -> Result<usize>;
}

/// The contract every backend's [`Outbox`] keeps, run by each backend's
/// tests on an empty outbox and a store with task 1.
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Outbox) {
    let state = |state: &str| Message::State {
        task_id: 1,
        state: state.to_owned(),
    };
    let notify = Message::Notify { text: "hi".into() };
    assert!(
        store
            .outbox_push("s1", &state("In Review"), 10)
            .expect("push")
    );
    assert!(!store.outbox_push("s1", &state("Done"), 10).expect("push"));
    assert!(store.outbox_push("n1", &notify, 11).expect("push"));
    assert!(store.outbox_push("s2", &state("Done"), 12).expect("push"));
    assert_eq!(store.outbox_oldest_pending().expect("oldest"), Some(10));
    // The older state change is retired, never sent.
    assert_eq!(store.outbox_retire_superseded().expect("retire"), 1);
    let pending = store.outbox_pending().expect("pending");
    let ids: Vec<i64> = pending.iter().map(|p| p.id).collect();
    let [n1, s2] = ids[..] else {
        panic!("two pending messages, not {ids:?}");
    };
    assert_eq!(
        (
            pending[0].task_id,
            pending[1].task_id,
            pending[1].next_attempt_at
        ),
        (None, Some(1), 12)
    );
    assert_eq!(
        serde_json::from_str::<Message>(&pending[1].payload).expect("payload"),
        state("Done")
    );
    // A lease counts the attempt and makes it not due for 60 s.
    assert!(store.outbox_lease(s2, 20).expect("lease"));
    assert!(!store.outbox_lease(s2, 21).expect("lease"));
    assert_eq!(store.outbox_attempts(s2).expect("attempts"), 1);
    store.outbox_fail(s2, "503", false, 100).expect("fail");
    assert!(!store.outbox_lease(s2, 99).expect("lease"));
    assert!(store.outbox_lease(s2, 100).expect("lease"));
    store.outbox_mark_delivered(s2, 101).expect("delivered");
    store.outbox_bury(n1, "unreadable").expect("bury");
    assert_eq!(store.outbox_oldest_pending().expect("oldest"), None);
    assert_eq!(store.outbox_dead().expect("dead"), (1, Some(11)));
    let counts = store.outbox_counts().expect("counts");
    assert_eq!(
        (
            counts.get("delivered"),
            counts.get("dead"),
            counts.get("pending")
        ),
        (Some(&2), Some(&1), None)
    );
    let delivered = store.outbox_list(Some("delivered"), 10).expect("list");
    let retired = format!("superseded by a newer state change (#{s2})");
    assert_eq!(
        delivered
            .iter()
            .map(|m| m.last_error.as_deref())
            .collect::<Vec<_>>(),
        [None, Some(retired.as_str())]
    );
    let dead = store.outbox_list(Some("dead"), 10).expect("list");
    assert_eq!(
        dead.iter()
            .map(|m| (m.id, m.channel.as_str(), m.last_error.as_deref()))
            .collect::<Vec<_>>(),
        [(n1, "notifier", Some("unreadable"))]
    );
    assert_eq!(dead[0].payload["text"], "hi");
    let all = store.outbox_list(None, 2).expect("list");
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), [s2, n1]);
    // A delivered message stays delivered; a dead one comes back.
    assert_eq!(store.outbox_revive(Some(s2), 200).expect("revive"), 0);
    assert_eq!(store.outbox_revive(None, 200).expect("revive"), 1);
    let back = store.outbox_pending().expect("pending");
    assert_eq!(
        back.iter()
            .map(|p| (p.id, p.next_attempt_at))
            .collect::<Vec<_>>(),
        [(n1, 200)]
    );
    assert_eq!(store.outbox_attempts(n1).expect("attempts"), 0);
    store.outbox_fail(n1, "403", true, 300).expect("fail");
    assert_eq!(store.outbox_dead().expect("dead"), (1, Some(11)));
}
