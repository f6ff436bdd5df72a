//! The stage pipeline end to end through the real binary: real git (a bare
//! repository as the forge), the real store (SQLite, or PostgreSQL under
//! `ORCH_TEST_BACKEND=postgres`), real agent processes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Env;
use predicates::prelude::*;

/// An installation made by `orch demo --setup-only`: repo `demo` on a local forge.
fn demo_env() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    env
}

fn forge(env: &Env) -> orch::git::Git {
    orch::git::Git::at(env.state().join("forge/demo.git"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn history_kinds(env: &Env, task: i64) -> Vec<(String, String, String)> {
    let v = env.json(&["task", "show", &task.to_string()]);
    v["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["kind"].as_str().unwrap_or("").to_owned(),
                h["from_stage"].as_str().unwrap_or("").to_owned(),
                h["to_stage"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn orch065_tc19_demo_runs_every_stage_to_done_and_leaves_a_working_installation() {
    let env = Env::bare();
    let out = env.orch().arg("demo").output().expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in [
        "analysis",
        "architecture",
        "development",
        "review",
        "testing",
        "deploy-staging",
        "deploy",
    ] {
        assert!(
            stdout.contains(stage),
            "no progress line for {stage}: {stdout}"
        );
    }
    assert!(stdout.contains("reached `done`"), "{stdout}");
    // The look-around commands run as printed (orch is not on this PATH,
    // so they name the binary itself).
    let hints: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Look around:"))
        .skip(1)
        .filter(|l| l.contains("--state-dir"))
        .collect();
    assert_eq!(hints.len(), 3, "no look-around hints: {stdout}");
    // On PostgreSQL the shell they are typed into has ORCH_DB_URL, as the
    // one that ran the demo had (the demo says so).
    if env.db_url().is_some() {
        assert!(stdout.contains("ORCH_DB_URL"), "{stdout}");
    }
    for hint in hints {
        let ran = std::process::Command::new("sh")
            .args(["-c", hint.trim()])
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.db_url().map(|url| ("ORCH_DB_URL", url)))
            .output()
            .expect("sh");
        assert!(ran.status.success(), "`{hint}` failed: {ran:?}");
    }
    let task = env.json(&["task", "show", "1"]);
    assert_eq!(task["task"]["stage"], "done");
    assert_eq!(task["task"]["tracker_state"], "Done");
    // Every job done, exactly one per stage, none left behind.
    let status = env.json(&["status"]);
    assert_eq!(status["counts"]["done"], 7);
    assert_eq!(status["counts"]["queued"], 0);
    assert_eq!(status["counts"]["running"], 0);
    assert_eq!(status["counts"]["failed"], 0);
    // The change is on main of the forge, with its tests.
    let main_files = forge(&env)
        .run(["ls-tree", "-r", "--name-only", "main"])
        .expect("ls-tree");
    assert!(main_files.contains("src/greet.sh"), "{main_files}");
    assert!(main_files.contains("tests/greet_test.sh"), "{main_files}");
    // Every outbox message was delivered once.
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM outbox WHERE status <> 'delivered'"),
        0
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM tracker_comments"),
        env.sql_i64(
            "SELECT count(*) FROM outbox WHERE channel = 'tracker' AND payload LIKE '%comment%'"
        )
    );
    // Each advance happened exactly once.
    let advances = history_kinds(&env, 1)
        .into_iter()
        .filter(|(k, _, _)| k == "advance")
        .count();
    assert_eq!(advances, 7);
    // The installation keeps working.
    env.orch().arg("status").assert().success();
    env.orch().args(["job", "list"]).assert().success();
}

/// `orch demo` with `ORCH_DB_URL` (whichever backend the suite runs on):
/// the config names the forge by a `file://` URL (a host path is refused
/// with a database URL), the task reaches `done`, and every row is in the
/// PostgreSQL database, none in a SQLite file.
#[test]
fn postgres_demo_runs_every_stage_to_done_with_orch_db_url() {
    let Some(db) = common::pg::fresh("postgres_demo_runs_every_stage_to_done_with_orch_db_url")
    else {
        return;
    };
    let env = Env::bare();
    let out = env
        .orch()
        .env("ORCH_DB_URL", &db.url)
        .arg("demo")
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reached `done`"), "{stdout}");
    let config = std::fs::read_to_string(env.state().join("orch.toml")).expect("config");
    let bare = env
        .state()
        .canonicalize()
        .expect("state")
        .join("forge/demo.git");
    assert!(
        config.contains(&format!("remote = \"file://{}\"", bare.display())),
        "{config}"
    );
    assert!(!env.db_path().exists(), "a SQLite file was made");
    assert_eq!(db.i64("SELECT count(*) FROM tasks WHERE stage = 'done'"), 1);
    assert_eq!(db.i64("SELECT count(*) FROM jobs WHERE status = 'done'"), 7);
    assert_eq!(
        db.i64("SELECT count(*) FROM jobs WHERE status <> 'done'"),
        0
    );
    let shown = env
        .orch()
        .env("ORCH_DB_URL", &db.url)
        .args(["task", "show", "1", "--json"])
        .output()
        .expect("task show");
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["task"]["stage"], "done");
    let main_files = forge(&env)
        .run(["ls-tree", "-r", "--name-only", "main"])
        .expect("ls-tree");
    assert!(main_files.contains("src/greet.sh"), "{main_files}");
}

#[test]
fn every_rollback_path_returns_to_development_and_still_finishes() {
    let env = Env::bare();
    env.orch()
        .args([
            "demo",
            "--script",
            "review=request_changes*1,testing=fail*1,deploy=fail*1",
        ])
        .assert()
        .success();
    let rollbacks: Vec<String> = history_kinds(&env, 1)
        .into_iter()
        .filter(|(k, _, to)| k == "rollback" && to == "development")
        .map(|(_, from, _)| from)
        .collect();
    assert_eq!(rollbacks, ["review", "testing", "deploy"]);
    assert_eq!(env.json(&["task", "show", "1"])["task"]["stage"], "done");
}

#[test]
fn a_red_test_suite_retries_the_developer_without_a_rollback() {
    let env = Env::bare();
    env.orch()
        .args(["demo", "--script", "development=break_tests*1"])
        .assert()
        .success();
    let v = env.json(&["task", "show", "1"]);
    let dev_jobs: Vec<&serde_json::Value> = v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["agent"] == "developer")
        .collect();
    assert_eq!(dev_jobs.len(), 1, "a gate retry reuses the job");
    assert_eq!(dev_jobs[0]["attempts"], 2);
    assert!(
        history_kinds(&env, 1)
            .iter()
            .all(|(k, _, _)| k != "rollback"),
        "a red CI is a retry, not a rollback"
    );
}

#[test]
fn escalation_after_three_developer_retries_instead_of_a_loop() {
    let env = Env::bare();
    let out = env
        .orch()
        .args(["demo", "--script", "review=request_changes"])
        .output()
        .expect("demo");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the demo reports the escalation"
    );
    let v = env.json(&["task", "show", "1"]);
    assert_eq!(v["task"]["stage"], "review");
    assert_eq!(v["task"]["tracker_state"], "Needs Input");
    assert!(v["task"]["escalated_at"].is_i64());
    let kinds = history_kinds(&env, 1);
    assert_eq!(kinds.iter().filter(|(k, _, _)| k == "rollback").count(), 3);
    assert_eq!(kinds.iter().filter(|(k, _, _)| k == "escalate").count(), 1);
    // Nothing left to run: no loop.
    env.orch().args(["run-agent", "--next"]).assert().code(3);
    let comments = v["comments"].as_array().expect("comments");
    assert!(comments.iter().any(|c| {
        c["body"]
            .as_str()
            .unwrap_or("")
            .contains("Escalated after 3 developer retries")
    }));
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("log");
    assert!(notes.contains("Escalated"), "{notes}");
}

#[test]
fn a_second_run_agent_on_a_finished_job_does_nothing() {
    let env = Env::bare();
    env.orch().arg("demo").assert().success();
    let before = env.json(&["task", "show", "1"]);
    env.orch()
        .args(["run-agent", "--job", "1"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("job 1 is done; nothing to do"));
    let after = env.json(&["task", "show", "1"]);
    assert_eq!(before, after);
    assert_eq!(env.sql_i64("SELECT count(*) FROM agent_runs"), 7);
}

#[test]
fn advance_waits_for_the_human_approval_then_advances() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env.orch().args(["run-agent", "--next"]).assert().success();
    env.orch()
        .args(["advance", "--task", "1"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("check_analysis_approved fail"))
        .stdout(predicate::str::contains(
            "waiting for the human \"Approved\" status",
        ));
    env.orch()
        .args(["advance", "--task", "1", "--approve"])
        .assert()
        .success()
        .stdout(predicate::str::contains("analysis → architecture"));
    assert_eq!(
        env.json(&["task", "show", "1"])["task"]["stage"],
        "architecture"
    );
    // A job is queued for the architect; advancing now is refused politely.
    env.orch()
        .args(["advance", "--task", "1"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("queued (architect)"));
}

#[test]
fn orch065_worker_concurrency_a_failing_agent_is_retried_then_fails_with_a_notification() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    for attempt in 1..=2 {
        let v: serde_json::Value = serde_json::from_slice(
            &env.orch()
                .env("ORCH_AGENT_CMD", "echo broken; exit 7")
                .args(["run-agent", "--next", "--json"])
                .output()
                .expect("run")
                .stdout,
        )
        .expect("json");
        assert_eq!(v["exit_code"], 7, "attempt {attempt}");
        assert!(
            v["run_verdict"]
                .as_str()
                .unwrap_or("")
                .contains("exited with code 7")
        );
    }
    let job = env.json(&["job", "show", "1"]);
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 2);
    // No slot is left held by the failure (seed ORCH-065 worker concurrency).
    let status = env.json(&["status"]);
    assert_eq!(status["counts"]["running"], 0);
    assert_eq!(status["counts"]["failed"], 1);
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("log");
    assert!(notes.contains("failed for good"), "{notes}");
    let log = std::fs::read_to_string(env.state().join("runs/job-1-run2/agent.log"))
        .expect("per-run log");
    assert!(log.contains("broken"));
}

#[test]
fn claude_is_error_with_exit_zero_is_not_a_success_and_cost_is_recorded() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let event = r#"{"type":"result","subtype":"success","is_error":true,"result":"boom","session_id":"s-1","total_cost_usd":0.42,"num_turns":3,"usage":{"input_tokens":100,"output_tokens":50,"cache_read_input_tokens":7,"cache_creation_input_tokens":9}}"#;
    let out = env
        .orch()
        .env(
            "ORCH_AGENT_CMD",
            format!("echo '{{\"type\":\"system\",\"subtype\":\"init\"}}'; echo '{event}'; exit 0"),
        )
        .env("ORCH_AGENT_PROTOCOL", "claude")
        .args(["run-agent", "--next", "--json"])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["exit_code"], 0);
    // An API error without an HTTP status (the CLI reports a lost connection
    // that way): exit 0 notwithstanding, the run is not a success; the job
    // backs off (docs/claude-code.md).
    assert!(
        v["run_verdict"]
            .as_str()
            .unwrap_or("")
            .starts_with("transient: API unreachable"),
        "{v}"
    );
    assert_eq!(v["cost_usd"], 0.42);
    let run = &env.rows(
        "SELECT is_error, cost_usd, input_tokens, output_tokens, cache_read_tokens,
                cache_creation_tokens, num_turns FROM agent_runs WHERE id = 1",
    )[0];
    let ints: Vec<i64> = [0, 2, 3, 4, 5, 6]
        .iter()
        .map(|&i| run[i].as_i64().expect("an integer"))
        .collect();
    assert_eq!(ints, [1, 100, 50, 7, 9, 3]);
    let cost = run[1].as_f64().expect("a cost");
    assert!((cost - 0.42).abs() < 1e-9);
    let job = env.json(&["job", "show", "1"]);
    assert_eq!(job["status"], "queued", "the run is retried");
    assert_eq!(job["attempts"], 0, "without spending an attempt");
    assert!(job["error"].as_str().unwrap_or("").contains("boom"));
    assert_eq!(
        env.json(&["task", "show", "1"])["task"]["stage"],
        "analysis"
    );
}

