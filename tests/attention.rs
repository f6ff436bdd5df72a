//! What needs a human, through the real binary: one situation per kind,
//! made by the real paths where they are cheap, each listed by `orch status
//! --json` with the command that resolves it and shown by the human view;
//! running that command ends it. Plus the task summaries of `status` and
//! `task list`, and `--watch`.

mod common;

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use common::Env;
use serde_json::Value;

/// An installation made by `orch demo --setup-only`, with `extra` settings
/// put before the generated ones.
fn demo_env(extra: &str) -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{extra}\n{config}")).expect("config");
    env
}

fn create_task(env: &Env, title: &str) {
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", title])
        .assert()
        .success();
}

/// `status --json`'s attention items.
fn attention(env: &Env) -> Vec<Value> {
    env.json(&["status"])["attention"]
        .as_array()
        .expect("attention is an array")
        .clone()
}

/// The item of `kind` is listed with `command` (and the task and job given)
/// in `status --json`, and shown with its command by the human `status`.
fn expect_item(env: &Env, kind: &str, task: Option<i64>, job: Option<i64>, command: &str) {
    let items = attention(env);
    let item = items
        .iter()
        .find(|i| i["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} item in {items:?}"));
    assert_eq!(item["command"], command, "{item}");
    assert_eq!(item["task_id"], serde_json::json!(task), "{item}");
    assert_eq!(item["job_id"], serde_json::json!(job), "{item}");
    assert!(item["since"].as_i64().is_some_and(|s| s > 0), "{item}");
    assert!(
        item["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{item}"
    );
    let out = env.orch().arg("status").output().expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.starts_with("attention "),
        "attention comes first: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(kind) && l.contains(command)),
        "{kind} with {command:?} not shown:\n{text}"
    );
}

/// No item of `kind` is listed any more.
fn expect_gone(env: &Env, kind: &str) {
    let items = attention(env);
    assert!(items.iter().all(|i| i["kind"] != kind), "{items:?}");
}

