//! The agent runs (attempts) of a job or a task, as an operator reads them:
//! when each started and ended, how it ended, what it cost, and where its log
//! is. One job can run its agent several times (a failed gate retries it, a
//! crash gives the attempt back), and each run keeps its own directory
//! `<state>/runs/job-<id>-run<n>/`; `orch job show` and `orch logs` read the
//! `agent_runs` rows through this module so both name runs the same way.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, Row};
use serde::Serialize;

/// One agent run of a job: a row of `agent_runs`, plus where its log is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// The run's id (`agent_runs.id`, `ORCH_RUN_ID`).
    pub run_id: i64,
    /// Which run of its job this is, from 1 (the `<n>` of `job-<id>-run<n>`).
    pub number: i64,
    /// The job.
    pub job_id: Option<i64>,
    /// The task.
    pub task_id: Option<i64>,
    /// The agent.
    pub agent: String,
    /// The stage it worked on.
    pub stage: Option<String>,
    /// The agent's process group, once started.
    pub pid: Option<i64>,
    /// Start (epoch seconds).
    pub started_at: i64,
    /// End (epoch seconds); `null` while it runs, or if its worker died.
    pub finished_at: Option<i64>,
    /// `finished_at - started_at`.
    pub duration_s: Option<i64>,
    /// How the run was judged (`success`, `failure: …`, `transient: …`).
    pub outcome: Option<String>,
    /// The agent's exit code.
    pub exit_code: Option<i64>,
    /// The signal that killed it.
    pub signal: Option<i64>,
    /// `wall` or `stall` when stopped for time.
    pub timed_out: Option<String>,
    /// Cost reported by the agent, in USD.
    pub cost_usd: Option<f64>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// The run's log (`.../agent.log`).
    pub log_path: Option<String>,
    /// The log's older half (`agent.log.1`), when the log was rotated.
    pub rotated_log_path: Option<String>,
}

const COLUMNS: &str = "a.id, (SELECT count(*) FROM agent_runs b WHERE b.job_id = a.job_id \
     AND b.id <= a.id), a.job_id, a.task_id, a.agent, a.stage, a.pid, a.started_at, \
     a.finished_at, a.outcome, a.exit_code, a.signal, a.timed_out, a.cost_usd, \
     a.input_tokens, a.output_tokens, a.output_path";

impl Attempt {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Attempt> {
        let started_at: i64 = r.get(7)?;
        let finished_at: Option<i64> = r.get(8)?;
        let log_path: Option<String> = r.get(16)?;
        let rotated_log_path = log_path
            .as_deref()
            .map(|p| rotated(Path::new(p)))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string());
        Ok(Attempt {
            run_id: r.get(0)?,
            number: r.get(1)?,
            job_id: r.get(2)?,
            task_id: r.get(3)?,
            agent: r.get(4)?,
            stage: r.get(5)?,
            pid: r.get(6)?,
            started_at,
            finished_at,
            duration_s: finished_at.map(|f| (f - started_at).max(0)),
            outcome: r.get(9)?,
            exit_code: r.get(10)?,
            signal: r.get(11)?,
            timed_out: r.get(12)?,
            cost_usd: r.get(13)?,
            input_tokens: r.get(14)?,
            output_tokens: r.get(15)?,
            log_path,
            rotated_log_path,
        })
    }

    /// How the process ended, in a few words: `exit 0`, `signal 9`,
    /// `wall timeout (signal 15)`, or `running`.
    pub fn ending(&self) -> String {
        let how = match (self.exit_code, self.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) if self.finished_at.is_none() => return "running".to_owned(),
            (None, None) => "no exit status".to_owned(),
        };
        match &self.timed_out {
            Some(t) => format!("{t} timeout ({how})"),
            None => how,
        }
    }
}

fn select(conn: &Connection, filter: &str, id: i64) -> rusqlite::Result<Vec<Attempt>> {
    let sql = format!("SELECT {COLUMNS} FROM agent_runs a WHERE {filter} ORDER BY a.id");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([id], Attempt::from_row)?;
    rows.collect()
}

/// Every run of job `job_id`, oldest first.
pub fn for_job(conn: &Connection, job_id: i64) -> rusqlite::Result<Vec<Attempt>> {
    select(conn, "a.job_id = ?1", job_id)
}

/// Every run of task `task_id`, oldest first.
pub fn for_task(conn: &Connection, task_id: i64) -> rusqlite::Result<Vec<Attempt>> {
    select(conn, "a.task_id = ?1", task_id)
}

/// Run `run_id`, if it exists.
pub fn get(conn: &Connection, run_id: i64) -> rusqlite::Result<Option<Attempt>> {
    Ok(select(conn, "a.id = ?1", run_id)?.into_iter().next())
}

/// Whether run `run_id` of job `job_id` may still write to its log: the run
/// is not finished, and the job is running this very run.
pub fn is_live(conn: &Connection, job_id: i64, run_id: i64) -> rusqlite::Result<bool> {
    let live: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM agent_runs r JOIN jobs j ON j.id = r.job_id
             WHERE r.id = ?2 AND j.id = ?1 AND r.finished_at IS NULL
               AND j.status = 'running' AND j.run_id = r.id",
            [job_id, run_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(live.is_some())
}

/// Where a full log is moved when it is rotated: `<log>.1`.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Epoch seconds as an RFC 3339 UTC time, `2026-11-22T13:08:18Z`.
pub fn rfc3339(epoch: i64) -> String {
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic
/// Gregorian calendar; H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_352_898), "2026-11-22T13:08:18Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn rotated_log_is_dot_one() {
        assert_eq!(
            rotated(Path::new("/s/runs/job-1-run2/agent.log")),
            PathBuf::from("/s/runs/job-1-run2/agent.log.1")
        );
    }
}
