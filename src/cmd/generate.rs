//! `orch generate man|completions`: man pages and shell completions built
//! from the same clap definitions as `--help`, so they never drift.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Generate subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write orch.1 and one orch-<command>.1 per subcommand into DIR.
    Man {
        /// Output directory.
        dir: PathBuf,
    },
    /// Print a completion script for SHELL.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Run a generate subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "orch", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}