#[test]
fn nothing_needs_a_human_says_so_in_one_line() {
    let env = Env::new();
    assert_eq!(attention(&env), Vec::<Value>::new());
    for args in [&["status"][..], &["task", "list"]] {
        let out = env.orch().args(args).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().next(),
            Some("attention  nothing needs a human"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn an_escalated_task_is_listed_until_task_resume() {
    let env = Env::bare();
    env.orch()
        .args(["demo", "--script", "review=request_changes"])
        .assert()
        .code(1);
    expect_item(
        &env,
        "escalated",
        Some(1),
        None,
        "orch task resume --task 1",
    );
    // task list carries it on its task, and shows the stage as escalated.
    let list = env.json(&["task", "list"]);
    assert_eq!(list[0]["attention"][0]["kind"], "escalated", "{list}");
    let text = env.orch().args(["task", "list"]).output().expect("list");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("review (escalated)"), "{text}");
    assert!(text.contains("orch task resume --task 1"), "{text}");
    env.orch()
        .args(["task", "resume", "--task", "1"])
        .assert()
        .success();
    expect_gone(&env, "escalated");
}

#[test]
fn a_task_blocked_over_budget_is_listed_until_its_budget_is_raised() {
    let env = demo_env("task_budget_usd = 0.5\nagent_max_budget_usd = \"1\"");
    create_task(&env, "b");
    // 6: refused, over budget (docs/exit-codes.md).
    env.orch().args(["run-agent", "--next"]).assert().code(6);
    expect_item(
        &env,
        "blocked",
        Some(1),
        None,
        "orch task resume --task 1 --budget <usd>",
    );
    env.orch()
        .args(["task", "resume", "--task", "1", "--budget", "10"])
        .assert()
        .success();
    expect_gone(&env, "blocked");
}

#[test]
fn an_analysis_awaiting_approval_is_listed_until_approved() {
    let env = demo_env("");
    create_task(&env, "a");
    expect_gone(&env, "awaiting-approval");
    env.orch().args(["run-agent", "--next"]).assert().success();
    expect_item(
        &env,
        "awaiting-approval",
        Some(1),
        None,
        "orch advance --task 1 --approve",
    );
    env.orch()
        .args(["advance", "--task", "1", "--approve"])
        .assert()
        .success();
    expect_gone(&env, "awaiting-approval");
}

#[test]
fn a_self_hosting_deploy_awaiting_confirm_deploy_is_listed() {
    let env = common::self_hosting();
    common::to_phase_a(&env);
    expect_item(
        &env,
        "awaiting-confirm-deploy",
        Some(1),
        None,
        "orch advance --task 1 --confirm-deploy",
    );
}

/// Issue #17 (4): a job that failed for good leaves `run-agent --next`
/// nothing to run; `status` says which job and that `job retry` revives it.
#[test]
fn a_job_failed_for_good_is_listed_with_job_retry() {
    let env = demo_env("max_attempts = 1");
    create_task(&env, "f");
    // 5: the agent failed.
    env.orch()
        .env("ORCH_AGENT_CMD", "exit 1")
        .args(["run-agent", "--next"])
        .assert()
        .code(5);
    env.orch().args(["run-agent", "--next"]).assert().code(3);
    expect_item(&env, "failed-job", Some(1), Some(1), "orch job retry 1");
    env.orch().args(["job", "retry", "1"]).assert().success();
    expect_gone(&env, "failed-job");
}

#[test]
fn a_running_job_whose_owner_was_killed_is_listed_until_reaped() {
    let env = demo_env("");
    create_task(&env, "k");
    let argv = ["sleep", "300.1717"];
    let mut child = env
        .orch_std()
        .env("ORCH_AGENT_CMD", "sleep 300.1717 & wait")
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn run-agent");
    wait_for("the agent to start", Duration::from_secs(20), || {
        !common::host_pids_of(&argv).is_empty()
    });
    expect_gone(&env, "dead-owner");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    child.wait().expect("wait");
    wait_for(
        "the agent to die with its orch",
        Duration::from_secs(5),
        || common::host_pids_of(&argv).is_empty(),
    );
    expect_item(&env, "dead-owner", Some(1), Some(1), "orch reap");
    env.orch().arg("reap").assert().success();
    expect_gone(&env, "dead-owner");
}

#[test]
fn messages_the_outbox_gave_up_on_are_listed_with_outbox_retry() {
    let env = Env::new();
    // A message nobody can read is dead-lettered by the first delivery pass.
    env.exec(&format!(
        "INSERT INTO outbox (dedup_key, channel, task_id, payload, next_attempt_at, created_at)
         VALUES ('unreadable', 'notify', NULL, 'not json', 0, {})",
        orch::storage::now()
    ));
    env.orch().arg("reconcile").assert().success();
    assert_eq!(env.json(&["status"])["outbox"]["dead"], 1);
    expect_item(
        &env,
        "dead-outbox",
        None,
        None,
        "orch outbox retry --all-dead",
    );
}

/// Per task: stage, tracker state, times, run time and cost; a run of
/// unknown cost leaves the total unknown, never zero.
#[test]
fn task_summaries_show_times_and_cost_with_unknown_costs_apart() {
    let env = demo_env("");
    create_task(&env, "c");
    env.orch().args(["run-agent", "--next"]).assert().success();
    env.exec(
        "UPDATE agent_runs SET started_at = started_at - 90, cost_usd = 0.75;
         INSERT INTO agent_runs (task_id, agent, stage, started_at, finished_at, cost_usd)
           SELECT 1, 'analyst', 'analysis', started_at, started_at + 30, NULL
           FROM agent_runs WHERE id = 1;",
    );
    let status = env.json(&["status"]);
    let task = &status["tasks"][0];
    assert_eq!(task["id"], 1, "{status}");
    assert_eq!(task["stage"], "analysis");
    assert!(task["tracker_state"].is_string(), "{task}");
    assert_eq!(task["runs"], 2);
    assert!(
        task["run_time_s"].as_i64().is_some_and(|s| s >= 120),
        "{task}"
    );
    assert!(
        task["elapsed_s"].as_i64().is_some_and(|s| s >= 90),
        "{task}"
    );
    assert!(task["cost_usd"].is_null(), "unknown is not zero: {task}");
    assert_eq!(task["known_cost_usd"], 0.75);
    assert_eq!(task["unknown_cost_runs"], 1);
    assert_eq!(task["attention"][0]["kind"], "awaiting-approval");
    assert_eq!(status["costs"]["unknown_runs"], 1);
    let list = env.json(&["task", "list"]);
    assert_eq!(list[0]["unknown_cost_runs"], 1, "{list}");
    assert_eq!(list[0]["title"], "c", "still the task object");
    for args in [&["status"][..], &["task", "list"]] {
        let out = env.orch().args(args).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("$0.75 + 1 unknown"), "{args:?}: {text}");
        // Absolute times, RFC 3339 UTC, next to the ages.
        let year = text
            .split_whitespace()
            .any(|w| w.len() == 20 && w.ends_with('Z') && w.as_bytes()[10] == b'T');
        assert!(year, "{args:?}: no RFC 3339 time in {text}");
    }
}

/// `--watch --json` prints one JSON document per line, every tick.
#[test]
fn status_watch_json_prints_a_document_per_tick() {
    let env = Env::new();
    for args in [&["status"][..], &["task", "list"]] {
        let mut child = env
            .orch_std()
            .args(args)
            .args(["--watch", "1", "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut docs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while docs.len() < 2 && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let line = line.expect("line");
                docs.push(serde_json::from_str::<Value>(&line).expect("one document per line"));
            }
        }
        let _ = child.kill();
        child.wait().expect("wait");
        assert!(docs.len() >= 2, "{args:?}: {docs:?}");
        if args == ["status"] {
            assert!(docs[1]["now"].as_i64() >= docs[0]["now"].as_i64());
            assert_eq!(docs[0]["attention"], serde_json::json!([]));
        } else {
            assert!(docs[0].is_array(), "{:?}", docs[0]);
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
