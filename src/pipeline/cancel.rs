//! STOP: cancel a task (seed ORCH-090). The full reset stops the task's
//! running agent, cancels its queued and running jobs, releases its merge
//! lease, archives its artifacts, removes its worktree, deletes its remote
//! branch (never main, master or the default branch), and marks it
//! `cancelled` with its keys tombstoned (`#cancelled-<id>`) so the issue can
//! start afresh. Inside a critical window — a production deploy initiated, or
//! a merge/deploy actor of the task running with the lease held — only queued
//! jobs are cancelled and a durable request is recorded; the reset is applied
//! when the irreversible step ends (`orch reap` and the deploy finalizer apply
//! pending requests).
//!
//! Crash safety: the request (`cancel_requested_at`) and the job cancellation
//! commit first; the teardown steps are idempotent; the final mark commits
//! last. A crash anywhere leaves a pending request that `orch reap` completes.

use serde::Serialize;

use crate::backends::forge;
use crate::context::Ctx;
use crate::crash;
use crate::liveness::{Liveness, Locks};
use crate::outbox::{self, Message};
use crate::pipeline::{lease, self_deploy, task};
use crate::queue;
use crate::storage::{Db, counters, now};
use crate::workspace::Workspace;

/// What a cancel did.
#[derive(Debug, Clone, Serialize)]
pub struct Cancelled {
    /// Whether the request was valid (a no-op on a terminal task is ok).
    pub ok: bool,
    /// Whether the reset was deferred to the end of a critical window.
    pub deferred: bool,
    /// Running agents stopped.
    pub stopped: u32,
    /// `cancelled`, `deferred-critical-window`, `deferred-already-pending`,
    /// `already-terminal (<stage>)`, `no-task`, `not-applicable (<why>)`.
    pub note: String,
}

impl Cancelled {
    fn noop(ok: bool, note: String) -> Cancelled {
        Cancelled {
            ok,
            deferred: false,
            stopped: 0,
            note,
        }
    }
}

/// Whether `task_id` is inside a critical window, and why.
pub fn critical_window(ctx: &Ctx, db: &Db, task: &task::Task) -> anyhow::Result<Option<String>> {
    // A deploy record that cannot be read counts as none.
    let deploy = self_deploy::get(db.conn(), task.id).ok().flatten();
    if deploy.is_some_and(|d| d.initiated_at.is_some() && d.finished_at.is_none()) {
        return Ok(Some("the production deploy is initiated".into()));
    }
    let holds_lease = lease::get(db.conn(), &task.repo)?
        .is_some_and(|l| Some(l.branch.as_str()) == task.branch.as_deref());
    if holds_lease {
        let locks = ctx.locks()?;
        for j in queue::for_task(db.conn(), task.id)? {
            // A probe that cannot ask is an error, never "dead": the STOP
            // waits rather than tear down a live merge.
            if j.status == "running"
                && matches!(j.stage.as_deref(), Some("deploy-staging" | "deploy"))
                && let Some(token) = j.claim_token.as_deref()
                && locks.probe(token)? == Liveness::Alive
            {
                return Ok(Some(format!(
                    "job {} ({}) is merging/deploying with the lease held",
                    j.id, j.agent
                )));
            }
        }
    }
    Ok(None)
}

/// Cancel `task_id` (STOP). `force` applies the full reset even inside a
/// critical window (the deploy finalizer uses it once the window closed).
pub fn cancel_task(
    ctx: &Ctx,
    db: &mut Db,
    task_id: i64,
    reason: &str,
    force: bool,
) -> anyhow::Result<Cancelled> {
    let Some(t) = task::get(db.conn(), task_id)? else {
        return Ok(Cancelled::noop(false, "no-task".into()));
    };
    if t.stage().is_terminal() {
        return Ok(Cancelled::noop(
            true,
            format!("already-terminal ({})", t.stage),
        ));
    }
    if !ctx.config.stop_applies(&t.repo) {
        return Ok(Cancelled::noop(
            false,
            format!(
                "not-applicable (STOP is {} for repo {})",
                if ctx.config.stop_status_enabled {
                    "out of scope"
                } else {
                    "disabled"
                },
                t.repo
            ),
        ));
    }
    let t0 = now();
    if !force && let Some(why) = critical_window(ctx, db, &t)? {
        let first = db.write(|tx| {
            let first = t.cancel_requested_at.is_none();
            if first {
                tx.task_cancel_request(task_id, t0)?;
            }
            // Queued work stops; the deploy finalizer is part of the
            // irreversible step and must run to apply this request.
            tx.task_cancel_queued_jobs(task_id, self_deploy::FINALIZER_AGENT, t0)?;
            outbox::push(
                tx,
                &format!("cancel-deferred-{task_id}"),
                &Message::Notify {
                    text: format!(
                        "{}: STOP received while {why}; the task will be cancelled when that step ends ({reason})",
                        t.work_item_id
                    ),
                },
                t0,
            )?;
            Ok(first)
        })?;
        return Ok(Cancelled {
            ok: true,
            deferred: true,
            stopped: 0,
            note: if first {
                "deferred-critical-window".into()
            } else {
                "deferred-already-pending".into()
            },
        });
    }

    // 1. The durable request, and no job of the task is claimable or finishable any more.
    let running = db.write(|tx| {
        tx.task_cancel_request_keep_first(task_id, t0)?;
        let running: Vec<queue::Job> = queue::for_task(tx, task_id)?
            .into_iter()
            .filter(|j| j.status == "running")
            .collect();
        queue::cancel_for_task(tx, task_id, false, t0)?;
        lease::release_for_task(tx, task_id)?;
        Ok(running)
    })?;
    crash::point("cancel.requested");

    let stopped = stop_running(&ctx.locks()?, task_id, &running)?;
    tear_down(ctx, &t)?;
    crash::point("cancel.torn_down");
    mark_cancelled(db, &t, reason)?;
    if let Err(e) = outbox::deliver(ctx, db) {
        log::warn!("delivering the outbox: {e:#}");
    }
    Ok(Cancelled {
        ok: true,
        deferred: false,
        stopped,
        note: "cancelled".into(),
    })
}

