//! The post-deploy monitor (seeds ORCH-021, adr-0010): `done` is not the end
//! of a deploy's story, so after a task reaches `done` orch watches
//! production for a window and says whether the deploy stayed healthy.
//!
//! The fenced commit that moves a task to `done` *arms* the monitor: in the
//! same transaction it inserts the task's `post_deploys` row (its primary key
//! makes arming idempotent) and enqueues ONE job of the reserved agent
//! `post-deploy-monitor` (no LLM process). `orch run-agent` intercepts that
//! job: it runs the checks that are due, each counted in the same transaction
//! that moves `next_check_at` on (and fenced by the job's claim), then ends
//! the job with [`Outcome::RetryAt`] the next check time — a worker is never
//! held for the whole window, and the wait spends neither an attempt nor the
//! transient budget. A monitor killed mid-check is a dead owner like any
//! other: `orch reap` requeues it and the next run continues from the
//! recorded counters; a check is never counted twice (the `(task_id, seq)`
//! key of `post_deploy_checks` refuses it).
//!
//! When the window ends, or `post_deploy_max_failures` checks failed, the
//! verdict is recorded (HEALTHY or DEGRADED and the action: NONE, ALERT or
//! ROLLBACK, with the alert in the outbox of that same transaction);
//! `rollback_cmd` runs at most once (a marker is committed before it starts,
//! and the self-hosting repository never runs it); `16-post-deploy-log.md` is
//! written, committed and pushed; and the job ends `done` with the row's
//! `finished_at`, in one fenced transaction.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::backends::http::HttpClient;
use crate::config::{Config, RepoConfig};
use crate::context::Ctx;
use crate::crash;
use crate::outbox::{self, Message};
use crate::pipeline::Stage;
use crate::pipeline::engine::{self, Committed, Fence};
use crate::pipeline::evaluate::Decision;
use crate::pipeline::task::Task;
use crate::queue::{self, NewJob, Outcome};
use crate::runner;
use crate::storage::Executor;
use crate::storage::post_deploys::NewCheck;
pub use crate::storage::post_deploys::{Check, Record};
use crate::storage::{self, Db, now};
use crate::workspace::Workspace;

/// The reserved agent that runs the post-deploy checks (no LLM).
pub const MONITOR_AGENT: &str = queue::UNGATED_AGENT;

/// The artifact the monitor writes.
pub const LOG_FILE: &str = "16-post-deploy-log.md";

/// Whether a deploy of `repo` reaching `done` arms a monitor: the kill-switch
/// is on and the repository has a probe (`health_url` or `health_check_cmd`).
pub fn applies(config: &Config, repo: &str) -> bool {
    config.post_deploy_enabled
        && config
            .repos
            .get(repo)
            .is_some_and(RepoConfig::has_post_deploy_probe)
}

/// When check `k` (1-based) of a window is due: the checks are spread evenly,
/// the last one at the window's end.
pub fn due_at(started_at: i64, window_s: i64, checks_total: i64, k: i64) -> i64 {
    started_at + (k * window_s) / checks_total.max(1)
}

/// Arm the monitor for `task`, inside the commit transaction that moved it to
/// `done`: the record and one monitor job. Returns the job, or `None` when
/// the feature does not apply or the task already has a monitor.
pub fn arm(
    conn: &dyn Executor,
    config: &Config,
    task: &Task,
    now: i64,
) -> storage::Result<Option<i64>> {
    if !applies(config, &task.repo) {
        return Ok(None);
    }
    let window = i64::try_from(config.post_deploy_window_s).unwrap_or(i64::MAX / 4);
    let total = i64::from(config.post_deploy_checks.max(1));
    let first = due_at(now, window, total, 1);
    if !conn.post_deploy_arm(task.id, now, window, total, first)? {
        return Ok(None);
    }
    let job = queue::enqueue(
        conn,
        &NewJob {
            agent: MONITOR_AGENT,
            repo: &task.repo,
            task_id: Some(task.id),
            stage: Some(Stage::Done.as_str()),
            task_content: "",
            max_attempts: config.max_attempts.max(3),
        },
        now,
    )?;
    conn.post_deploy_delay_job(job, first)?;
    Ok(Some(job))
}

