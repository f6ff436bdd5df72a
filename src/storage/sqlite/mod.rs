//! The SQLite backend: every concept's interface implemented for a
//! `rusqlite::Connection` (a transaction derefs to one), with its SQL kept
//! here, one module per concept (docs/scaling.md, "The storage boundary").

mod counters;
pub(crate) mod db;
mod deliveries;
mod deploys;
mod jobs;
mod leases;
mod ledger;
mod local_tracker;
mod outbox;
mod post_deploys;
mod tasks;
mod views;

impl crate::storage::Transact for rusqlite::Connection {
    fn transact(
        &self,
        f: &mut dyn FnMut(&dyn crate::storage::Executor) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let tx =
            rusqlite::Transaction::new_unchecked(self, rusqlite::TransactionBehavior::Immediate)?;
        f(&*tx)?;
        tx.commit()?;
        Ok(())
    }
}

/// A job of `task_id` for the contract tests, which need jobs before the
/// jobs have their own interface: `queued`, or `running` with `token`.
#[cfg(test)]
fn add_job(
    conn: &rusqlite::Connection,
    task_id: i64,
    agent: &str,
    status: &str,
    token: Option<&str>,
) -> i64 {
    conn.execute(
        "INSERT INTO jobs (agent, repo, task_id, status, claim_token, created_at)
         VALUES (?1, 'demo', ?2, ?3, ?4, 0)",
        rusqlite::params![agent, task_id, status, token],
    )
    .expect("job");
    conn.last_insert_rowid()
}
