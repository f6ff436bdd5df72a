//! What agent runs took and cost, per stage, for `orch metrics`: a duration
//! histogram and cost totals, each one query over `agent_runs` (aggregated by
//! SQLite, never read run by run: the table only grows).
//!
//! Only finished runs count: a run still going has no duration yet, and its
//! cost is not unknown but not recorded yet — counting it would make a
//! counter go down when it ends. A finished run without a cost is unknown
//! (never zero, as in the ledger of `budget`), and counted apart.

use crate::storage;
use crate::storage::Executor;
pub use crate::storage::ledger::{StageDurations, StageRunCost as StageCost};

/// Upper bounds of the duration buckets, in seconds: agent runs take from
/// seconds (a demo agent, a failing start) to hours (a long development run).
pub const DURATION_BUCKETS_S: [i64; 10] = [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

/// The duration histogram of finished runs, per stage, in the buckets of
/// [`DURATION_BUCKETS_S`].
pub fn durations(conn: &dyn Executor) -> storage::Result<Vec<StageDurations>> {
    conn.ledger_run_durations(&DURATION_BUCKETS_S)
}

/// Known cost and unknown-cost runs of finished runs, per stage.
pub fn costs(conn: &dyn Executor) -> storage::Result<Vec<StageCost>> {
    conn.ledger_run_costs()
}
