//! `orch metrics`: the database as Prometheus metrics, in the text exposition
//! format, for node_exporter's textfile collector.
//!
//! orch has no daemon to scrape, so a timer (`systemd/orch-metrics.timer`)
//! runs this command and writes a `.prom` file that node_exporter serves. The
//! file is replaced atomically (temporary file in the same directory, fsync,
//! rename), so the collector never reads half a file. Everything comes from
//! one read snapshot of the database plus one census of the owner locks; the
//! queries live in the library (`pipeline::gauges`, `pipeline::run_stats`,
//! `pipeline::attention`); this command only renders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::context::Ctx;
use crate::liveness::Liveness;
use crate::pipeline::gauges::{self, Labelled};
use crate::pipeline::{attention, owners, run_stats};
use crate::storage::Executor;
use crate::storage::{self, counters, schema};

/// Arguments of `orch metrics`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the metrics to FILE (atomically: a temporary file in the same
    /// directory, then rename) instead of stdout, e.g.
    /// /var/lib/node_exporter/textfile_collector/orch.prom.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The stages a task can be on, in pipeline order.
const STAGES: &[&str] = &[
    "created",
    "analysis",
    "architecture",
    "development",
    "review",
    "testing",
    "deploy-staging",
    "deploy",
    "done",
    "cancelled",
];

/// One metric family being written: HELP and TYPE once, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Start family `name` (already prefixed) of `kind` (`gauge`, `counter`,
    /// `histogram`: then its samples are `name_bucket`, `name_sum`, `name_count`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// Escape a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A counter name from the `counters` table as a metric name: `orch_` +
/// the name with anything outside `[a-zA-Z0-9_]` as `_`, ending in `_total`.
pub fn counter_metric_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if clean.ends_with("_total") {
        format!("orch_{clean}")
    } else {
        format!("orch_{clean}_total")
    }
}

/// Everything the metrics are made of, read in one snapshot.
struct Snapshot {
    jobs: Labelled,
    running: Vec<owners::Owner>,
    tasks: Labelled,
    counters: BTreeMap<String, counters::Counter>,
    leases: Vec<crate::pipeline::lease::Lease>,
    outbox: BTreeMap<String, i64>,
    oldest_pending: Option<i64>,
    deliveries: Labelled,
    cost: Labelled,
    tokens: Labelled,
    runs: Labelled,
    durations: Vec<run_stats::StageDurations>,
    stage_costs: Vec<run_stats::StageCost>,
    attention: Vec<attention::Item>,
}

/// Read every figure in one snapshot; each running job's owner is probed
/// once (`dead` holds the tokens found dead) and the answer reused.
fn read(ctx: &Ctx, tx: &dyn Executor) -> anyhow::Result<Snapshot> {
    let running = owners::probe_running(tx, &ctx.locks()?)?;
    let attention = attention::list_probed(tx, &ctx.config, &running)?;
    Ok(Snapshot {
        jobs: gauges::jobs(tx)?,
        running,
        tasks: gauges::tasks(tx)?,
        counters: counters::all(tx)?,
        leases: crate::pipeline::lease::all(tx)?,
        outbox: crate::outbox::counts(tx)?,
        oldest_pending: crate::outbox::oldest_pending(tx)?,
        deliveries: gauges::deliveries(tx)?,
        cost: gauges::cost(tx)?,
        tokens: gauges::tokens(tx)?,
        runs: gauges::runs(tx)?,
        durations: run_stats::durations(tx)?,
        stage_costs: run_stats::costs(tx)?,
        attention,
    })
}

/// Render every metric from the database of `ctx`.
pub fn render(ctx: &Ctx) -> anyhow::Result<String> {
    let mut db = ctx.open_db()?;
    let now = storage::now();
    let s = db.read(|tx| read(ctx, tx))?;
    let mut e = Exposition::default();
    write_queue(&mut e, &s);
    write_leases_and_outbox(&mut e, &s, now);
    write_agent_runs(&mut e, &s);
    write_run_durations(&mut e, &s);
    write_attention(&mut e, &s);
    e.family(
        "orch_reaper_last_pass_timestamp_seconds",
        "gauge",
        "When the reaper last ran (epoch seconds; 0 = never). Alert when time() minus this exceeds a few intervals.",
    );
    e.sample(
        "orch_reaper_last_pass_timestamp_seconds",
        &[],
        s.counters
            .get("reaper_passes_total")
            .map_or(0, |c| c.updated_at) as f64,
    );
    e.family("orch_schema_version", "gauge", "Database schema version.");
    e.sample("orch_schema_version", &[], schema::MIGRATIONS.len() as f64);
    e.family(
        "orch_metrics_generated_timestamp_seconds",
        "gauge",
        "When these metrics were generated (epoch seconds).",
    );
    e.sample("orch_metrics_generated_timestamp_seconds", &[], now as f64);
    Ok(e.finish())
}

