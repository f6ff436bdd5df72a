//! `orch generate man|completions`: man pages and shell completions built
//! from the same clap definitions as `--help` (see [`crate::manual`]).

use std::path::PathBuf;
use std::process::ExitCode;

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
        Command::Man { dir } => crate::manual::write_pages(Cli::command(), &dir)?,
        Command::Completions { shell } => {
            // Built first: the subcommands' arguments are deferred (`cli::Lazy`).
            let mut full = Cli::command();
            full.build();
            let mut cmd = crate::manual::visible_only(&full);
            clap_complete::generate(shell, &mut cmd, "orch", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}