#[test]
fn claude_success_without_a_result_event_is_a_failure() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(
        &env.orch()
            .env("ORCH_AGENT_CMD", "echo 'claude said nothing'")
            .env("ORCH_AGENT_PROTOCOL", "claude")
            .args(["run-agent", "--next", "--json"])
            .output()
            .expect("run")
            .stdout,
    )
    .expect("json");
    assert!(
        v["run_verdict"]
            .as_str()
            .unwrap_or("")
            .contains("no result event"),
        "{v}"
    );
}

/// Seed 002 TC-01 at the worker level: a timed-out agent whose grandchild
/// sleeps is killed with its whole process group.
#[test]
fn orch110_tc01_timed_out_agent_and_its_sleeping_grandchild_are_tree_killed() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let started = env.shared().join("grandchild.started");
    let out = env
        .orch()
        .env("ORCH_AGENT_TIMEOUT_S", "2")
        .env("ORCH_AGENT_KILL_GRACE_SECONDS", "1")
        .env(
            "ORCH_AGENT_CMD",
            format!("sh -c 'sleep 120.4101 & touch {}; wait'", started.display()),
        )
        .args(["run-agent", "--next", "--json"])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["timed_out"], "wall");
    assert!(
        v["run_verdict"]
            .as_str()
            .unwrap_or("")
            .contains("wall timeout after 2s")
    );
    assert!(started.exists(), "the grandchild started");
    wait_for("the grandchild to die", Duration::from_secs(8), || {
        common::host_pids_of(&["sleep", "120.4101"]).is_empty()
    });
    assert_eq!(env.json(&["job", "show", "1"])["status"], "queued");
}

