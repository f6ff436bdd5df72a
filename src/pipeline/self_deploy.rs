//! The self-hosting repository's production deploy, which restarts orch
//! itself, so it waits for a human and runs outside any orch process
//! (seeds ORCH-036, ORCH-059):
//!
//! - **A** — deploy-staging passed every gate: the task moves to `deploy`,
//!   keeps the merge lease, records the staging-verified commit, sets the
//!   approval-pending tracker state and asks for "Confirm Deploy" (never
//!   "Approved", which on `deploy` is a logged no-op).
//! - **B** — "Confirm Deploy" (`orch advance --task N --confirm-deploy` or the
//!   webhook): refuse if `main` moved since staging or if orch's own tracker
//!   user confirmed; else merge the verified commit, record `initiated`,
//!   enqueue the deploy finalizer, and start `deploy_hook_cmd` detached in its
//!   own session, so it survives orch's restart. A repeat is a no-op.
//! - **C** — `orch finalize-deploy --task N` (also the `deploy-finalizer`
//!   job): wait for the hook's result, write `14-deploy-log.md`, advance
//!   (SUCCESS → done) or roll back (FAILED → development), apply a deferred
//!   STOP. Idempotent.
//!
//! The hook runs as `sh -c`, wrapped so it writes `started` (its pid) first
//! and `result` (its exit code) last into its run directory: a crash before
//! `started` exists means the irreversible step never began and the finalizer
//! starts it; `started` without `result` and no live hook means the outcome is
//! unknown, which is a failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::backends::forge::{self, Merged};
use crate::config::Config;
use crate::context::Ctx;
use crate::crash;
use crate::outbox::{self, Message};
use crate::pipeline::engine::{self, Committed, Fence};
use crate::pipeline::evaluate::Decision;
use crate::pipeline::{Stage, task};
use crate::queue::{self, NewJob};
use crate::storage::Executor;
pub use crate::storage::deploys::Deploy;
use crate::storage::{self, Db, now};
use crate::workspace::Workspace;

/// The reserved agent that runs phase C (no LLM).
pub const FINALIZER_AGENT: &str = "deploy-finalizer";

/// Whether the Confirm Deploy flow applies to `repo`.
pub fn applies(config: &Config, repo: &str) -> bool {
    config.deploy_require_manual_approve && repo == config.self_hosting_repo
}

/// The deploy record of `task_id`, if any.
pub fn get(conn: &dyn Executor, task_id: i64) -> storage::Result<Option<Deploy>> {
    conn.deploy_get(task_id)
}

/// Whether phase B started the current deploy of `task_id`.
pub fn initiated(conn: &dyn Executor, task_id: i64) -> storage::Result<bool> {
    Ok(get(conn, task_id)?.is_some_and(|d| d.initiated_at.is_some()))
}

/// What every path that is not Confirm Deploy says to a task parked on
/// `deploy` awaiting it ("Approved", `orch advance`, the reconciler).
pub const APPROVED_ON_DEPLOY_NOOP: &str = "approved-on-deploy-noop: the production deploy of the self-hosting repo starts only with the \"Confirm Deploy\" status (orch advance --task N --confirm-deploy); \"Approved\" does not deploy";

/// Whether `task` is parked on `deploy` awaiting Confirm Deploy (phase A done,
/// phase B not started). Such a task was already asked once, in phase A; any
/// other path that reaches it is a logged no-op with no tracker or notifier
/// traffic, so a timer or a repeated click cannot flood the issue.
pub fn awaiting_confirm(
    conn: &dyn Executor,
    config: &Config,
    task: &task::Task,
) -> storage::Result<bool> {
    Ok(task.stage() == Stage::Deploy && applies(config, &task.repo) && !initiated(conn, task.id)?)
}

/// Phase A, inside the commit transaction: record the staging-verified commit
/// and ask for Confirm Deploy. The caller moved the task to `deploy`.
pub fn request_confirmation(
    conn: &dyn Executor,
    task: &task::Task,
    staging_sha: &str,
    key: &str,
    now: i64,
) -> anyhow::Result<()> {
    conn.deploy_request(task.id, staging_sha, now)?;
    let short = &staging_sha[..staging_sha.len().min(12)];
    let cta = format!(
        "Staging verified {wi} at commit {short}. To deploy it to production, move the issue to the status \"Confirm Deploy\" (or run `orch advance --task {id} --confirm-deploy`). \"Approved\" does NOT start the production deploy.",
        wi = task.work_item_id,
        id = task.id
    );
    outbox::push(
        conn,
        &format!("{key}:confirm:state"),
        &Message::State {
            task_id: task.id,
            state: crate::backends::tracker::state::IN_REVIEW.to_owned(),
        },
        now,
    )?;
    outbox::push(
        conn,
        &format!("{key}:confirm:comment"),
        &Message::Comment {
            task_id: task.id,
            author: "deployer".to_owned(),
            body: cta.clone(),
        },
        now,
    )?;
    outbox::push(
        conn,
        &format!("{key}:confirm:notify"),
        &Message::Notify { text: cta },
        now,
    )?;
    Ok(())
}

