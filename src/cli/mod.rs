//! The command line: global options and the list of subcommands. Each
//! subcommand's own arguments live next to its code in `src/cmd/<name>.rs`.
//!
//! The `///` comments here and in every `Args` struct are the user interface:
//! they are `--help` and, through `orch generate man`, the man pages.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod lazy;
pub use lazy::Lazy;

use crate::cmd;

/// Run an autonomous software-delivery pipeline of AI coding agents.
///
/// Tasks move through analysis, architecture, development, review, testing,
/// deploy-staging and deploy. Short-lived `orch` processes, started by
/// systemd timers, a webhook shim or a person, share one SQLite database in
/// the state directory.
///
/// Exit codes: 0 success, 1 failure, 2 usage, 3 nothing to do, 4 gates did
/// not pass, 5 agent failed, 6 refused (4-6: run-agent; 4: gates check), 65
/// malformed input, 74 the webhook client went away before its answer, 75
/// temporary failure (retry later), 77 signature rejected, 78 configuration
/// error.
#[derive(Debug, Parser)]
#[command(name = "orch", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// State directory (database, locks, logs, repositories). Default:
    /// $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/orch, else ~/.local/state/orch.
    /// Private: created 0700; one owned by another user or writable by
    /// others is refused (exit 78).
    #[arg(long, global = true, env = "ORCH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Configuration file. Default: <state dir>/orch.toml if it exists. Every
    /// setting can also be overridden by an ORCH_<SETTING> environment variable.
    #[arg(long, global = true, env = "ORCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log more (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the state directory and database (idempotent).
    Init(Lazy<cmd::init::Args>),
    /// Show what needs a human, the queue, unfinished tasks, running jobs and whether their owners live, counters.
    ///
    /// Every block is read on its own: one that cannot be read shows its error
    /// and the others are still shown. Exit 0, or 1 when a block failed.
    Status(Lazy<cmd::status::Args>),
    /// Check the installation: config, state dir, database, tools, remotes, agent, credentials, APIs.
    ///
    /// One line per check, `ok`, `warn` or `fail`, with what to do about it.
    /// Secrets are reported as present or absent and where they come from,
    /// never by value or length. Exit 0 when nothing failed (warnings
    /// allowed), 1 when any check failed.
    Doctor(Lazy<cmd::doctor::Args>),
    /// Print Prometheus metrics (text exposition format) for the node_exporter textfile collector.
    ///
    /// Jobs by status and agent, owner-dead running jobs, tasks by stage, every
    /// persistent counter, leases, the outbox and webhook deliveries by status,
    /// agent cost and tokens, runs by outcome, run durations and cost by stage,
    /// what needs a human by kind, the reaper's last pass. With
    /// --output the file is replaced atomically (temporary file + rename).
    Metrics(Lazy<cmd::metrics::Args>),
    /// Scripting primitive: claim the next eligible job without running it (exit 3: nothing claimable, and why).
    ///
    /// The claimed job is left `running` with this (exited) process as its
    /// owner: unless an external worker takes it over with `orch run-agent
    /// --job N`, `orch reap` requeues it after `reaper_start_grace_s` and the
    /// claim has cost one of its attempts. To run the next job, use `orch
    /// run-agent --next`.
    Claim(Lazy<cmd::claim::Args>),
    /// Take a lock, claim a job, run its agent in the task's worktree, and finalize it.
    ///
    /// Prints what ran, how it ended, each gate with its reason, and what
    /// happens next with the command to use (--json: the run report). Exit 0
    /// when the task advanced, finished, or waits for a human; 3 when no job
    /// could be claimed (and why: also the jobs that failed for good); 4 when
    /// the run was fine but the gates did not pass (the job is retried, or
    /// the task rolled back or escalated); 5 when the agent failed or was
    /// killed (timeout, stall, signal); 6 when the job was claimed but no
    /// agent was started (task over budget, sandbox unavailable); 1 when orch
    /// could not finish the job (worktree, push, gate evaluation).
    RunAgent(Lazy<cmd::run_agent::Args>),
    /// Evaluate a task's current gate and advance it or roll it back (the human/CI path).
    Advance(Lazy<cmd::advance::Args>),
    /// STOP a task: stop its agent, cancel its jobs, release its lease, remove its worktree and branch.
    Cancel(Lazy<cmd::cancel::Args>),
    /// Phase C of the self-hosting deploy: read the deploy hook's result, then advance or roll back.
    FinalizeDeploy(Lazy<cmd::finalize_deploy::Args>),
    /// One reaper pass: end the jobs of dead owners exactly once, stop runs past the backstop, reclaim leases.
    ///
    /// Never runs a test suite, a rebase, a push or a merge: a dead owner's
    /// successful run is handed to a worker to finalize. Every step is
    /// best-effort; exit 1 when any failed (listed in `errors`), the rest ran.
    Reap(Lazy<cmd::reap::Args>),
    /// One reconciler pass: pending webhooks, the outbox, stuck stages, the tracker poll.
    ///
    /// Every step is best-effort and the final outbox flush always runs; exit
    /// 1 when any step failed (listed in `errors`).
    Reconcile(Lazy<cmd::reconcile::Args>),
    /// One merge-lease pass: reclaim leases whose holder can no longer use them.
    ReclaimLeases(Lazy<cmd::reclaim_leases::Args>),
    /// Verify one webhook delivery (HMAC over the raw body), store it once, answer at once.
    ///
    /// The body comes from --body-file or stdin, the headers from the options or, as
    /// adnanh/webhook passes them, from ORCH_BODY_FILE, ORCH_EVENT, ORCH_DELIVERY and
    /// ORCH_SIGNATURE; with --inetd, from one HTTP request on stdin. A delivery seen
    /// before (same delivery id, or same body: Plane retries with a new id) is a
    /// duplicate and is not stored again. The answer never waits for routing: a
    /// new delivery is routed afterwards by a detached router (with --inetd,
    /// after the HTTP answer is sent); what it leaves, `orch reconcile` routes.
    ///
    /// Exit 0 when stored or a duplicate, 65 malformed or too large, 77 signature
    /// rejected or no secret configured, 75 database busy, 78 configuration error;
    /// nothing is stored on failure. With --inetd, 74 when a stored delivery's
    /// answer could not be written (the client closed or reset the connection).
    #[command(visible_alias = "ingest")]
    IngestWebhook(Lazy<cmd::ingest_webhook::Args>),
    /// Serve the read-only web board: tasks by stage, what needs a human, each task's timeline, attempts, cost and live log.
    ///
    /// No daemon: --inetd answers one HTTP request on stdin/stdout (systemd
    /// orch-web.socket with Accept=yes), --listen ADDR serves until
    /// interrupted. Only GET and HEAD; the database is opened read-only. No
    /// authentication: bind to loopback and put a reverse proxy with auth in
    /// front of it (docs/web.md).
    Web(Lazy<cmd::web::Args>),
    /// Run the whole pipeline offline on the embedded defaults, from nothing to `done`.
    Demo(Lazy<cmd::demo::Args>),
    /// The scripted agent used by `orch demo` (reads ORCH_STAGE, ORCH_ARTIFACT_DIR, ...).
    #[command(hide = true)]
    DemoAgent(Lazy<cmd::demo_agent::Args>),
    /// Create and inspect tasks.
    #[command(subcommand)]
    Task(Lazy<cmd::task::Command>),
    /// Inspect, enqueue and retry jobs.
    #[command(subcommand)]
    Job(Lazy<cmd::job::Command>),
    /// Check a task's gates now, without running anything (`gates check --task N`).
    #[command(subcommand)]
    Gates(Lazy<cmd::gates::Command>),
    /// Print or follow (-f) the agent log of a job's run, or of a task's current job.
    ///
    /// The log is printed as the agent wrote it, its rotated older half
    /// first, with control characters other than newline and tab escaped.
    /// Exit 0; 1 when the job, task or run does not exist; 3 when it has no
    /// agent run (or log) yet.
    Logs(Lazy<cmd::logs::Args>),
    /// List outbox messages (tracker comments, states, notifications) and retry dead ones.
    #[command(subcommand)]
    Outbox(Lazy<cmd::outbox::Command>),
    /// Generate man pages or shell completions.
    #[command(subcommand, hide = true)]
    Generate(Lazy<cmd::generate::Command>),
    /// Test facilities (crash points, the agent runner and its guardian).
    #[command(subcommand, hide = true)]
    Debug(Lazy<cmd::debug::Command>),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
