//! `orch status`: what the queue is doing, whether each running job's owner
//! is alive (by its lock, not its pid), and the persistent counters. It is
//! what an operator reads when something is wrong, so each block is read on
//! its own: one that fails shows its error and the rest still prints.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::cmd::view;
use crate::config::Config;
use crate::context::Ctx;
use crate::liveness::Liveness;
use crate::output::{self, Table};
use crate::pipeline::{attention, budget, overview, owners, post_deploy, task};
use crate::queue::{self, Job};
use crate::storage::Executor;
use crate::storage::{self, counters};

/// Arguments of `orch status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the status as JSON (shape documented in docs/json.md).
    #[arg(long)]
    pub json: bool,
    /// How many recent jobs to show.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub recent: u32,
    /// Redraw every SECONDS (default 2) until interrupted, like watch(1);
    /// with --json, print one JSON document per line each time.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
}

/// A running job and what its lock says about its owner.
#[derive(Debug, Serialize)]
pub struct RunningJob {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// `alive` while the owner holds its lock, `dead` once it does not.
    pub owner: Liveness,
    /// Seconds since the claim.
    pub running_for_s: i64,
}

/// A gate and whether it is on.
#[derive(Debug, Serialize)]
pub struct GateStatus {
    /// Whether the gate is enabled.
    pub enabled: bool,
}

/// The whole report, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Version of this JSON shape.
    pub schema: u32,
    /// The state directory.
    pub state_dir: String,
    /// The database file.
    pub database: String,
    /// Now, in epoch seconds (all other times are relative to this clock).
    pub now: i64,
    /// What needs a human, each with the command that resolves it.
    pub attention: Vec<attention::Item>,
    /// How many items of each kind need a human: the text view lists only
    /// the first dead owners (`attention` has them all with `--json`).
    #[serde(skip)]
    pub attention_counts: Vec<(attention::Kind, usize)>,
    /// The newest unfinished tasks, with their times and cost.
    pub tasks: Vec<overview::TaskSummary>,
    /// Jobs per status (every status present, zeros included).
    pub counts: BTreeMap<String, i64>,
    /// The concurrency limit.
    pub max_concurrency: u32,
    /// The claim gates.
    pub gates: BTreeMap<&'static str, GateStatus>,
    /// Running jobs with owner liveness: all of them by id (`--json`), or
    /// the first few in reading order (the text view).
    pub running: Vec<RunningJob>,
    /// How many jobs are running.
    pub running_total: usize,
    /// How many of them have a dead owner.
    pub running_dead: usize,
    /// The most recent jobs, newest first.
    pub recent: Vec<Job>,
    /// Persistent counters by name.
    pub counters: BTreeMap<String, counters::Counter>,
    /// The reaper's settings and its last pass.
    pub reaper: serde_json::Value,
    /// The reconciler: whether it is on, its passes, what the last one did.
    pub reconcile: serde_json::Value,
    /// Merge leases held, and the merge gate's scope.
    pub merge_gate: serde_json::Value,
    /// Outbox messages per status (`pending`, `delivered`, `dead`).
    pub outbox: BTreeMap<String, i64>,
    /// STOP: whether it is on, its scope, and the cancelled tasks.
    pub stop: serde_json::Value,
    /// Cost per active task and stage, and the total of every run.
    pub costs: serde_json::Value,
    /// The post-deploy monitor: settings, monitors watching, last results.
    pub post_deploy: serde_json::Value,
    /// Blocks that could not be read, by name (each shown as `{"error": ...}`
    /// or empty); every other block is complete.
    pub errors: BTreeMap<String, String>,
}

/// One block's value, or its error: a block that cannot be read is shown as
/// `{"error": ...}` (and listed in `errors`), never hides the others.
fn block<T>(errors: &mut BTreeMap<String, String>, name: &str, r: anyhow::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!("orch status: reading the {name} block: {e:#}");
            errors.insert(name.to_owned(), format!("{e:#}"));
            None
        }
    }
}

