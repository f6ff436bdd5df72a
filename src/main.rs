//! The `orch` binary: parse, set up logging, dispatch, and turn the outcome
//! into an exit code in exactly one place.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = orch::cli::Cli::parse();
    orch::output::init_logging(cli.global.verbose, cli.global.quiet);
    match orch::cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line.
            log::error!("{err:#}");
            orch::error::exit_code_for(&err)
        }
    }
}
