//! `orch task create|list|show`: the operator's view of tasks.

use std::process::ExitCode;

use crate::cmd::view;
use crate::context::Ctx;
use crate::output::{self, Table};
use crate::pipeline::{Stage, attention, budget, overview, post_deploy, task};
use crate::queue;
use crate::storage;

/// Task subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a task and start its pipeline (stage analysis, analyst job queued).
    Create(CreateArgs),
    /// List tasks, newest first.
    List(ListArgs),
    /// Show one task: its jobs, history, comments and cost ledger.
    Show(ShowArgs),
    /// Unblock a task stopped over budget (optionally raising its budget), or
    /// resume an escalated one: its stage's agent runs again and the
    /// developer-retry count starts afresh.
    Resume(ResumeArgs),
}

/// Arguments of `orch task resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The task.
    #[arg(long)]
    pub task: i64,
    /// The task's new cost cap in USD (0 = no cap).
    #[arg(long, value_name = "USD")]
    pub budget: Option<f64>,
}

/// Arguments of `orch task create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Repository (declared in the config under [repos.<name>]).
    #[arg(long)]
    pub repo: String,
    /// Title of the task; also gives the branch its slug.
    #[arg(long)]
    pub title: String,
    /// What is asked for (handed to the analyst).
    #[arg(long, default_value = "")]
    pub description: String,
    /// Work-item id (e.g. ORCH-12). Default: <repo prefix>-<next number>.
    #[arg(long, value_name = "ID")]
    pub work_item: Option<String>,
    /// A task that must be done before this one's jobs run.
    #[arg(long, value_name = "TASK")]
    pub depends_on: Option<i64>,
    /// Create the task on stage `created` without starting the pipeline.
    #[arg(long)]
    pub no_start: bool,
    /// Print the task as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `orch task list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only tasks on this stage.
    #[arg(long, value_parser = parse_stage)]
    pub stage: Option<Stage>,
    /// Only tasks of this repository.
    #[arg(long)]
    pub repo: Option<String>,
    /// At most this many tasks.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Redraw every SECONDS (default 2) until interrupted, like watch(1);
    /// with --json, print one JSON document per line each time.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
}

/// Arguments of `orch task show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Task id.
    pub id: i64,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    s.parse()
}

/// `orch task list`, once or every `--watch` seconds.
fn list(ctx: &Ctx, db: &mut storage::Db, a: &ListArgs) -> anyhow::Result<ExitCode> {
    if let Some(secs) = a.watch {
        output::watch(std::time::Duration::from_secs(secs), a.json, || {
            if !a.json {
                crate::say!(
                    "every {secs}s: orch task list  {}\n",
                    output::utc(storage::now())
                );
            }
            show_list(ctx, db, a)
        });
    }
    show_list(ctx, db, a)?;
    Ok(ExitCode::SUCCESS)
}

/// Print the tasks (each with its own attention items), what needs a human
/// at the top of the human view.
fn show_list(ctx: &Ctx, db: &mut storage::Db, a: &ListArgs) -> anyhow::Result<()> {
    let now = storage::now();
    let filter = overview::Filter {
        stage: a.stage.map(Stage::as_str),
        repo: a.repo.as_deref(),
        unfinished: false,
    };
    let locks = ctx.locks()?;
    let (mut tasks, items) = db.read(|tx| {
        let tasks = overview::list(tx, filter, a.limit, now)?;
        Ok((tasks, attention::list(tx, &ctx.config, &locks)?))
    })?;
    overview::attach(&mut tasks, &items);
    if a.json {
        // Still an array of task objects (docs/json.md: fields are only
        // added); the attention items ride on their tasks.
        return if a.watch.is_some() {
            output::print_json_line(&tasks)
        } else {
            output::print_json(&tasks)
        };
    }
    view::print_attention(&items, now);
    if tasks.is_empty() {
        crate::say!("no tasks");
    } else {
        crate::say!();
        print!("{}", view::task_table(&tasks, now).render());
    }
    Ok(())
}