fn value_block(
    errors: &mut BTreeMap<String, String>,
    name: &str,
    r: anyhow::Result<serde_json::Value>,
) -> serde_json::Value {
    block(errors, name, r).unwrap_or_else(
        || serde_json::json!({ "error": errors.get(name).cloned().unwrap_or_default() }),
    )
}

/// How many unfinished tasks `status` lists (newest first); `orch task
/// list` shows them all.
const TASKS_SHOWN: u32 = 50;

/// How much of the long lists a report carries.
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    /// Recent jobs.
    pub recent: u32,
    /// Running jobs read whole, in reading order; `None`: every one, by id.
    /// The others are only counted (`running_total`, `running_dead`).
    pub running: Option<usize>,
}

/// Gather the report in one read snapshot. Only opening the database can
/// fail the whole report; every block after that is best-effort.
pub fn report(ctx: &Ctx, extent: Extent) -> anyhow::Result<Report> {
    let mut db = ctx.open_db()?;
    let database = db.describe();
    let now = storage::now();
    let mut errors = BTreeMap::new();
    let mut report = db.read(|tx| Ok(gather(ctx, tx, now, extent, &mut errors)))?;
    report.database = database;
    report.errors = errors;
    Ok(report)
}

/// Every block, each read on its own (a failed one is recorded in `errs`).
fn gather(
    ctx: &Ctx,
    tx: &dyn Executor,
    now: i64,
    extent: Extent,
    errs: &mut BTreeMap<String, String>,
) -> Report {
    let c = &ctx.config;
    let counts = block(errs, "counts", queue::counts(tx).map_err(Into::into)).unwrap_or_default();
    let recent = block(
        errs,
        "recent",
        queue::list(tx, None, extent.recent).map_err(Into::into),
    )
    .unwrap_or_default();
    let counters =
        block(errs, "counters", counters::all(tx).map_err(Into::into)).unwrap_or_default();
    // `None` if the counts could not be read: then every owner is probed.
    let running_count = counts.get("running").copied();
    let survey = block(
        errs,
        "running",
        survey_running(ctx, tx, running_count, extent.running),
    )
    .unwrap_or_default();
    let running = block(errs, "running", running_jobs(tx, &survey.first, now)).unwrap_or_default();
    let attention = block(
        errs,
        "attention",
        attention::list_probed(tx, c, &survey.first),
    )
    .unwrap_or_default();
    // Only the dead owners shown were listed; the survey counted them all.
    let attention_counts = attention::counts(&attention)
        .into_iter()
        .map(|(kind, n)| match kind {
            attention::Kind::DeadOwner => (kind, survey.dead),
            _ => (kind, n),
        })
        .collect();
    let unfinished = overview::Filter {
        unfinished: true,
        ..overview::Filter::default()
    };
    let mut tasks = block(
        errs,
        "tasks",
        overview::list(tx, unfinished, TASKS_SHOWN, now).map_err(Into::into),
    )
    .unwrap_or_default();
    overview::attach(&mut tasks, &attention);
    let outbox = block(
        errs,
        "outbox",
        crate::outbox::counts(tx).map_err(Into::into),
    )
    .unwrap_or_default();
    Report {
        schema: 1,
        state_dir: ctx.state_dir.display().to_string(),
        database: String::new(),
        now,
        attention,
        tasks,
        counts,
        max_concurrency: c.max_concurrency,
        gates: gates(c),
        running_total: survey.total,
        running_dead: survey.dead,
        running,
        attention_counts,
        recent,
        reaper: reaper_block(c, &counters),
        reconcile: reconcile_block(c, &counters),
        merge_gate: value_block(errs, "merge_gate", merge_gate_block(tx, c, &counters)),
        counters,
        outbox,
        stop: value_block(errs, "stop", stop_block(tx, c)),
        costs: value_block(errs, "costs", costs_block(tx, c)),
        post_deploy: value_block(errs, "post_deploy", post_deploy_block(tx, c)),
        errors: BTreeMap::new(),
    }
}

