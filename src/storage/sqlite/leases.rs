//! [`Leases`] on SQLite: the `merge_leases` table, one row per repository
//! (its primary key), so taking a lease is one `INSERT … ON CONFLICT`.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::storage::Result;
use crate::storage::leases::{Holder, Lease, Leases};

const COLUMNS: &str = "repo, task_id, branch, work_item_id, holder_job_id, acquired_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        repo: r.get(0)?,
        task_id: r.get(1)?,
        branch: r.get(2)?,
        work_item_id: r.get(3)?,
        holder_job_id: r.get(4)?,
        acquired_at: r.get(5)?,
    })
}

impl Leases for Connection {
    fn lease_take(&self, repo: &str, holder: Holder<'_>, now: i64) -> Result<Option<Lease>> {
        self.execute(
            "INSERT INTO merge_leases (repo, task_id, branch, work_item_id, token, holder_job_id, owner_pid, acquired_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(repo) DO UPDATE SET holder_job_id = excluded.holder_job_id,
                 owner_pid = excluded.owner_pid, task_id = excluded.task_id
             WHERE merge_leases.branch = excluded.branch",
            params![
                repo,
                holder.task_id,
                holder.branch,
                holder.work_item_id,
                format!("task-{}", holder.task_id),
                holder.job_id,
                std::process::id(),
                now
            ],
        )?;
        self.lease_get(repo)
    }

    fn lease_release(&self, repo: &str, branch: &str) -> Result<bool> {
        Ok(self.execute(
            "DELETE FROM merge_leases WHERE repo = ?1 AND branch = ?2",
            params![repo, branch],
        )? == 1)
    }

    fn lease_release_for_task(&self, task_id: i64) -> Result<usize> {
        Ok(self.execute("DELETE FROM merge_leases WHERE task_id = ?1", [task_id])?)
    }

    fn lease_get(&self, repo: &str) -> Result<Option<Lease>> {
        Ok(self
            .query_row(
                &format!("SELECT {COLUMNS} FROM merge_leases WHERE repo = ?1"),
                [repo],
                from_row,
            )
            .optional()?)
    }

    fn lease_all(&self) -> Result<Vec<Lease>> {
        let mut stmt =
            self.prepare(&format!("SELECT {COLUMNS} FROM merge_leases ORDER BY repo"))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_leases_contract() {
        let (_dir, db) = crate::storage::test_db();
        // The contract's holders are tasks 1 and 2 (leases reference tasks).
        db.sqlite()
            .execute_batch(
                "INSERT INTO tasks (id, work_item_id, repo, created_at, updated_at)
                 VALUES (1, 'A-1', 'demo', 0, 0), (2, 'B-2', 'other', 0, 0);",
            )
            .expect("tasks");
        crate::storage::leases::check_contract(db.sqlite());
    }
}
