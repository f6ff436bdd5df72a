//! The pages of the web board, rendered to HTML from data already read
//! (the queries live in the domain modules; [`super::routes`] gathers their
//! results into the views below). Plain server-rendered HTML with one inline
//! stylesheet and no script: pages that change refresh themselves with
//! `<meta http-equiv="refresh">`, and the live log is a small page of its own
//! in an iframe, anchored at its bottom by CSS. Every value from outside goes
//! through [`html`]; numbers, stage names and orch's own words do not need to.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::output::{self, utc};
use crate::pipeline::Stage;
use crate::pipeline::attention::Item;
use crate::pipeline::budget::Ledger;
use crate::pipeline::runs::Attempt;
use crate::pipeline::task::{Task, Transition};

use super::escape::html;

/// Seconds between refreshes of the board and of a task's page.
pub const PAGE_REFRESH_S: u32 = 10;

/// Seconds between refreshes of a running agent's log.
pub const LOG_REFRESH_S: u32 = 2;

/// One task on the board.
#[derive(Debug, Clone)]
pub struct Card {
    /// The task.
    pub task: Task,
    /// Its known cost, in USD.
    pub spent_usd: f64,
}

/// Everything the board shows.
#[derive(Debug, Clone)]
pub struct Board {
    /// When it was read.
    pub now: i64,
    /// What needs a human.
    pub attention: Vec<Item>,
    /// The pipeline's stages, analysis to deploy, each with its tasks.
    pub columns: Vec<(Stage, Vec<Card>)>,
    /// Tasks per stage name.
    pub counts: HashMap<String, i64>,
    /// The latest tasks done or cancelled, newest first.
    pub finished: Vec<Card>,
}

/// Everything a task's page shows.
#[derive(Debug, Clone)]
pub struct TaskView {
    /// When it was read.
    pub now: i64,
    /// The task.
    pub task: Task,
    /// What about it needs a human.
    pub attention: Vec<Item>,
    /// Its stage history, oldest first.
    pub history: Vec<Transition>,
    /// Its agent runs, oldest first.
    pub runs: Vec<Attempt>,
    /// Its cost ledger.
    pub ledger: Ledger,
}

