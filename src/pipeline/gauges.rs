//! The labelled counts `orch metrics` exports as gauges and counters: jobs by
//! status and agent, tasks by stage, webhook deliveries by source and status,
//! and cost, tokens and runs by repository and stage. Each is one aggregate
//! query (SQLite sums, orch never reads row by row: these tables only grow),
//! kept here so that the command only renders.

use rusqlite::Connection;

/// Label values, in the query's column order, and the value.
pub type Labelled = Vec<(Vec<String>, f64)>;

/// The agent runs joined to their job and task (for the repository label).
const RUNS_FROM: &str = "FROM agent_runs a LEFT JOIN jobs j ON j.id = a.job_id \
                         LEFT JOIN tasks t ON t.id = a.task_id";

/// Jobs by status and agent.
pub fn jobs(conn: &Connection) -> rusqlite::Result<Labelled> {
    group_counts(
        conn,
        "SELECT status, agent, count(*) FROM jobs GROUP BY status, agent ORDER BY status, agent",
        2,
    )
}

/// Tasks by stage.
pub fn tasks(conn: &Connection) -> rusqlite::Result<Labelled> {
    group_counts(conn, "SELECT stage, count(*) FROM tasks GROUP BY stage", 1)
}

/// Webhook deliveries by source and status.
pub fn deliveries(conn: &Connection) -> rusqlite::Result<Labelled> {
    group_counts(
        conn,
        "SELECT source, status, count(*) FROM webhook_deliveries GROUP BY source, status ORDER BY source, status",
        2,
    )
}

/// Known cost by repository and stage.
pub fn cost(conn: &Connection) -> rusqlite::Result<Labelled> {
    group_counts(
        conn,
        &format!(
            "SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), sum(a.cost_usd) {RUNS_FROM} \
             GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        2,
    )
}

/// Tokens by repository, stage and kind.
pub fn tokens(conn: &Connection) -> rusqlite::Result<Labelled> {
    group_counts(
        conn,
        &format!(
            "SELECT repo, stage, kind, sum(n) FROM (\
               SELECT coalesce(j.repo, t.repo, '') AS repo, coalesce(a.stage, '') AS stage, 'input' AS kind, a.input_tokens AS n {RUNS_FROM} \
               UNION ALL SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), 'output', a.output_tokens {RUNS_FROM} \
               UNION ALL SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), 'cache_read', a.cache_read_tokens {RUNS_FROM} \
               UNION ALL SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), 'cache_creation', a.cache_creation_tokens {RUNS_FROM}) \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        3,
    )
}

/// Runs by repository, stage and outcome kind.
pub fn runs(conn: &Connection) -> rusqlite::Result<Labelled> {
    // The outcome text is "success", "transient: why" or "failure: why":
    // only the kind is a label (the reason would explode cardinality).
    group_counts(
        conn,
        &format!(
            "SELECT coalesce(j.repo, t.repo, ''), coalesce(a.stage, ''), \
               CASE WHEN a.outcome IS NULL THEN 'unfinished' \
                    WHEN instr(a.outcome, ':') > 0 THEN substr(a.outcome, 1, instr(a.outcome, ':') - 1) \
                    ELSE a.outcome END, count(*) {RUNS_FROM} \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        3,
    )
}

/// `(labels…, value)` rows of `sql`, whose first `columns` columns are labels.
fn group_counts(conn: &Connection, sql: &str, columns: usize) -> rusqlite::Result<Labelled> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| {
        let mut labels = Vec::with_capacity(columns);
        for i in 0..columns {
            labels.push(r.get::<_, Option<String>>(i)?.unwrap_or_default());
        }
        Ok((labels, r.get::<_, Option<f64>>(columns)?.unwrap_or(0.0)))
    })?;
    rows.collect()
}
