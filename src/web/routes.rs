//! What each URL of the web board answers. Only `GET` and `HEAD` exist;
//! every other method is 405. The data comes from the domain modules
//! (tasks, runs, the cost ledger, the attention list), read through a
//! read-only database handle opened for the request, so no request can
//! change anything; [`super::pages`] turns it into HTML.
//!
//! | path | answer |
//! |---|---|
//! | `/` | the board |
//! | `/task/N` | task N: facts, timeline, attempts, cost, live log |
//! | `/task/N/tail` | the live-log page of the task's iframe |
//! | `/task/N/log` | the latest attempt's log tail as `text/plain` |
//! | `/run/N/log` | run N's log tail as `text/plain` |
//! | `/healthz` | `ok` |

use std::collections::HashMap;

use crate::context::Ctx;
use crate::pipeline::{Stage, attention, budget, runs, task};
use crate::storage::{self, Db};

use super::escape;
use super::pages::{self, Board, Card, LogView, TaskView};

/// The most bytes of a log a page or a `/log` answer carries.
pub const TAIL_BYTES: u64 = 64 * 1024;

/// How many finished tasks the board lists.
const FINISHED_SHOWN: u32 = 10;

/// An answer, before the HTTP framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body (left out for `HEAD` by the caller).
    pub body: Vec<u8>,
}

const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    fn html(body: String) -> Response {
        Response {
            status: 200,
            content_type: HTML,
            body: body.into_bytes(),
        }
    }

    /// A plain-text answer of one line.
    pub fn text(status: u16, line: &str) -> Response {
        Response {
            status,
            content_type: TEXT,
            body: format!("{line}\n").into_bytes(),
        }
    }

    fn not_found(what: &str) -> Response {
        Response {
            status: 404,
            content_type: HTML,
            body: pages::message(404, what).into_bytes(),
        }
    }
}

/// The answer to `method target`.
pub fn handle(ctx: &Ctx, method: &str, target: &str) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(
            405,
            &format!("method {method} is not allowed; the board is read-only (GET, HEAD)"),
        );
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let result = match segments.as_slice() {
        [""] => board(ctx).map(Response::html),
        ["healthz"] => Ok(Response::text(200, "ok")),
        ["task", id] => with_id(id, |id| task_page(ctx, id)),
        ["task", id, "tail"] => with_id(id, |id| tail_page(ctx, id)),
        ["task", id, "log"] => with_id(id, |id| task_log(ctx, id)),
        ["run", id, "log"] => with_id(id, |id| run_log(ctx, id)),
        _ => Ok(Response::not_found("No such page.")),
    };
    result.unwrap_or_else(|e| {
        log::error!("web: {method} {path}: {e:#}");
        Response::text(
            503,
            "the board cannot read orch's state now; the reason is in its log",
        )
    })
}

/// Call `f` with the id in a path segment: digits only, else 404.
fn with_id(
    segment: &str,
    f: impl FnOnce(i64) -> anyhow::Result<Response>,
) -> anyhow::Result<Response> {
    let id =
        (!segment.is_empty() && segment.len() <= 18 && segment.bytes().all(|b| b.is_ascii_digit()))
            .then(|| segment.parse::<i64>().ok())
            .flatten();
    match id {
        Some(id) => f(id),
        None => Ok(Response::not_found("No such page.")),
    }
}

/// The database, read-only.
fn open(ctx: &Ctx) -> anyhow::Result<Db> {
    ctx.open_db_read_only()
}

/// The board's data, read in one snapshot.
fn board(ctx: &Ctx) -> anyhow::Result<String> {
    let mut db = open(ctx)?;
    let board = db.read(|tx| {
        let spent = budget::spent_by_task(tx)?;
        let card = |t: task::Task| Card {
            spent_usd: spent.get(&t.id).copied().unwrap_or(0.0),
            task: t,
        };
        let mut columns: Vec<(Stage, Vec<Card>)> = Stage::PIPELINE
            .iter()
            .filter(|s| !matches!(s, Stage::Created | Stage::Done))
            .map(|s| (*s, Vec::new()))
            .collect();
        for t in task::unfinished(tx)? {
            if let Some((_, cards)) = columns.iter_mut().find(|(s, _)| s.as_str() == t.stage) {
                cards.push(card(t));
            }
        }
        let mut finished = task::list(tx, Some("done"), None, FINISHED_SHOWN)?;
        finished.extend(task::list(tx, Some("cancelled"), None, FINISHED_SHOWN)?);
        finished.sort_by_key(|t| std::cmp::Reverse(t.updated_at));
        finished.truncate(FINISHED_SHOWN as usize);
        Ok(Board {
            now: storage::now(),
            attention: attention::list(tx, &ctx.config, &ctx.locks()?)?,
            columns,
            counts: task::count_by_stage(tx)?
                .into_iter()
                .collect::<HashMap<_, _>>(),
            finished: finished.into_iter().map(card).collect(),
        })
    })?;
    Ok(pages::board(&board))
}