/// Jobs, running jobs by owner liveness, tasks by stage, every counter.
fn write_queue(e: &mut Exposition, s: &Snapshot) {
    e.family("orch_jobs", "gauge", "Jobs by status and agent.");
    for (l, n) in &s.jobs {
        e.sample("orch_jobs", &[("status", &l[0]), ("agent", &l[1])], *n);
    }
    let dead = s
        .running
        .iter()
        .filter(|o| o.liveness == Liveness::Dead)
        .count();
    e.family(
        "orch_running_jobs",
        "gauge",
        "Running jobs by owner liveness (owner lock held = alive); dead ones wait for `orch reap`.",
    );
    e.sample(
        "orch_running_jobs",
        &[("owner", "alive")],
        s.running.len().saturating_sub(dead) as f64,
    );
    e.sample("orch_running_jobs", &[("owner", "dead")], dead as f64);

    e.family("orch_tasks", "gauge", "Tasks by pipeline stage.");
    let by_stage: BTreeMap<&str, f64> = s.tasks.iter().map(|(l, n)| (l[0].as_str(), *n)).collect();
    for stage in STAGES {
        e.sample(
            "orch_tasks",
            &[("stage", stage)],
            by_stage.get(stage).copied().unwrap_or(0.0),
        );
    }
    for (name, c) in &s.counters {
        let metric = counter_metric_name(name);
        e.family(
            &metric,
            "counter",
            &format!("Persistent counter {name} (the counters table, shown by `orch status`)."),
        );
        e.sample(&metric, &[], c.value as f64);
    }
}

/// Merge leases, the outbox and webhook deliveries.
fn write_leases_and_outbox(e: &mut Exposition, s: &Snapshot, now: i64) {
    e.family(
        "orch_merge_leases_held",
        "gauge",
        "Merge leases currently held.",
    );
    e.sample("orch_merge_leases_held", &[], s.leases.len() as f64);
    e.family(
        "orch_merge_lease_age_seconds",
        "gauge",
        "Age of each held merge lease, by repository.",
    );
    for lease in &s.leases {
        e.sample(
            "orch_merge_lease_age_seconds",
            &[("repo", &lease.repo)],
            (now - lease.acquired_at).max(0) as f64,
        );
    }
    e.family(
        "orch_outbox_messages",
        "gauge",
        "Outbox messages by status (pending = backlog, dead = gave up).",
    );
    for status in ["pending", "delivered", "dead"] {
        e.sample(
            "orch_outbox_messages",
            &[("status", status)],
            s.outbox.get(status).copied().unwrap_or(0) as f64,
        );
    }
    e.family(
        "orch_outbox_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending outbox message (0 when none is pending).",
    );
    e.sample(
        "orch_outbox_oldest_pending_age_seconds",
        &[],
        s.oldest_pending.map_or(0, |t| (now - t).max(0)) as f64,
    );
    e.family(
        "orch_webhook_deliveries",
        "gauge",
        "Stored webhook deliveries by source and status.",
    );
    for (l, n) in &s.deliveries {
        e.sample(
            "orch_webhook_deliveries",
            &[("source", &l[0]), ("status", &l[1])],
            *n,
        );
    }
}

