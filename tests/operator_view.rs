//! The operator's view through the real binary: `orch logs` (with rotation
//! and `--follow`), `orch job show` with every attempt, `orch run-agent`'s
//! outcome and exit codes, and `orch gates check`.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Env;
use predicates::prelude::*;

/// An installation made by `orch demo --setup-only` with task 1 on analysis.
fn demo_task() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env
}

/// The numbers of the `line-N` lines of `text`, in order.
fn line_numbers(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("line-"))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[test]
fn logs_of_a_finished_job_print_the_rotated_half_first_and_escape_controls() {
    let env = demo_task();
    // Nothing ran yet: nothing to show; no such job: exit 1.
    env.orch()
        .args(["logs", "--task", "1"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("has no agent run yet"));
    env.orch().args(["logs", "99"]).assert().code(1);
    env.orch().args(["logs", "--run", "99"]).assert().code(1);
    // Six batches of 50 lines, apart, so the runner sees several writes.
    let agent = "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line-$i; \
                 [ $((i % 50)) -eq 0 ] && sleep 0.1; done; \
                 printf 'evil \\033[2J\\tend\\n'";
    env.orch()
        .env("ORCH_AGENT_CMD", agent)
        .env("ORCH_LOG_MAX_BYTES", "1000")
        .args(["run-agent", "--next", "--json"])
        .output()
        .expect("run-agent");
    let dir = env.state().join("runs/job-1-run1");
    assert!(dir.join("agent.log.1").exists(), "the log was rotated");
    let out = env.orch().args(["logs", "1"]).output().expect("logs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let numbers = line_numbers(&text);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert_eq!(numbers.last(), Some(&300));
    let older = std::fs::read_to_string(dir.join("agent.log.1")).expect("older half");
    assert!(text.starts_with(&older), "the rotated half comes first");
    assert!(text.contains("was moved to"), "{text}");
    assert!(text.contains("evil \\x1b[2J\tend\n"), "{text}");
    assert!(!text.contains('\u{1b}'));
    // The same run by task and by run id; a run of another job is refused.
    let by_task = env
        .orch()
        .args(["logs", "--task", "1"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&by_task.stdout), text);
    let by_run = env
        .orch()
        .args(["logs", "--run", "1"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&by_run.stdout), text);
    env.orch()
        .args(["logs", "2", "--run", "1"])
        .assert()
        .failure();
    env.orch()
        .args(["logs", "--task", "1", "--list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("job-1-run1/agent.log (+ "));
}

/// Lines of a child's stdout, as they come.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn logs_follow_shows_new_lines_across_a_rotation_and_ends_with_the_run() {
    let env = demo_task();
    let go = env.shared().join("go");
    let block = "x".repeat(600);
    let agent = format!(
        "echo first; n=0; while [ ! -e '{go}' ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done; \
         for b in 1 2 3 4; do echo block-$b {block}; sleep 0.5; done; echo last",
        go = go.display()
    );
    let mut worker = env
        .orch_std()
        .env("ORCH_AGENT_CMD", &agent)
        .env("ORCH_LOG_MAX_BYTES", "1000")
        .args(["run-agent", "--next"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run-agent");
    let log = env.state().join("runs/job-1-run1/agent.log");
    wait_until("the agent's first line", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("first"))
    });
    let mut follower = env
        .orch_std()
        .args(["logs", "-f", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs -f");
    let lines = lines_of(&mut follower);
    let mut seen = Vec::new();
    let first = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("first line");
    seen.push(first);
    std::fs::write(&go, "").expect("go");
    let deadline = Instant::now() + Duration::from_secs(40);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push(line);
    }
    let status = follower.wait().expect("wait logs -f");
    assert!(status.success(), "logs -f ended by itself: {status:?}");
    assert!(worker.wait().expect("wait run-agent").code().is_some());
    let tags: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| ["first", "block-1", "block-2", "block-3", "block-4", "last"].contains(w))
        .collect();
    assert_eq!(
        tags,
        ["first", "block-1", "block-2", "block-3", "block-4", "last"],
        "{seen:#?}"
    );
    assert!(seen.iter().any(|l| l.contains("was moved to")), "{seen:#?}");
    assert!(
        log.with_extension("log.1").exists(),
        "it was rotated meanwhile"
    );
}

#[test]
fn job_show_lists_every_attempt_with_its_times_outcome_and_log() {
    let env = demo_task();
    for agent in ["echo attempt-one; exit 7", "echo attempt-two"] {
        env.orch()
            .env("ORCH_AGENT_CMD", agent)
            .args(["run-agent", "--next"])
            .output()
            .expect("run-agent");
    }
    let v = env.json(&["job", "show", "1"]);
    assert_eq!(v["attempts"], 2, "the claim count keeps its meaning");
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{v:#}");
    assert_eq!(runs[0]["number"], 1);
    assert_eq!(runs[0]["exit_code"], 7);
    assert!(
        runs[0]["outcome"]
            .as_str()
            .unwrap_or("")
            .contains("exited with code 7")
    );
    assert_eq!(runs[1]["number"], 2);
    assert_eq!(runs[1]["exit_code"], 0);
    assert_eq!(runs[1]["outcome"], "success");
    for (run, word) in runs.iter().zip(["attempt-one", "attempt-two"]) {
        assert!(run["started_at"].is_i64() && run["finished_at"].is_i64());
        assert!(run["duration_s"].is_i64());
        let log = run["log_path"].as_str().expect("log path");
        let text = std::fs::read_to_string(log).expect("log");
        assert!(text.contains(word), "{log}: {text}");
    }
    assert_ne!(runs[0]["log_path"], runs[1]["log_path"]);
    let human = env
        .orch()
        .args(["job", "show", "1"])
        .output()
        .expect("show");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("run 1 (#1)") && text.contains("run 2 (#2)"),
        "{text}"
    );
    assert!(text.contains("exit 7: failure"), "{text}");
    assert!(text.contains("job-1-run1/agent.log") && text.contains("job-1-run2/agent.log"));
    let started = runs[0]["started_at"].as_i64().unwrap_or(0);
    assert!(text.contains(&orch::output::utc(started)), "{text}");
}

/// `run-agent` on task 1's next job with `envs`: exit code, JSON report,
/// and the human output of the same kind of run is checked elsewhere.
fn run_agent(env: &Env, envs: &[(&str, &str)], json: bool) -> (Option<i32>, String) {
    let mut cmd = env.orch();
    cmd.args(["run-agent", "--next"]);
    if json {
        cmd.arg("--json");
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run-agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn run_agent_exit_codes_tell_success_gates_agent_timeout_and_refusal_apart() {
    // Agent failure: 5, and the human output says what happens next.
    let env = demo_task();
    let (code, text) = run_agent(&env, &[("ORCH_AGENT_CMD", "echo oops; exit 7")], false);
    assert_eq!(code, Some(5), "{text}");
    assert!(text.contains("agent exited with code 7"), "{text}");
    assert!(text.contains("outcome: the agent failed"), "{text}");
    assert!(text.contains("`orch run-agent --job 1`"), "{text}");
    assert!(text.contains("job-1-run1/agent.log"), "{text}");
    // Timeout: 5 as well, `agent_killed`.
    let (code, text) = run_agent(
        &env,
        &[
            ("ORCH_AGENT_CMD", "sleep 30"),
            ("ORCH_AGENT_TIMEOUT_S", "1"),
            ("ORCH_AGENT_KILL_GRACE_SECONDS", "1"),
        ],
        true,
    );
    assert_eq!(code, Some(5), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (v["ending"].as_str(), v["timed_out"].as_str()),
        (Some("agent_killed"), Some("wall"))
    );
    // Both attempts spent: nothing left, and run-agent says which job failed for good.
    env.orch()
        .args(["run-agent", "--next"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "job 1 (analyst of task 1) failed for good",
        ))
        .stderr(predicate::str::contains("orch job retry 1"));
    env.orch().args(["job", "retry", "1"]).assert().success();
    // A run without artifacts: the gates fail, 4.
    let (code, text) = run_agent(&env, &[("ORCH_AGENT_CMD", "echo did nothing")], false);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("gate check_analysis_complete fail:"),
        "{text}"
    );
    assert!(text.contains("outcome: gates failed"), "{text}");
    // The demo agent writes the analysis: success, waiting for the human (0).
    let (code, text) = run_agent(&env, &[], false);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("outcome: waiting for a human"), "{text}");
    assert!(text.contains("orch advance --task 1 --approve"), "{text}");
    // Refused: the task cannot afford the next run (6), nothing is started.
    let env = demo_task();
    let (code, text) = run_agent(
        &env,
        &[
            ("ORCH_TASK_BUDGET_USD", "0.5"),
            ("ORCH_AGENT_MAX_BUDGET_USD", "1"),
        ],
        true,
    );
    assert_eq!(code, Some(6), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["ending"], "refused");
    assert!(v["run_id"].is_null());
}

/// Every table's row count, and task 1's row: what a dry run must not change.
fn snapshot(env: &Env) -> Vec<Vec<serde_json::Value>> {
    let tables = env.rows(if common::on_postgres() {
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() ORDER BY 1"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    });
    let mut all: Vec<Vec<serde_json::Value>> = tables
        .iter()
        .filter_map(|t| t[0].as_str())
        .map(|t| {
            let count = env.rows(&format!("SELECT count(*) FROM \"{t}\""));
            vec![serde_json::json!(t), count[0][0].clone()]
        })
        .collect();
    all.extend(env.rows("SELECT * FROM tasks WHERE id = 1"));
    all.extend(env.rows("SELECT * FROM jobs ORDER BY id"));
    all
}

#[test]
fn gates_check_lists_every_problem_at_once_and_changes_nothing() {
    let env = demo_task();
    // An analyst that writes a broken analysis: three files with problems, one missing.
    let agent = "d=$ORCH_ARTIFACT_DIR; mkdir -p $d; printf '# BRD\\n' > $d/01-brd.md; \
                 printf -- '---\\ntype: brd\\n---\\n' > $d/02-trz.md; \
                 printf 'tests:\\n  - TC-1\\n  - type: unit\\n' > $d/04-test-plan.yaml";
    let (code, text) = run_agent(&env, &[("ORCH_AGENT_CMD", agent)], false);
    assert_eq!(code, Some(4), "{text}");
    let before = snapshot(&env);
    let out = env
        .orch()
        .args(["gates", "check", "--task", "1", "--json"])
        .output()
        .expect("gates check");
    assert_eq!(out.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["stage"], "analysis");
    assert_eq!(v["passed"], false);
    let complete = &v["gates"][0];
    assert_eq!(complete["gate"], "check_analysis_complete");
    assert_eq!(complete["status"], "fail");
    let problems: Vec<&str> = complete["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(
        problems,
        [
            "01-brd.md: no frontmatter (the file must start with a '---' line)",
            "02-trz.md: type must be trz, found \"brd\"",
            "02-trz.md: no text after the frontmatter",
            "docs/work-items/DEMO-1/03-acceptance-criteria.md is missing",
            "04-test-plan.yaml: tests[0] is a string, not a mapping with an 'id'",
            "04-test-plan.yaml: tests[1] has no 'id'",
        ]
    );
    assert_eq!(v["gates"][1]["gate"], "check_analysis_approved");
    env.orch()
        .args(["gates", "check", "--task", "1"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains(
            "check_analysis_complete fail: 6 problems",
        ))
        .stdout(predicate::str::contains(
            "    - 02-trz.md: no text after the frontmatter",
        ));
    assert_eq!(snapshot(&env), before, "a dry run changes nothing");
    env.orch()
        .args(["gates", "check", "--task", "9"])
        .assert()
        .code(1);
}