/// The monitor record of `task_id`, if it was ever armed.
pub fn get(conn: &dyn Executor, task_id: i64) -> storage::Result<Option<Record>> {
    conn.post_deploy_get(task_id)
}

/// Monitors still watching, oldest first.
pub fn running(conn: &dyn Executor) -> storage::Result<Vec<Record>> {
    conn.post_deploy_running()
}

/// The last `limit` finished monitors, newest first.
pub fn recent(conn: &dyn Executor, limit: u32) -> storage::Result<Vec<Record>> {
    conn.post_deploy_recent(limit)
}

/// The checks of `task_id`, in order.
pub fn checks(conn: &dyn Executor, task_id: i64) -> storage::Result<Vec<Check>> {
    conn.post_deploy_checks(task_id)
}

/// What one monitor run did.
#[derive(Debug, Clone, Serialize)]
pub struct Monitored {
    /// `waiting` (checks remain; requeued for the next one), `finished`,
    /// `already-finished`, `not-armed`, or `lost` (the claim was lost).
    pub note: String,
    /// Checks run by this run.
    pub checks_run: u32,
    /// The record after the run.
    pub record: Option<Record>,
    /// What was committed for the job.
    pub committed: Committed,
}

/// Whether `fence` still owns its job (read inside a write transaction).
fn owns(conn: &dyn Executor, fence: Fence<'_>) -> storage::Result<bool> {
    conn.post_deploy_owns(fence.job_id, fence.token)
}

/// End the monitor job with `outcome`, fenced, plus `extra` in the same transaction.
fn end_job(
    ctx: &Ctx,
    db: &mut Db,
    task: &Task,
    fence: Fence<'_>,
    outcome: &Outcome,
    extra: impl FnOnce(&dyn Executor) -> anyhow::Result<()>,
) -> anyhow::Result<Committed> {
    db.write(|tx| {
        let c = engine::commit(
            tx,
            &ctx.config,
            task.id,
            Stage::Done,
            Some(fence),
            Some(outcome),
            &Decision::Terminal,
            &format!("job-{}-monitor", fence.job_id),
            now(),
        )?;
        if c != Committed::LostClaim {
            extra(tx)?;
        }
        Ok(c)
    })
}