/// The running jobs to show, whole: the first `shown` in reading order
/// (dead owners first, then the longest running), or all of them by id.
/// The running jobs' owners: every one, by id, when `shown` is `None`
/// (`--json`), else the first `shown` in reading order, the rest counted.
/// `running` is the count read earlier in this snapshot, if it could be.
fn survey_running(
    ctx: &Ctx,
    tx: &dyn Executor,
    running: Option<i64>,
    shown: Option<usize>,
) -> anyhow::Result<owners::Survey> {
    let locks = ctx.locks()?;
    if let (Some(n), Some(running)) = (shown, running) {
        let running = usize::try_from(running).unwrap_or(0);
        return owners::survey(tx, &locks, running, n);
    }
    owners::survey_each(tx, &locks, shown)
}

/// The whole rows of the running jobs `owners`, in their order.
fn running_jobs(
    tx: &dyn Executor,
    owners: &[owners::Owner],
    now: i64,
) -> anyhow::Result<Vec<RunningJob>> {
    let ids: Vec<i64> = owners.iter().map(|o| o.job_id).collect();
    let mut jobs: HashMap<i64, Job> = queue::by_ids(tx, &ids)?
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    // Every one is there: one read transaction. `remove` only keeps the
    // types honest.
    Ok(owners
        .iter()
        .filter_map(|o| {
            let job = jobs.remove(&o.job_id)?;
            Some(RunningJob {
                running_for_s: job.started_at.map_or(0, |t| now - t),
                owner: o.liveness,
                job,
            })
        })
        .collect())
}

/// The value of counter `name` (0 when absent).
fn counter(cs: &BTreeMap<String, counters::Counter>, name: &str) -> i64 {
    cs.get(name).map_or(0, |c| c.value)
}

/// The last event recorded with counter `name`.
fn last(cs: &BTreeMap<String, counters::Counter>, name: &str) -> Option<serde_json::Value> {
    cs.get(name).and_then(|c| c.last.clone())
}

/// The claim gates.
fn gates(c: &Config) -> BTreeMap<&'static str, GateStatus> {
    BTreeMap::from([
        (
            "serial_gate",
            GateStatus {
                enabled: c.serial_gate_enabled,
            },
        ),
        (
            "task_deps",
            GateStatus {
                enabled: c.task_deps_enabled,
            },
        ),
    ])
}

/// STOP: its settings and the cancelled tasks.
fn stop_block(tx: &dyn Executor, c: &Config) -> anyhow::Result<serde_json::Value> {
    let cancelled = task::list(tx, Some("cancelled"), None, 10)?;
    let (cancelled_count, pending_cancels) = task::cancel_counts(tx)?;
    Ok(serde_json::json!({
        "enabled": c.stop_status_enabled,
        "repos": crate::config::csv(&c.stop_status_repos),
        "cancelled_count": cancelled_count,
        "pending_requests": pending_cancels,
        "recent": cancelled.iter().map(|t| serde_json::json!({
            "task_id": t.id, "work_item_id": t.work_item_id, "repo": t.repo, "cancelled_at": t.cancelled_at
        })).collect::<Vec<_>>(),
    }))
}

/// The ledger of the active tasks (at most 50), and the totals of every run.
fn costs_block(tx: &dyn Executor, c: &Config) -> anyhow::Result<serde_json::Value> {
    let active = task::active(tx, 50)?;
    let ledgers = budget::ledgers(tx, c, &active)?;
    let mut tasks_cost = Vec::new();
    for (t, l) in active.iter().zip(ledgers) {
        tasks_cost.push(serde_json::json!({
            "task_id": t.id, "work_item_id": t.work_item_id, "stage": t.stage,
            "spent_usd": l.spent_usd, "unknown_runs": l.unknown_runs,
            "budget_usd": l.budget_usd, "remaining_usd": l.remaining_usd,
            "blocked": l.blocked_reason, "stages": l.stages,
        }));
    }
    // Unknown costs are counted apart: they are not zero.
    let (total, unknown) = budget::all_runs(tx)?;
    Ok(serde_json::json!({ "total_usd": total, "unknown_runs": unknown, "tasks": tasks_cost }))
}

