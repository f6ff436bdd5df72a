//! `orch debug crash-points`: list the crash points of the test facility, so
//! tests enumerate them from the binary instead of a copy that could drift.

use std::process::ExitCode;

use crate::crash;
use crate::output;

/// Debug subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List every crash point (`ORCH_CRASH_AT=<point>` makes orch SIGKILL itself there).
    CrashPoints {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
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
    }
    Ok(ExitCode::SUCCESS)
}
