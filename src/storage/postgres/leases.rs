//! [`Leases`] on PostgreSQL: the `merge_leases` table, one row per
//! repository (its primary key), so taking a lease is one
//! `INSERT … ON CONFLICT`.

use postgres::Row;

use super::{Tx, get};
use crate::storage::Result;
use crate::storage::leases::{Holder, Lease, Leases};

const COLUMNS: &str = "repo, task_id, branch, work_item_id, holder_job_id, acquired_at";

fn from_row(r: &Row) -> Result<Lease> {
    Ok(Lease {
        repo: get(r, 0)?,
        task_id: get(r, 1)?,
        branch: get(r, 2)?,
        work_item_id: get(r, 3)?,
        holder_job_id: get(r, 4)?,
        acquired_at: get(r, 5)?,
    })
}

impl Leases for Tx<'_> {
    fn lease_take(&self, repo: &str, holder: Holder<'_>, now: i64) -> Result<Option<Lease>> {
        self.execute(
            "INSERT INTO merge_leases (repo, task_id, branch, work_item_id, token, holder_job_id, owner_pid, acquired_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (repo) DO UPDATE SET holder_job_id = excluded.holder_job_id,
                 owner_pid = excluded.owner_pid, task_id = excluded.task_id
             WHERE merge_leases.branch = excluded.branch",
            &[
                &repo,
                &holder.task_id,
                &holder.branch,
                &holder.work_item_id,
                &format!("task-{}", holder.task_id),
                &holder.job_id,
                &i64::from(std::process::id()),
                &now,
            ],
        )?;
        self.lease_get(repo)
    }

    fn lease_release(&self, repo: &str, branch: &str) -> Result<bool> {
        Ok(self.execute(
            "DELETE FROM merge_leases WHERE repo = $1 AND branch = $2",
            &[&repo, &branch],
        )? == 1)
    }

    fn lease_release_for_task(&self, task_id: i64) -> Result<usize> {
        let n = self.execute("DELETE FROM merge_leases WHERE task_id = $1", &[&task_id])?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn lease_get(&self, repo: &str) -> Result<Option<Lease>> {
        self.query_opt(
            &format!("SELECT {COLUMNS} FROM merge_leases WHERE repo = $1"),
            &[&repo],
        )?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    fn lease_all(&self) -> Result<Vec<Lease>> {
        self.query(
            &format!("SELECT {COLUMNS} FROM merge_leases ORDER BY repo"),
            &[],
        )?
        .iter()
        .map(from_row)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_keeps_the_leases_contract() {
        let Some(mut store) = super::super::testing::store() else {
            return;
        };
        store
            .write(|tx| {
                // The contract's holders are tasks 1 and 2 (leases reference tasks).
                tx.batch(
                    "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                     VALUES (1, 'A-1', 'demo', 0, 0), (2, 'B-2', 'other', 0, 0);",
                )?;
                crate::storage::leases::check_contract(tx);
                Ok(())
            })
            .expect("write");
    }
}
