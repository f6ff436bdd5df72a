//! The cost ledger and task budgets: every run's cost is recorded, the ledger
//! sums stages, rollbacks and retries, a task stops before a run it cannot
//! afford, and `orch task resume --budget` lets it go on.

mod common;

use common::Env;
use predicates::prelude::*;

/// A demo installation whose agent reports $1.00 per run in $ORCH_COST_FILE
/// and then does the demo agent's work.
fn paying(extra: &str) -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let exe = env!("CARGO_BIN_EXE_orch");
    let agent = format!(
        "echo \"$ORCH_MAX_BUDGET_USD\" >> {dir}/budgets.seen; printf '{{\"cost_usd\": 1.0, \"input_tokens\": 100, \"output_tokens\": 10}}' > \"$ORCH_COST_FILE\"; exec '{exe}' demo-agent",
        dir = env.shared().display()
    );
    let config = std::fs::read_to_string(&path)
        .expect("config")
        .lines()
        .filter(|l| !l.starts_with("agent_cmd ="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &path,
        format!(
            "agent_cmd = {}\nagent_max_budget_usd = \"1\"\n{extra}\n{config}\n",
            serde_json::to_string(&agent).expect("quote")
        ),
    )
    .expect("config");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "paid"])
        .assert()
        .success();
    env
}

/// Run agents (approving the analysis) until nothing is claimable.
fn drain(env: &Env, script: &str) {
    for _ in 0..40 {
        let out = env
            .orch_std()
            .env("ORCH_DEMO_SCRIPT", script)
            .args(["run-agent", "--next"])
            .output()
            .expect("run");
        if out.status.code() == Some(3) {
            let stage = env.json(&["task", "show", "1"])["task"]["stage"].clone();
            if stage == "analysis"
                && env
                    .orch()
                    .args(["advance", "--task", "1", "--approve"])
                    .output()
                    .expect("advance")
                    .status
                    .success()
            {
                continue;
            }
            return;
        }
    }
}

#[test]
fn the_ledger_adds_up_across_stages_rollbacks_and_retries() {
    let env = paying("task_budget_usd = 0");
    drain(&env, "review=request_changes*1,development=break_tests*1");
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "done");
    let runs = env.sql_i64("SELECT count(*) FROM agent_runs");
    let cost = &shown["cost"];
    assert_eq!(cost["spent_usd"], runs as f64, "one dollar per run");
    assert_eq!(cost["unknown_runs"], 0);
    let per_stage: f64 = cost["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["cost_usd"].as_f64().unwrap_or(0.0))
        .sum();
    assert!((per_stage - runs as f64).abs() < 1e-9);
    let dev = cost["stages"]
        .as_array()
        .expect("s")
        .iter()
        .find(|s| s["stage"] == "development")
        .expect("development");
    assert_eq!(
        dev["runs"], 3,
        "first run (red tests), its retry, and the run after the review rollback"
    );
    assert_eq!(dev["input_tokens"], 300);
    env.orch()
        .args(["task", "show", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("cost per stage"));
    let status = env.json(&["status"]);
    assert_eq!(status["costs"]["total_usd"], runs as f64);
}

#[test]
fn a_task_stops_before_a_run_it_cannot_afford_and_resumes_with_a_raised_budget() {
    let env = paying("task_budget_usd = 3.5");
    drain(&env, "");
    // analysis, architecture, development = $3; the review run could cost $1 more.
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "review");
    assert_eq!(shown["cost"]["spent_usd"], 3.0);
    let reason = shown["task"]["blocked_reason"]
        .as_str()
        .expect("blocked")
        .to_owned();
    assert!(
        reason.contains("over budget") && reason.contains("development $1.00"),
        "{reason}"
    );
    assert_eq!(shown["task"]["tracker_state"], "Blocked");
    assert!(shown["comments"].as_array().expect("c").iter().any(|c| {
        c["body"]
            .as_str()
            .unwrap_or("")
            .contains("orch task resume")
    }));
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert!(notes.contains("over budget"), "{notes}");
    // The reviewer's job waits, unclaimable, its attempt not spent.
    let review = shown["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["agent"] == "reviewer")
        .expect("reviewer")
        .clone();
    assert_eq!(review["status"], "queued");
    assert_eq!(review["attempts"], 0);
    let out = env
        .orch()
        .args(["claim", "--json"])
        .output()
        .expect("claim");
    assert_eq!(out.status.code(), Some(3));
    let why: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(why["why"]["blocked"], 1);
    // The runs were told what they may spend: never more than the task had left.
    let seen = std::fs::read_to_string(env.shared().join("budgets.seen")).expect("seen");
    assert!(seen.lines().all(|l| l.trim() == "1.00"), "{seen}");
    // Not enough: refused. Enough: resumed, and the task finishes.
    env.orch()
        .args(["task", "resume", "--task", "1", "--budget", "3.8"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("still"));
    env.orch()
        .args(["task", "resume", "--task", "1", "--budget", "10"])
        .assert()
        .success()
        .stdout(predicate::str::contains("resumed with a budget of $10.00"));
    drain(&env, "");
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "done");
    assert_eq!(shown["cost"]["spent_usd"], 7.0);
    let kinds: Vec<String> = shown["history"]
        .as_array()
        .expect("h")
        .iter()
        .map(|h| h["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(kinds.contains(&"block".to_owned()) && kinds.contains(&"resume".to_owned()));
}

#[test]
fn a_claude_run_without_a_result_event_costs_unknown_not_zero() {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env.orch()
        .env("ORCH_AGENT_CMD", "echo 'no result event'")
        .env("ORCH_AGENT_PROTOCOL", "claude")
        .args(["run-agent", "--next"])
        .assert()
        .code(5);
    let cost = env.rows("SELECT cost_usd FROM agent_runs WHERE id = 1")[0][0].as_f64();
    assert_eq!(cost, None, "unknown, not zero");
    let ledger = &env.json(&["task", "show", "1"])["cost"];
    assert_eq!(ledger["unknown_runs"], 1);
    assert_eq!(ledger["spent_usd"], 0.0);
    // Charged at the per-run cap ($5 by default) against the $20 budget.
    assert_eq!(ledger["remaining_usd"], 15.0);
    // A plain command that reports nothing costs zero.
    env.orch()
        .env("ORCH_AGENT_CMD", "exit 1")
        .args(["run-agent", "--next"])
        .assert()
        .code(5);
    let cost = env.rows("SELECT cost_usd FROM agent_runs WHERE id = 2")[0][0].as_f64();
    assert_eq!(cost, Some(0.0));
}

/// A demo installation whose jobs may be attempted `max_attempts` times.
fn patient(max_attempts: u32) -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("max_attempts = {max_attempts}\n{config}")).expect("config");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "crashy"])
        .assert()
        .success();
    env
}