/// Step 2 of [`cancel_task`]: stop the task's running work. The agent's
/// process group is signalled only while its owner's lock proves the group
/// is still this run's; the owner is killed only once that pid is shown to
/// hold the lock on this host, and we wait for it to die so nothing pushes
/// after the teardown. A pid means something only on its own host: with
/// owners on several hosts, a job whose owner runs elsewhere is not
/// signalled at all (its cancelled row fences whatever it commits; see
/// docs/scaling.md). Returns how many were stopped.
fn stop_running(locks: &Locks, task_id: i64, running: &[queue::Job]) -> anyhow::Result<u32> {
    let mut stopped = 0;
    for j in running {
        let Some(token) = j.claim_token.as_deref() else {
            continue;
        };
        if locks.probe(token)? != Liveness::Alive {
            continue;
        }
        let owner_here = match j.owner_pid {
            Some(owner) => locks.pid_holds(token, owner)?,
            None => false,
        };
        if locks.spans_hosts() && !owner_here {
            log::warn!(
                "job {} ({}) of task {task_id} is not owned by a process of this host: \
                 not signalled from here; its owner's commit will find it cancelled",
                j.id,
                j.agent
            );
            continue;
        }
        if let Some(pgid) = j.pid {
            let pgid = nix::unistd::Pid::from_raw(i32::try_from(pgid).unwrap_or(0));
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        }
        if owner_here && let Some(owner) = j.owner_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(owner).unwrap_or(0)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while locks.probe(token)? == Liveness::Alive && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stopped += 1;
        log::warn!(
            "stopped job {} ({}) to cancel task {task_id}",
            j.id,
            j.agent
        );
    }

    Ok(stopped)
}

/// Step 3 of [`cancel_task`], idempotent: archive the artifacts, remove the
/// worktree, delete the branch.
fn tear_down(ctx: &Ctx, t: &task::Task) -> anyhow::Result<()> {
    let task_id = t.id;
    let original_wi = original(&t.work_item_id);
    if let (Ok(repo), Some(branch)) = (ctx.config.repo(&t.repo), t.branch.as_deref()) {
        let ws = Workspace::new(&ctx.repos_dir(), &t.repo, repo)?;
        if let Ok(worktree) = ws.worktree_dir(&original_wi) {
            let artifacts = worktree.join("docs/work-items").join(&original_wi);
            if artifacts.is_dir() {
                let archive = ctx
                    .state_dir
                    .join("archive")
                    .join(&t.repo)
                    .join(&original_wi);
                copy_dir(&artifacts, &archive)?;
            }
            ws.remove(&original_wi)?;
        }
        match forge::for_repo(ctx, &t.repo).and_then(|f| f.delete_branch(branch)) {
            Ok(_) => {}
            Err(e) => log::warn!("deleting branch {branch} of task {task_id}: {e:#}"),
        }
    }
    Ok(())
}

/// Step 4 of [`cancel_task`]: mark the task cancelled and tombstone its keys;
/// only the process whose mark changed the row records and announces it.
fn mark_cancelled(db: &mut Db, t: &task::Task, reason: &str) -> anyhow::Result<()> {
    let task_id = t.id;
    let original_wi = original(&t.work_item_id);
    db.write(|tx| {
        if !tx.task_cancel_mark(task_id, &t.stage, reason, now())? {
            return Ok(());
        }
        counters::bump(
            tx,
            "cancelled_total",
            1,
            Some(&serde_json::json!({"task_id": task_id})),
            now(),
        )?;
        outbox::push(
            tx,
            &format!("cancel-{task_id}:comment"),
            &Message::Comment {
                task_id,
                author: "orch".into(),
                body: format!(
                    "Cancelled ({reason}). Artifacts are kept; the issue can be started afresh."
                ),
            },
            now(),
        )?;
        outbox::push(
            tx,
            &format!("cancel-{task_id}:notify"),
            &Message::Notify {
                text: format!("{original_wi}: cancelled from {} ({reason})", t.stage),
            },
            now(),
        )?;
        Ok(())
    })?;
    Ok(())
}

