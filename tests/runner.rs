//! The process-group runner, driven through the real binary
//! (`orch debug run-group`), because what it promises — no orphan, no
//! zombie, no agent outliving its `orch` — is about real processes.
//!
//! Every wait polls against a deadline, so the tests stay fast on an idle
//! machine and correct on a loaded one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn orch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orch"))
}

/// `orch debug run-group <opts> --log <dir>/log -- <cmd>`, run to its end;
/// the printed outcome.
fn run_group(dir: &Path, opts: &[&str], cmd: &[&str]) -> Value {
    let out = orch()
        .current_dir(dir)
        .args(["debug", "run-group", "--log"])
        .arg(log_path(dir))
        .args(opts)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("running orch");
    assert!(
        out.status.success(),
        "orch debug run-group failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("outcome JSON")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("run.log")
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

/// Whether `pid` is a live process. A zombie (state Z or X) is dead: it runs
/// nothing, and one reparented to an init that does not reap stays forever.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("X");
    !matches!(state, "Z" | "X" | "x")
}

fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pid(path: &Path) -> i32 {
    assert!(
        poll(Duration::from_secs(10), || std::fs::read_to_string(path)
            .is_ok_and(|s| s.ends_with('\n'))),
        "{} was never written",
        path.display()
    );
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

fn millis(outcome: &Value) -> u64 {
    outcome["duration_ms"].as_u64().expect("duration_ms")
}

#[test]
fn orch110_tc01_grandchild_orphan_is_tree_killed_on_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_group(
        dir.path(),
        &["--timeout-s", "2", "--grace-s", "1"],
        &sh("sleep 120 & echo $! > pidfile; wait"),
    );
    assert_eq!(outcome["timed_out"], "wall", "{outcome}");
    assert_eq!(outcome["exit_code"], Value::Null);
    assert!(outcome["signal"].is_i64());
    let grandchild = read_pid(&dir.path().join("pidfile"));
    assert!(
        poll(Duration::from_secs(3), || !alive(grandchild)),
        "grandchild {grandchild} survived the tree kill"
    );
    assert!(millis(&outcome) < 10_000, "{outcome}");
}

#[test]
fn orch110_tc01_green_and_red_returncodes_passthrough() {
    let dir = tempfile::tempdir().expect("tempdir");
    for code in [0, 3] {
        let outcome = run_group(
            dir.path(),
            &["--timeout-s", "30"],
            &sh(&format!("exit {code}")),
        );
        assert_eq!(outcome["exit_code"], code, "{outcome}");
        assert_eq!(outcome["signal"], Value::Null);
        assert_eq!(outcome["timed_out"], Value::Null);
    }
}

#[test]
fn orch110_tc01_fallback_when_tree_kill_disabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_group(
        dir.path(),
        &["--no-tree-kill", "--timeout-s", "1", "--grace-s", "1"],
        &["sleep", "30"],
    );
    assert_eq!(outcome["timed_out"], "wall", "{outcome}");
    assert_eq!(outcome["signal"], 15);
    let green = run_group(
        dir.path(),
        &["--no-tree-kill", "--timeout-s", "30"],
        &sh("exit 3"),
    );
    assert_eq!(green["exit_code"], 3, "{green}");
    assert_eq!(green["timed_out"], Value::Null);
}

#[test]
fn term_ignoring_child_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_group(
        dir.path(),
        &["--timeout-s", "1", "--grace-s", "1"],
        &sh("trap '' TERM; sleep 60 & echo $! > pidfile; wait; sleep 60"),
    );
    assert_eq!(outcome["timed_out"], "wall", "{outcome}");
    assert_eq!(outcome["signal"], 9, "SIGKILL ends it: {outcome}");
    assert!(
        millis(&outcome) >= 2_000,
        "the grace was honoured: {outcome}"
    );
    let grandchild = read_pid(&dir.path().join("pidfile"));
    assert!(poll(Duration::from_secs(3), || !alive(grandchild)));
}

#[test]
fn stall_timeout_stops_a_silent_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_group(
        dir.path(),
        &["--timeout-s", "30", "--stall-s", "1", "--grace-s", "1"],
        &sh("echo started; sleep 30"),
    );
    assert_eq!(outcome["timed_out"], "stall", "{outcome}");
    assert!(millis(&outcome) < 10_000, "{outcome}");
    let log = std::fs::read_to_string(log_path(dir.path())).expect("log");
    assert_eq!(log, "started\n");
}