/// The post-deploy monitor: settings, monitors watching, last results.
fn post_deploy_block(tx: &dyn Executor, c: &Config) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "enabled": c.post_deploy_enabled,
        "window_s": c.post_deploy_window_s,
        "checks": c.post_deploy_checks,
        "probe_timeout_s": c.post_deploy_probe_timeout_s,
        "max_failures": c.post_deploy_max_failures,
        "auto_rollback": c.post_deploy_auto_rollback,
        "base_url": c.post_deploy_base_url,
        "repos": c.repos.iter()
            .filter(|(_, r)| r.has_post_deploy_probe())
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>(),
        "running": post_deploy::running(tx)?,
        "recent": post_deploy::recent(tx, 5)?,
    }))
}

/// The reaper's settings and counters.
fn reaper_block(c: &Config, cs: &BTreeMap<String, counters::Counter>) -> serde_json::Value {
    serde_json::json!({
        "enabled": c.reaper_enabled,
        "max_running_s": c.reaper_max_running_s,
        "finalize_grace_s": c.reaper_finalize_grace_s,
        "start_grace_s": c.reaper_start_grace_s,
        "finalizer_liveness_enabled": c.reaper_finalizer_liveness_enabled,
        "impossible_queued_sanitize_enabled": c.impossible_queued_sanitize_enabled,
        "passes_total": counter(cs, "reaper_passes_total"),
        "last_pass": last(cs, "reaper_passes_total"),
        "reaped_total": counter(cs, "reaped_total"),
        "last_reaped": last(cs, "reaped_total"),
        "finalizer_defers_total": counter(cs, "finalizer_defers_total"),
        "backstop_total": counter(cs, "reaper_backstop_total"),
        "impossible_queued_total": counter(cs, "impossible_queued_total"),
    })
}

/// The reconciler's setting and counters.
fn reconcile_block(c: &Config, cs: &BTreeMap<String, counters::Counter>) -> serde_json::Value {
    serde_json::json!({
        "enabled": c.reconcile_enabled,
        "passes_total": counter(cs, "reconcile_passes_total"),
        "last_pass": last(cs, "reconcile_passes_total"),
        "skipped_terminal_total": counter(cs, "reconcile_skipped_terminal_total"),
    })
}

/// The merge gate: scope, leases held, counters.
fn merge_gate_block(
    tx: &dyn Executor,
    c: &Config,
    cs: &BTreeMap<String, counters::Counter>,
) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "enabled": c.merge_gate_enabled,
        "repos": c.merge_gate_scope(),
        "lease_reclaim_enabled": c.lease_reclaim_enabled,
        "lease_ttl_s": c.merge_lock_timeout_s,
        "leases": crate::pipeline::lease::all(tx)?,
        "lease_reclaimed_total": counter(cs, "lease_reclaimed_total"),
        "retests_total": counter(cs, "merge_gate_retests_total"),
        "rebases_total": counter(cs, "merge_gate_rebases_total"),
        "retest_timeouts_total": counter(cs, "merge_gate_retest_timeouts_total"),
        "red_total": counter(cs, "merge_gate_red_total"),
        "lock_busy_total": counter(cs, "merge_gate_lock_busy_total"),
    }))
}

/// Run `orch status`. Exit 0, or 1 when a block could not be read (the
/// others were printed). With `--watch`, redraw until interrupted.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(secs) = args.watch {
        output::watch(Duration::from_secs(secs), args.json, || {
            show(ctx, args).map(|_| ())
        });
    }
    show(ctx, args)
}

