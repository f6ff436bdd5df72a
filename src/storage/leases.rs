//! Merge leases as a backend stores them: one per repository, naming the
//! task, branch and job that hold it. What a lease means and when it may be
//! taken back is the pipeline's (`pipeline::lease`); this is the interface
//! every backend implements (SQLite: `storage::sqlite::leases`).

use serde::Serialize;

use super::Result;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The repository.
    pub repo: String,
    /// The holding task.
    pub task_id: Option<i64>,
    /// The holding branch.
    pub branch: String,
    /// The holding work item.
    pub work_item_id: Option<String>,
    /// The job that acquired it.
    pub holder_job_id: Option<i64>,
    /// When it was acquired (epoch seconds).
    pub acquired_at: i64,
}

/// Who asks for a lease.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// The task.
    pub task_id: i64,
    /// Its branch.
    pub branch: &'a str,
    /// Its work item.
    pub work_item_id: &'a str,
    /// The job doing the merge, if any.
    pub job_id: Option<i64>,
}

/// The merge leases of a backend.
pub trait Leases {
    /// Take `repo`'s lease for `holder` in one statement if it is free, or
    /// refresh it (job, pid) if `holder`'s branch has it already; another
    /// branch's lease is left alone. Returns the lease as it then stands.
    fn lease_take(&self, repo: &str, holder: Holder<'_>, now: i64) -> Result<Option<Lease>>;

    /// Give `repo`'s lease up if `branch` holds it; whether one was.
    fn lease_release(&self, repo: &str, branch: &str) -> Result<bool>;

    /// Give up whatever lease `task_id` holds, in any repository.
    fn lease_release_for_task(&self, task_id: i64) -> Result<usize>;

    /// The lease of `repo`, if held.
    fn lease_get(&self, repo: &str) -> Result<Option<Lease>>;

    /// Every lease, by repository.
    fn lease_all(&self) -> Result<Vec<Lease>>;
}

/// The contract every backend's [`Leases`] keeps, run by each backend's
/// tests on a store with no lease and tasks 1 and 2.
#[cfg(test)]
pub(crate) fn check_contract(store: &impl Leases) {
    let a = Holder {
        task_id: 1,
        branch: "feature/A-1",
        work_item_id: "A-1",
        job_id: Some(10),
    };
    let b = Holder {
        task_id: 2,
        branch: "feature/B-2",
        work_item_id: "B-2",
        job_id: Some(20),
    };
    let taken = store
        .lease_take("demo", a, 100)
        .expect("take")
        .expect("held");
    assert_eq!(
        (taken.branch.as_str(), taken.holder_job_id),
        ("feature/A-1", Some(10))
    );
    // The same branch refreshes its job and keeps its time; another is refused.
    let again = Holder {
        job_id: Some(11),
        ..a
    };
    let refreshed = store
        .lease_take("demo", again, 200)
        .expect("take")
        .expect("held");
    assert_eq!(
        (refreshed.holder_job_id, refreshed.acquired_at),
        (Some(11), 100)
    );
    let busy = store
        .lease_take("demo", b, 300)
        .expect("take")
        .expect("held");
    assert_eq!(busy.branch, "feature/A-1");
    // Leases are per repository.
    store.lease_take("other", b, 300).expect("take");
    let all = store.lease_all().expect("all");
    assert_eq!(
        all.iter()
            .map(|l| (l.repo.as_str(), l.task_id))
            .collect::<Vec<_>>(),
        [("demo", Some(1)), ("other", Some(2))]
    );
    // Only the holder's branch releases.
    assert!(!store.lease_release("demo", "feature/B-2").expect("release"));
    assert!(store.lease_release("demo", "feature/A-1").expect("release"));
    assert_eq!(store.lease_get("demo").expect("get"), None);
    assert_eq!(store.lease_release_for_task(2).expect("release"), 1);
    assert!(store.lease_all().expect("all").is_empty());
}
