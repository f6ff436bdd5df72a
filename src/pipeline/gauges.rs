//! The labelled counts `orch metrics` exports as gauges and counters: jobs by
//! status and agent, tasks by stage, webhook deliveries by source and status,
//! and cost, tokens and runs by repository and stage. Each is one aggregate
//! query (the database sums, orch never reads row by row: these tables only
//! grow) of the storage's read models (`storage::views`), so that the
//! command only renders.

use crate::storage;
use crate::storage::Executor;
pub use crate::storage::views::Labelled;

/// Jobs by status and agent.
pub fn jobs(conn: &dyn Executor) -> storage::Result<Labelled> {
    conn.view_jobs_by_status_agent()
}

/// Tasks by stage.
pub fn tasks(conn: &dyn Executor) -> storage::Result<Labelled> {
    conn.view_tasks_by_stage()
}

/// Webhook deliveries by source and status.
pub fn deliveries(conn: &dyn Executor) -> storage::Result<Labelled> {
    conn.view_deliveries_by_source_status()
}

/// Known cost by repository and stage.
pub fn cost(conn: &dyn Executor) -> storage::Result<Labelled> {
    conn.view_cost_by_repo_stage()
}

/// Tokens by repository, stage and kind.
pub fn tokens(conn: &dyn Executor) -> storage::Result<Labelled> {
    conn.view_tokens_by_repo_stage_kind()
}

/// Runs by repository, stage and outcome kind (the outcome's reason would
/// explode cardinality).
pub fn runs(conn: &dyn Executor) -> storage::Result<Labelled> {
    conn.view_runs_by_repo_stage_outcome()
}