#[test]
fn steady_output_is_not_a_stall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_group(
        dir.path(),
        &["--timeout-s", "30", "--stall-s", "2"],
        &sh("i=0; while [ $i -lt 12 ]; do echo $i; i=$((i+1)); sleep 0.25; done"),
    );
    assert_eq!(outcome["timed_out"], Value::Null, "{outcome}");
    assert_eq!(outcome["exit_code"], 0);
    assert!(
        millis(&outcome) >= 2_500,
        "ran longer than the stall limit: {outcome}"
    );
}

#[test]
fn signal_death_passes_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (signal, number) in [("KILL", 9), ("TERM", 15)] {
        let outcome = run_group(
            dir.path(),
            &["--timeout-s", "30"],
            &sh(&format!("kill -{signal} $$")),
        );
        assert_eq!(outcome["signal"], number, "{outcome}");
        assert_eq!(outcome["exit_code"], Value::Null);
        assert_eq!(outcome["timed_out"], Value::Null);
    }
}

#[test]
fn sigkill_of_the_orch_parent_kills_the_agent_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut parent = orch()
        .current_dir(dir.path())
        .args([
            "debug",
            "run-group",
            "--timeout-s",
            "60",
            "--grace-s",
            "1",
            "--log",
        ])
        .arg(log_path(dir.path()))
        .args(["--", "sh", "-c", "sleep 300 & echo $! > pidfile; wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting orch");
    let sleeper = read_pid(&dir.path().join("pidfile"));
    assert!(alive(sleeper));
    parent.kill().expect("SIGKILL orch");
    parent.wait().expect("reaping orch");
    assert!(
        poll(Duration::from_secs(3), || !alive(sleeper)),
        "agent {sleeper} outlived its orch process"
    );
}

#[test]
fn leftover_background_processes_are_stopped_after_a_normal_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_group(
        dir.path(),
        &["--timeout-s", "30", "--grace-s", "5"],
        &sh("sleep 300 & echo $! > pidfile; exit 0"),
    );
    assert_eq!(outcome["exit_code"], 0, "{outcome}");
    assert_eq!(outcome["timed_out"], Value::Null);
    let leftover = read_pid(&dir.path().join("pidfile"));
    assert!(!alive(leftover), "left behind {leftover}");
    assert!(
        millis(&outcome) < 5_000,
        "SIGTERM sufficed, no grace wait: {outcome}"
    );
}

#[test]
fn stdout_and_stderr_end_up_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(log_path(dir.path()), "earlier\n").expect("seed log");
    let outcome = run_group(
        dir.path(),
        &["--timeout-s", "30"],
        &sh("echo to-stdout; echo to-stderr >&2; read line; echo \"stdin:$line.\""),
    );
    assert_eq!(outcome["exit_code"], 0, "{outcome}");
    let log = std::fs::read_to_string(log_path(dir.path())).expect("log");
    assert!(
        log.starts_with("earlier\n"),
        "appended, not truncated: {log:?}"
    );
    for line in ["to-stdout", "to-stderr", "stdin:."] {
        assert!(
            log.lines().any(|l| l == line),
            "{line} missing from {log:?}"
        );
    }
}

#[test]
fn the_agent_starts_with_an_empty_signal_mask() {
    let dir = tempfile::tempdir().expect("tempdir");
    // grep directly (no shell in between, which may reset the mask itself).
    let outcome = run_group(
        dir.path(),
        &["--timeout-s", "30"],
        &["grep", "SigBlk", "/proc/self/status"],
    );
    assert_eq!(outcome["exit_code"], 0, "{outcome}");
    let log = std::fs::read_to_string(log_path(dir.path())).expect("log");
    assert_eq!(log.trim(), "SigBlk:\t0000000000000000");
}

#[test]
fn a_program_that_cannot_start_exits_127() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_group(dir.path(), &["--timeout-s", "30"], &["/nonexistent/agent"]);
    assert_eq!(outcome["exit_code"], 127, "{outcome}");
}
