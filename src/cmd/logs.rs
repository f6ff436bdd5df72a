//! `orch logs [-f] JOB | --task N | --run N`: print (or follow) the log of
//! an agent run. The work is in [`crate::pipeline::run_log`].

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use crate::context::Ctx;
use crate::error::{OrchError, exit};
use crate::output::{self, Table};
use crate::pipeline::run_log::{self, Resolved, SafeWriter, Which};
use crate::pipeline::runs::{self, Attempt};
use crate::storage::Db;

/// How often `--follow` looks for new output and for the run's end.
const POLL: Duration = Duration::from_millis(200);

/// Arguments of `orch logs`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["job", "task", "run"])))]
pub struct Args {
    /// Job id: the log of its current run, else its latest.
    pub job: Option<i64>,
    /// Task id: the log of its running job, else of its latest run.
    #[arg(long, value_name = "N")]
    pub task: Option<i64>,
    /// Run id (`run` in `orch job show`, `run_id` in JSON): that run's log.
    #[arg(long, value_name = "N")]
    pub run: Option<i64>,
    /// Keep printing what the agent writes until its run ends (like `tail
    /// -f`, across log rotation); stops by itself when the run is over.
    #[arg(short, long)]
    pub follow: bool,
    /// List the runs (and their log files) instead of printing a log, with
    /// the task's test and merge-gate logs.
    #[arg(long, conflicts_with = "follow")]
    pub list: bool,
}

/// Run `orch logs`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let db = ctx.open_db()?;
    let which = Which {
        job: args.job,
        task: args.task,
        run: args.run,
    };
    let resolved = run_log::resolve(db.conn(), which)?;
    if args.list {
        return list(ctx, &db, &resolved, args);
    }
    let run = match resolved.run.clone() {
        None if args.follow && args.run.is_none() => {
            run_log::wait_for_run(db.conn(), resolved.job.id, POLL)?
        }
        run => run,
    };
    let Some(run) = run else {
        return Err(OrchError::NothingToDo(format!(
            "job {} ({}) has no agent run yet (status {})",
            resolved.job.id, resolved.job.agent, resolved.job.status
        ))
        .into());
    };
    print(&db, &resolved, &run, args.follow)
}

fn print(db: &Db, resolved: &Resolved, run: &Attempt, follow: bool) -> anyhow::Result<ExitCode> {
    let Some(log) = run.log_path.as_deref() else {
        return Err(OrchError::NothingToDo(format!("run {} has no log", run.run_id)).into());
    };
    eprintln!(
        "orch: job {} ({} on stage {}), run {} (#{} of the job), started {}, {}: {}",
        resolved.job.id,
        resolved.job.agent,
        output::opt(run.stage.as_deref()),
        run.run_id,
        run.number,
        output::utc(run.started_at),
        run.finished_at.map_or_else(
            || "running".to_owned(),
            |t| format!("ended {}", output::utc(t))
        ),
        output::safe(log)
    );
    let job_id = resolved.job.id;
    let run_id = run.run_id;
    let mut out = SafeWriter::new(io::BufWriter::new(io::stdout().lock()));
    let live = || Ok(follow && runs::is_live(db.conn(), job_id, run_id)?);
    match run_log::stream(std::path::Path::new(log), &mut out, live, POLL) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Err(OrchError::NothingToDo(format!(
            "the log of run {run_id} is gone ({})",
            output::safe(log)
        ))
        .into()),
        // `orch logs … | head`: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `--list`: every run of the task (or job), then the task's check logs.
fn list(ctx: &Ctx, db: &Db, resolved: &Resolved, args: &Args) -> anyhow::Result<ExitCode> {
    let attempts = match (args.task, resolved.job.task_id) {
        (Some(task), _) if args.job.is_none() && args.run.is_none() => {
            runs::for_task(db.conn(), task)?
        }
        _ => runs::for_job(db.conn(), resolved.job.id)?,
    };
    let mut t = Table::new(&[
        "RUN", "JOB", "#", "AGENT", "STAGE", "STARTED", "ENDED", "OUTCOME", "LOG",
    ]);
    for a in &attempts {
        t.row(vec![
            a.run_id.to_string(),
            output::opt(a.job_id),
            a.number.to_string(),
            a.agent.clone(),
            output::opt(a.stage.as_deref()),
            output::utc(a.started_at),
            a.finished_at.map_or_else(|| "-".to_owned(), output::utc),
            a.outcome.clone().unwrap_or_else(|| a.ending()),
            log_files(a),
        ]);
    }
    if !t.is_empty() {
        print!("{}", t.render());
    }
    let checks = resolved
        .job
        .task_id
        .map(|task| check_logs(ctx, task))
        .unwrap_or_default();
    for path in &checks {
        crate::say!("check log: {}", path.display());
    }
    Ok(if t.is_empty() && checks.is_empty() {
        ExitCode::from(exit::NOTHING_TO_DO)
    } else {
        ExitCode::SUCCESS
    })
}

fn log_files(a: &Attempt) -> String {
    let log = a.log_path.clone().unwrap_or_else(|| "-".to_owned());
    match &a.rotated_log_path {
        Some(older) => format!("{log} (+ {older})"),
        None => log,
    }
}

/// The task's test, image and merge-gate re-test logs in `<state>/logs/`.
fn check_logs(ctx: &Ctx, task_id: i64) -> Vec<std::path::PathBuf> {
    let prefix = format!("task-{task_id}-");
    let Ok(entries) = std::fs::read_dir(ctx.logs_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.contains(".log"))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}
