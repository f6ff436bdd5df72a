//! One module per subcommand, each owning its `Args` and its `run`.

pub mod claim;
pub mod debug;
pub mod generate;
pub mod init;
pub mod job;
pub mod status;
pub mod task;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::context::Ctx;

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // These need no state directory.
        Command::Generate(c) => generate::run(c),
        Command::Debug(c) => debug::run(c),
        command => {
            let ctx = Ctx::resolve(&cli.global)?;
            match command {
                Command::Init(a) => init::run(&ctx, &a),
                Command::Status(a) => status::run(&ctx, &a),
                Command::Claim(a) => claim::run(&ctx, &a),
                Command::Task(c) => task::run(&ctx, c),
                Command::Job(c) => job::run(&ctx, c),
                Command::Generate(_) | Command::Debug(_) => unreachable!("handled above"),
            }
        }
    }
}
