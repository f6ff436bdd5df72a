//! Running jobs and whether their owners are alive, read once for a view.
//!
//! `orch status`, the attention list, the metrics and the board all ask the
//! same question of every running job: is the process that claimed it still
//! holding its lock? [`probe_running`] answers it for all of them with one
//! light read of the running jobs (not their whole rows) and one census of
//! the owner locks ([`Locks::census`]), not one query or lock probe per job.
//! A view that shows only the first few and counts the rest (`orch status`
//! in text) does not read every running job at all: [`survey`] asks the
//! census for the live owners' tokens and lets indexes count and order the
//! jobs.

use crate::liveness::{Liveness, Locks};
use crate::queue;
use crate::storage;
use crate::storage::Executor;

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
/// `locks`. A lock that cannot be probed counts as dead (with a warning):
/// the view then points at `orch reap`, whose own exact probe decides. A
/// census that cannot be taken at all (the database of advisory locks is
/// out of reach) is an error.
pub fn probe_running(conn: &dyn Executor, locks: &Locks) -> anyhow::Result<Vec<Owner>> {
    let rows = queue::running_owners(conn)?;
    // After the read: a job claimed since took its lock since.
    let census = locks.census()?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let liveness = match r.claim_token.as_deref() {
                Some(token) => census.probe(token).unwrap_or_else(|e| {
                    log::warn!("probing the owner lock of job {}: {e:#}", r.job_id);
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

/// The running jobs as a person reads them: how many, how many have a dead
/// owner, and the first few in [`sort_for_reading`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Jobs running.
    pub total: usize,
    /// Of those, with a dead owner.
    pub dead: usize,
    /// The first few, dead owners first, then the longest running.
    pub first: Vec<Owner>,
}

/// [`Survey`] the `running` jobs, reading `first` of them: the work grows
/// with the live owners and the jobs shown, not with the jobs running (a
/// status over thousands of running jobs reads the locks held, an index
/// lookup per live owner and a page of rows).
///
/// `running` is how many jobs are running, read earlier in the same read
/// transaction: that read pins the snapshot before the locks are looked at,
/// so every job in the snapshot was claimed, and its lock taken, before the
/// census looked.
pub fn survey(
    conn: &dyn Executor,
    locks: &Locks,
    running: usize,
    first: usize,
) -> anyhow::Result<Survey> {
    if running == 0 {
        return Ok(Survey::default());
    }
    let census = locks.census()?;
    let Some(alive) = census.alive_tokens() else {
        // The lock directory cannot be listed: every owner is probed.
        return survey_each(conn, locks, Some(first));
    };
    let dead = running.saturating_sub(queue::running_count_in(conn, &alive)?);
    let page = |among_alive: bool, limit: usize| -> storage::Result<Vec<Owner>> {
        let liveness = if among_alive {
            Liveness::Alive
        } else {
            Liveness::Dead
        };
        Ok(
            queue::running_owners_page(conn, &alive, among_alive, limit)?
                .into_iter()
                .map(|r| Owner {
                    job_id: r.job_id,
                    task_id: r.task_id,
                    since: r.since,
                    liveness,
                })
                .collect(),
        )
    };
    let mut shown = page(false, first)?;
    if shown.len() < first {
        shown.extend(page(true, first - shown.len())?);
    }
    Ok(Survey {
        total: running,
        dead,
        first: shown,
    })
}

/// [`Survey`] every running job by probing its owner: all of them, by id,
/// when `first` is `None`, else the first few in reading order.
pub fn survey_each(
    conn: &dyn Executor,
    locks: &Locks,
    first: Option<usize>,
) -> anyhow::Result<Survey> {
    let mut all = probe_running(conn, locks)?;
    let (total, dead) = (
        all.len(),
        all.iter().filter(|o| o.liveness == Liveness::Dead).count(),
    );
    if let Some(n) = first {
        sort_for_reading(&mut all);
        all.truncate(n);
    }
    Ok(Survey {
        total,
        dead,
        first: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Claimer, Gates, NewJob};

    /// Jobs claimed by live owners, by owners that died (their lock
    /// released), at different times: the survey that reads only the live
    /// tokens and a page agrees with probing every owner, for every page size.
    #[test]
    fn the_survey_agrees_with_probing_every_owner() {
        let (dir, db) = storage::test_db();
        let locks = Locks::Files(dir.path().join("locks"));
        let conn = db.conn();
        let gates = Gates {
            max_concurrency: 100,
            serial: false,
            task_deps: false,
        };
        let mut live = Vec::new();
        for i in 0..12_i64 {
            let job = NewJob {
                agent: "developer",
                repo: "demo",
                task_id: None,
                stage: None,
                task_content: "",
                max_attempts: 2,
            };
            queue::enqueue(conn, &job, 0).expect("enqueue");
            let lock = locks.acquire().expect("lock");
            let claimer = Claimer {
                token: lock.token(),
                pid: std::process::id(),
                boot_id: "boot",
            };
            // Claimed at shuffled times, so reading order is not id order.
            let at = (i * 7) % 12;
            queue::claim(conn, claimer, gates, at)
                .expect("claim")
                .expect("claimed");
            if i % 3 == 0 {
                lock.release();
            } else {
                live.push(lock);
            }
        }
        for first in [0, 1, 3, 4, 5, 12, 20] {
            let fast = survey(conn, &locks, 12, first).expect("survey");
            let each = survey_each(conn, &locks, Some(first)).expect("each");
            assert_eq!(fast, each, "first {first}");
        }
        let all = survey(conn, &locks, 12, 12).expect("survey");
        assert_eq!((all.total, all.dead), (12, 4));
        assert!(all.first[..4].iter().all(|o| o.liveness == Liveness::Dead));
        assert!(all.first.windows(2).all(|w| w[0].liveness != w[1].liveness
            || (w[0].since, w[0].job_id) < (w[1].since, w[1].job_id)));
        drop(live);
    }
}