#[test]
fn a_silent_agent_is_stopped_by_the_stall_timeout() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(
        &env.orch()
            .env("ORCH_AGENT_STALL_TIMEOUT_S", "1")
            .env("ORCH_AGENT_KILL_GRACE_SECONDS", "1")
            .env("ORCH_AGENT_CMD", "echo starting; sleep 60")
            .args(["run-agent", "--next", "--json"])
            .output()
            .expect("run")
            .stdout,
    )
    .expect("json");
    assert_eq!(v["timed_out"], "stall", "{v}");
}

#[test]
fn sigkill_of_run_agent_kills_its_agent_and_leaves_a_dead_owner() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let argv = ["sleep", "300.4611"];
    let mut child = env
        .orch_std()
        .env("ORCH_AGENT_CMD", "sleep 300.4611 & wait")
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn run-agent");
    wait_for("the agent to start", Duration::from_secs(20), || {
        !common::host_pids_of(&argv).is_empty()
    });
    // While run-agent lives, its job's owner is alive.
    assert_eq!(env.json(&["status"])["running"][0]["owner"], "alive");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    child.wait().expect("wait");
    wait_for(
        "the agent to die with its orch",
        Duration::from_secs(5),
        || common::host_pids_of(&argv).is_empty(),
    );
    assert_eq!(env.json(&["status"])["running"][0]["owner"], "dead");
}

