//! `orch job list|show|retry|enqueue`: the operator's view of the queue.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::OrchError;
use crate::output::{self, Table};
use crate::pipeline::runs::{self, Attempt};
use crate::pipeline::{Stage, task};
use crate::queue::{self, NewJob};
use crate::storage;

/// Job subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List jobs, newest first.
    List(ListArgs),
    /// Show one job.
    Show(ShowArgs),
    /// Put a failed job back in the queue with a fresh attempt budget.
    Retry(RetryArgs),
    /// Add a job to the queue by hand.
    Enqueue(EnqueueArgs),
}

/// Arguments of `orch job list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only jobs with this status.
    #[arg(long, value_parser = ["queued", "running", "done", "failed", "cancelled"])]
    pub status: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `orch job show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Job id.
    pub id: i64,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `orch job retry`.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// Job id (must be `failed`; cancelled jobs are never revived).
    pub id: i64,
}

/// Arguments of `orch job enqueue`.
#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// Agent to run (e.g. developer).
    #[arg(long)]
    pub agent: String,
    /// Repository (declared in the config). Default: the task's repository.
    #[arg(long)]
    pub repo: Option<String>,
    /// Task the job belongs to.
    #[arg(long)]
    pub task: Option<i64>,
    /// Stage whose gate decides the job's outcome. Default: the task's stage.
    #[arg(long, value_parser = parse_stage)]
    pub stage: Option<Stage>,
    /// Task text handed to the agent.
    #[arg(long, default_value = "")]
    pub content: String,
    /// Attempts allowed. Default: the max_attempts setting.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Print the job as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    s.parse()
}

/// Run a job subcommand.
pub fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    let now = storage::now();
    match command {
        Command::List(a) => {
            let jobs = queue::list(db.conn(), a.status.as_deref(), a.limit)?;
            if a.json {
                output::print_json(&jobs)?;
            } else if jobs.is_empty() {
                crate::say!("no jobs");
            } else {
                let mut t = Table::new(&[
                    "JOB", "AGENT", "REPO", "TASK", "STAGE", "STATUS", "ATTEMPT", "CREATED",
                    "ERROR",
                ]);
                for j in jobs {
                    t.row(vec![
                        j.id.to_string(),
                        j.agent,
                        j.repo,
                        output::opt(j.task_id),
                        output::opt(j.stage),
                        j.status,
                        format!("{}/{}", j.attempts, j.max_attempts),
                        output::ago(Some(j.created_at), now),
                        j.error.unwrap_or_default(),
                    ]);
                }
                print!("{}", t.render());
            }
        }
        Command::Show(a) => show(&db, &a, now)?,
        Command::Retry(a) => {
            db.write(|tx| queue::retry(tx, a.id))?;
            crate::say!("job {} queued again", a.id);
        }
        Command::Enqueue(a) => {
            let job = db.write(|tx| {
                let owner = a.task.map(|id| task::require(tx, id)).transpose()?;
                let repo = match (&a.repo, &owner) {
                    (Some(r), Some(t)) if *r != t.repo => {
                        return Err(OrchError::Usage(format!(
                            "task {} belongs to repo {}, not {r}",
                            t.id, t.repo
                        ))
                        .into());
                    }
                    (Some(r), _) => r.clone(),
                    (None, Some(t)) => t.repo.clone(),
                    (None, None) => {
                        return Err(
                            OrchError::Usage("--repo is required without --task".into()).into()
                        );
                    }
                };
                ctx.config.repo(&repo)?;
                if a.agent.is_empty()
                    || !a
                        .agent
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    return Err(OrchError::Usage(format!(
                        "invalid agent name {:?}: use lowercase letters, digits and '-'",
                        a.agent
                    ))
                    .into());
                }
                let stage = a
                    .stage
                    .map(|s| s.as_str().to_owned())
                    .or_else(|| owner.as_ref().map(|t| t.stage.clone()));
                let id = queue::enqueue(
                    tx,
                    &NewJob {
                        agent: &a.agent,
                        repo: &repo,
                        task_id: a.task,
                        stage: stage.as_deref(),
                        task_content: &a.content,
                        max_attempts: a.max_attempts.unwrap_or(ctx.config.max_attempts),
                    },
                    now,
                )?;
                queue::get(tx, id)?.ok_or_else(|| anyhow::anyhow!("job {id} vanished"))
            })?;
            if a.json {
                output::print_json(&job)?;
            } else {
                crate::say!("enqueued job {} ({} on {})", job.id, job.agent, job.repo);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `job show --json`: the job object plus its agent runs.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    job: &'a queue::Job,
    /// Every agent run of the job, oldest first (`attempts` is the count of claims).
    runs: &'a [Attempt],
}

fn show(db: &storage::Db, a: &ShowArgs, now: i64) -> anyhow::Result<()> {
    let job = queue::get(db.conn(), a.id)?
        .ok_or_else(|| OrchError::NotFound(format!("job {} not found", a.id)))?;
    let attempts = runs::for_job(db.conn(), job.id)?;
    if a.json {
        return output::print_json(&Shown {
            job: &job,
            runs: &attempts,
        });
    }
    crate::say!("job          {}", job.id);
    crate::say!("agent        {}", job.agent);
    crate::say!("repo         {}", job.repo);
    crate::say!("task         {}", output::opt(job.task_id));
    crate::say!("stage        {}", output::opt(job.stage.as_deref()));
    crate::say!("status       {}", job.status);
    crate::say!("attempts     {}/{}", job.attempts, job.max_attempts);
    crate::say!("transient    {}", job.transient_attempts);
    if job.available_at > now {
        crate::say!("available in {}", output::duration(job.available_at - now));
    }
    crate::say!("owner pid    {}", output::opt(job.owner_pid));
    crate::say!("agent pid    {}", output::opt(job.pid));
    crate::say!("run          {}", output::opt(job.run_id));
    crate::say!("created      {}", output::ago(Some(job.created_at), now));
    crate::say!("started      {}", output::ago(job.started_at, now));
    crate::say!("finished     {}", output::ago(job.finished_at, now));
    crate::say!(
        "error        {}",
        output::safe(&output::opt(job.error.as_deref()))
    );
    if attempts.is_empty() {
        crate::say!("runs         none (no agent was started)");
    }
    for attempt in &attempts {
        say_attempt(attempt, now);
    }
    Ok(())
}

/// Three lines about one agent run.
fn say_attempt(a: &Attempt, now: i64) {
    let ended = match a.finished_at {
        Some(t) => format!(
            "{} ({})",
            output::utc(t),
            output::duration(a.duration_s.unwrap_or(0))
        ),
        None => format!(
            "not ended ({} so far)",
            output::duration(now - a.started_at)
        ),
    };
    crate::say!(
        "run {} (#{})  {} → {}",
        a.run_id,
        a.number,
        output::utc(a.started_at),
        ended
    );
    let tokens = match (a.input_tokens, a.output_tokens) {
        (None, None) => "-".to_owned(),
        (i, o) => format!("{} in / {} out", output::opt(i), output::opt(o)),
    };
    crate::say!(
        "  {}: {}; cost {}, tokens {tokens}",
        a.ending(),
        output::safe(a.outcome.as_deref().unwrap_or("-")),
        a.cost_usd
            .map_or_else(|| "-".to_owned(), |c| format!("${c:.4}")),
    );
    let log = a.log_path.as_deref().unwrap_or("-");
    match &a.rotated_log_path {
        Some(older) => crate::say!("  log {log} (older half {older})"),
        None => crate::say!("  log {log}"),
    }
}
