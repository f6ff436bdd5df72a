//! Human views shared by `orch status` and `orch task list`: what needs a
//! human, and one row per task. Titles, reasons and errors come from outside,
//! so everything goes through `say!` and [`Table`] (both escape them).

use crate::output::{self, Table};
use crate::pipeline::attention::{self, Item};
use crate::pipeline::overview::TaskSummary;

/// At most this many items of one kind are shown by the human view (2,000
/// dead owners must not bury the one escalated task); `--json` has them all.
const SHOWN_PER_KIND: usize = 10;

/// The attention section: one line per item with the command that resolves
/// it, or one line saying nothing needs a human.
pub fn print_attention(items: &[Item], now: i64) {
    print_attention_counted(items, &attention::counts(items), now);
}

/// [`print_attention`] when `items` holds only the first of each kind and
/// `counts` says how many there are (`orch status` reads only the dead
/// owners it shows).
pub fn print_attention_counted(items: &[Item], counts: &[(attention::Kind, usize)], now: i64) {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    if total == 0 {
        crate::say!("attention  nothing needs a human");
        return;
    }
    crate::say!("attention  {total} item(s) need a human");
    let mut t = Table::new(&["KIND", "TASK", "JOB", "SINCE", "REASON", "COMMAND"]);
    let mut more = Vec::new();
    for &(kind, n) in counts {
        let of_kind = items.iter().filter(|i| i.kind == kind);
        for i in of_kind.take(SHOWN_PER_KIND) {
            t.row(vec![
                i.kind.as_str().to_owned(),
                output::opt(i.task_id),
                output::opt(i.job_id),
                output::when(Some(i.since), now),
                i.reason.clone(),
                i.command.clone(),
            ]);
        }
        if n > SHOWN_PER_KIND {
            more.push(format!("{} more {}", n - SHOWN_PER_KIND, kind.as_str()));
        }
    }
    print!("{}", indent(&t.render()));
    if !more.is_empty() {
        crate::say!(
            "  … and {} (all of them: --json, .attention)",
            more.join(", ")
        );
    }
}

/// The task table: stage, tracker state, times (UTC and ages), run time,
/// elapsed time and cost.
pub fn task_table(tasks: &[TaskSummary], now: i64) -> Table {
    let mut t = Table::new(&[
        "TASK",
        "WORK ITEM",
        "REPO",
        "STAGE",
        "TRACKER",
        "CREATED",
        "UPDATED",
        "RUN TIME",
        "ELAPSED",
        "COST",
        "TITLE",
    ]);
    for s in tasks {
        let task = &s.task;
        let stage = if task.escalated_at.is_some() {
            format!("{} (escalated)", task.stage)
        } else if task.blocked_reason.is_some() {
            format!("{} (blocked)", task.stage)
        } else {
            task.stage.clone()
        };
        t.row(vec![
            task.id.to_string(),
            task.work_item_id.clone(),
            task.repo.clone(),
            stage,
            output::opt(task.tracker_state.as_deref()),
            output::when(Some(task.created_at), now),
            output::when(Some(task.updated_at), now),
            output::duration(s.run_time_s),
            s.elapsed_s.map_or_else(|| "-".to_owned(), output::duration),
            cost(s),
            task.title.clone(),
        ]);
    }
    t
}

/// A task's cost: unknown runs are said, never counted as zero.
pub fn cost(s: &TaskSummary) -> String {
    match (s.runs, s.unknown_cost_runs) {
        (0, _) => "-".to_owned(),
        (_, 0) => format!("${:.2}", s.known_cost_usd),
        (runs, unknown) if runs == unknown => format!("unknown ({unknown} run(s))"),
        (_, unknown) => format!("${:.2} + {unknown} unknown", s.known_cost_usd),
    }
}

/// `s` with every line indented by two spaces.
pub fn indent(s: &str) -> String {
    s.lines().fold(String::new(), |mut out, l| {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
        out
    })
}