#[test]
fn malformed_frontmatter_fails_the_gate_with_a_clear_reason() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    // An analyst that writes a BRD without frontmatter.
    let agent = "mkdir -p \"$ORCH_ARTIFACT_DIR\" && echo '# BRD without frontmatter' > \"$ORCH_ARTIFACT_DIR/01-brd.md\"";
    let v: serde_json::Value = serde_json::from_slice(
        &env.orch()
            .env("ORCH_AGENT_CMD", agent)
            .args(["run-agent", "--next", "--json"])
            .output()
            .expect("run")
            .stdout,
    )
    .expect("json");
    let gate = &v["evaluation"]["gates"][0];
    assert_eq!(gate["gate"], "check_analysis_complete");
    assert_eq!(gate["verdict"], "fail");
    assert!(
        gate["reason"].as_str().unwrap_or("").contains("01-brd.md"),
        "{gate}"
    );
    assert_eq!(v["evaluation"]["decision"]["decision"], "retry");
    let job = env.json(&["job", "show", "1"]);
    assert_eq!(job["status"], "queued");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("check_analysis_complete")
    );
}

#[test]
fn the_agent_gets_its_task_through_files_and_environment_only() {
    let env = demo_env();
    let hostile = "$(touch /tmp/orch-pwned) `id` ; rm -rf / #";
    env.orch()
        .args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            "x",
            "--description",
            hostile,
        ])
        .assert()
        .success();
    let seen = env.shared().join("seen-env");
    let agent = format!(
        "env | grep '^ORCH_' | sort > {s}; cat \"$ORCH_TASK_FILE\" >> {s}",
        s = seen.display()
    );
    env.orch()
        .env("ORCH_AGENT_CMD", agent)
        .args(["run-agent", "--next"])
        .assert()
        .code(4); // the agent ran; it wrote no artifacts, so the gates fail
    let text = std::fs::read_to_string(&seen).expect("agent ran");
    for var in [
        "ORCH_TASK_ID=1",
        "ORCH_STAGE=analysis",
        "ORCH_AGENT=analyst",
        "ORCH_WORK_ITEM=DEMO-1",
        "ORCH_WORKTREE=",
        "ORCH_ARTIFACT_DIR=",
        "ORCH_TASK_FILE=",
        "ORCH_SESSION_ID=",
    ] {
        assert!(text.contains(var), "{var} missing: {text}");
    }
    assert!(
        text.contains(hostile),
        "the task file carries the text verbatim"
    );
    assert!(
        !Path::new("/tmp/orch-pwned").exists(),
        "task text reached a shell"
    );
}