/// Task `id`'s page, or 404.
fn task_page(ctx: &Ctx, id: i64) -> anyhow::Result<Response> {
    let mut db = open(ctx)?;
    let view = db.read(|tx| {
        let Some(t) = task::get(tx, id)? else {
            return Ok(None);
        };
        let attention = attention::list(tx, &ctx.config, &ctx.locks()?)?
            .into_iter()
            .filter(|i| i.task_id == Some(id))
            .collect();
        Ok(Some(TaskView {
            now: storage::now(),
            attention,
            history: task::history(tx, id)?,
            runs: runs::for_task(tx, id)?,
            ledger: budget::ledger(tx, &ctx.config, &t)?,
            task: t,
        }))
    })?;
    Ok(view.map_or_else(
        || Response::not_found(&format!("There is no task {id}.")),
        |v| Response::html(pages::task(&v)),
    ))
}

/// A task's latest run, if the task exists.
enum Latest {
    /// There is no such task.
    NoTask,
    /// The task's latest run; `None` before its first.
    Run(Option<Box<runs::Attempt>>),
}

/// The latest run of task `id`.
fn latest_run(ctx: &Ctx, id: i64) -> anyhow::Result<Latest> {
    let mut db = open(ctx)?;
    db.read(|tx| {
        if task::get(tx, id)?.is_none() {
            return Ok(Latest::NoTask);
        }
        Ok(Latest::Run(runs::latest_for_task(tx, id)?.map(Box::new)))
    })
}

/// The end of `run`'s log as text (empty when it has none to show; a line
/// saying so when it cannot be read, the reason going to orch's log).
fn tail_text(ctx: &Ctx, run: &runs::Attempt) -> String {
    let Some(path) = runs::log_path(&ctx.state_dir, run) else {
        return String::new();
    };
    match runs::tail_log(&path, TAIL_BYTES) {
        Ok(bytes) => escape::log_text(&bytes).into_owned(),
        Err(e) => {
            log::warn!("web: reading {}: {e}", path.display());
            "(the log cannot be read; the reason is in orch's log)\n".to_owned()
        }
    }
}

/// The live-log page of task `id`'s iframe.
fn tail_page(ctx: &Ctx, id: i64) -> anyhow::Result<Response> {
    let Latest::Run(run) = latest_run(ctx, id)? else {
        return Ok(Response::not_found(&format!("There is no task {id}.")));
    };
    let text = match &run {
        Some(r) => tail_text(ctx, r),
        None => String::new(),
    };
    Ok(Response::html(pages::log_tail(&LogView {
        task_id: id,
        run: run.map(|r| *r),
        text,
        max_bytes: TAIL_BYTES,
    })))
}

/// The latest attempt's log of task `id`, as plain text.
fn task_log(ctx: &Ctx, id: i64) -> anyhow::Result<Response> {
    match latest_run(ctx, id)? {
        Latest::NoTask => Ok(Response::not_found(&format!("There is no task {id}."))),
        Latest::Run(None) => Ok(Response::text(200, "(no agent has run yet)")),
        Latest::Run(Some(run)) => Ok(plain_log(ctx, &run)),
    }
}

/// Run `id`'s log, as plain text.
fn run_log(ctx: &Ctx, id: i64) -> anyhow::Result<Response> {
    let mut db = open(ctx)?;
    match db.read(|tx| Ok(runs::get(tx, id)?))? {
        None => Ok(Response::not_found(&format!("There is no run {id}."))),
        Some(run) => Ok(plain_log(ctx, &run)),
    }
}

/// A run's log tail as a `text/plain` answer.
fn plain_log(ctx: &Ctx, run: &runs::Attempt) -> Response {
    Response {
        status: 200,
        content_type: TEXT,
        body: tail_text(ctx, run).into_bytes(),
    }
}
