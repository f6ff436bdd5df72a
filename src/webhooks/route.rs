//! Processing stored deliveries: webhooks are hints, not facts. Each route
//! re-reads the current state (the Plane issue, the task) and acts only when
//! the pipeline should, so processing is idempotent: a delivery processed
//! twice, or several deliveries for one UI edit (Plane sends one per changed
//! field), have one effect.
//!
//! Plane (`work_item`/`issue` events, state changes): the start status ("To
//! Analyse", legacy "In Progress") starts the pipeline of an unknown issue or
//! resumes an idle analysis and never relaunches a task mid-pipeline;
//! "Approved" is the human gate of analysis (a logged no-op on `deploy`);
//! "Rejected" sends an analysis back to the analyst; "Confirm Deploy" starts
//! the self-hosting deploy (fail closed: a board without it never matches);
//! "STOP" cancels. Events caused by orch's own API user are ignored.
//! Gitea: a merged pull request releases its branch's merge lease; a green
//! commit status on the commit orch pushed for a developing task (its `sha`;
//! Gitea sends no branch) re-evaluates that task; pushes are ignored.

use serde::Serialize;
use serde_json::Value;

use crate::backends::tracker::{self, key, plane::PlaneClient};
use crate::context::Ctx;
use crate::git::Git;
use crate::pipeline::{Stage, advance, cancel, lease, self_deploy, task};
use crate::queue::{self, NewJob};
use crate::storage::{Db, now};
use crate::webhooks::{self, Delivery, inbox};
use crate::workspace::Workspace;

/// Attempts before a delivery that keeps failing is parked as `failed`.
pub const MAX_ATTEMPTS: i64 = 5;

/// What routing a delivery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "routed", content = "note", rename_all = "snake_case")]
pub enum Routed {
    /// The pipeline acted.
    Acted(String),
    /// Nothing to do (recorded with the reason).
    Ignored(String),
}

/// What one processing pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Processed {
    /// Deliveries that made the pipeline act.
    pub acted: u32,
    /// Deliveries with nothing to do.
    pub ignored: u32,
    /// Deliveries that failed and stay pending (or are parked as failed).
    pub failed: u32,
    /// One line per delivery.
    pub notes: Vec<String>,
}

/// Process every pending delivery, oldest first.
pub fn process_pending(ctx: &Ctx, db: &mut Db) -> anyhow::Result<Processed> {
    let mut out = Processed::default();
    for d in webhooks::pending(db.conn(), 100)? {
        let result = route(ctx, db, &d);
        let t = now();
        let (status, note) = match &result {
            Ok(Routed::Acted(n)) => {
                out.acted += 1;
                ("processed", n.clone())
            }
            Ok(Routed::Ignored(n)) => {
                out.ignored += 1;
                ("ignored", n.clone())
            }
            Err(e) => {
                out.failed += 1;
                let status = if d.attempts + 1 >= MAX_ATTEMPTS {
                    "failed"
                } else {
                    "pending"
                };
                (status, format!("{e:#}"))
            }
        };
        log::info!("webhook delivery {} ({}): {status}: {note}", d.id, d.source);
        out.notes
            .push(format!("delivery {}: {status}: {note}", d.id));
        db.write(|tx| Ok(inbox::settle(tx, d.id, status, &note, t)?))?;
    }
    Ok(out)
}