/// Print the report once (one line of JSON per tick under `--watch`).
fn show(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let extent = Extent {
        recent: args.recent,
        running: (!args.json).then_some(RUNNING_SHOWN),
    };
    let report = report(ctx, extent)?;
    // Partial: a block could not be read; the others are shown (docs/exit-codes.md).
    let code = if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if args.json {
        if args.watch.is_some() {
            output::print_json_line(&report)?;
        } else {
            output::print_json(&report)?;
        }
        return Ok(code);
    }
    if let Some(secs) = args.watch {
        crate::say!("every {secs}s: orch status  {}\n", output::utc(report.now));
    }
    if !print_error(&report, "attention", "attention") {
        view::print_attention_counted(&report.attention, &report.attention_counts, report.now);
    }
    print_summary(&report);
    for name in ["counts", "running", "recent", "counters"] {
        print_error(&report, name, name);
    }
    print_tasks(&report);
    print_running(&report);
    print_recent(&report);
    print_task_costs(&report);
    print_counters(&report);
    Ok(code)
}

/// The one-line-per-subsystem summary at the top of the text view; a block
/// that could not be read shows its error instead.
fn print_summary(report: &Report) {
    let counts: Vec<String> = report
        .counts
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect();
    crate::say!("state dir  {}", report.state_dir);
    crate::say!(
        "jobs       {}  (max_concurrency {})",
        counts.join(", "),
        report.max_concurrency
    );
    let gates: Vec<String> = report
        .gates
        .iter()
        .map(|(name, g)| format!("{name} {}", if g.enabled { "on" } else { "off" }))
        .collect();
    crate::say!("gates      {}", gates.join(", "));
    print_reaper_and_reconcile(report);
    if !print_error(report, "merge_gate", "merge gate") {
        print_merge_gate(report);
    }
    if !print_error(report, "stop", "stop") {
        print_stop(report);
    }
    if !print_error(report, "costs", "cost") {
        print_cost(report);
    }
    if !print_error(report, "post_deploy", "post-deploy") {
        print_post_deploy(report);
    }
    let o = &report.outbox;
    if !print_error(report, "outbox", "outbox") {
        crate::say!(
            "outbox     pending {}, delivered {}, dead {}",
            o.get("pending").copied().unwrap_or(0),
            o.get("delivered").copied().unwrap_or(0),
            o.get("dead").copied().unwrap_or(0)
        );
    }
}

/// `on` or `OFF` (a subsystem turned off is worth noticing).
fn on_off(v: &serde_json::Value) -> &'static str {
    if *v == true { "on" } else { "OFF" }
}

/// The reaper and reconcile lines.
fn print_reaper_and_reconcile(report: &Report) {
    let now = report.now;
    let r = &report.reaper;
    crate::say!(
        "reaper     {}  passes {}, reaped {}, finalizer deferrals {}, backstops {}{}",
        on_off(&r["enabled"]),
        r["passes_total"],
        r["reaped_total"],
        r["finalizer_defers_total"],
        r["backstop_total"],
        match r["last_pass"]["at"].as_i64() {
            Some(at) => format!(", last pass {}", output::ago(Some(at), now)),
            None => ", never ran".to_owned(),
        }
    );
    let rc = &report.reconcile;
    crate::say!(
        "reconcile  {}  passes {}{}",
        on_off(&rc["enabled"]),
        rc["passes_total"],
        match rc["last_pass"]["at"].as_i64() {
            Some(at) => format!(
                ", last pass {}: {} advanced, {} replayed from the tracker, {} STOP(s) applied, {} error(s)",
                output::ago(Some(at), now),
                rc["last_pass"]["advanced"],
                rc["last_pass"]["polled"],
                rc["last_pass"]["cancels_applied"],
                rc["last_pass"]["errors"].as_array().map_or(0, Vec::len)
            ),
            None => ", never ran".to_owned(),
        }
    );
}

/// The strings of a JSON array, joined by `sep`.
fn joined(v: &serde_json::Value, sep: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_default()
}

/// `items` joined by "; ", or "none".
fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join("; ")
    }
}