/// Run the monitor job of `task`: the due checks, then either a requeue for
/// the next one or the verdict, the log and the job's end.
pub fn run(ctx: &Ctx, db: &mut Db, task: &Task, fence: Fence<'_>) -> anyhow::Result<Monitored> {
    let mut out = Monitored {
        note: String::new(),
        checks_run: 0,
        record: None,
        committed: Committed::LostClaim,
    };
    let Some(mut rec) = get(db.conn(), task.id)? else {
        "not-armed".clone_into(&mut out.note);
        out.committed = end_job(ctx, db, task, fence, &Outcome::Done, |_| Ok(()))?;
        return Ok(out);
    };
    if rec.finished_at.is_some() {
        "already-finished".clone_into(&mut out.note);
        out.committed = end_job(ctx, db, task, fence, &Outcome::Done, |_| Ok(()))?;
        out.record = Some(rec);
        return Ok(out);
    }
    let repo = ctx.config.repo(&task.repo)?;
    let max_failures = i64::from(ctx.config.post_deploy_max_failures);
    let mut worktree: Option<PathBuf> = None;
    while rec.status == "running"
        && rec.checks_done < rec.checks_total
        && rec.checks_failed < max_failures
    {
        let due = rec.next_check_at.unwrap_or(0);
        if due > now() {
            "waiting".clone_into(&mut out.note);
            let note = format!(
                "post-deploy check {} of {} due at {due}",
                rec.checks_done + 1,
                rec.checks_total
            );
            out.committed = end_job(
                ctx,
                db,
                task,
                fence,
                &Outcome::RetryAt { until: due, note },
                |_| Ok(()),
            )?;
            out.record = Some(rec);
            return Ok(out);
        }
        let (ok, detail) = probe(ctx, task, repo, &mut worktree)?;
        let expected = rec.checks_done;
        let counted = db.write(|tx| {
            if !owns(tx, fence)? {
                return Ok(false);
            }
            let next = (expected + 1 < rec.checks_total)
                .then(|| due_at(rec.started_at, rec.window_s, rec.checks_total, expected + 2));
            Ok(tx.post_deploy_count_check(&NewCheck {
                task_id: task.id,
                seq: expected + 1,
                ok,
                detail: &detail,
                next_check_at: next,
                job_id: fence.job_id,
                at: now(),
            })?)
        })?;
        if !counted {
            "lost".clone_into(&mut out.note);
            return Ok(out);
        }
        out.checks_run += 1;
        log::info!(
            "post-deploy check {} of {} for task {}: {}",
            expected + 1,
            rec.checks_total,
            task.id,
            if ok { "healthy" } else { "FAILED" }
        );
        crash::point("monitor.checked");
        rec = get(db.conn(), task.id)?.context("the post-deploy record vanished")?;
    }
    if rec.status == "running" {
        decide(ctx, db, task, fence, &rec, max_failures)?;
        rec = get(db.conn(), task.id)?.context("the post-deploy record vanished")?;
        if rec.status == "running" {
            "lost".clone_into(&mut out.note);
            return Ok(out);
        }
    }
    if rec.action_taken.as_deref() == Some("ROLLBACK") && rec.rollback_started_at.is_none() {
        rollback(ctx, db, task, fence, repo, &mut worktree)?;
        rec = get(db.conn(), task.id)?.context("the post-deploy record vanished")?;
    }
    let worktree = match worktree {
        Some(w) => w,
        None => prepare_worktree(ctx, task, repo)?,
    };
    write_log(ctx, task, repo, &worktree, &rec)?;
    crash::point("monitor.logged");
    let degraded = rec.status == "degraded";
    out.committed = end_job(ctx, db, task, fence, &Outcome::Done, |tx| {
        tx.post_deploy_finish(task.id, now())?;
        if !degraded {
            outbox::push(
                tx,
                &format!("post-deploy-{}-{}:healthy", task.id, rec.started_at),
                &Message::Comment {
                    task_id: task.id,
                    author: MONITOR_AGENT.to_owned(),
                    body: format!(
                        "Production stayed healthy for {}s after the deploy ({} checks, {} failed).",
                        rec.window_s, rec.checks_done, rec.checks_failed
                    ),
                },
                now(),
            )?;
        }
        Ok(())
    })?;
    "finished".clone_into(&mut out.note);
    out.record = get(db.conn(), task.id)?;
    Ok(out)
}