/// Run a task subcommand.
pub fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    match command {
        Command::Create(a) => create(ctx, &mut db, a)?,
        Command::List(a) => return list(ctx, &mut db, &a),
        Command::Resume(a) => resume(ctx, &mut db, &a)?,
        Command::Show(a) => show(ctx, &mut db, &a)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `orch task create`.
fn create(ctx: &Ctx, db: &mut storage::Db, a: CreateArgs) -> anyhow::Result<()> {
    let new = task::NewTask {
        repo: a.repo,
        title: a.title,
        description: a.description,
        work_item_id: a.work_item,
        depends_on: a.depends_on,
        start: !a.no_start,
        ..task::NewTask::default()
    };
    let now = storage::now();
    let t = db.write(|tx| task::create(tx, &ctx.config, &new, now))?;
    if a.json {
        output::print_json(&t)?;
    } else {
        crate::say!(
            "created task {} ({}) on {}, stage {}, branch {}",
            t.id,
            t.work_item_id,
            t.repo,
            t.stage,
            output::opt(t.branch.as_deref())
        );
    }
    Ok(())
}

/// `orch task resume`: clear a block or an escalation (then queue the
/// stage's agent again), optionally with a new budget.
fn resume(ctx: &Ctx, db: &mut storage::Db, a: &ResumeArgs) -> anyhow::Result<()> {
    if a.budget.is_some_and(|b| !b.is_finite() || b < 0.0) {
        return Err(crate::error::OrchError::Usage(
            "--budget must be a non-negative number of USD".into(),
        )
        .into());
    }
    let now = storage::now();
    let note = db.write(|tx| {
        let t = task::require(tx, a.task)?;
        if t.blocked_reason.is_none() && a.budget.is_none() && t.escalated_at.is_none() {
            return Ok(format!(
                "task {} is neither blocked nor escalated; nothing to resume",
                t.id
            ));
        }
        let mut probe = t.clone();
        if let Some(b) = a.budget {
            probe.budget_usd = Some(b);
        }
        if let Some(still) = budget::refuse_run(tx, &ctx.config, &probe)? {
            return Err(crate::error::OrchError::Usage(format!(
                "task {} would still be {still}; raise it with --budget",
                t.id
            ))
            .into());
        }
        budget::resume(tx, &t, a.budget, now)?;
        if t.escalated_at.is_some() {
            task::clear_escalation(tx, &ctx.config, &t, now)?;
        }
        Ok(format!(
            "task {} resumed{}",
            t.id,
            a.budget
                .map_or_else(String::new, |b| format!(" with a budget of ${b:.2}"))
        ))
    })?;
    if let Err(e) = crate::outbox::deliver(ctx, db) {
        log::warn!("delivering the outbox: {e:#}");
    }
    crate::say!("{note}");
    Ok(())
}

/// Everything `orch task show` shows.
struct Shown {
    t: task::Task,
    jobs: Vec<queue::Job>,
    history: Vec<task::Transition>,
    ledger: budget::Ledger,
    monitor: Option<post_deploy::Record>,
    checks: Vec<post_deploy::Check>,
}

/// `orch task show`.
fn show(ctx: &Ctx, db: &mut storage::Db, a: &ShowArgs) -> anyhow::Result<()> {
    let (t, jobs, history, comments, ledger, monitor, checks) = db.read(|tx| {
        let t = task::require(tx, a.id)?;
        let jobs = queue::for_task(tx, a.id)?;
        let history = task::history(tx, a.id)?;
        let comments = crate::backends::tracker::local::comments(tx, a.id)?;
        let ledger = budget::ledger(tx, &ctx.config, &t)?;
        let monitor = post_deploy::get(tx, a.id)?;
        let checks = post_deploy::checks(tx, a.id)?;
        Ok((t, jobs, history, comments, ledger, monitor, checks))
    })?;
    if a.json {
        let monitor = monitor.map(|m| {
            let mut v = serde_json::to_value(&m).unwrap_or_default();
            v["checks"] = serde_json::to_value(&checks).unwrap_or_default();
            v
        });
        output::print_json(&serde_json::json!({
            "task": t, "jobs": jobs, "history": history, "comments": comments,
            "cost": ledger,
            "post_deploy": monitor
        }))?;
        return Ok(());
    }
    print_show(Shown {
        t,
        jobs,
        history,
        ledger,
        monitor,
        checks,
    });
    Ok(())
}

/// The human view of `orch task show`.
fn print_show(s: Shown) {
    let Shown {
        t,
        jobs,
        history,
        ledger,
        monitor,
        checks,
    } = s;
    let now = storage::now();
    print_show_header(&t, &ledger, now);
    print_stage_costs(&ledger);
    if !history.is_empty() {
        crate::say!("\nhistory");
        let mut table = Table::new(&["WHEN", "KIND", "FROM", "TO", "REASON"]);
        for h in &history {
            table.row(vec![
                output::ago(Some(h.at), now),
                h.kind.clone(),
                h.from_stage.clone(),
                h.to_stage.clone(),
                h.reason.clone(),
            ]);
        }
        print!("{}", table.render());
    }
    print_monitor(monitor.as_ref(), &checks, now);
    crate::say!("\njobs");
    let mut table = Table::new(&["JOB", "AGENT", "STAGE", "STATUS", "ATTEMPT", "ERROR"]);
    for j in jobs {
        table.row(vec![
            j.id.to_string(),
            j.agent,
            output::opt(j.stage),
            j.status,
            format!("{}/{}", j.attempts, j.max_attempts),
            j.error.unwrap_or_default(),
        ]);
    }
    if table.is_empty() {
        crate::say!("  (none)");
    } else {
        print!("{}", table.render());
    }
}

/// The ledger per stage (nothing before the first run).
fn print_stage_costs(ledger: &budget::Ledger) {
    if !ledger.stages.is_empty() {
        crate::say!("\ncost per stage");
        let mut table = Table::new(&[
            "STAGE",
            "RUNS",
            "COST",
            "UNKNOWN",
            "TOKENS IN",
            "TOKENS OUT",
        ]);
        for s in &ledger.stages {
            table.row(vec![
                s.stage.clone(),
                s.runs.to_string(),
                format!("${:.2}", s.cost_usd),
                s.unknown_runs.to_string(),
                s.input_tokens.to_string(),
                s.output_tokens.to_string(),
            ]);
        }
        print!("{}", table.render());
    }
}

/// The task's fields and its cost line.
fn print_show_header(t: &task::Task, ledger: &budget::Ledger, now: i64) {
    crate::say!("task        {}", t.id);
    crate::say!("work item   {}", t.work_item_id);
    crate::say!("title       {}", output::safe(&t.title));
    crate::say!("repo        {}", t.repo);
    crate::say!("branch      {}", output::opt(t.branch.as_deref()));
    crate::say!("stage       {}", t.stage);
    crate::say!("depends on  {}", output::opt(t.depends_on));
    crate::say!("plane       {}", output::opt(t.plane_id.as_deref()));
    crate::say!("created     {}", output::when(Some(t.created_at), now));
    crate::say!("updated     {}", output::when(Some(t.updated_at), now));
    if let Some(at) = t.cancelled_at {
        crate::say!("cancelled   {}", output::when(Some(at), now));
    }
    if let Some(at) = t.escalated_at {
        crate::say!(
            "escalated   {} (needs a human: orch task resume --task {})",
            output::when(Some(at), now),
            t.id
        );
    }
    crate::say!("tracker     {}", output::opt(t.tracker_state.as_deref()));
    if let Some(why) = &t.blocked_reason {
        crate::say!("blocked     {}", output::safe(why));
    }
    crate::say!(
        "cost        ${:.2} spent{}, budget {}",
        ledger.spent_usd,
        if ledger.unknown_runs > 0 {
            format!(" + {} run(s) of unknown cost", ledger.unknown_runs)
        } else {
            String::new()
        },
        ledger.budget_usd.map_or_else(
            || "none".to_owned(),
            |b| format!("${b:.2} (${:.2} left)", ledger.remaining_usd.unwrap_or(0.0))
        )
    );
}

/// The post-deploy monitor and its checks, if one was armed.
fn print_monitor(monitor: Option<&post_deploy::Record>, checks: &[post_deploy::Check], now: i64) {
    if let Some(m) = monitor {
        crate::say!("\npost-deploy monitor");
        crate::say!(
            "  status {}, action {}, {}/{} checks, {} failed, window {}s, started {}{}",
            m.status.to_uppercase(),
            m.action_taken.as_deref().unwrap_or("-"),
            m.checks_done,
            m.checks_total,
            m.checks_failed,
            m.window_s,
            output::ago(Some(m.started_at), now),
            m.rollback_started_at.map_or_else(String::new, |_| format!(
                ", rollback exit {}",
                m.rollback_exit_code
                    .map_or_else(|| "unknown".to_owned(), |c| c.to_string())
            ))
        );
        let mut table = Table::new(&["CHECK", "WHEN", "RESULT", "DETAIL"]);
        for c in checks {
            table.row(vec![
                c.seq.to_string(),
                output::ago(Some(c.at), now),
                if c.ok { "healthy" } else { "FAILED" }.to_owned(),
                c.detail.clone(),
            ]);
        }
        if !table.is_empty() {
            print!("{}", table.render());
        }
    }
}
