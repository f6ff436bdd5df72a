//! `orch init`: create the state directory and the database. Idempotent: on
//! an existing installation it migrates the schema forward and changes
//! nothing else.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::output;
use crate::storage::Missing;

/// Arguments of `orch init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `orch init` reports.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// The state directory.
    pub state_dir: String,
    /// The database file.
    pub database: String,
    /// Whether the database was created by this call.
    pub created: bool,
    /// Schema version now in force.
    pub schema_version: i64,
}

/// Create what is missing and return what was done.
pub fn init(ctx: &Ctx) -> anyhow::Result<Report> {
    for dir in [
        ctx.state_dir.clone(),
        ctx.locks_dir(),
        ctx.logs_dir(),
        ctx.repos_dir(),
    ] {
        crate::private_state::create_private_dir(&dir)?;
    }
    let created = ctx.db_url().is_none() && !ctx.db_path().exists();
    let mut db = ctx.open_db_as(Missing::Create)?;
    Ok(Report {
        state_dir: ctx.state_dir.display().to_string(),
        database: db.describe(),
        created,
        schema_version: db.schema_version()?,
    })
}

/// Run `orch init`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let report = init(ctx)?;
    if args.json {
        output::print_json(&report)?;
    } else if report.created {
        crate::say!(
            "initialised {} (database {}, schema v{})",
            report.state_dir,
            report.database,
            report.schema_version
        );
    } else {
        crate::say!(
            "already initialised: {} (database {}, schema v{})",
            report.state_dir,
            report.database,
            report.schema_version
        );
    }
    Ok(ExitCode::SUCCESS)
}