/// What phase B did.
#[derive(Debug, Clone, Serialize)]
pub struct Confirmed {
    /// `self-deploy-initiated`, `self-deploy-already-initiated`, `refused-main-moved`,
    /// `refused-own-user`, `not-on-deploy`, `not-self-hosting`.
    pub note: String,
    /// The merge done, if any.
    pub merged: Option<Merged>,
    /// The finalizer job enqueued.
    pub finalizer_job: Option<i64>,
}

/// Phase B: a human confirmed the production deploy. `by_own_user` is true
/// when the tracker says orch's own API user made the change.
pub fn confirm(
    ctx: &Ctx,
    db: &mut Db,
    task_id: i64,
    by_own_user: bool,
) -> anyhow::Result<Confirmed> {
    let t = task::require(db.conn(), task_id)?;
    let note = |n: &str| Confirmed {
        note: n.to_owned(),
        merged: None,
        finalizer_job: None,
    };
    if !applies(&ctx.config, &t.repo) {
        return Ok(note("not-self-hosting"));
    }
    if t.stage() != Stage::Deploy {
        return Ok(note("not-on-deploy"));
    }
    let deploy = get(db.conn(), task_id)?.unwrap_or_default();
    if deploy.initiated_at.is_some() {
        return Ok(note("self-deploy-already-initiated"));
    }
    // The operator's STOP outranks a confirmation: nothing reaches
    // production once STOP was pressed (the pending cancel is applied by
    // whoever runs next: the worker, `orch reap`, `orch reconcile`).
    if t.cancel_requested_at.is_some() {
        return Ok(note("refused-stop-pending"));
    }
    let ask_again = |db: &mut Db, key: &str, body: String| -> anyhow::Result<()> {
        db.write(|tx| {
            outbox::push(
                tx,
                &format!("confirm-{task_id}-{key}-{}", now()),
                &Message::Comment {
                    task_id,
                    author: "deployer".to_owned(),
                    body,
                },
                now(),
            )?;
            Ok(())
        })?;
        let _ = outbox::deliver(ctx, db);
        Ok(())
    };
    if by_own_user {
        ask_again(
            db,
            "own-user",
            "Confirm Deploy was set by orch's own tracker user, which cannot confirm a production deploy. A person must move the issue to \"Confirm Deploy\" again.".into(),
        )?;
        return Ok(note("refused-own-user"));
    }
    let Some(staging_sha) = deploy.staging_sha.clone() else {
        bail!("task {task_id} has no staging-verified commit; it never passed deploy-staging");
    };
    if ctx.config.deploy_hook_cmd.trim().is_empty() {
        return Err(crate::error::OrchError::Config(
            "deploy_hook_cmd is not configured: the self-hosting production deploy has nothing to run".into(),
        )
        .into());
    }
    // main must not have moved since staging: production gets exactly what staging verified.
    let repo = ctx.config.repo(&t.repo)?;
    let ws = Workspace::new(&ctx.repos_dir(), &t.repo, repo)?;
    let moved_main = {
        let _repo_lock = ws.lock()?;
        let git = ws.sync()?;
        let base = format!("origin/{}", ws.default_branch());
        let contained = git.rev(&staging_sha)?.is_some()
            && git.check(["merge-base", "--is-ancestor", &base, &staging_sha])?;
        (!contained)
            .then(|| git.rev(&base))
            .transpose()?
            .map(Option::unwrap_or_default)
    };
    if let Some(main_sha) = moved_main {
        ask_again(
            db,
            "main-moved",
            format!(
                "main moved since staging ({} is not contained in the verified commit {}). The deploy was refused; the task goes back to deploy-staging to verify the new main. Confirm again when asked.",
                &main_sha[..main_sha.len().min(12)],
                &staging_sha[..staging_sha.len().min(12)]
            ),
        )?;
        restage(ctx, db, &t)?;
        return Ok(note("refused-main-moved"));
    }
    let branch = t.branch.clone().unwrap_or_default();
    let merged = forge::for_repo(ctx, &t.repo)?.merge(&branch, &staging_sha)?;
    crash::point("deploy.merged");
    let run_dir = ctx
        .state_dir
        .join("deploys")
        .join(format!("task-{task_id}-{}", now()));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir_str = run_dir.display().to_string();
    let finalizer = db.write(|tx| {
        if !tx.deploy_initiate(task_id, &run_dir_str, now())? {
            return Ok(None);
        }
        let job = queue::enqueue(
            tx,
            &NewJob {
                agent: FINALIZER_AGENT,
                repo: &t.repo,
                task_id: Some(task_id),
                stage: Some(Stage::Deploy.as_str()),
                task_content: "",
                max_attempts: ctx.config.max_attempts.max(3),
            },
            now(),
        )?;
        outbox::push(
            tx,
            &format!(
                "deploy-{task_id}-{}:initiated",
                deploy.approve_requested_at.unwrap_or(0)
            ),
            &Message::Notify {
                text: format!(
                    "{}: production deploy of {} initiated (Confirm Deploy)",
                    t.work_item_id,
                    &staging_sha[..staging_sha.len().min(12)]
                ),
            },
            now(),
        )?;
        Ok(Some(job))
    })?;
    let Some(finalizer) = finalizer else {
        return Ok(note("self-deploy-already-initiated"));
    };
    crash::point("deploy.initiated");
    start_hook(ctx, db, &t, &staging_sha, &run_dir)?;
    let _ = outbox::deliver(ctx, db);
    Ok(Confirmed {
        note: "self-deploy-initiated".into(),
        merged: Some(merged),
        finalizer_job: Some(finalizer),
    })
}