/// The merge gate line.
fn print_merge_gate(report: &Report) {
    let m = &report.merge_gate;
    let leases: Vec<String> = m["leases"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    format!(
                        "{} by {}",
                        l["repo"].as_str().unwrap_or("?"),
                        l["branch"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    crate::say!(
        "merge gate {}  repos {}, leases held: {}, reclaimed {}, re-tests {} (timeouts {}, red {})",
        on_off(&m["enabled"]),
        joined(&m["repos"], ","),
        or_none(&leases),
        m["lease_reclaimed_total"],
        m["retests_total"],
        m["retest_timeouts_total"],
        m["red_total"]
    );
}

/// The STOP line.
fn print_stop(report: &Report) {
    let st = &report.stop;
    let repos = joined(&st["repos"], ",");
    crate::say!(
        "stop       {}  repos {}, cancelled {}, pending requests {}",
        on_off(&st["enabled"]),
        if repos.is_empty() { "all" } else { &repos },
        st["cancelled_count"],
        st["pending_requests"]
    );
}

/// The cost line: what is known, and how many runs are not.
fn print_cost(report: &Report) {
    let costs = &report.costs;
    let blocked = costs["tasks"].as_array().map_or(0, |ts| {
        ts.iter().filter(|t| !t["blocked"].is_null()).count()
    });
    let unknown = costs["unknown_runs"].as_i64().unwrap_or(0);
    crate::say!(
        "cost       ${:.2} over every run{}; {} active task(s), {blocked} blocked over budget",
        costs["total_usd"].as_f64().unwrap_or(0.0),
        if unknown > 0 {
            format!(" + {unknown} run(s) of unknown cost")
        } else {
            String::new()
        },
        costs["tasks"].as_array().map_or(0, Vec::len)
    );
}

/// The post-deploy line: settings, monitors watching, last results.
fn print_post_deploy(report: &Report) {
    let now = report.now;
    let pd = &report.post_deploy;
    let watching: Vec<String> = pd["running"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    format!(
                        "task {} {}/{} checks, {} failed{}",
                        r["task_id"],
                        r["checks_done"],
                        r["checks_total"],
                        r["checks_failed"],
                        r["next_check_at"].as_i64().map_or_else(String::new, |at| {
                            format!(", next in {}", output::duration((at - now).max(0)))
                        })
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let last: Vec<String> = pd["recent"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    format!(
                        "task {} {} {} ({}/{} failed)",
                        r["task_id"],
                        r["status"].as_str().unwrap_or("?").to_uppercase(),
                        r["action_taken"].as_str().unwrap_or("NONE"),
                        r["checks_failed"],
                        r["checks_done"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    crate::say!(
        "post-deploy {}  window {}s, {} checks, max failures {}, auto-rollback {}; watching: {}; last: {}",
        on_off(&pd["enabled"]),
        pd["window_s"],
        pd["checks"],
        pd["max_failures"],
        if pd["auto_rollback"] == true {
            "on"
        } else {
            "off"
        },
        or_none(&watching),
        or_none(&last)
    );
}

/// The unfinished tasks: stage, tracker state, times, run time and cost.
fn print_tasks(report: &Report) {
    if print_error(report, "tasks", "tasks") {
        return;
    }
    crate::say!("\nunfinished tasks");
    if report.tasks.is_empty() {
        crate::say!("  (none)");
    } else {
        print!(
            "{}",
            view::indent(&view::task_table(&report.tasks, report.now).render())
        );
        if report.tasks.len() >= TASKS_SHOWN as usize {
            crate::say!("  (the newest {TASKS_SHOWN}; all of them: orch task list)");
        }
    }
}

/// Print the error of block `name`, if it has one; whether it had.
fn print_error(report: &Report, name: &str, label: &str) -> bool {
    match report.errors.get(name) {
        Some(e) => {
            crate::say!("{label:<10} ERROR: {e}");
            true
        }
        None => false,
    }
}

/// The `running` table of the text view.
fn print_running(report: &Report) {
    crate::say!("\nrunning");
    if report.running.is_empty() {
        crate::say!("  (none)");
    } else {
        let mut t = Table::new(&[
            "JOB", "AGENT", "REPO", "TASK", "STAGE", "OWNER", "PID", "ATTEMPT", "RUNNING",
        ]);
        // Already in reading order: dead owners first, then the longest running.
        for r in &report.running {
            t.row(vec![
                r.job.id.to_string(),
                r.job.agent.clone(),
                r.job.repo.clone(),
                output::opt(r.job.task_id),
                output::opt(r.job.stage.as_deref()),
                match r.owner {
                    Liveness::Alive => format!("alive (pid {})", output::opt(r.job.owner_pid)),
                    Liveness::Dead => "DEAD".to_owned(),
                },
                output::opt(r.job.pid),
                format!("{}/{}", r.job.attempts, r.job.max_attempts),
                output::duration(r.running_for_s),
            ]);
        }
        print!("{}", view::indent(&t.render()));
        if let Some(more) = report
            .running_total
            .checked_sub(report.running.len())
            .filter(|n| *n > 0)
        {
            crate::say!(
                "  … and {more} more ({} running, {} with a dead owner): orch job list --status running, or --json",
                report.running_total,
                report.running_dead
            );
        }
    }
}

/// Running jobs the text view lists; the rest are counted (`--json` has all).
const RUNNING_SHOWN: usize = 20;

/// The `recent jobs` table of the text view.
fn print_recent(report: &Report) {
    let now = report.now;
    crate::say!("\nrecent jobs");
    if report.recent.is_empty() {
        crate::say!("  (none)");
    } else {
        let mut t = Table::new(&[
            "JOB", "AGENT", "REPO", "TASK", "STAGE", "STATUS", "ATTEMPT", "CREATED", "ERROR",
        ]);
        for j in &report.recent {
            t.row(vec![
                j.id.to_string(),
                j.agent.clone(),
                j.repo.clone(),
                output::opt(j.task_id),
                output::opt(j.stage.as_deref()),
                j.status.clone(),
                format!("{}/{}", j.attempts, j.max_attempts),
                output::ago(Some(j.created_at), now),
                j.error.clone().unwrap_or_default(),
            ]);
        }
        print!("{}", view::indent(&t.render()));
    }
}

/// The per-task cost table of the text view (only tasks that ran something).
fn print_task_costs(report: &Report) {
    let costed: Vec<&serde_json::Value> = report.costs["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| t["stages"].as_array().is_some_and(|s| !s.is_empty()))
                .collect()
        })
        .unwrap_or_default();
    if !costed.is_empty() {
        crate::say!("\ncost of active tasks");
        let mut t = Table::new(&["TASK", "STAGE", "SPENT", "BUDGET", "PER STAGE", "BLOCKED"]);
        for task in costed.iter().take(20) {
            let per_stage: Vec<String> = task["stages"]
                .as_array()
                .map(|ss| {
                    ss.iter()
                        .map(|s| {
                            format!(
                                "{} ${:.2}",
                                s["stage"].as_str().unwrap_or("?"),
                                s["cost_usd"].as_f64().unwrap_or(0.0)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            t.row(vec![
                task["task_id"].to_string(),
                task["stage"].as_str().unwrap_or("?").to_owned(),
                format!("${:.2}", task["spent_usd"].as_f64().unwrap_or(0.0)),
                task["budget_usd"]
                    .as_f64()
                    .map_or_else(|| "none".to_owned(), |b| format!("${b:.2}")),
                per_stage.join(", "),
                if task["blocked"].is_null() {
                    String::new()
                } else {
                    "yes".to_owned()
                },
            ]);
        }
        print!("{}", view::indent(&t.render()));
    }
}

/// The `counters` table of the text view.
fn print_counters(report: &Report) {
    let now = report.now;
    crate::say!("\ncounters");
    if report.counters.is_empty() {
        crate::say!("  (none yet)");
    } else {
        let mut t = Table::new(&["NAME", "VALUE", "LAST", "UPDATED"]);
        for (name, c) in &report.counters {
            t.row(vec![
                name.clone(),
                c.value.to_string(),
                c.last.as_ref().map(ToString::to_string).unwrap_or_default(),
                output::ago(Some(c.updated_at), now),
            ]);
        }
        print!("{}", view::indent(&t.render()));
    }
}
