//! What each task costs, and the cap on it. Every agent run records its cost
//! and tokens (Claude Code's final `result` event; other agents may write
//! `$ORCH_COST_FILE`, else their cost is zero). A task's ledger sums every
//! stage and every retry. Before a run starts, the task's remaining budget
//! must cover the per-run cap (`agent_max_budget_usd`, the most a run can
//! cost); otherwise the task is blocked — its jobs are not claimed — with a
//! tracker comment and a notification saying what was spent where, until an
//! operator raises the budget with `orch task resume`.
//!
//! A run whose cost is unknown is recorded as unknown, never as zero. Who
//! lost the figure decides how it is charged. An agent that ran to its end
//! without reporting (a Claude run without a `result` event, an unreadable
//! cost file) is charged at the per-run cap, every time. A run whose worker
//! died before recording its end is settled by the reaper from what the run
//! left behind ([`recover_dead_run`]): a plain command costs nothing, a
//! Claude stream's cost is read from its `result` event; only a Claude stream
//! cut off without one stays unknown, and all such runs of a task together
//! are charged the per-run cap once — so a crashing orch never blocks a task
//! by itself.

use serde::Serialize;

use crate::config::Config;
use crate::outbox::{self, Message};
use crate::pipeline::task::Task;
use crate::pipeline::{judge, lease};
use crate::runner::claude::StreamLog;
use crate::storage;
use crate::storage::Executor;
pub use crate::storage::ledger::{DeadRun, ORCH_DIED, StageCost};

/// A task's ledger.
#[derive(Debug, Clone, Serialize)]
pub struct Ledger {
    /// The cap in USD; `None` = no cap.
    pub budget_usd: Option<f64>,
    /// Known cost of every run.
    pub spent_usd: f64,
    /// Runs whose cost is unknown.
    pub unknown_runs: i64,
    /// Of those, Claude runs cut off by their worker's death ([`ORCH_DIED`]).
    pub orch_died_unknown_runs: i64,
    /// What counts against the budget: known costs, plus the per-run cap for
    /// every other unknown or unfinished run, plus the per-run cap once if
    /// any run was cut off by its worker's death with its cost unknown.
    pub charged_usd: f64,
    /// Budget left, if capped.
    pub remaining_usd: Option<f64>,
    /// Per stage, in pipeline order.
    pub stages: Vec<StageCost>,
    /// Why the task is blocked, if it is.
    pub blocked_reason: Option<String>,
}

/// The cap of `task`: its own, else the setting; 0 means none.
pub fn budget_of(config: &Config, task: &Task) -> Option<f64> {
    let b = task.budget_usd.unwrap_or(config.task_budget_usd);
    (b > 0.0).then_some(b)
}

/// The ledger of `task`.
pub fn ledger(conn: &dyn Executor, config: &Config, task: &Task) -> storage::Result<Ledger> {
    let mut one = ledgers(conn, config, std::slice::from_ref(task))?;
    Ok(one
        .pop()
        .unwrap_or_else(|| settle(config, task, Vec::new())))
}

/// The ledgers of `tasks`, in their order, from one query whatever their
/// number (a view of many tasks must not pay a query per task).
pub fn ledgers(
    conn: &dyn Executor,
    config: &Config,
    tasks: &[Task],
) -> storage::Result<Vec<Ledger>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = tasks.iter().map(|t| t.id).collect();
    let mut by_task: std::collections::HashMap<i64, Vec<StageCost>> =
        std::collections::HashMap::new();
    for (task_id, stage) in conn.ledger_stage_costs(&ids)? {
        by_task.entry(task_id).or_default().push(stage);
    }
    Ok(tasks
        .iter()
        .map(|t| settle(config, t, by_task.remove(&t.id).unwrap_or_default()))
        .collect())
}

/// A task's ledger from its runs' costs per stage.
fn settle(config: &Config, task: &Task, mut stages: Vec<StageCost>) -> Ledger {
    let cap = config.run_budget_usd().unwrap_or(0.0);
    let order = |s: &str| {
        crate::pipeline::Stage::PIPELINE
            .iter()
            .position(|p| p.as_str() == s)
            .unwrap_or(usize::MAX)
    };
    stages.sort_by_key(|s| order(&s.stage));
    let spent: f64 = stages.iter().map(|s| s.cost_usd).sum();
    let unknown: i64 = stages.iter().map(|s| s.unknown_runs).sum();
    let orch_died: i64 = stages.iter().map(|s| s.orch_died_unknown_runs).sum();
    // Runs cut off by orch's death are charged the cap once between them: a
    // crash loop of orch must not turn into a budget block.
    let charged_runs = (unknown - orch_died) + orch_died.min(1);
    let charged = spent + charged_runs as f64 * cap;
    let budget = budget_of(config, task);
    Ledger {
        budget_usd: budget,
        spent_usd: spent,
        unknown_runs: unknown,
        orch_died_unknown_runs: orch_died,
        charged_usd: charged,
        remaining_usd: budget.map(|b| (b - charged).max(0.0)),
        stages,
        blocked_reason: task.blocked_reason.clone(),
    }
}

/// The known cost of every run there is, and how many runs' cost is
/// unknown (counted apart: an unknown cost is not zero).
pub fn all_runs(conn: &dyn Executor) -> storage::Result<(f64, i64)> {
    conn.ledger_total_cost()
}

/// The known cost of every task that has runs, by task id (the sum the
/// ledger calls `spent_usd`), in one query for a board of many tasks.
pub fn spent_by_task(conn: &dyn Executor) -> storage::Result<std::collections::HashMap<i64, f64>> {
    conn.ledger_spent_by_task()
}