#[test]
fn agents_never_see_orchs_secrets() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let seen = env.shared().join("agent-env");
    env.orch()
        .env("ORCH_PLANE_API_TOKEN", "plane-secret-value")
        .env("ORCH_GITEA_TOKEN", "gitea-secret-value")
        .env("CREDENTIALS_DIRECTORY", "/run/credentials/orch")
        .env("ORCH_AGENT_CMD", format!("env > {}", seen.display()))
        .args(["run-agent", "--next"])
        .assert()
        .code(4); // the agent ran; it wrote no artifacts, so the gates fail
    let text = std::fs::read_to_string(&seen).expect("agent env");
    assert!(
        text.contains("ORCH_TASK_ID=1"),
        "the agent's own variables are there"
    );
    // On PostgreSQL the database URL is one of them (it may hold a password).
    for secret in [
        "plane-secret-value",
        "gitea-secret-value",
        "CREDENTIALS_DIRECTORY",
        env.db_url().unwrap_or("CREDENTIALS_DIRECTORY"),
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the agent's environment"
        );
    }
}

#[test]
fn an_escalated_task_resumes_with_a_fresh_retry_count() {
    let env = Env::bare();
    env.orch()
        .args(["demo", "--script", "review=request_changes*4"])
        .assert()
        .code(1);
    assert!(env.json(&["task", "show", "1"])["task"]["escalated_at"].is_i64());
    env.orch()
        .args(["task", "resume", "--task", "1"])
        .assert()
        .success();
    let shown = env.json(&["task", "show", "1"]);
    assert!(shown["task"]["escalated_at"].is_null());
    assert_eq!(shown["task"]["stage"], "review");
    // The reviewer runs again (its 5th pass approves) and the task finishes.
    for _ in 0..12 {
        if env
            .orch()
            .args(["run-agent", "--next"])
            .output()
            .expect("run")
            .status
            .code()
            == Some(3)
        {
            break;
        }
    }
    assert_eq!(env.json(&["task", "show", "1"])["task"]["stage"], "done");
}

/// Reconciler F-1: a task idle on a stage whose gate is already green (its
/// advance was lost) is advanced by `orch reconcile` exactly once; an
/// escalated or busy task is left alone.
#[test]
fn reconcile_advances_a_stuck_stage_once() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env.orch().args(["run-agent", "--next"]).assert().success();
    env.orch()
        .args(["advance", "--task", "1", "--approve"])
        .assert()
        .success();
    env.orch().args(["run-agent", "--next"]).assert().success();
    // Lose the architecture → development advance: back on architecture, idle, long ago.
    env.exec(
        "DELETE FROM jobs WHERE agent = 'developer';
         UPDATE tasks SET stage = 'architecture', updated_at = 0 WHERE id = 1;",
    );
    let r = env.json(&["reconcile"]);
    assert_eq!(r["advanced"].as_array().map_or(0, Vec::len), 1, "{r}");
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "development");
    let developers = shown["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["agent"] == "developer")
        .count();
    assert_eq!(developers, 1);
    // Again: nothing more happens (and the test suite is never run by a timer).
    let r = env.json(&["reconcile"]);
    assert!(r["advanced"].as_array().is_none_or(Vec::is_empty), "{r}");
    assert_eq!(r["skipped"]["gate runs commands"], 1, "{r}");
    let jobs = env.json(&["job", "list"]);
    assert_eq!(
        jobs.as_array().map_or(0, Vec::len),
        3,
        "no job was enqueued twice"
    );
}

