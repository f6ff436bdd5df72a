//! Running jobs and whether their owners are alive, read once for a view.
//!
//! `orch status`, the attention list, the metrics and the board all ask the
//! same question of every running job: is the process that claimed it still
//! holding its lock? They share one light read of the running jobs (not their
//! whole rows) and one [`Census`] of the lock directory, so a view over
//! thousands of running jobs costs one query and two reads of the file
//! system, not one query or lock probe per job.

use std::path::Path;

use rusqlite::Connection;

use crate::liveness::Liveness;
use crate::liveness::census::Census;
use crate::queue;

/// A running job's owner and whether it is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The job.
    pub job_id: i64,
    /// Its task, if any.
    pub task_id: Option<i64>,
    /// When it was claimed.
    pub since: i64,
    /// Whether its owner still holds its lock.
    pub liveness: Liveness,
}

/// Every running job's owner, by job id, each probed through its lock in
/// `locks_dir`. A lock that cannot be probed counts as dead (with a warning):
/// the view then points at `orch reap`, whose own exact probe decides.
pub fn probe_running(conn: &Connection, locks_dir: &Path) -> rusqlite::Result<Vec<Owner>> {
    let rows = queue::running_owners(conn)?;
    // After the read: a job claimed since has its lock file created since.
    let census = Census::take(locks_dir);
    Ok(rows
        .into_iter()
        .map(|r| {
            let liveness = match r.claim_token.as_deref() {
                Some(token) => census.probe(token).unwrap_or_else(|e| {
                    log::warn!("probing the owner lock of job {}: {e}", r.job_id);
                    Liveness::Dead
                }),
                None => Liveness::Dead,
            };
            Owner {
                job_id: r.job_id,
                task_id: r.task_id,
                since: r.since,
                liveness,
            }
        })
        .collect())
}

/// The order a person reads them in: dead owners first (they need a look),
/// then the longest running.
pub fn sort_for_reading(owners: &mut [Owner]) {
    owners.sort_by_key(|o| (o.liveness == Liveness::Alive, o.since, o.job_id));
}
