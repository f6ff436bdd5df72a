//! `orch debug …`: hidden test facilities. `crash-points` lists the crash
//! points, so tests enumerate them from the binary instead of a copy that
//! could drift; `run-group` drives the process-group runner so it is tested
//! through the real binary; `guard` is the runner's guardian process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::crash;
use crate::output;
use crate::runner;

/// Debug subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List every crash point (`ORCH_CRASH_AT=<point>` makes orch SIGKILL itself there).
    CrashPoints {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command the way agents are run, and print its outcome as JSON.
    #[command(hide = true)]
    RunGroup {
        /// Wall-clock timeout in seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        timeout_s: Duration,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
        grace_s: Duration,
        /// Stop the command after this many seconds without output.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        stall_s: Option<Duration>,
        /// Signal only the direct child (kill-switch `subprocess_tree_kill_enabled` off).
        #[arg(long)]
        no_tree_kill: bool,
        /// Append the command's stdout and stderr to this file.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Guardian of an agent's process group (started by the runner, not by people).
    #[command(hide = true)]
    Guard {
        /// The runner process; when it dies the whole group is killed.
        #[arg(long, value_name = "PID")]
        parent_pid: i32,
        /// The agent command and its arguments.
        #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
        command: Vec<String>,
    },
}

/// Run a debug subcommand.
#[allow(clippy::needless_pass_by_value)] // clap hands the command over by value
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CrashPoints { json } => {
            if json {
                let points: Vec<_> = crash::POINTS
                    .iter()
                    .map(|(name, what)| serde_json::json!({ "name": name, "what": what }))
                    .collect();
                output::print_json(&points)?;
            } else {
                for (name, what) in crash::POINTS {
                    println!("{name:<24} {what}");
                }
            }
        }
        Command::RunGroup {
            timeout_s,
            grace_s,
            stall_s,
            no_tree_kill,
            log,
            command,
        } => {
            let (program, args) = command.split_first().expect("clap requires a command");
            let spec = runner::Spec {
                program: program.clone(),
                args: args.to_vec(),
                cwd: std::env::current_dir()?,
                env: Vec::new(),
                log_path: log,
                log_max_bytes: 0,
                wall_timeout: timeout_s,
                stall_timeout: stall_s,
                kill_grace: grace_s,
                tree_kill: !no_tree_kill,
                guard_program: std::env::current_exe()?,
            };
            let outcome = runner::run(&spec, |pid| log::info!("started pid {pid}"))?;
            output::print_json(&outcome)?;
        }
        Command::Guard {
            parent_pid,
            command,
        } => {
            let (program, args) = command.split_first().expect("clap requires a command");
            return runner::guardian::run(parent_pid, program, args);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A non-negative number of seconds, fractions allowed.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}