/// Whatever an agent prints, orch's memory stays bounded: the log goes to a
/// file and is read back once in fixed-size chunks, a line over 8 MiB is
/// skipped unread. Here the agent prints one 160 MB line; orch's peak RSS
/// (measured by a python3 parent with `getrusage(RUSAGE_CHILDREN)`, so only
/// orch and its agent count) stays far below it.
#[test]
fn an_agent_printing_a_huge_line_does_not_grow_orchs_memory() {
    let env = demo_env();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let agent = "head -c 160000000 /dev/zero | tr '\\0' x; echo; echo '{\"type\":\"system\",\"subtype\":\"init\"}'; exit 0";
    // 5: a Claude stream without a result event is an agent failure.
    let Some(peak_kib) = common::run_agent_peak_rss_kib(&env, agent, 5) else {
        eprintln!("\n*** SKIPPED: python3 measures the peak RSS here and is not installed ***\n");
        return;
    };
    assert!(
        peak_kib < 32 * 1024,
        "peak RSS {peak_kib} KiB for a 160 MB line"
    );
    // The run was judged (the init event after the huge line was seen: a
    // Claude stream without a result event is a failure, not a success).
    let job = env.json(&["job", "show", "1"]);
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("no result event"),
        "{job}"
    );
}

/// An agent knows where its cost report and its log live and can replace
/// them: with a FIFO nobody writes (a naive read hangs the worker), with a
/// symlink to /dev/zero (a naive read never ends). orch reads only regular
/// files there, so each run is judged and the worker ends at once. Tried
/// unsandboxed, where the log is in the agent's reach (in the sandbox it is
/// not, and the cost file is still the agent's), and sandboxed.
#[test]
fn an_agent_that_plants_a_fifo_or_dev_zero_for_its_files_cannot_hang_or_grow_orch() {
    for sandbox in ["off", "auto"] {
        plant_fifo_or_dev_zero(sandbox);
    }
}

fn plant_fifo_or_dev_zero(sandbox: &str) {
    // The run's directory: the cost file is in its `agent/` subdirectory.
    let dir = "$(dirname \"$(dirname \"$ORCH_COST_FILE\")\")";
    for (what, agent) in [
        ("fifo cost file", "mkfifo \"$ORCH_COST_FILE\"".to_owned()),
        (
            "dev/zero cost file",
            "ln -s /dev/zero \"$ORCH_COST_FILE\"".to_owned(),
        ),
        (
            "fifo log",
            format!("rm -f {dir}/agent.log; mkfifo {dir}/agent.log"),
        ),
        (
            "dev/zero log",
            format!("rm -f {dir}/agent.log; ln -s /dev/zero {dir}/agent.log"),
        ),
    ] {
        let env = demo_env();
        env.orch()
            .args(["task", "create", "--repo", "demo", "--title", "x"])
            .assert()
            .success();
        let mut worker = env
            .orch_std()
            .env("ORCH_SANDBOX", sandbox)
            .env("ORCH_AGENT_CMD", format!("{agent}; exit 0"))
            .args(["run-agent", "--next", "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        wait_for(what, Duration::from_secs(20), || {
            matches!(worker.try_wait(), Ok(Some(_)))
        });
        let out = worker.wait_with_output().expect("output");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            report["run_verdict"], "success",
            "{sandbox} {what}: {report}"
        );
        assert_eq!(
            report["cost_usd"], 0.0,
            "{sandbox} {what}: no report is a plain command's zero"
        );
    }
}