/// Send the task back to deploy-staging to verify a new main (phase B refused).
fn restage(ctx: &Ctx, db: &mut Db, t: &task::Task) -> anyhow::Result<()> {
    db.write(|tx| {
        if tx.deploy_restage(t.id, now())? {
            queue::enqueue(
                tx,
                &NewJob {
                    agent: "deployer",
                    repo: &t.repo,
                    task_id: Some(t.id),
                    stage: Some(Stage::DeployStaging.as_str()),
                    task_content: "main moved since staging: rebase and verify staging again",
                    max_attempts: ctx.config.max_attempts,
                },
                now(),
            )?;
        }
        Ok(())
    })
}

/// Start the deploy hook detached, in its own session, so it survives orch.
fn start_hook(
    ctx: &Ctx,
    db: &mut Db,
    t: &task::Task,
    sha: &str,
    run_dir: &Path,
) -> anyhow::Result<()> {
    if run_dir.join("started").exists() {
        return Ok(());
    }
    // Two processes can both find no `started` yet (Confirm Deploy's own
    // start, and a finalizer run a moment later), so the wrapper itself
    // decides who runs the hook: `mkdir` is atomic, the loser exits at once.
    // The hook runs at most once per deploy, however often it is started.
    let wrapper = r#"mkdir "$ORCH_DEPLOY_DIR/once" 2>/dev/null || exit 0; echo $$ > "$ORCH_DEPLOY_DIR/started"; sh -c "$ORCH_DEPLOY_HOOK" > "$ORCH_DEPLOY_DIR/hook.log" 2>&1; code=$?; echo $code > "$ORCH_DEPLOY_DIR/result.tmp" && mv "$ORCH_DEPLOY_DIR/result.tmp" "$ORCH_DEPLOY_DIR/result""#;
    let mut cmd = std::process::Command::new("setsid");
    for (name, _) in std::env::vars_os() {
        if crate::runner::is_secret_var(&name.to_string_lossy()) {
            cmd.env_remove(&name);
        }
    }
    cmd.arg("sh")
        .arg("-c")
        .arg(wrapper)
        .env("ORCH_DEPLOY_HOOK", &ctx.config.deploy_hook_cmd)
        .env("ORCH_DEPLOY_DIR", run_dir)
        .env("ORCH_DEPLOY_SHA", sha)
        .env("ORCH_TASK_ID", t.id.to_string())
        .env("ORCH_WORK_ITEM", &t.work_item_id)
        .env("ORCH_REPO", &t.repo)
        .current_dir(run_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .context("starting the deploy hook (is setsid from util-linux installed?)")?;
    let pid = child.id();
    // The hook is not our child to wait for: setsid forks it away.
    drop(child);
    crash::point("deploy.hook_started");
    db.write(|tx| {
        tx.deploy_set_hook_pid(t.id, i64::from(pid))?;
        Ok(())
    })?;
    log::info!(
        "started the deploy hook of task {} (setsid pid {pid}) in {}",
        t.id,
        run_dir.display()
    );
    Ok(())
}

/// What phase C did.
#[derive(Debug, Clone, Serialize)]
pub struct Finalized {
    /// `finalized`, `already-finalized`, `waiting` (the hook still runs), `not-initiated`.
    pub note: String,
    /// `SUCCESS` or `FAILED` when known.
    pub deploy_status: Option<String>,
    /// The hook's exit code.
    pub hook_exit_code: Option<i64>,
    /// What was committed.
    pub committed: Option<Committed>,
}

/// Phase C: wait up to `wait` for the hook's result, then write the deploy
/// log and advance or roll back. `fence` when run by the finalizer job.
pub fn finalize(
    ctx: &Ctx,
    db: &mut Db,
    task_id: i64,
    fence: Option<Fence<'_>>,
    wait: Duration,
) -> anyhow::Result<Finalized> {
    let t = task::require(db.conn(), task_id)?;
    let deploy = get(db.conn(), task_id)?.unwrap_or_default();
    let mut out = Finalized {
        note: String::new(),
        deploy_status: None,
        hook_exit_code: deploy.exit_code,
        committed: None,
    };
    if deploy.finished_at.is_some() || t.stage() != Stage::Deploy {
        "already-finalized".clone_into(&mut out.note);
        if let Some(f) = fence {
            out.committed = Some(end_job(ctx, db, &t, f)?);
        }
        return Ok(out);
    }
    let (Some(_), Some(run_dir)) = (deploy.initiated_at, deploy.run_dir.clone()) else {
        "not-initiated".clone_into(&mut out.note);
        return Ok(out);
    };
    let run_dir = PathBuf::from(run_dir);
    if !run_dir.join("started").exists() {
        // Initiated, but the hook never began (a crash in between): start it now.
        let sha = deploy.staging_sha.clone().unwrap_or_default();
        start_hook(ctx, db, &t, &sha, &run_dir)?;
    }
    let deadline = Instant::now() + wait;
    let code = loop {
        if let Some(code) = read_result(&run_dir) {
            break Some(code);
        }
        if !hook_alive(&run_dir) && read_result(&run_dir).is_none() {
            break None;
        }
        if Instant::now() >= deadline {
            "waiting".clone_into(&mut out.note);
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let status = if code == Some(0) { "SUCCESS" } else { "FAILED" };
    out.deploy_status = Some(status.to_owned());
    out.hook_exit_code = code;
    let worktree = write_deploy_log(ctx, &t, &deploy, code, status, &run_dir)?;
    // A STOP that arrived during the irreversible step. If the deploy
    // failed, it applies now instead of the rollback: the outcome is
    // recorded, then the task is reset. If it succeeded, production runs the
    // change, so the task ends `done` (monitor armed) and the STOP is
    // recorded as too late, below.
    let stop_pending = task::require(db.conn(), task_id)?
        .cancel_requested_at
        .is_some();
    if stop_pending && code != Some(0) {
        let committed = db.write(|tx| {
            tx.deploy_finish(task_id, code, now())?;
            retire_queued_finalizers(tx, task_id)?;
            match fence {
                Some(f) => Ok(Some(engine::commit(
                    tx,
                    &ctx.config,
                    task_id,
                    Stage::Deploy,
                    Some(f),
                    Some(&queue::Outcome::Done),
                    &Decision::Terminal,
                    &format!("job-{}", f.job_id),
                    now(),
                )?)),
                None => Ok(None),
            }
        })?;
        crash::point("deploy.finalized");
        crate::pipeline::cancel::cancel_task(
            ctx,
            db,
            task_id,
            "STOP deferred during the production deploy",
            true,
        )?;
        "finalized".clone_into(&mut out.note);
        out.committed = committed;
        let _ = outbox::deliver(ctx, db);
        return Ok(out);
    }
    let evaluation = crate::pipeline::evaluate::evaluate(
        ctx,
        db.conn(),
        &t,
        &worktree,
        fence.map(|f| f.job_id),
    )?;
    let key = format!("deploy-{task_id}-{}", deploy.initiated_at.unwrap_or(0));
    let committed = db.write(|tx| {
        let c = engine::commit(
            tx,
            &ctx.config,
            task_id,
            Stage::Deploy,
            fence,
            None,
            &evaluation.decision,
            &key,
            now(),
        )?;
        tx.deploy_finish(task_id, code, now())?;
        retire_queued_finalizers(tx, task_id)?;
        if stop_pending {
            stop_arrived_too_late(tx, task_id)?;
        }
        Ok(c)
    })?;
    crash::point("deploy.finalized");
    if stop_pending {
        // The deploy gate refused a successful hook: nothing is in production
        // that the task still owes, so the STOP applies.
        crate::pipeline::cancel::apply_pending_for(ctx, db, task_id)?;
    }
    "finalized".clone_into(&mut out.note);
    out.committed = Some(committed);
    let _ = outbox::deliver(ctx, db);
    Ok(out)
}

/// Write and push `14-deploy-log.md`, the artifact the deploy gate reads;
/// returns the task's worktree.
fn write_deploy_log(
    ctx: &Ctx,
    t: &task::Task,
    deploy: &Deploy,
    code: Option<i64>,
    status: &str,
    run_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let repo = ctx.config.repo(&t.repo)?;
    let ws = Workspace::new(&ctx.repos_dir(), &t.repo, repo)?;
    let branch = t.branch.clone().unwrap_or_default();
    let wi = crate::pipeline::cancel::original(&t.work_item_id);
    let worktree = ws.prepare(&wi, &branch)?;
    let log = crate::gates::artifact_dir(&worktree, &wi).join("14-deploy-log.md");
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        &log,
        format!(
            "---\ndeploy_status: {status}\nwork_item: {wi}\nhook_exit_code: {}\ndeployed_by: {FINALIZER_AGENT}\n---\nProduction deploy of {} by `{}`: {status}. Hook log: {}\n",
            code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
            deploy.staging_sha.as_deref().unwrap_or("?"),
            ctx.config.deploy_hook_cmd,
            run_dir.join("hook.log").display()
        ),
    )
    .with_context(|| format!("writing {}", log.display()))?;
    ws.commit_and_push(
        &worktree,
        &branch,
        &format!("deploy-finalizer: {wi} {status}"),
    )?;
    Ok(worktree)
}

/// The task reached `done` with a STOP pending: production runs the change,
/// so the truth is `done`, and the operator is told once that the STOP came
/// too late (the key makes it once, whoever finalizes).
fn stop_arrived_too_late(conn: &dyn Executor, task_id: i64) -> anyhow::Result<()> {
    let t = task::require(conn, task_id)?;
    if t.stage() != Stage::Done {
        return Ok(());
    }
    let text = format!(
        "{}: STOP arrived after the production deploy had started. The deploy succeeded and \
         production runs the change, so the task is done, not cancelled; the post-deploy \
         monitor watches it. Roll back by hand if the change must go.",
        t.work_item_id
    );
    outbox::push(
        conn,
        &format!("stop-too-late-{task_id}:comment"),
        &Message::Comment {
            task_id,
            author: "orch".to_owned(),
            body: text.clone(),
        },
        now(),
    )?;
    outbox::push(
        conn,
        &format!("stop-too-late-{task_id}:notify"),
        &Message::Notify { text },
        now(),
    )?;
    storage::counters::bump(
        conn,
        "stop_too_late_total",
        1,
        Some(&serde_json::json!({"task_id": task_id})),
        now(),
    )?;
    Ok(())
}

/// A finalizer job still queued has nothing left to do once phase C ran by hand.
fn retire_queued_finalizers(conn: &dyn Executor, task_id: i64) -> storage::Result<usize> {
    conn.deploy_retire_finalizers(task_id, FINALIZER_AGENT, now())
}

/// End the finalizer job when there is nothing left to do.
fn end_job(ctx: &Ctx, db: &mut Db, t: &task::Task, fence: Fence<'_>) -> anyhow::Result<Committed> {
    db.write(|tx| {
        engine::commit(
            tx,
            &ctx.config,
            t.id,
            Stage::Deploy,
            Some(fence),
            Some(&queue::Outcome::Done),
            &Decision::Terminal,
            &format!("job-{}", fence.job_id),
            now(),
        )
    })
}

fn read_result(run_dir: &Path) -> Option<i64> {
    std::fs::read_to_string(run_dir.join("result"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// How long a wrapper that won the start (`once`) may take to write
/// `started` before it is taken for dead (killed in between by a reboot).
const START_GRACE: Duration = Duration::from_secs(60);

/// Whether the hook wrapper still runs: its pid (from `started`) exists and
/// is not a zombie. A reused pid can only make us wait longer, never lose a
/// result, because the result file is checked first.
fn hook_alive(run_dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(run_dir.join("started"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        // Not started yet (setsid is still forking): alive for now, unless
        // the winner of the start never got as far as `started`.
        return std::fs::metadata(run_dir.join("once"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < START_GRACE);
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}
