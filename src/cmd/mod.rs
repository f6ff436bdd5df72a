//! One module per subcommand, each owning its `Args` and its `run`.

pub mod advance;
pub mod cancel;
pub mod claim;
pub mod debug;
pub mod demo;
pub mod demo_agent;
pub mod doctor;
pub mod finalize_deploy;
pub mod gates;
pub mod generate;
pub mod ingest_webhook;
pub mod init;
pub mod job;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod reap;
pub mod reclaim_leases;
pub mod reconcile;
pub mod run_agent;
pub mod status;
pub mod task;
pub mod view;
pub mod web;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::context::Ctx;

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Everything that touches a state directory creates private files,
    // whatever the caller's umask (docs/security.md). `generate` writes man
    // pages and completions meant for everyone; the demo agent is an agent.
    if !matches!(
        cli.command,
        Command::Generate(_) | Command::Debug(_) | Command::DemoAgent(_)
    ) {
        crate::private_state::tighten_umask();
    }
    match cli.command {
        // These need no state directory.
        Command::Generate(c) => generate::run(c.0),
        Command::Debug(c) => debug::run(c.0),
        Command::DemoAgent(a) => demo_agent::run(&a),
        // Doctor reports a broken config as a check instead of failing on it.
        Command::Doctor(a) => doctor::run(&cli.global, &a),
        Command::Demo(a) => {
            // The demo never touches the default installation: without an
            // explicit state dir it works in ./orch-demo.
            let state = match &cli.global.state_dir {
                Some(dir) => dir.clone(),
                None => std::env::current_dir()?.join("orch-demo"),
            };
            demo::run(&state, &a)
        }
        // Even a configuration error gets an HTTP answer.
        Command::Web(a) => web::run(&cli.global, &a),
        // With --inetd even a configuration error gets an HTTP answer.
        Command::IngestWebhook(a) if a.inetd => {
            ingest_webhook::run_inetd_resolving(&cli.global, &a)
        }
        command => {
            let ctx = Ctx::resolve(&cli.global)?;
            match command {
                Command::Init(a) => init::run(&ctx, &a),
                Command::Status(a) => status::run(&ctx, &a),
                Command::Claim(a) => claim::run(&ctx, &a),
                Command::Task(c) => task::run(&ctx, c.0),
                Command::Job(c) => job::run(&ctx, c.0),
                Command::Logs(a) => logs::run(&ctx, &a),
                Command::Gates(c) => gates::run(&ctx, c.0),
                Command::Outbox(c) => outbox::run(&ctx, c.0),
                Command::RunAgent(a) => run_agent::run(&ctx, &a),
                Command::Advance(a) => advance::run(&ctx, &a),
                Command::Reap(a) => reap::run(&ctx, &a),
                Command::Reconcile(a) => reconcile::run(&ctx, &a),
                Command::Cancel(a) => cancel::run(&ctx, &a),
                Command::FinalizeDeploy(a) => finalize_deploy::run(&ctx, &a),
                Command::ReclaimLeases(a) => reclaim_leases::run(&ctx, &a),
                Command::IngestWebhook(a) => ingest_webhook::run(&ctx, &a),
                Command::Metrics(a) => metrics::run(&ctx, &a),
                Command::Generate(_)
                | Command::Debug(_)
                | Command::DemoAgent(_)
                | Command::Doctor(_)
                | Command::Web(_)
                | Command::Demo(_) => unreachable!("handled above"),
            }
        }
    }
}
