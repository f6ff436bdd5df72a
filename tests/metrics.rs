//! `orch metrics` through the binary: valid Prometheus text exposition after a
//! demo run, with the figures the database holds, and `--output` replaces the
//! file atomically.

#![allow(clippy::float_cmp)] // the values compared are small integers and 0.25, exact in f64

use std::collections::BTreeMap;
use std::path::Path;

use assert_cmd::Command;

fn orch(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orch"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .env("RUST_LOG", "warn")
        .arg("--state-dir")
        .arg(state);
    c
}

/// Parse the exposition: every line is a comment (`# HELP`/`# TYPE`) or a
/// sample `name{labels} value`; returns samples keyed by `name{labels}`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    typed.insert(format!("{name}{suffix}"));
                }
            } else {
                typed.insert(name.to_owned());
            }
            continue;
        }
        if line.starts_with("# HELP orch_") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(name.starts_with("orch_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!v.trim_end_matches('"').contains('\n'), "{line}");
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        assert!(
            samples.insert(series.to_owned(), v).is_none(),
            "duplicate {line}"
        );
    }
    samples
}

#[test]
fn metrics_after_a_demo_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    orch(state).arg("demo").assert().success();
    orch(state).arg("reap").assert().success();
    // A priced run, as a Claude agent reports it (the demo agent reports none).
    let conn = rusqlite::Connection::open(state.join("orch.db")).expect("open");
    conn.execute(
        "UPDATE agent_runs SET cost_usd = 0.25, input_tokens = 1000, output_tokens = 200
         WHERE id = (SELECT min(id) FROM agent_runs)",
        [],
    )
    .expect("price a run");
    drop(conn);

    let out = orch(state).arg("metrics").output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let m = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in:\n{text}"));

    assert_eq!(get(r#"orch_tasks{stage="done"}"#), 1.0);
    assert_eq!(get(r#"orch_tasks{stage="development"}"#), 0.0);
    assert_eq!(get(r#"orch_jobs{status="done",agent="developer"}"#), 1.0);
    assert_eq!(get(r#"orch_running_jobs{owner="dead"}"#), 0.0);
    assert_eq!(get("orch_merge_leases_held"), 0.0);
    assert!(get(r#"orch_outbox_messages{status="delivered"}"#) >= 1.0);
    assert_eq!(get(r#"orch_outbox_messages{status="dead"}"#), 0.0);
    assert_eq!(get("orch_reaper_passes_total"), 1.0);
    assert!(get("orch_reaper_last_pass_timestamp_seconds") > 1.6e9);
    assert_eq!(
        get(r#"orch_agent_cost_usd_total{repo="demo",stage="analysis"}"#),
        0.25
    );
    assert_eq!(
        get(r#"orch_agent_tokens_total{repo="demo",stage="analysis",kind="input"}"#),
        1000.0
    );
    let runs: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("orch_agent_runs_total{") && k.contains("outcome=\"success\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(runs, 7.0, "{text}");
}

#[test]
fn output_file_is_replaced_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("s");
    orch(&state).arg("init").assert().success();
    let collector = dir.path().join("textfile");
    std::fs::create_dir(&collector).expect("mkdir");
    let prom = collector.join("orch.prom");
    std::fs::write(&prom, "old\n").expect("seed");
    // Hold the old file open: an atomic replace leaves the open file intact.
    let old = std::fs::File::open(&prom).expect("open");
    orch(&state)
        .args(["metrics", "--output"])
        .arg(&prom)
        .assert()
        .success()
        .stdout("");
    let text = std::fs::read_to_string(&prom).expect("read");
    parse(&text);
    assert!(text.contains("orch_jobs"), "{text}");
    let mut still_old = String::new();
    std::io::Read::read_to_string(&mut &old, &mut still_old).expect("read old");
    assert_eq!(
        still_old, "old\n",
        "the file was rewritten in place, not replaced"
    );
    let names: Vec<String> = std::fs::read_dir(&collector)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["orch.prom"], "temporary files left behind");
    // A directory that does not exist: an error, nothing written.
    orch(&state)
        .args(["metrics", "--output"])
        .arg(dir.path().join("missing/orch.prom"))
        .assert()
        .code(1);
}

/// The run-duration histogram, the cost counters and the attention gauges,
/// against a known set of runs: durations 5 s, 45 s and 4000 s on
/// development (one of unknown cost), 20000 s on review, one still running.
#[test]
fn run_durations_costs_and_attention_gauges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    std::fs::write(
        state.join("orch.toml"),
        "[repos.demo]\nremote = \"/nonexistent/demo.git\"\n",
    )
    .expect("config");
    orch(state).arg("init").assert().success();
    orch(state)
        .args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            "t",
            "--no-start",
        ])
        .assert()
        .success();
    let conn = rusqlite::Connection::open(state.join("orch.db")).expect("open");
    conn.execute_batch(
        "INSERT INTO agent_runs (task_id, agent, stage, started_at, finished_at, cost_usd) VALUES
           (1, 'developer', 'development', 1000, 1005, 0.5),
           (1, 'developer', 'development', 2000, 2045, 1.25),
           (1, 'developer', 'development', 3000, 7000, NULL),
           (1, 'reviewer', 'review', 10000, 30000, 2.0),
           (1, 'reviewer', 'review', 40000, NULL, NULL);
         UPDATE tasks SET stage = 'review', escalated_at = 50000 WHERE id = 1;",
    )
    .expect("runs");
    drop(conn);
    let out = orch(state).arg("metrics").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let m = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in:\n{text}"));
    let bucket = |stage: &str, le: &str| {
        get(&format!(
            r#"orch_agent_run_duration_seconds_bucket{{stage="{stage}",le="{le}"}}"#
        ))
    };
    for (le, n) in [
        ("10", 1.0),
        ("30", 1.0),
        ("60", 2.0),
        ("3600", 2.0),
        ("7200", 3.0),
        ("+Inf", 3.0),
    ] {
        assert_eq!(bucket("development", le), n, "le={le}\n{text}");
    }
    assert_eq!(
        get(r#"orch_agent_run_duration_seconds_sum{stage="development"}"#),
        4050.0
    );
    assert_eq!(
        get(r#"orch_agent_run_duration_seconds_count{stage="development"}"#),
        3.0
    );
    assert_eq!(
        bucket("review", "7200"),
        0.0,
        "20000 s is past the last bound"
    );
    assert_eq!(
        bucket("review", "+Inf"),
        1.0,
        "the running run has no duration yet"
    );
    assert_eq!(
        get(r#"orch_agent_run_duration_seconds_count{stage="review"}"#),
        1.0
    );
    assert_eq!(get(r#"orch_cost_usd_total{stage="development"}"#), 1.75);
    assert_eq!(get(r#"orch_cost_usd_total{stage="review"}"#), 2.0);
    assert_eq!(
        get(r#"orch_agent_runs_unknown_cost_total{stage="development"}"#),
        1.0
    );
    assert_eq!(
        get(r#"orch_agent_runs_unknown_cost_total{stage="review"}"#),
        0.0,
        "a running run's cost is not unknown yet"
    );
    // The existing cost family still holds every run, by repository.
    assert_eq!(
        get(r#"orch_agent_cost_usd_total{repo="demo",stage="development"}"#),
        1.75
    );
    for kind in [
        "blocked",
        "awaiting-approval",
        "awaiting-confirm-deploy",
        "failed-job",
        "dead-owner",
        "dead-outbox",
    ] {
        assert_eq!(
            get(&format!(r#"orch_attention{{kind="{kind}"}}"#)),
            0.0,
            "{kind}"
        );
    }
    assert_eq!(get(r#"orch_attention{kind="escalated"}"#), 1.0);
}
