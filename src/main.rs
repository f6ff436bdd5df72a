//! The `orch` binary: parse, set up logging, dispatch, and turn the outcome
//! into an exit code in exactly one place.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    restore_default_sigpipe();
    let cli = orch::cli::Cli::parse();
    match &cli.command {
        orch::cli::Command::IngestWebhook(a) if a.inetd => ignore_sigpipe(),
        orch::cli::Command::Web(_) => ignore_sigpipe(),
        _ => {}
    }
    orch::output::init_logging(cli.global.verbose, cli.global.quiet);
    orch::secrets::protect_process();
    match orch::cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line.
            log::error!("{err:#}");
            orch::error::exit_code_for(&err)
        }
    }
}

/// Die quietly on a closed pipe (`orch status | head`) like other Unix tools,
/// instead of panicking on the failed write. Rust ignores SIGPIPE by default;
/// children get the default disposition back from std either way.
#[allow(unsafe_code)]
fn restore_default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL
    // installs no Rust code as a handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// With `ingest-webhook --inetd` stdout is a network client's socket, and
/// `web` writes to clients' sockets too: a client that resets the connection
/// must become a write error orch handles (a webhook's is exit 74), not a
/// silent death by SIGPIPE — for `web --listen`, of the whole server. Children still start
/// with the default disposition: std resets it for every process it spawns.
#[allow(unsafe_code)]
fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called in main before any thread exists; SIG_IGN installs no
    // Rust code as a handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}