/// Recover the cost of run `run_id`, whose worker died before recording its
/// end, from its log and its `$ORCH_COST_FILE` (`cost.json` next to the log),
/// by the rules the worker itself applies:
///
/// 1. the log's last stream-json `result` event: its `total_cost_usd`;
/// 2. else the cost file, if the agent wrote one;
/// 3. else, if the log holds no Claude stream at all (no `system`/`init`
///    event), the agent is a plain command: it costs 0;
/// 4. else a Claude stream cut off without a result: unknown, charged by
///    [`ledger`] at most once per task.
///
/// Reads files only; returns `None` if the run is already settled or gone.
pub fn recover_dead_run(conn: &dyn Executor, run_id: i64) -> anyhow::Result<Option<DeadRun>> {
    let Some(log) = conn.ledger_unfinished_run_log(run_id)? else {
        return Ok(None);
    };
    // Read in bounded memory, like the worker; a log that cannot be read is
    // an empty one (then the cost file, else plain-command zero, decides).
    let log_path = log.map(std::path::PathBuf::from);
    let stream = log_path
        .as_deref()
        .map(|p| StreamLog::read(p).unwrap_or_default())
        .unwrap_or_default();
    let cost_file = log_path
        .map(|p| p.with_file_name("cost.json"))
        .unwrap_or_default();
    let cost = judge::run_cost(&stream, &cost_file, stream.is_claude_stream());
    // Its exit code was never seen; a success result is the CLI's last act.
    let succeeded =
        stream.is_claude_stream() && crate::runner::claude::classify(Some(0), &stream).is_success();
    Ok(Some(DeadRun {
        cost_usd: cost.cost_usd,
        input_tokens: cost.input_tokens,
        output_tokens: cost.output_tokens,
        outcome: if succeeded {
            "success".to_owned()
        } else {
            format!(
                "{ORCH_DIED}: its worker died before recording its end; cost from {}",
                cost.source
            )
        },
        succeeded,
    }))
}

/// Record the recovered end of a dead worker's run, once (a racing reaper
/// finds it settled and changes nothing).
pub fn record_dead_run(
    conn: &dyn Executor,
    run_id: i64,
    run: &DeadRun,
    now: i64,
) -> storage::Result<bool> {
    conn.ledger_record_dead_run(run_id, run, now)
}

/// Why the next run of `task` must not start, if it must not.
pub fn refuse_run(
    conn: &dyn Executor,
    config: &Config,
    task: &Task,
) -> storage::Result<Option<String>> {
    let l = ledger(conn, config, task)?;
    let (Some(budget), Some(remaining)) = (l.budget_usd, l.remaining_usd) else {
        return Ok(None);
    };
    let cap = config.run_budget_usd().unwrap_or(0.0);
    if remaining + 1e-9 >= cap {
        return Ok(None);
    }
    let per_stage: Vec<String> = l
        .stages
        .iter()
        .map(|s| {
            let unknown = if s.unknown_runs > 0 {
                format!(" + {} unknown", s.unknown_runs)
            } else {
                String::new()
            };
            format!(
                "{} ${:.2} in {} run(s){unknown}",
                s.stage, s.cost_usd, s.runs
            )
        })
        .collect();
    Ok(Some(format!(
        "over budget: ${:.2} charged of ${budget:.2} (remaining ${remaining:.2} does not cover the per-run cap ${cap:.2}); {}",
        l.charged_usd,
        if per_stage.is_empty() {
            "no runs yet".to_owned()
        } else {
            per_stage.join(", ")
        }
    )))
}

/// Block `task` for `reason` inside the caller's transaction (once).
///
/// Its merge lease, if it holds one (blocked on deploy-staging between two
/// attempts of the merge gate), is released in the same transaction: a
/// blocked task waits for a person, possibly for days, and must not hold up
/// every other task's merge meanwhile. The gate takes the lease again when
/// the task is resumed.
pub fn block(conn: &dyn Executor, task: &Task, reason: &str, now: i64) -> anyhow::Result<bool> {
    let changed = conn.ledger_block(task.id, &task.stage, reason, now)?;
    lease::release_for_task(conn, task.id)?;
    if changed {
        let key = format!("budget-block-{}-{now}", task.id);
        outbox::push(
            conn,
            &format!("{key}:state"),
            &Message::State {
                task_id: task.id,
                state: crate::backends::tracker::state::BLOCKED.to_owned(),
            },
            now,
        )?;
        let body = format!(
            "Blocked on {}: {reason}. Raise the budget and resume with `orch task resume --task {} --budget <USD>`.",
            task.stage, task.id
        );
        outbox::push(
            conn,
            &format!("{key}:comment"),
            &Message::Comment {
                task_id: task.id,
                author: "orch".into(),
                body: body.clone(),
            },
            now,
        )?;
        outbox::push(
            conn,
            &format!("{key}:notify"),
            &Message::Notify {
                text: format!("{}: {body}", task.work_item_id),
            },
            now,
        )?;
    }
    Ok(changed)
}

/// Unblock `task`, optionally with a new budget, inside the caller's transaction.
pub fn resume(
    conn: &dyn Executor,
    task: &Task,
    budget_usd: Option<f64>,
    now: i64,
) -> anyhow::Result<()> {
    let reason = budget_usd.map_or_else(
        || "resumed".to_owned(),
        |b| format!("resumed with a budget of ${b:.2}"),
    );
    conn.ledger_resume(task.id, &task.stage, budget_usd, &reason, now)?;
    outbox::push(
        conn,
        &format!("budget-resume-{}-{now}", task.id),
        &Message::Comment {
            task_id: task.id,
            author: "orch".into(),
            body: format!(
                "Resumed{}.",
                budget_usd.map_or_else(String::new, |b| format!(" with a budget of ${b:.2}"))
            ),
        },
        now,
    )?;
    Ok(())
}