/// The live log of a task: its latest run and that log's tail.
#[derive(Debug, Clone)]
pub struct LogView {
    /// The task.
    pub task_id: i64,
    /// The run shown, if the task has any.
    pub run: Option<Attempt>,
    /// The end of its log, already text.
    pub text: String,
    /// How many bytes the tail is capped at.
    pub max_bytes: u64,
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#172b4d}
header{background:#172b4d;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:bold;font-size:1.3em}
header p{margin:0;opacity:.8}
main{padding:0 1em 1em}
h2{font-size:1.05em;margin:1em 0 .4em}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #dfe1e6;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#ebecf0}
code{background:#ebecf0;padding:0 .3em;border-radius:3px;white-space:nowrap}
#attention table{border-left:4px solid #de350b}
.board{display:flex;gap:.6em;overflow-x:auto}
.column{flex:1 0 11em;background:#ebecf0;border-radius:4px;padding:.4em;min-height:6em}
.column h2{margin:.2em 0 .5em;font-size:.95em;text-transform:uppercase}
.n{color:#5e6c84;font-weight:normal}
.card{display:block;background:#fff;border-radius:3px;padding:.4em;margin-bottom:.4em;color:inherit;
 text-decoration:none;box-shadow:0 1px 1px #091e4240;overflow-wrap:anywhere}
.card:hover{outline:2px solid #4c9aff}
.wi,.meta{color:#5e6c84;font-size:.85em;display:block}
.title{display:block;margin:.15em 0}
.flag{display:inline-block;background:#de350b;color:#fff;border-radius:3px;padding:0 .3em;font-size:.8em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;background:#fff;padding:.5em;margin:0}
dt{color:#5e6c84}dd{margin:0;overflow-wrap:anywhere}
iframe{width:100%;height:28em;border:1px solid #dfe1e6;background:#fff}
.tail{display:flex;flex-direction:column-reverse;height:calc(100vh - 1.6em);overflow:auto;background:#fff}
.tail pre{margin:0 0 auto;padding:.5em;font:12px/1.35 ui-monospace,monospace;white-space:pre-wrap;overflow-wrap:anywhere}
.tailbar{background:#ebecf0;padding:.2em .5em;font-size:12px;height:1.2em;overflow:hidden}
";

/// A whole page around `body`; `refresh` reloads it every that many seconds.
fn page(title: &str, refresh: Option<u32>, body: &str) -> String {
    let meta = refresh.map_or_else(String::new, |s| {
        format!("<meta http-equiv=\"refresh\" content=\"{s}\">")
    });
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{meta}\
         <title>{title}</title><style>{STYLE}</style></head>\n<body>{body}</body></html>\n",
        title = html(title)
    )
}

/// The bar at the top of every page.
fn header(now: i64, note: &str) -> String {
    format!(
        "<header><a href=\"/\">orch</a><p>read-only board · {} · {note}</p></header>",
        utc(now)
    )
}

/// USD as `$1.23`.
fn usd(v: f64) -> String {
    format!("${v:.2}")
}

/// The board: attention list, one column per stage, then the finished tasks.
pub fn board(b: &Board) -> String {
    let mut body = header(b.now, &format!("refreshes every {PAGE_REFRESH_S} s"));
    body.push_str("<main>");
    body.push_str(&attention_section(&b.attention, b.now, true));
    body.push_str("<section class=\"board\" id=\"board\">");
    for (stage, cards) in &b.columns {
        let _ = write!(
            body,
            "<div class=\"column\" id=\"stage-{s}\"><h2>{s} <span class=\"n\">{n}</span></h2>",
            s = stage.as_str(),
            n = cards.len()
        );
        for card in cards {
            body.push_str(&card_html(card, &b.attention, b.now));
        }
        body.push_str("</div>");
    }
    body.push_str("</section>");
    body.push_str(&finished_section(b));
    body.push_str("</main>");
    page("orch board", Some(PAGE_REFRESH_S), &body)
}

/// One task card, flagged with whatever about it needs a human.
fn card_html(card: &Card, attention: &[Item], now: i64) -> String {
    let t = &card.task;
    let mut flags = String::new();
    for i in attention.iter().filter(|i| i.task_id == Some(t.id)) {
        let _ = write!(flags, "<span class=\"flag\">{}</span> ", i.kind.as_str());
    }
    format!(
        "<a class=\"card\" id=\"task-{id}\" href=\"/task/{id}\"><span class=\"wi\">#{id} · {wi}</span>\
         <span class=\"title\">{title}</span>{flags}<span class=\"meta\">age {age} · {cost}</span></a>",
        id = t.id,
        wi = html(&t.work_item_id),
        title = html(&t.title),
        age = output::duration(now - t.created_at),
        cost = usd(card.spent_usd),
    )
}

/// The attention list; `link` links each item's task.
fn attention_section(items: &[Item], now: i64, link: bool) -> String {
    let mut out = format!(
        "<section id=\"attention\"><h2>Needs a human <span class=\"n\">{}</span></h2>",
        items.len()
    );
    if items.is_empty() {
        out.push_str("<p>Nothing: the pipeline runs by itself.</p></section>");
        return out;
    }
    out.push_str(
        "<table><thead><tr><th>what</th><th>task</th><th>since</th><th>why</th>\
         <th>command that resolves it</th></tr></thead><tbody>",
    );
    for i in items {
        let task = match (i.task_id, link) {
            (Some(id), true) => format!("<a href=\"/task/{id}\">#{id}</a>"),
            (Some(id), false) => format!("#{id}"),
            (None, _) => "-".to_owned(),
        };
        let _ = write!(
            out,
            "<tr class=\"{kind}\"><td>{kind}</td><td>{task}</td><td>{since}</td><td>{why}</td>\
             <td><code>{cmd}</code></td></tr>",
            kind = i.kind.as_str(),
            since = output::ago(Some(i.since), now),
            why = html(&i.reason),
            cmd = html(&i.command),
        );
    }
    out.push_str("</tbody></table></section>");
    out
}

/// Done and cancelled counts and the latest finished tasks.
fn finished_section(b: &Board) -> String {
    let count = |s: &str| b.counts.get(s).copied().unwrap_or(0);
    let mut out = format!(
        "<section id=\"finished\"><h2>Finished</h2><p>done <b id=\"count-done\">{}</b> · \
         cancelled <b id=\"count-cancelled\">{}</b> · not started <b>{}</b></p>",
        count("done"),
        count("cancelled"),
        count("created")
    );
    if !b.finished.is_empty() {
        out.push_str(
            "<table><thead><tr><th>task</th><th>work item</th><th>title</th><th>stage</th>\
             <th>finished</th><th>cost</th></tr></thead><tbody>",
        );
        for c in &b.finished {
            let t = &c.task;
            let _ = write!(
                out,
                "<tr><td><a href=\"/task/{id}\">#{id}</a></td><td>{wi}</td><td>{title}</td>\
                 <td>{stage}</td><td>{when}</td><td>{cost}</td></tr>",
                id = t.id,
                wi = html(&t.work_item_id),
                title = html(&t.title),
                stage = html(&t.stage),
                when = utc(t.updated_at),
                cost = usd(c.spent_usd),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}

/// A task's page: facts, attention, timeline, attempts, live log.
pub fn task(v: &TaskView) -> String {
    let t = &v.task;
    let live = !t.stage().is_terminal();
    let note = if live {
        format!("refreshes every {PAGE_REFRESH_S} s")
    } else {
        t.stage.clone()
    };
    let mut body = header(v.now, &html(&note));
    let _ = write!(
        body,
        "<main><h1>#{} · {} · {}</h1>",
        t.id,
        html(&t.work_item_id),
        html(&t.title)
    );
    body.push_str(&facts(v));
    if !v.attention.is_empty() {
        body.push_str(&attention_section(&v.attention, v.now, false));
    }
    body.push_str(&timeline(&v.history));
    body.push_str(&attempts(&v.runs, v.now));
    if !v.runs.is_empty() {
        let _ = write!(
            body,
            "<h2>Log of the latest attempt</h2><iframe id=\"log\" src=\"/task/{}/tail\" \
             title=\"the latest attempt's log\"></iframe>",
            t.id
        );
    }
    body.push_str("</main>");
    let title = format!("#{} {}", t.id, t.title);
    page(&title, live.then_some(PAGE_REFRESH_S), &body)
}

/// The task's facts and its cost.
fn facts(v: &TaskView) -> String {
    let t = &v.task;
    let l = &v.ledger;
    let mut rows = vec![
        ("stage", format!("<b id=\"stage\">{}</b>", html(&t.stage))),
        ("repo", html(&t.repo)),
        ("branch", html(t.branch.as_deref().unwrap_or("-"))),
        ("created", utc(t.created_at)),
        ("updated", utc(t.updated_at)),
    ];
    let optional = [
        ("plane", t.plane_id.clone()),
        ("tracker", t.tracker_state.clone()),
        ("depends on", t.depends_on.map(|d| format!("#{d}"))),
        ("blocked", t.blocked_reason.clone()),
        ("escalated", t.escalated_at.map(utc)),
        ("cancelled", t.cancelled_at.map(utc)),
    ];
    rows.extend(
        optional
            .into_iter()
            .filter_map(|(k, v)| Some((k, html(&v?)))),
    );
    let unknown = if l.unknown_runs > 0 {
        format!(" + {} run(s) of unknown cost", l.unknown_runs)
    } else {
        String::new()
    };
    let budget = l.budget_usd.map_or_else(
        || "no budget".to_owned(),
        |b| {
            format!(
                "budget {} ({} left)",
                usd(b),
                usd(l.remaining_usd.unwrap_or(0.0))
            )
        },
    );
    rows.push((
        "cost",
        format!(
            "<b id=\"cost\">{}</b>{unknown} · {budget}",
            usd(l.spent_usd)
        ),
    ));
    let mut out = String::from("<dl>");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    }
    out.push_str("</dl>");
    out
}

/// The task's stage transitions.
fn timeline(history: &[Transition]) -> String {
    let mut out = String::from("<h2>Timeline</h2>");
    if history.is_empty() {
        out.push_str("<p>No transitions yet.</p>");
        return out;
    }
    out.push_str(
        "<table id=\"timeline\"><thead><tr><th>when</th><th>kind</th><th>from</th><th>to</th>\
         <th>job</th><th>reason</th></tr></thead><tbody>",
    );
    for h in history {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            utc(h.at),
            html(&h.kind),
            html(&h.from_stage),
            html(&h.to_stage),
            output::opt(h.job_id),
            html(&h.reason)
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The task's agent runs.
fn attempts(runs: &[Attempt], now: i64) -> String {
    let mut out = String::from("<h2>Attempts</h2>");
    if runs.is_empty() {
        out.push_str("<p>No agent has run yet.</p>");
        return out;
    }
    out.push_str(
        "<table id=\"attempts\"><thead><tr><th>run</th><th>job</th><th>stage</th><th>agent</th>\
         <th>started</th><th>ended</th><th>duration</th><th>outcome</th><th>cost</th>\
         <th>log</th></tr></thead><tbody>",
    );
    for r in runs {
        let ended = r.finished_at.map_or_else(|| "running".to_owned(), utc);
        let cost = match (r.cost_usd, r.finished_at) {
            (Some(c), _) => usd(c),
            (None, None) => "-".to_owned(),
            (None, Some(_)) => "unknown".to_owned(),
        };
        let _ = write!(
            out,
            "<tr><td>{id}</td><td>{job}</td><td>{stage}</td><td>{agent}</td><td>{start}</td>\
             <td>{ended}</td><td>{dur}</td><td>{outcome}</td><td>{cost}</td>\
             <td><a href=\"/run/{id}/log\">log</a></td></tr>",
            id = r.run_id,
            job = output::opt(r.job_id),
            stage = html(r.stage.as_deref().unwrap_or("-")),
            agent = html(&r.agent),
            start = utc(r.started_at),
            dur = output::duration(r.duration_s.unwrap_or(now - r.started_at).max(0)),
            outcome = html(&outcome(r)),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// How a run ended, in a few words.
fn outcome(r: &Attempt) -> String {
    if r.finished_at.is_none() {
        return "running".to_owned();
    }
    let mut text = r
        .outcome
        .clone()
        .unwrap_or_else(|| match (r.exit_code, r.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "ended".to_owned(),
        });
    if let Some(t) = &r.timed_out {
        let _ = write!(text, " ({t} timeout)");
    }
    text
}

/// The page in the task's iframe: the end of the latest run's log,
/// reloaded every [`LOG_REFRESH_S`] seconds while the run goes on.
pub fn log_tail(v: &LogView) -> String {
    let Some(run) = &v.run else {
        return page("log", None, "<p>No agent has run yet.</p>");
    };
    let live = run.finished_at.is_none();
    let state = if live {
        format!("running, refreshed every {LOG_REFRESH_S} s")
    } else {
        format!("ended {}", utc(run.finished_at.unwrap_or(run.started_at)))
    };
    let body = format!(
        "<div class=\"tailbar\">run {id} ({agent}) · {state} · the last {kib} KiB · \
         <a href=\"/run/{id}/log\" target=\"_top\">plain text</a></div>\
         <div class=\"tail\"><pre id=\"tail\">{text}</pre></div>",
        text = html(&v.text),
        id = run.run_id,
        agent = html(&run.agent),
        kib = v.max_bytes / 1024,
    );
    let title = format!("task {} log", v.task_id);
    page(&title, live.then_some(LOG_REFRESH_S), &body)
}

/// A short page for 404 and other errors.
pub fn message(status: u16, text: &str) -> String {
    let body = format!(
        "<header><a href=\"/\">orch</a><p>{status}</p></header><main><p>{}</p></main>",
        html(text)
    );
    page(&format!("{status}"), None, &body)
}
