//! `orch outbox list|retry`: see what orch still has to tell the tracker and
//! the humans, and give dead-lettered messages another chance once the cause
//! (a revoked token, a missing board state) is fixed.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::OrchError;
use crate::output::{self, Table};
use crate::storage;

/// Outbox subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List outbox messages, newest first.
    List(ListArgs),
    /// Put dead (or failing) messages back in line for delivery, then deliver.
    Retry(RetryArgs),
}

/// Arguments of `orch outbox list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only messages with this status.
    #[arg(long, value_parser = ["pending", "delivered", "dead"])]
    pub status: Option<String>,
    /// At most this many messages.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `orch outbox retry`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all_dead"])))]
pub struct RetryArgs {
    /// The message to retry.
    #[arg(long)]
    pub id: Option<i64>,
    /// Retry every dead message.
    #[arg(long)]
    pub all_dead: bool,
}

/// Run an outbox subcommand.
pub fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    match command {
        Command::List(a) => {
            let rows = crate::outbox::list(db.conn(), a.status.as_deref(), a.limit)?;
            if a.json {
                output::print_json(&rows)?;
            } else if rows.is_empty() {
                crate::say!("no messages");
            } else {
                let now = storage::now();
                let mut t = Table::new(&[
                    "ID",
                    "CHANNEL",
                    "TASK",
                    "STATUS",
                    "ATTEMPTS",
                    "CREATED",
                    "LAST ERROR",
                ]);
                for r in rows {
                    t.row(vec![
                        r.id.to_string(),
                        r.channel,
                        output::opt(r.task_id),
                        r.status,
                        r.attempts.to_string(),
                        output::ago(Some(r.created_at), now),
                        r.last_error.unwrap_or_default(),
                    ]);
                }
                print!("{}", t.render());
            }
        }
        Command::Retry(a) => {
            let now = storage::now();
            let n = db.write(|tx| Ok(crate::outbox::revive(tx, a.id, now)?))?;
            if n == 0 {
                return Err(OrchError::NotFound(match a.id {
                    Some(id) => format!("outbox message {id} not found or already delivered"),
                    None => "no dead outbox message".to_owned(),
                })
                .into());
            }
            let d = crate::outbox::deliver(ctx, &mut db)?;
            crate::say!(
                "{n} message(s) back in line; delivered {}, retrying {}, dead {}",
                d.delivered,
                d.retrying,
                d.dead
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