/// Agent cost, tokens and runs by repository and stage; cost per stage.
fn write_agent_runs(e: &mut Exposition, s: &Snapshot) {
    e.family(
        "orch_agent_cost_usd_total",
        "counter",
        "Agent run cost reported by the agent (Claude's total_cost_usd), by repository and stage.",
    );
    for (l, usd) in &s.cost {
        e.sample(
            "orch_agent_cost_usd_total",
            &[("repo", &l[0]), ("stage", &l[1])],
            *usd,
        );
    }
    e.family(
        "orch_agent_tokens_total",
        "counter",
        "Agent tokens by repository, stage and kind (input, output, cache_read, cache_creation).",
    );
    for (l, n) in &s.tokens {
        e.sample(
            "orch_agent_tokens_total",
            &[("repo", &l[0]), ("stage", &l[1]), ("kind", &l[2])],
            *n,
        );
    }
    e.family(
        "orch_agent_runs_total",
        "counter",
        "Agent runs by repository, stage and outcome (success, transient, failure, unfinished).",
    );
    for (l, n) in &s.runs {
        e.sample(
            "orch_agent_runs_total",
            &[("repo", &l[0]), ("stage", &l[1]), ("outcome", &l[2])],
            *n,
        );
    }
    e.family(
        "orch_cost_usd_total",
        "counter",
        "Known cost of finished agent runs by stage, in USD (runs of unknown cost are not in it: see orch_agent_runs_unknown_cost_total).",
    );
    for c in &s.stage_costs {
        e.sample("orch_cost_usd_total", &[("stage", &c.stage)], c.known_usd);
    }
    e.family(
        "orch_agent_runs_unknown_cost_total",
        "counter",
        "Finished agent runs whose cost is unknown (not zero: the ledger charges them), by stage.",
    );
    for c in &s.stage_costs {
        e.sample(
            "orch_agent_runs_unknown_cost_total",
            &[("stage", &c.stage)],
            c.unknown_runs as f64,
        );
    }
}

/// The run-duration histogram per stage.
fn write_run_durations(e: &mut Exposition, s: &Snapshot) {
    let name = "orch_agent_run_duration_seconds";
    e.family(
        name,
        "histogram",
        "Duration of finished agent runs (started_at to finished_at), by stage.",
    );
    for d in &s.durations {
        let bucket = format!("{name}_bucket");
        for (le, n) in run_stats::DURATION_BUCKETS_S.iter().zip(&d.buckets) {
            let le = le.to_string();
            e.sample(&bucket, &[("stage", &d.stage), ("le", &le)], *n as f64);
        }
        e.sample(
            &bucket,
            &[("stage", &d.stage), ("le", "+Inf")],
            d.count as f64,
        );
        e.sample(
            &format!("{name}_sum"),
            &[("stage", &d.stage)],
            d.sum_s as f64,
        );
        e.sample(
            &format!("{name}_count"),
            &[("stage", &d.stage)],
            d.count as f64,
        );
    }
}

/// What needs a human, one gauge per kind (zeros included).
fn write_attention(e: &mut Exposition, s: &Snapshot) {
    e.family(
        "orch_attention",
        "gauge",
        "Things that need a human, by kind (`orch status` lists each with the command that resolves it).",
    );
    for (kind, n) in attention::counts(&s.attention) {
        e.sample("orch_attention", &[("kind", kind.as_str())], n as f64);
    }
}

/// Replace `path` with `text` atomically: write a temporary file in the same
/// directory, fsync it, rename it over `path`.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    // A leading dot and no `.prom` suffix: the textfile collector ignores it.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        // Public by design, for node_exporter, whatever orch's private umask.
        let public = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
        f.set_permissions(public)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Run `orch metrics`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let text = render(ctx)?;
    match &args.output {
        Some(path) => write_atomically(path, &text)?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            escape_label(
                r#"a"b\c
d"#
            ),
            r#"a\"b\\c\nd"#
        );
        let mut e = Exposition::default();
        e.family("orch_x", "gauge", "Help with \\ and\nnewline.");
        e.sample("orch_x", &[("repo", "q\"r")], 1.5);
        e.sample("orch_x", &[], 3.0);
        assert_eq!(
            e.finish(),
            "# HELP orch_x Help with \\\\ and\\nnewline.\n# TYPE orch_x gauge\norch_x{repo=\"q\\\"r\"} 1.5\norch_x 3\n"
        );
    }

    #[test]
    fn counter_names_end_in_total() {
        assert_eq!(counter_metric_name("reaped_total"), "orch_reaped_total");
        assert_eq!(counter_metric_name("odd-name"), "orch_odd_name_total");
    }

    #[test]
    fn writes_replace_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orch.prom");
        write_atomically(&path, "a 1\n").expect("write");
        write_atomically(&path, "a 2\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