fn route(ctx: &Ctx, db: &mut Db, d: &Delivery) -> anyhow::Result<Routed> {
    let body: Value = serde_json::from_slice(&d.body)?;
    match d.source.as_str() {
        "plane" => route_plane(ctx, db, d, &body),
        "gitea" => route_gitea(ctx, db, d, &body),
        other => Ok(Routed::Ignored(format!("unknown source {other:?}"))),
    }
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn route_plane(ctx: &Ctx, db: &mut Db, d: &Delivery, body: &Value) -> anyhow::Result<Routed> {
    let event = d
        .event
        .clone()
        .or_else(|| body.get("event").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    if !matches!(event.as_str(), "issue" | "work_item") {
        return Ok(Routed::Ignored(format!(
            "event {event:?} needs no pipeline action"
        )));
    }
    let action = body.get("action").and_then(Value::as_str).unwrap_or("");
    if matches!(action, "deleted" | "delete") {
        return Ok(Routed::Ignored("a deleted issue; the task is kept".into()));
    }
    if let Some(field) = body.pointer("/activity/field").and_then(Value::as_str)
        && !matches!(field, "state" | "state_id")
    {
        return Ok(Routed::Ignored(format!(
            "field {field:?} changed; no pipeline action"
        )));
    }
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let Some(issue_id) = data.get("id").and_then(id_of_ref) else {
        return Ok(Routed::Ignored("no issue id in the payload".into()));
    };
    let project = data
        .get("project")
        .and_then(id_of_ref)
        .or_else(|| data.get("project_id").and_then(id_of_ref))
        .unwrap_or_default();
    // Both go into API paths; a signed payload is still not a trusted one.
    if let Err(e) = crate::names::validate_plane_id(&issue_id) {
        return Ok(Routed::Ignored(format!(
            "the work item id is not a Plane id, nothing asked: {e}"
        )));
    }
    let Some((repo, _)) = ctx
        .config
        .repos
        .iter()
        .find(|(_, r)| !r.plane_project.is_empty() && r.plane_project == project)
    else {
        return Ok(Routed::Ignored(format!(
            "Plane project {project:?} is not declared for any repo ([repos.<name>].plane_project)"
        )));
    };
    let repo = repo.clone();
    if ctx.config.tracker != "plane" {
        return Ok(Routed::Ignored("tracker is not \"plane\"".into()));
    }
    let actor = body
        .pointer("/activity/actor")
        .and_then(id_of_ref)
        .unwrap_or_default();
    let by_orch = !ctx.config.plane_bot_user_id.is_empty() && actor == ctx.config.plane_bot_user_id;
    // The payload is a hint: read the issue's state now.
    let client = PlaneClient::from_config(
        &ctx.config,
        std::time::Duration::from_secs(ctx.config.http_timeout_s),
    )?
    .with_board_cache(ctx.state_dir.join("cache"));
    let issue = client.get_issue(&project, &issue_id)?;
    let state_key = client.key_of_state(&project, &issue.state_id)?;
    if by_orch && state_key.as_deref() != Some(key::CONFIRM_DEPLOY) {
        return Ok(Routed::Ignored("caused by orch's own API user".into()));
    }
    let Some(state_key) = state_key else {
        return Ok(Routed::Ignored(
            "the issue's state has no pipeline meaning".into(),
        ));
    };
    act_on_state(ctx, db, &repo, &project, &issue, &state_key, by_orch)
}

/// What the pipeline does when a Plane issue is in the state `state_key`
/// (from a webhook, or from `orch reconcile`'s poll). Idempotent.
pub fn act_on_state(
    ctx: &Ctx,
    db: &mut Db,
    repo: &str,
    project: &str,
    issue: &tracker::plane::Issue,
    state_key: &str,
    by_orch: bool,
) -> anyhow::Result<Routed> {
    let existing = task::by_plane_id(db.conn(), &issue.id)?;
    match state_key {
        key::STOP => match existing {
            None => Ok(Routed::Ignored("STOP on an issue without a task".into())),
            Some(t) => {
                let c = cancel::cancel_task(ctx, db, t.id, "Plane STOP status", false)?;
                Ok(Routed::Acted(format!("STOP task {}: {}", t.id, c.note)))
            }
        },
        key::TO_ANALYSE | key::IN_PROGRESS => start(ctx, db, repo, project, issue, existing),
        key::CONFIRM_DEPLOY => match existing {
            Some(t) if t.stage() == Stage::Deploy => {
                let c = self_deploy::confirm(ctx, db, t.id, by_orch)?;
                Ok(Routed::Acted(format!(
                    "Confirm Deploy task {}: {}",
                    t.id, c.note
                )))
            }
            Some(t) => Ok(Routed::Ignored(format!(
                "Confirm Deploy on task {} at {}: no-op (only a task on deploy can be confirmed)",
                t.id, t.stage
            ))),
            None => Ok(Routed::Ignored(
                "Confirm Deploy on an issue without a task".into(),
            )),
        },
        key::APPROVED => match existing {
            Some(t) if t.stage() == Stage::Analysis => {
                advance::record_approval(ctx, db, t.id, "Plane \"Approved\" status")?;
                let a = advance::advance_task(ctx, db, t.id)?;
                Ok(Routed::Acted(a.note))
            }
            Some(t) if t.stage() == Stage::Deploy && self_deploy::applies(&ctx.config, &t.repo) => {
                Ok(Routed::Ignored(format!(
                    "approved-on-deploy-noop: task {} needs \"Confirm Deploy\", not \"Approved\"",
                    t.id
                )))
            }
            Some(t) => Ok(Routed::Ignored(format!(
                "Approved on task {} at {}: no-op",
                t.id, t.stage
            ))),
            None => Ok(Routed::Ignored(
                "Approved on an issue without a task".into(),
            )),
        },
        key::REJECTED => match existing {
            Some(t) if t.stage() == Stage::Analysis && !has_active_job(db, t.id)? => {
                let now_ = now();
                db.write(|tx| {
                    tracker::local::set_state(tx, t.id, tracker::state::REJECTED, now_)?;
                    queue::enqueue(
                        tx,
                        &NewJob {
                            agent: "analyst",
                            repo: &t.repo,
                            task_id: Some(t.id),
                            stage: Some(Stage::Analysis.as_str()),
                            task_content: "The analysis was rejected by a human: revise it (see the issue's comments).",
                            max_attempts: ctx.config.max_attempts,
                        },
                        now_,
                    )?;
                    Ok(())
                })?;
                Ok(Routed::Acted(format!(
                    "analysis of task {} rejected: analyst queued again",
                    t.id
                )))
            }
            Some(t) => Ok(Routed::Ignored(format!(
                "Rejected on task {} at {}: no-op",
                t.id, t.stage
            ))),
            None => Ok(Routed::Ignored(
                "Rejected on an issue without a task".into(),
            )),
        },
        other => Ok(Routed::Ignored(format!(
            "state {other:?}: no pipeline action"
        ))),
    }
}

fn id_of_ref(v: &Value) -> Option<String> {
    id_of(v)
}

fn has_active_job(db: &Db, task_id: i64) -> anyhow::Result<bool> {
    Ok(queue::for_task(db.conn(), task_id)?
        .iter()
        .any(|j| j.status == "queued" || j.status == "running"))
}

/// The start status: the only entry point of a new pipeline.
fn start(
    ctx: &Ctx,
    db: &mut Db,
    repo: &str,
    project: &str,
    issue: &tracker::plane::Issue,
    existing: Option<task::Task>,
) -> anyhow::Result<Routed> {
    match existing {
        None => {
            let prefix = ctx
                .config
                .repo(repo)
                .map(|r| r.work_item_prefix.clone())
                .unwrap_or_default();
            let prefix = if prefix.is_empty() {
                repo.to_ascii_uppercase()
            } else {
                prefix
            };
            let key = issue.sequence_id.map(|n| format!("{prefix}-{n}"));
            let new = task::NewTask {
                repo: repo.to_owned(),
                title: if issue.name.trim().is_empty() {
                    format!("Plane issue {}", issue.id)
                } else {
                    issue.name.clone()
                },
                description: issue.description.clone(),
                work_item_id: key.clone(),
                depends_on: None,
                plane_id: key,
                plane_issue_id: Some(issue.id.clone()),
                plane_project_id: Some(project.to_owned()),
                start: true,
            };
            let t = db.write(|tx| task::create(tx, &ctx.config, &new, now()))?;
            Ok(Routed::Acted(format!(
                "started the pipeline: task {} ({})",
                t.id, t.work_item_id
            )))
        }
        Some(t) if t.stage() == Stage::Analysis => {
            if has_active_job(db, t.id)? {
                return Ok(Routed::Ignored(format!(
                    "task {} is already being analysed",
                    t.id
                )));
            }
            let now_ = now();
            db.write(|tx| {
                queue::enqueue(
                    tx,
                    &NewJob {
                        agent: "analyst",
                        repo: &t.repo,
                        task_id: Some(t.id),
                        stage: Some(Stage::Analysis.as_str()),
                        task_content: &t.description,
                        max_attempts: ctx.config.max_attempts,
                    },
                    now_,
                )?;
                Ok(())
            })?;
            Ok(Routed::Acted(format!(
                "resumed the analysis of task {}",
                t.id
            )))
        }
        Some(t) if t.stage().is_terminal() => {
            Ok(Routed::Ignored(format!("task {} is {}", t.id, t.stage)))
        }
        Some(t) => {
            if ctx.config.stop_status_enabled {
                // The relaunch hole (ORCH-090): a start status mid-pipeline relaunches nothing.
                return Ok(Routed::Ignored(format!(
                    "task {} is on {}: the start status does not relaunch a stage agent",
                    t.id, t.stage
                )));
            }
            // Legacy behaviour with the STOP kill-switch off: relaunch the stage's agent if idle.
            let (Some(agent), false) = (t.stage().agent(), has_active_job(db, t.id)?) else {
                return Ok(Routed::Ignored(format!("task {} is busy", t.id)));
            };
            let now_ = now();
            db.write(|tx| {
                queue::enqueue(
                    tx,
                    &NewJob {
                        agent,
                        repo: &t.repo,
                        task_id: Some(t.id),
                        stage: Some(t.stage.as_str()),
                        task_content: &t.description,
                        max_attempts: ctx.config.max_attempts,
                    },
                    now_,
                )?;
                Ok(())
            })?;
            Ok(Routed::Acted(format!(
                "relaunched the {agent} of task {} (legacy)",
                t.id
            )))
        }
    }
}

fn route_gitea(ctx: &Ctx, db: &mut Db, d: &Delivery, body: &Value) -> anyhow::Result<Routed> {
    let event = d.event.clone().unwrap_or_default();
    let repo = body
        .pointer("/repository/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !ctx.config.repos.contains_key(&repo) {
        return Ok(Routed::Ignored(format!(
            "repository {repo:?} is not declared"
        )));
    }
    match event.as_str() {
        "pull_request" => {
            let merged = body
                .pointer("/pull_request/merged")
                .and_then(Value::as_bool)
                == Some(true);
            let closed = body.get("action").and_then(Value::as_str) == Some("closed");
            let Some(branch) = body
                .pointer("/pull_request/head/ref")
                .and_then(Value::as_str)
            else {
                return Ok(Routed::Ignored("no head branch in the payload".into()));
            };
            if !(merged && closed) {
                return Ok(Routed::Ignored(format!(
                    "pull request of {branch}: not a merge"
                )));
            }
            crate::names::validate_branch(branch)?;
            let released = db.write(|tx| Ok(lease::release(tx, &repo, branch)?))?;
            Ok(if released {
                Routed::Acted(format!(
                    "{branch} merged: released the merge lease of {repo}"
                ))
            } else {
                Routed::Ignored(format!("{branch} merged; it held no lease"))
            })
        }
        "status" => {
            let state = body.get("state").and_then(Value::as_str).unwrap_or("");
            if state != "success" {
                return Ok(Routed::Ignored(format!(
                    "commit status {state:?}: nothing to do"
                )));
            }
            // Gitea's CommitStatusPayload names the commit (`sha`), never the
            // branches (GitHub's `branches[]` is not in it): match the commit
            // against what orch pushed for each developing task.
            let Some(sha) = body
                .get("sha")
                .and_then(Value::as_str)
                .filter(|s| is_commit_id(s))
            else {
                return Ok(Routed::Ignored("no commit sha in the payload".into()));
            };
            let tasks = task::list(
                db.conn(),
                Some(Stage::Development.as_str()),
                Some(&repo),
                1000,
            )?;
            let ws = Workspace::new(&ctx.repos_dir(), &repo, ctx.config.repo(&repo)?)?;
            let mut found = None;
            for t in tasks {
                if pushed_commits(db, &ws, &t)?
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(sha))
                {
                    found = Some(t);
                    break;
                }
            }
            let Some(t) = found else {
                return Ok(Routed::Ignored(format!(
                    "commit {sha} is not the pushed head of a developing task"
                )));
            };
            let a = advance::advance_task(ctx, db, t.id)?;
            Ok(Routed::Acted(a.note))
        }
        other => Ok(Routed::Ignored(format!(
            "gitea event {other:?}: no pipeline action"
        ))),
    }
}

/// A full hex commit id (SHA-1 or SHA-256).
fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commits orch pushed for task `t`: its branch in the clone cache (the
/// worktree commits there and pushes `HEAD` to the branch), the remote
/// branch as last fetched, and the last commit whose tests passed. Read
/// only, without the repository lock: reading a ref is atomic in git.
fn pushed_commits(db: &Db, ws: &Workspace, t: &task::Task) -> anyhow::Result<Vec<String>> {
    let mut commits = Vec::new();
    let tested = db.conn().task_tested_sha(t.id)?;
    commits.extend(tested);
    let clone = ws.clone_dir();
    if let Some(branch) = t.branch.as_deref()
        && crate::names::validate_branch(branch).is_ok()
        && clone.join(".git").exists()
    {
        let git = Git::at(&clone);
        for r in [
            format!("refs/heads/{branch}"),
            format!("refs/remotes/origin/{branch}"),
        ] {
            commits.extend(git.rev(&r)?);
        }
    }
    Ok(commits)
}