/// Record the verdict and the action, with the alert, in one fenced transaction.
fn decide(
    ctx: &Ctx,
    db: &mut Db,
    task: &Task,
    fence: Fence<'_>,
    rec: &Record,
    max_failures: i64,
) -> anyhow::Result<()> {
    let c = &ctx.config;
    let degraded = rec.checks_failed >= max_failures;
    let self_hosting = task.repo == c.self_hosting_repo;
    let can_roll_back = c
        .repos
        .get(&task.repo)
        .is_some_and(|r| !r.rollback_cmd.trim().is_empty());
    // orch never restarts its own production (self-hosting): a human decides.
    let action = if !degraded {
        "NONE"
    } else if !self_hosting && c.post_deploy_auto_rollback && can_roll_back {
        "ROLLBACK"
    } else {
        "ALERT"
    };
    let status = if degraded { "degraded" } else { "healthy" };
    db.write(|tx| {
        if !owns(tx, fence)? {
            return Ok(());
        }
        if tx.post_deploy_decide(task.id, status, action)? && degraded {
            let what = if action == "ROLLBACK" {
                "rolling back with rollback_cmd"
            } else if self_hosting {
                "alert only (the self-hosting repository is never rolled back automatically)"
            } else {
                "alert only"
            };
            let text = format!(
                "{}: post-deploy DEGRADED: {} of {} checks failed ({} of {} planned run); last error: {}. Action: {what}.",
                task.work_item_id,
                rec.checks_failed,
                rec.checks_done,
                rec.checks_done,
                rec.checks_total,
                rec.last_error.as_deref().unwrap_or("-")
            );
            let key = format!("post-deploy-{}-{}", task.id, rec.started_at);
            outbox::push(
                tx,
                &format!("{key}:degraded:notify"),
                &Message::Notify { text: text.clone() },
                now(),
            )?;
            outbox::push(
                tx,
                &format!("{key}:degraded:comment"),
                &Message::Comment {
                    task_id: task.id,
                    author: MONITOR_AGENT.to_owned(),
                    body: text,
                },
                now(),
            )?;
        }
        Ok(())
    })
}

/// Run `rollback_cmd` at most once: the start is committed first, so a crash
/// mid-rollback leaves an unknown outcome (alerted), never a second run.
fn rollback(
    ctx: &Ctx,
    db: &mut Db,
    task: &Task,
    fence: Fence<'_>,
    repo: &RepoConfig,
    worktree: &mut Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = db.write(|tx| {
        if !owns(tx, fence)? {
            return Ok(false);
        }
        Ok(tx.post_deploy_rollback_start(task.id, now())?)
    })?;
    if !started {
        return Ok(());
    }
    let cwd = cached_worktree(ctx, task, repo, worktree)?;
    let spec = command_spec(
        ctx,
        task,
        &repo.rollback_cmd,
        &cwd,
        "rollback.log",
        Duration::from_secs(ctx.config.agent_timeout_s),
    )?;
    let code = match runner::run(&spec, |_| {}) {
        Ok(o) if o.timed_out.is_some() => None,
        Ok(o) => o.exit_code.map(i64::from),
        Err(e) => {
            log::warn!("running rollback_cmd of task {}: {e:#}", task.id);
            None
        }
    };
    let text = format!(
        "{}: post-deploy rollback_cmd {}",
        task.work_item_id,
        match code {
            Some(0) => "succeeded".to_owned(),
            Some(c) => format!("FAILED with exit code {c}"),
            None => "did not finish (timed out or could not start)".to_owned(),
        }
    );
    db.write(|tx| {
        tx.post_deploy_rollback_end(task.id, code)?;
        outbox::push(
            tx,
            &format!("post-deploy-{}:rollback", task.id),
            &Message::Notify { text },
            now(),
        )?;
        Ok(())
    })
}

/// The task's worktree, prepared once per run.
fn cached_worktree(
    ctx: &Ctx,
    task: &Task,
    repo: &RepoConfig,
    cache: &mut Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    if let Some(w) = cache {
        return Ok(w.clone());
    }
    let w = prepare_worktree(ctx, task, repo)?;
    *cache = Some(w.clone());
    Ok(w)
}

fn prepare_worktree(ctx: &Ctx, task: &Task, repo: &RepoConfig) -> anyhow::Result<PathBuf> {
    let ws = Workspace::new(&ctx.repos_dir(), &task.repo, repo)?;
    let branch = task
        .branch
        .clone()
        .ok_or_else(|| anyhow::anyhow!("task {} has no branch", task.id))?;
    let wi = crate::pipeline::cancel::original(&task.work_item_id);
    ws.prepare(&wi, &branch)
}

