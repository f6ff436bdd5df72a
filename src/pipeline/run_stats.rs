//! What agent runs took and cost, per stage, for `orch metrics`: a duration
//! histogram and cost totals, each one query over `agent_runs` (aggregated by
//! SQLite, never read run by run: the table only grows).
//!
//! Only finished runs count: a run still going has no duration yet, and its
//! cost is not unknown but not recorded yet — counting it would make a
//! counter go down when it ends. A finished run without a cost is unknown
//! (never zero, as in the ledger of `budget`), and counted apart.

use rusqlite::Connection;

/// Upper bounds of the duration buckets, in seconds: agent runs take from
/// seconds (a demo agent, a failing start) to hours (a long development run).
pub const DURATION_BUCKETS_S: [i64; 10] = [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

/// The durations of one stage's finished runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDurations {
    /// The stage (empty for runs without one).
    pub stage: String,
    /// Runs that took at most each bound of [`DURATION_BUCKETS_S`] (cumulative).
    pub buckets: Vec<u64>,
    /// Runs.
    pub count: u64,
    /// Their durations added up, in seconds.
    pub sum_s: i64,
}

/// The duration histogram of finished runs, per stage.
pub fn durations(conn: &Connection) -> rusqlite::Result<Vec<StageDurations>> {
    let buckets: Vec<String> = DURATION_BUCKETS_S
        .iter()
        .map(|b| format!("sum(d <= {b})"))
        .collect();
    let mut stmt = conn.prepare(&format!(
        "SELECT stage, {}, count(*), coalesce(sum(d), 0) FROM (
            SELECT coalesce(stage, '') AS stage, max(finished_at - started_at, 0) AS d
            FROM agent_runs WHERE finished_at IS NOT NULL)
         GROUP BY stage ORDER BY stage",
        buckets.join(", ")
    ))?;
    let n = DURATION_BUCKETS_S.len();
    let rows = stmt.query_map([], |r| {
        let mut buckets = Vec::with_capacity(n);
        for i in 0..n {
            buckets.push(r.get::<_, i64>(i + 1)?.max(0).unsigned_abs());
        }
        Ok(StageDurations {
            stage: r.get(0)?,
            buckets,
            count: r.get::<_, i64>(n + 1)?.max(0).unsigned_abs(),
            sum_s: r.get(n + 2)?,
        })
    })?;
    rows.collect()
}

/// What one stage's finished runs cost.
#[derive(Debug, Clone, PartialEq)]
pub struct StageCost {
    /// The stage (empty for runs without one).
    pub stage: String,
    /// The sum of the known costs, in USD.
    pub known_usd: f64,
    /// Runs whose cost is unknown.
    pub unknown_runs: i64,
}

/// Known cost and unknown-cost runs of finished runs, per stage.
pub fn costs(conn: &Connection) -> rusqlite::Result<Vec<StageCost>> {
    let mut stmt = conn.prepare(
        "SELECT coalesce(stage, ''), coalesce(sum(cost_usd), 0), count(*) - count(cost_usd)
         FROM agent_runs WHERE finished_at IS NOT NULL GROUP BY 1 ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StageCost {
            stage: r.get(0)?,
            known_usd: r.get(1)?,
            unknown_runs: r.get(2)?,
        })
    })?;
    rows.collect()
}