/// Apply `task_id`'s pending cancel if its critical window has closed. Called
/// by every process that may be the one leaving the window — the worker after
/// its commit, the deploy finalizer, `orch reap`, `orch reconcile` — so the
/// first to see it closed applies it; the final mark happens exactly once.
pub fn apply_pending_for(
    ctx: &Ctx,
    db: &mut Db,
    task_id: i64,
) -> anyhow::Result<Option<Cancelled>> {
    let Some(t) = task::get(db.conn(), task_id)? else {
        return Ok(None);
    };
    if t.cancel_requested_at.is_none()
        || t.stage().is_terminal()
        || critical_window(ctx, db, &t)?.is_some()
    {
        return Ok(None);
    }
    cancel_task(ctx, db, task_id, "pending STOP request", true).map(Some)
}

/// What [`apply_pending`] did: the cancels applied, and the tasks whose
/// cancel failed (the next pass retries them; one never stops the others).
#[derive(Debug, Default)]
pub struct PendingApplied {
    /// Tasks cancelled, with what the cancel did.
    pub applied: Vec<(i64, Cancelled)>,
    /// `task <id>: <error>` for each task whose cancel failed.
    pub errors: Vec<String>,
}

/// Apply every pending cancel whose critical window has closed (run by
/// `orch reap` and `orch reconcile`).
pub fn apply_pending(ctx: &Ctx, db: &mut Db) -> anyhow::Result<PendingApplied> {
    let pending = db.conn().task_cancel_pending()?;
    let mut out = PendingApplied::default();
    for id in pending {
        match apply_pending_for(ctx, db, id) {
            Ok(Some(c)) => out.applied.push((id, c)),
            Ok(None) => {}
            Err(e) => {
                log::warn!("applying the pending cancel of task {id}: {e:#}");
                out.errors.push(format!("task {id}: {e:#}"));
            }
        }
    }
    Ok(out)
}

/// The key without its tombstone.
pub fn original(key: &str) -> String {
    key.split("#cancelled-").next().unwrap_or(key).to_owned()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("archiving {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;
    use std::path::PathBuf;

    use super::*;
    use crate::liveness::advisory::{test_server, token_of};
    use crate::queue::{Claimer, Gates, NewJob};

    /// With owners on several hosts, a pid in a job row may be another
    /// host's: a STOP here must signal neither it nor its process group,
    /// even when a process of this host happens to have that very pid.
    #[test]
    fn a_stop_never_signals_the_pids_of_an_owner_on_another_host() {
        let Some(url) = test_server() else { return };
        let locks = Locks::configured(PathBuf::new(), Some(&url)).expect("locks");
        // A local process whose pid (and group) the remote owner's row names.
        let mut bystander = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = bystander.id();
        // The owner on "another host" holds its lock under that same pid.
        let joiner = if url.contains('?') { '&' } else { '?' };
        let mut owner = format!("{url}{joiner}application_name=orch:another-host:{pid}")
            .parse::<postgres::Config>()
            .expect("config")
            .connect(postgres::NoTls)
            .expect("owner session");
        let key: i64 = owner
            .query_one("SELECT (random() * 9.0e18)::bigint", &[])
            .expect("key")
            .get(0);
        owner
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .expect("lock");
        let token = token_of(key);
        let (_dir, db) = crate::storage::test_db();
        let conn = db.conn();
        let job = NewJob {
            agent: "developer",
            repo: "demo",
            task_id: None,
            stage: None,
            task_content: "",
            max_attempts: 2,
        };
        let id = queue::enqueue(conn, &job, 0).expect("enqueue");
        let claimer = Claimer {
            token: &token,
            pid,
            boot_id: "another boot",
        };
        let gates = Gates {
            max_concurrency: 1,
            serial: false,
            task_deps: false,
        };
        queue::claim(conn, claimer, gates, 0)
            .expect("claim")
            .expect("claimed");
        assert!(queue::set_pid(conn, id, &token, pid).expect("set pid"));
        let running = queue::get(conn, id).expect("get").expect("the job");
        assert_eq!(
            (running.pid, running.owner_pid),
            (Some(i64::from(pid)), Some(i64::from(pid)))
        );

        let stopped = stop_running(&locks, 7, &[running]).expect("stop");
        let untouched = bystander.try_wait().expect("try_wait").is_none();
        let _ = bystander.kill();
        let _ = bystander.wait();
        assert_eq!(stopped, 0, "nothing of another host is stopped from here");
        assert!(
            untouched,
            "the local process with the remote owner's pid lives"
        );
        assert_eq!(locks.probe(&token).expect("probe"), Liveness::Alive);
    }
}