/// Start a worker whose agent is `agent` (`protocol`: `exit-code` or
/// `claude`), wait until the agent has written `started` to its log, SIGKILL
/// the worker (its guardian then kills the agent's group) and reap.
fn kill_worker_mid_run(env: &Env, agent: &str, protocol: &str) {
    let last_run = env.sql_i64("SELECT coalesce(max(id), 0) FROM agent_runs");
    let mut worker = env
        .orch_std()
        .env("ORCH_AGENT_CMD", agent)
        .env("ORCH_AGENT_PROTOCOL", protocol)
        .args(["run-agent", "--next"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = env.sql_text(&format!(
            "SELECT output_path FROM agent_runs WHERE id > {last_run}"
        ));
        if log.is_some_and(|l| std::fs::read_to_string(l).is_ok_and(|t| t.contains("started"))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started: {}",
            env.json(&["task", "show", "1"])
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    worker.kill().expect("SIGKILL the worker");
    worker.wait().expect("wait");
    let pass = env.json(&["reap"]);
    assert_eq!(pass["reaped"][0]["outcome"], "queued", "{pass}");
}

/// Issue #13 (3): runs cut off by orch's death are not charged at the
/// per-run cap each. Five SIGKILLed runs of a plain command (which would have
/// charged 5 × $5 against the $20 budget) cost nothing, the task is never
/// blocked, and it finishes.
#[test]
fn killed_plain_command_runs_cost_nothing_and_never_block_the_task() {
    let env = patient(10);
    for _ in 0..5 {
        kill_worker_mid_run(&env, "echo started; sleep 60", "exit-code");
        let cost = env.json(&["task", "show", "1"])["cost"].clone();
        assert_eq!(cost["unknown_runs"], 0, "{cost}");
        assert_eq!(cost["remaining_usd"], 20.0, "{cost}");
    }
    let outcomes: Vec<String> = env
        .rows("SELECT outcome FROM agent_runs ORDER BY id")
        .into_iter()
        .map(|r| r[0].as_str().expect("an outcome").to_owned())
        .collect();
    assert!(
        outcomes.iter().all(|o| o.starts_with("orch-died: ")),
        "{outcomes:?}"
    );
    drain(&env, "");
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "done", "{shown}");
    assert!(
        shown["history"]
            .as_array()
            .expect("history")
            .iter()
            .all(|h| h["kind"] != "block"),
        "the task was blocked: {shown}"
    );
}

/// Issue #13 (3): a Claude run cut off by orch's death is settled from its
/// log: with a `result` event its cost is known; without one it is unknown,
/// and all such runs of a task together are charged the per-run cap once.
#[test]
fn killed_claude_runs_are_settled_from_their_logs_and_charged_once() {
    let env = patient(10);
    let init = r#"{"type":"system","subtype":"init","session_id":"s"}"#;
    let result = r#"{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.5,"usage":{"input_tokens":7,"output_tokens":3}}"#;
    for _ in 0..3 {
        kill_worker_mid_run(
            &env,
            &format!("echo '{init}'; echo started; sleep 60"),
            "claude",
        );
    }
    let cost = env.json(&["task", "show", "1"])["cost"].clone();
    assert_eq!(cost["unknown_runs"], 3, "{cost}");
    assert_eq!(cost["orch_died_unknown_runs"], 3, "{cost}");
    assert_eq!(
        cost["charged_usd"], 5.0,
        "charged once, not per run: {cost}"
    );
    kill_worker_mid_run(
        &env,
        &format!("echo '{init}'; echo '{result}'; echo started; sleep 60"),
        "claude",
    );
    let cost = env.json(&["task", "show", "1"])["cost"].clone();
    assert_eq!(cost["spent_usd"], 0.5, "{cost}");
    assert_eq!(cost["charged_usd"], 5.5, "{cost}");
    assert_eq!(cost["remaining_usd"], 14.5, "{cost}");
}