/// The disk an agent can fill with output is bounded too: past
/// `log_max_bytes` the log moves to `agent.log.1` and starts again, and the
/// end of the output — where the verdict is read — stays in `agent.log`.
#[test]
fn an_agent_log_is_rotated_at_its_cap_and_the_verdict_still_read() {
    let env = demo_env();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("log_max_bytes = 1048576\n{config}")).expect("config");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    // 20 MB of lines, then a Claude stream that ends in a success result.
    let event = r#"{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.25,"result":"ok"}"#;
    let agent = format!(
        "echo '{{\"type\":\"system\",\"subtype\":\"init\"}}'; yes 'a line of agent chatter' | head -c 20000000; echo; echo '{event}'; exit 0"
    );
    let out = env
        .orch()
        .env("ORCH_AGENT_CMD", agent)
        .args(["run-agent", "--next", "--json"])
        .output()
        .expect("run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["run_verdict"], "success", "{report}");
    assert_eq!(report["cost_usd"], 0.25, "{report}");
    let log = std::path::PathBuf::from(report["log_path"].as_str().expect("log path"));
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let rotated = log.with_file_name("agent.log.1");
    assert!(size(&rotated) > 0, "the full log was moved aside");
    assert!(
        size(&log) + size(&rotated) <= 3 * 1024 * 1024,
        "kept {} + {} bytes of 20 MB",
        size(&log),
        size(&rotated)
    );
    let head = std::fs::read_to_string(&log).expect("log");
    assert!(
        head.starts_with("orch: the output before this line"),
        "{}",
        &head[..80.min(head.len())]
    );
}

/// An agent runs as orch's user, so it could read orch's own environment —
/// where the tokens are — through `/proc/<orch pid>/environ`. Two walls, each
/// tried alone: unsandboxed, orch makes itself non-dumpable, which closes its
/// /proc to same-user processes; in the sandbox the agent has a PID
/// namespace and a /proc of its own. Run as an unprivileged user (root reads
/// any /proc whatever the flag), like the shipped units' `orch` user.
#[test]
fn an_agent_cannot_read_orchs_tokens_through_proc() {
    let uid = 65534;
    let env = demo_env();
    let orch = env!("CARGO_BIN_EXE_orch");
    let as_user = |cmd: &mut std::process::Command| {
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
        ]);
    };
    let mut probe = std::process::Command::new("setpriv");
    as_user(&mut probe);
    let reachable = probe
        .args([orch, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nix::unistd::geteuid().is_root() || !reachable {
        eprintln!("\n*** SKIPPED: cannot run orch as uid {uid} here ***\n");
        return;
    }
    for title in ["unsandboxed", "sandboxed"] {
        env.orch()
            .args(["task", "create", "--repo", "demo", "--title", title])
            .assert()
            .success();
    }
    assert!(
        std::process::Command::new("chown")
            .args(["-R", &format!("{uid}:{uid}")])
            .arg(env.state())
            .status()
            .expect("chown")
            .success()
    );
    for (n, sandbox) in ["off", "auto"].into_iter().enumerate() {
        let found = env.shared().join(format!("found-{n}.txt"));
        let agent = format!(
            "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\" 2>/dev/null; done > {}; exit 0",
            found.display()
        );
        let mut worker = std::process::Command::new("setpriv");
        as_user(&mut worker);
        let out = worker
            .arg(orch)
            .args(["run-agent", "--next"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", env.state())
            .env("ORCH_STATE_DIR", env.state())
            .env("ORCH_SANDBOX", sandbox)
            .env("ORCH_SANDBOX_WRITABLE", env.shared())
            .env("ORCH_PLANE_API_TOKEN", "plane-secret-value")
            .env("ORCH_AGENT_CMD", agent)
            .envs(env.db_url().map(|url| ("ORCH_DB_URL", url)))
            .output()
            .expect("run");
        // The agent ran; it wrote no artifacts, so the gates fail (4).
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = std::fs::read_to_string(&found).expect("the agent scanned /proc");
        assert!(
            seen.contains("ORCH_TASK_ID="),
            "sandbox {sandbox}: the scan read its own environment"
        );
        assert!(
            !seen.contains("plane-secret-value"),
            "sandbox {sandbox}: an agent read orch's token through /proc"
        );
    }
}
