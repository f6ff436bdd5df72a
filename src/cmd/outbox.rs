//! `orch outbox list|retry`: see what orch still has to tell the tracker and
//! the humans, and give dead-lettered messages another chance once the cause
//! (a revoked token, a missing board state) is fixed.

use std::process::ExitCode;

use rusqlite::params;

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

/// One outbox row, as listed.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    /// Message id.
    pub id: i64,
    /// `tracker` or `notifier`.
    pub channel: String,
    /// The task it is about.
    pub task_id: Option<i64>,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// The message (JSON).
    pub payload: serde_json::Value,
    /// When it was written (epoch seconds).
    pub created_at: i64,
}

/// Run an outbox subcommand.
pub fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    let mut db = ctx.open_db()?;
    match command {
        Command::List(a) => {
            let mut stmt = db.conn().prepare(&format!(
                "SELECT id, channel, task_id, status, attempts, last_error, payload, created_at
                 FROM outbox WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT {}",
                a.limit
            ))?;
            let rows: Vec<Row> = stmt
                .query_map([&a.status], |r| {
                    let payload: String = r.get(6)?;
                    Ok(Row {
                        id: r.get(0)?,
                        channel: r.get(1)?,
                        task_id: r.get(2)?,
                        status: r.get(3)?,
                        attempts: r.get(4)?,
                        last_error: r.get(5)?,
                        payload: serde_json::from_str(&payload)
                            .unwrap_or(serde_json::Value::String(payload)),
                        created_at: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
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
            let n = db.write(|tx| {
                Ok(match a.id {
                    Some(id) => tx.execute(
                        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2
                         WHERE id = ?1 AND status <> 'delivered'",
                        params![id, now],
                    )?,
                    None => tx.execute(
                        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?1
                         WHERE status = 'dead'",
                        [now],
                    )?,
                })
            })?;
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