/// A `sh -c` command in the task's worktree, through the process-group runner.
fn command_spec(
    ctx: &Ctx,
    task: &Task,
    command: &str,
    cwd: &Path,
    log_name: &str,
    timeout: Duration,
) -> anyhow::Result<runner::Spec> {
    let dir = ctx
        .state_dir
        .join("post-deploy")
        .join(format!("task-{}", task.id));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let repo = ctx.config.repo(&task.repo)?;
    let env = [
        ("ORCH_TASK_ID", task.id.to_string()),
        ("ORCH_WORK_ITEM", task.work_item_id.clone()),
        ("ORCH_REPO", task.repo.clone()),
        (
            "ORCH_POST_DEPLOY_BASE_URL",
            ctx.config.post_deploy_base_url.clone(),
        ),
        (
            "ORCH_POST_DEPLOY_URL",
            ctx.config.post_deploy_url(repo).unwrap_or_default(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(runner::Spec {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), command.to_owned()],
        cwd: cwd.to_path_buf(),
        env,
        log_path: dir.join(log_name),
        log_max_bytes: ctx.config.log_max_bytes,
        wall_timeout: timeout,
        stall_timeout: None,
        kill_grace: Duration::from_secs(ctx.config.agent_kill_grace_seconds.min(5)),
        tree_kill: ctx.config.subprocess_tree_kill_enabled,
        guard_program: std::env::current_exe().context("locating the orch binary")?,
    })
}

/// One check: every configured probe must answer healthy. Errors only when
/// orch itself cannot run the probe (not when production is unhealthy).
fn probe(
    ctx: &Ctx,
    task: &Task,
    repo: &RepoConfig,
    worktree: &mut Option<PathBuf>,
) -> anyhow::Result<(bool, String)> {
    let timeout = Duration::from_secs(ctx.config.post_deploy_probe_timeout_s);
    let mut ok = true;
    let mut parts = Vec::new();
    if let Some(url) = ctx.config.post_deploy_url(repo) {
        match HttpClient::new(timeout).get(&url) {
            Ok(r) if r.is_success() => parts.push(format!("GET {url}: HTTP {}", r.status)),
            Ok(r) => {
                ok = false;
                parts.push(format!("GET {url}: HTTP {}", r.status));
            }
            Err(e) => {
                ok = false;
                parts.push(e.message().to_owned());
            }
        }
    }
    let cmd = repo.health_check_cmd.trim();
    if !cmd.is_empty() {
        let cwd = cached_worktree(ctx, task, repo, worktree)?;
        let spec = command_spec(ctx, task, cmd, &cwd, "probe.log", timeout)?;
        let o = runner::run(&spec, |_| {})?;
        match (o.timed_out, o.exit_code) {
            (Some(_), _) => {
                ok = false;
                parts.push(format!(
                    "health_check_cmd timed out after {}s",
                    ctx.config.post_deploy_probe_timeout_s
                ));
            }
            (None, Some(0)) => parts.push("health_check_cmd exited 0".to_owned()),
            (None, Some(c)) => {
                ok = false;
                parts.push(format!("health_check_cmd exited with code {c}"));
            }
            (None, None) => {
                ok = false;
                parts.push(format!(
                    "health_check_cmd killed by signal {}",
                    o.signal.unwrap_or(0)
                ));
            }
        }
    }
    Ok((ok, parts.join("; ")))
}

/// The content of `16-post-deploy-log.md` for a decided record.
pub fn log_text(rec: &Record, work_item: &str, probe: &str) -> String {
    let status = if rec.status == "degraded" {
        "DEGRADED"
    } else {
        "HEALTHY"
    };
    let action = rec.action_taken.as_deref().unwrap_or("NONE");
    let mut text = format!(
        "---\npost_deploy_status: {status}\naction_taken: {action}\nwork_item: {work_item}\nwindow_s: {}\nchecks_total: {}\nchecks_failed: {}\nchecks_done: {}\n",
        rec.window_s, rec.checks_total, rec.checks_failed, rec.checks_done
    );
    if rec.rollback_started_at.is_some() {
        let _ = writeln!(
            text,
            "rollback_exit_code: {}",
            rec.rollback_exit_code
                .map_or_else(|| "unknown".to_owned(), |c| c.to_string())
        );
    }
    let _ = writeln!(
        text,
        "monitored_by: {MONITOR_AGENT}\n---\nPost-deploy monitoring of {work_item}: {status}, action {action}. \
         {} of {} checks run over a {}s window, {} failed (probe: {probe}).",
        rec.checks_done, rec.checks_total, rec.window_s, rec.checks_failed
    );
    if let Some(e) = &rec.last_error {
        let _ = writeln!(text, "\nLast failure: {e}");
    }
    text
}

fn write_log(
    ctx: &Ctx,
    task: &Task,
    repo: &RepoConfig,
    worktree: &Path,
    rec: &Record,
) -> anyhow::Result<()> {
    let wi = crate::pipeline::cancel::original(&task.work_item_id);
    let mut probes = Vec::new();
    if let Some(url) = ctx.config.post_deploy_url(repo) {
        probes.push(format!("GET {url}"));
    }
    if !repo.health_check_cmd.trim().is_empty() {
        probes.push(format!("`{}`", repo.health_check_cmd.trim()));
    }
    let path = crate::gates::artifact_dir(worktree, &wi).join(LOG_FILE);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, log_text(rec, &wi, &probes.join(" and ")))
        .with_context(|| format!("writing {}", path.display()))?;
    let ws = Workspace::new(&ctx.repos_dir(), &task.repo, repo)?;
    let branch = task.branch.clone().unwrap_or_default();
    let status = if rec.status == "degraded" {
        "DEGRADED"
    } else {
        "HEALTHY"
    };
    ws.commit_and_push(
        worktree,
        &branch,
        &format!("{MONITOR_AGENT}: {wi} {status}"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_spread_evenly_with_the_last_at_the_window_end() {
        let due: Vec<i64> = (1..=30).map(|k| due_at(1000, 900, 30, k)).collect();
        assert_eq!(due[0], 1030);
        assert_eq!(due[29], 1900);
        assert!(due.windows(2).all(|w| w[1] - w[0] == 30));
        let short: Vec<i64> = (1..=3).map(|k| due_at(0, 2, 3, k)).collect();
        assert_eq!(short, vec![0, 1, 2]);
    }

    #[test]
    fn applies_needs_the_switch_and_a_probe() {
        let mut c = Config::default();
        c.repos.insert(
            "a".into(),
            RepoConfig {
                remote: "/r".into(),
                ..RepoConfig::default()
            },
        );
        assert!(!applies(&c, "a"), "no probe");
        if let Some(r) = c.repos.get_mut("a") {
            r.health_url = "/health".into();
        }
        assert!(applies(&c, "a"));
        assert!(!applies(&c, "unknown"));
        c.post_deploy_enabled = false;
        assert!(!applies(&c, "a"), "kill-switch");
    }

    #[test]
    fn the_log_carries_the_seed_fields() {
        let rec = Record {
            task_id: 1,
            started_at: 0,
            window_s: 900,
            checks_total: 30,
            checks_done: 30,
            checks_failed: 0,
            next_check_at: None,
            status: "healthy".into(),
            action_taken: Some("NONE".into()),
            finished_at: None,
            last_error: None,
            rollback_started_at: None,
            rollback_exit_code: None,
        };
        let text = log_text(&rec, "ORCH-1", "GET http://x/health");
        let doc = crate::gates::frontmatter::parse_document(&text).expect("frontmatter parses");
        assert_eq!(
            doc.frontmatter.get_str("post_deploy_status"),
            Some("HEALTHY"),
            "{text}"
        );
        for field in [
            "post_deploy_status: HEALTHY",
            "action_taken: NONE",
            "work_item: ORCH-1",
            "window_s: 900",
            "checks_total: 30",
            "checks_failed: 0",
        ] {
            assert!(text.contains(field), "{field}: {text}");
        }
    }
}
