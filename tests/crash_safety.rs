//! Crash safety through the real binary: SIGKILL at every named crash point,
//! then `orch reap`, must leave a state that reaches a correct end — no job
//! left running with a dead owner, no task advanced twice, no next-stage job
//! enqueued twice, no job lost, no merge lease stuck. Plus racing reapers,
//! live work under repeated reaps, the backstop, and the seeds' reaper, lease
//! and merge-gate scenarios (ORCH-065/113) as properties of this design.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use common::Env;

/// A demo installation with `extra` settings (the merge gate covers `demo`).
fn install(extra: &str) -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    // Settings in `extra` replace the demo's own.
    let keys: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let config: Vec<&str> = config
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k} ="))))
        .collect();
    let config = config.join("\n");
    std::fs::write(
        &path,
        format!("merge_gate_repos = \"demo\"\n{extra}\n{config}"),
    )
    .expect("write config");
    env
}

fn orch_out(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = env.orch_std();
    for (k, v) in vars {
        c.env(k, v);
    }
    c.args(args).output().expect("run orch")
}

/// `orch reap --json` after a crash (on PostgreSQL past the start grace:
/// see [`common::start_grace_over`]).
fn reap_after_crash(env: &Env) -> Output {
    orch_out(env, common::start_grace_over(), &["reap", "--json"])
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn signal_of(out: &Output) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&out.status)
}

fn create_task(env: &Env, title: &str) -> i64 {
    env.json(&["task", "create", "--repo", "demo", "--title", title])["id"]
        .as_i64()
        .expect("task id")
}

fn stage_of(env: &Env, task: i64) -> String {
    env.json(&["task", "show", &task.to_string()])["task"]["stage"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Run jobs (approving analyses as a person would) until `task` is on `stage`.
fn drive_to(env: &Env, task: i64, stage: &str) {
    for _ in 0..40 {
        if stage_of(env, task) == stage {
            return;
        }
        let out = orch_out(env, &[], &["run-agent", "--next", "--json"]);
        if out.status.code() == Some(3) {
            let moved = orch_out(
                env,
                &[],
                &["advance", "--task", &task.to_string(), "--approve"],
            );
            assert!(
                moved.status.code() == Some(0),
                "stuck before {stage} on {}: {}",
                stage_of(env, task),
                String::from_utf8_lossy(&moved.stdout)
            );
        } else {
            assert!(
                out.status.success(),
                "run-agent failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    panic!(
        "task {task} never reached {stage} (on {})",
        stage_of(env, task)
    );
}

/// Put an unrelated commit on main of the forge, so feature branches fall behind.
fn move_main(env: &Env, name: &str) {
    common::push_to_main(env, name, &format!("{name}.md"), "another change on main\n");
}

/// The invariants that must hold after any crash followed by `orch reap`.
fn assert_recovered(env: &Env, context: &str) {
    let status = env.json(&["status"]);
    for r in status["running"].as_array().expect("running") {
        assert_eq!(
            r["owner"], "alive",
            "{context}: job left running with a dead owner: {r}"
        );
    }
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status = 'queued' AND (run_id IS NOT NULL OR pid IS NOT NULL OR started_at IS NOT NULL OR claim_token IS NOT NULL)"
        ),
        0,
        "{context}: run-ownership invariant"
    );
    let reclaim = env.json(&["reclaim-leases"]);
    assert_eq!(
        reclaim["reclaimed"].as_array().map_or(0, Vec::len),
        0,
        "{context}: a lease was stuck after reap: {reclaim}"
    );
}

/// Finish the task and check that every stage advanced exactly once and every
/// stage got exactly one job, all done.
fn assert_correct_end(env: &Env, task: i64, context: &str) {
    drive_to(env, task, "done");
    let shown = env.json(&["task", "show", &task.to_string()]);
    let mut advances: BTreeMap<String, usize> = BTreeMap::new();
    for h in shown["history"].as_array().expect("history") {
        if h["kind"] == "advance" {
            *advances
                .entry(h["from_stage"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(advances.len(), 7, "{context}: advances {advances:?}");
    assert!(
        advances.values().all(|n| *n == 1),
        "{context}: a stage advanced twice: {advances:?}"
    );
    let mut jobs: BTreeMap<String, usize> = BTreeMap::new();
    for j in shown["jobs"].as_array().expect("jobs") {
        assert_eq!(j["status"], "done", "{context}: job not done: {j}");
        *jobs
            .entry(j["stage"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    assert!(
        jobs.values().all(|n| *n == 1),
        "{context}: a stage's job was enqueued twice: {jobs:?}"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "{context}: lease left held"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status <> 'done'"),
        0,
        "{context}: job lost"
    );
    let main = orch::git::Git::at(env.state().join("forge/demo.git"))
        .run(["ls-tree", "-r", "--name-only", "main"])
        .expect("ls-tree");
    assert!(
        main.contains("src/greet.sh"),
        "{context}: change not merged: {main}"
    );
}

/// The crash points, enumerated from the binary so a new one cannot be forgotten.
fn crash_points() -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["debug", "crash-points", "--json"])
        .output()
        .expect("crash-points");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect()
}

/// What a crash point kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// The orch process alone (its agent's guardian then kills the agent).
    Orch,
    /// orch's whole process group, as `kill -9 -PGID` or systemd would: orch
    /// is started as a group leader and its git children die with it. A git
    /// killed mid-command leaves its lock files behind; those are planted
    /// after the kill, so the recovery must clear them.
    Group,
}

fn crash_and_recover(point: &str, kill: Kill) {
    let context = format!("{point} ({kill:?})");
    let point_env = [("ORCH_CRASH_AT", point)];
    let env = install("");
    let task = create_task(&env, "greet");
    drive_to(&env, task, "deploy-staging");
    // main moves on, so the merge gate must rebase, push and re-test.
    move_main(&env, "other");
    let out = match kill {
        Kill::Orch => orch_out(&env, &point_env, &["run-agent", "--next", "--json"]),
        Kill::Group => {
            let mut c = env.orch_std();
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
            c.env("ORCH_CRASH_AT", point)
                .env("ORCH_CRASH_KILL", "group")
                .args(["run-agent", "--next", "--json"])
                .output()
                .expect("run orch")
        }
    };
    assert_eq!(
        signal_of(&out),
        Some(9),
        "{context}: the crash point was never reached: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if kill == Kill::Group {
        plant_stale_git_locks(&env);
    }
    let point = context.as_str();
    let reap = reap_after_crash(&env);
    assert!(
        reap.status.success(),
        "{point}: reap failed: {}",
        String::from_utf8_lossy(&reap.stdout)
    );
    assert_recovered(&env, point);
    // A second pass changes nothing.
    let again = json_of(&reap_after_crash(&env));
    assert!(
        again["reaped"].as_array().is_none_or(Vec::is_empty),
        "{point}: a second reap found more: {again}"
    );
    assert_correct_end(&env, task, point);
    let main_log = orch::git::Git::at(env.state().join("forge/demo.git"))
        .run(["log", "--oneline", "main"])
        .expect("log");
    assert!(
        main_log.contains("other on main"),
        "{point}: main lost a commit: {main_log}"
    );
}

/// SIGKILL during a cancel (STOP), then one `orch reap` completes the reset.
fn cancel_crash_and_recover(point: &str) {
    let env = install("");
    let task = create_task(&env, "stop me");
    orch_out(&env, &[], &["run-agent", "--next"]);
    let out = orch_out(
        &env,
        &[("ORCH_CRASH_AT", point)],
        &["cancel", "--task", &task.to_string()],
    );
    assert_eq!(signal_of(&out), Some(9), "{point}: never reached");
    assert_ne!(stage_of(&env, task), "cancelled", "{point}");
    let pass = json_of(&reap_after_crash(&env));
    assert_eq!(pass["cancels_applied"][0], task, "{point}: {pass}");
    assert_recovered(&env, point);
    assert_eq!(stage_of(&env, task), "cancelled", "{point}");
    assert!(
        !env.state().join("repos/demo/worktrees/DEMO-1").exists(),
        "{point}: worktree left"
    );
    let branches = orch::git::Git::at(env.state().join("forge/demo.git"))
        .run(["branch", "--list"])
        .expect("branches");
    assert!(!branches.contains("feature/DEMO-1"), "{point}: branch left");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"),
        0
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM outbox WHERE dedup_key LIKE 'cancel-1:%'"),
        2,
        "{point}: the cancel must be reported exactly once"
    );
}

/// SIGKILL during Confirm Deploy or the deploy finalizer, then `orch reap`
/// and the normal workers: the deploy completes, the hook ran exactly once.
fn deploy_crash_and_recover(point: &str) {
    let env = common::self_hosting();
    common::to_phase_a(&env);
    let staging = env
        .sql_text("SELECT staging_sha FROM deploys WHERE task_id = 1")
        .expect("sha");
    let crashing = [("ORCH_CRASH_AT", point)];
    let confirm_vars: &[(&str, &str)] = if point == "deploy.finalized" {
        &[]
    } else {
        &crashing
    };
    let out = orch_out(
        &env,
        confirm_vars,
        &["advance", "--task", "1", "--confirm-deploy"],
    );
    if point == "deploy.finalized" {
        assert!(out.status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !env.state().join("hook.count").exists() {
            assert!(Instant::now() < deadline, "the hook never ran");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = orch_out(&env, &crashing, &["run-agent", "--next"]);
        assert_eq!(signal_of(&out), Some(9), "{point}: never reached");
    } else {
        assert_eq!(signal_of(&out), Some(9), "{point}: never reached");
    }
    let reap = reap_after_crash(&env);
    assert!(reap.status.success(), "{point}");
    assert_recovered(&env, point);
    // Carry on as the installation would: a person confirms again if nothing
    // was initiated, the finalizer job finishes the deploy.
    for _ in 0..5 {
        if stage_of(&env, 1) == "done" {
            break;
        }
        let run = orch_out(&env, &[], &["run-agent", "--next"]);
        if run.status.code() == Some(3) {
            orch_out(&env, &[], &["advance", "--task", "1", "--confirm-deploy"]);
            orch_out(
                &env,
                &[],
                &["finalize-deploy", "--task", "1", "--wait", "20"],
            );
        }
    }
    assert_eq!(stage_of(&env, 1), "done", "{point}");
    let runs =
        std::fs::read_to_string(env.state().join("hook.count")).map_or(0, |s| s.lines().count());
    assert_eq!(runs, 1, "{point}: the production deploy ran {runs} times");
    let main = orch::git::Git::at(env.state().join("forge/demo.git"))
        .rev("main")
        .expect("rev");
    assert_eq!(
        main.as_deref(),
        Some(staging.as_str()),
        "{point}: main is not the verified commit"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "{point}: lease left"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"),
        0,
        "{point}"
    );
}

/// SIGKILL in the post-deploy monitor of a task that reached `done`, then
/// `orch reap` and the normal workers: the monitor resumes from its recorded
/// counters, every check is counted exactly once, and it ends once.
fn monitor_crash_and_recover(point: &str) {
    let env = install("post_deploy_window_s = 2\npost_deploy_checks = 3");
    // A probe on the demo repo (the last table of the config) arms the monitor.
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        format!(
            "{config}\nhealth_check_cmd = \"echo probe >> {}/probe.count\"\n",
            env.state().display()
        ),
    )
    .expect("config");
    let task = create_task(&env, "watch");
    drive_to(&env, task, "done");
    // Workers run as the timer would until one dies at the point.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{point}: never reached");
        let out = orch_out(&env, &[("ORCH_CRASH_AT", point)], &["run-agent", "--next"]);
        if signal_of(&out) == Some(9) {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let reap = json_of(&reap_after_crash(&env));
    assert_eq!(reap["reaped"][0]["outcome"], "queued", "{point}: {reap}");
    assert_recovered(&env, point);
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.sql_i64("SELECT count(*) FROM post_deploys WHERE finished_at IS NOT NULL") == 0 {
        assert!(
            Instant::now() < deadline,
            "{point}: the monitor never finished"
        );
        if orch_out(&env, &[], &["run-agent", "--next"]).status.code() == Some(3) {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM post_deploys WHERE status = 'healthy' AND checks_done = 3 AND checks_failed = 0"
        ),
        1,
        "{point}: counters"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM post_deploy_checks"),
        3,
        "{point}: a check was counted twice or lost"
    );
    let probes =
        std::fs::read_to_string(env.state().join("probe.count")).map_or(0, |s| s.lines().count());
    assert_eq!(probes, 3, "{point}: a probe ran twice");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE agent = 'post-deploy-monitor'"),
        1,
        "{point}: one monitor per task"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status <> 'done'"),
        0,
        "{point}: job left"
    );
    let log = std::fs::read_to_string(
        env.state()
            .join("repos/demo/worktrees/DEMO-1/docs/work-items/DEMO-1/16-post-deploy-log.md"),
    )
    .expect("post-deploy log");
    assert!(
        log.contains("post_deploy_status: HEALTHY"),
        "{point}: {log}"
    );
}

/// The scenario that reaches a crash point, by the point's family. The
/// points inside git work (`push.*`, `merge.*`) are also reached with the
/// whole process group killed.
fn recover_from(point: &str) {
    match point.split('.').next() {
        Some("claim" | "run" | "finalize") => crash_and_recover(point, Kill::Orch),
        Some("push" | "merge") => {
            crash_and_recover(point, Kill::Orch);
            crash_and_recover(point, Kill::Group);
        }
        Some("cancel") => cancel_crash_and_recover(point),
        Some("deploy") => deploy_crash_and_recover(point),
        Some("monitor") => monitor_crash_and_recover(point),
        _ => panic!("no crash scenario reaches {point}: add one to tests/crash_safety.rs"),
    }
}

#[test]
fn orch065_tc05_every_crash_point_is_brought_to_a_correct_end_by_reap() {
    let points = crash_points();
    assert!(points.len() >= 12, "crash points: {points:?}");
    // Three at a time: each scenario has its own state directory.
    for chunk in points.chunks(3) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|p| std::thread::spawn(move || recover_from(&p)))
            .collect();
        for h in handles {
            h.join().expect("scenario panicked");
        }
    }
}

#[test]
fn orch065_tc01_a_killed_claim_is_requeued_by_one_reap_at_once() {
    let env = install("");
    create_task(&env, "t");
    let out = orch_out(&env, &[("ORCH_CRASH_AT", "claim.committed")], &["claim"]);
    assert_eq!(signal_of(&out), Some(9));
    if common::on_postgres() {
        // An advisory lock leaves no trace, so the killed claimer looks like
        // a clean hand-over: its job waits out the start grace first
        // (docs/scaling.md); the reap past it is the "one reap" below.
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        assert_eq!(pass["start_grace_defers"], 1, "{pass}");
        assert_eq!(env.json(&["job", "show", "1"])["status"], "running");
    }
    let started = Instant::now();
    let pass = json_of(&reap_after_crash(&env));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(pass["reaped"][0]["outcome"], "queued", "{pass}");
    let job = env.json(&["job", "show", "1"]);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["claim_token"], serde_json::Value::Null);
}

#[test]
fn a_clean_hand_over_from_orch_claim_gets_the_start_grace() {
    let env = install("reaper_start_grace_s = 3600");
    create_task(&env, "t");
    env.orch().arg("claim").assert().success();
    let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
    assert_eq!(pass["start_grace_defers"], 1, "{pass}");
    assert_eq!(env.json(&["job", "show", "1"])["status"], "running");
    // A worker takes it over and runs it.
    env.orch()
        .args(["run-agent", "--job", "1"])
        .assert()
        .success();
    assert_eq!(env.json(&["job", "show", "1"])["status"], "done");
    // Without the grace it is requeued.
    let env = install("reaper_start_grace_s = 0");
    create_task(&env, "t");
    env.orch().arg("claim").assert().success();
    let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
    assert_eq!(pass["reaped"][0]["outcome"], "queued", "{pass}");
}

/// Seed 001 TC-05/TC-06 and ORCH-113 TC-04: several reapers race over many
/// dead owners whose agents exited 0; each job is handed to a worker for
/// finalization exactly once, the agents are not run again, and each advance
/// happens exactly once.
#[test]
fn orch065_tc06_orch113_tc04_racing_reapers_advance_each_task_exactly_once() {
    const TASKS: i64 = 6;
    let env = install("max_concurrency = 50\nserial_gate_enabled = false");
    for i in 0..TASKS {
        let task = create_task(&env, &format!("task {i}"));
        // The human approves early; the analyst's finalizer then advances.
        env.orch()
            .args(["advance", "--task", &task.to_string(), "--approve"])
            .assert()
            .code(3);
    }
    for _ in 0..TASKS {
        let out = orch_out(
            &env,
            &[("ORCH_CRASH_AT", "run.exited")],
            &["run-agent", "--next"],
        );
        assert_eq!(signal_of(&out), Some(9));
    }
    assert_eq!(env.json(&["status"])["counts"]["running"], TASKS);
    let reapers: Vec<_> = (0..4)
        .map(|_| {
            env.orch_std()
                .args(["reap", "--json"])
                .spawn()
                .expect("spawn reap")
        })
        .collect();
    for mut r in reapers {
        assert!(r.wait().expect("wait").success());
    }
    // The reapers finalized nothing themselves: every job waits for a worker.
    assert_eq!(
        env.sql_i64(
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND finalize_run_id IS NOT NULL"
        ),
        TASKS
    );
    for _ in 0..TASKS {
        env.orch().args(["run-agent", "--next"]).assert().success();
    }
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM agent_runs WHERE agent = 'analyst'"),
        TASKS,
        "an analyst ran again"
    );
    for task in 1..=TASKS {
        let shown = env.json(&["task", "show", &task.to_string()]);
        assert_eq!(shown["task"]["stage"], "architecture", "task {task}");
        let advances = shown["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter(|h| h["kind"] == "advance")
            .count();
        assert_eq!(advances, 1, "task {task} advanced {advances} times");
        let architects = shown["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .filter(|j| j["agent"] == "architect")
            .count();
        assert_eq!(architects, 1, "task {task}: architect jobs {architects}");
    }
    let status = env.json(&["status"]);
    assert_eq!(status["counts"]["running"], 0);
    assert_eq!(status["counters"]["reaped_total"]["value"], TASKS);
}

/// Seed 001 TC-02, ORCH-113 TC-01/TC-02: live work is never reaped, however
/// often the reaper runs and however long the agent takes.
#[test]
fn orch065_tc02_a_long_running_agent_is_never_reaped() {
    let env = install("reaper_finalize_grace_s = 0");
    create_task(&env, "t");
    let exe = env!("CARGO_BIN_EXE_orch");
    let mut worker = env
        .orch_std()
        .env("ORCH_AGENT_CMD", format!("sleep 2; '{exe}' demo-agent"))
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut passes = 0;
    while worker.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "worker never finished");
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        assert!(
            pass["reaped"].as_array().is_none_or(Vec::is_empty),
            "live work reaped: {pass}"
        );
        passes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(worker.wait().expect("wait").success());
    assert!(passes >= 5, "only {passes} reaper passes ran");
    let job = env.json(&["job", "show", "1"]);
    assert_eq!(job["status"], "done");
    assert_eq!(job["attempts"], 1);
}

fn slow_finalizer_env(extra: &str) -> Env {
    // The development gate's test command is slow on its first call only.
    let env = install(extra);
    let path = env.state().join("orch.toml");
    let marker = env.state().join("slow-once");
    let config = std::fs::read_to_string(&path).expect("config").replace(
        "test_command = \"sh ./test.sh\"",
        &format!(
            "test_command = \"test -e {m} || {{ touch {m}; sleep 3; }}; sh ./test.sh\"",
            m = marker.display()
        ),
    );
    std::fs::write(&path, config).expect("config");
    let task = create_task(&env, "t");
    drive_to(&env, task, "development");
    env
}

/// ORCH-113 TC-01, TC-05 (the ORCH-111 incident): a finalizer holding its
/// lock past every grace is never reaped; no false rollback, no retry.
#[test]
fn orch113_tc05_orch111_no_false_rollback_a_live_finalizer_is_deferred() {
    let env = slow_finalizer_env("reaper_finalize_grace_s = 0");
    let mut worker = env
        .orch_std()
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut defers = 0;
    while worker.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "worker never finished");
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        assert!(
            pass["reaped"].as_array().is_none_or(Vec::is_empty),
            "live finalizer reaped: {pass}"
        );
        defers += pass["finalizer_defers"].as_i64().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(worker.wait().expect("wait").success());
    assert!(defers >= 1, "no deferral counted");
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "review");
    assert!(
        shown["history"]
            .as_array()
            .expect("h")
            .iter()
            .all(|h| h["kind"] != "rollback"),
        "false rollback"
    );
    let status = env.json(&["status"]);
    assert!(
        status["counters"]["finalizer_defers_total"]["value"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    );
    assert!(status["counters"].get("reaped_total").is_none());
}

/// Seed ORCH-113 TC-01/TC-02/TC-04 on deploy-staging: a worker finalizing
/// past every grace (its staging check is slow) holds its lock, so pass
/// after pass of `orch reap` defers it — nothing reaped, no advance by a
/// non-owner, each pass counted — and the owner advances exactly once, with
/// no rollback (no developer retry).
#[test]
fn orch113_tc01_tc02_a_live_deploy_staging_finalizer_is_deferred_every_pass() {
    let env = install("reaper_finalize_grace_s = 0\nstaging_image_check_cmd = \"sleep 3\"");
    let task = create_task(&env, "t");
    drive_to(&env, task, "deploy-staging");
    let mut worker = env
        .orch_std()
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut passes, mut defers) = (0, 0);
    while worker.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "worker never finished");
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        assert!(
            pass["reaped"].as_array().is_none_or(Vec::is_empty),
            "live finalizer reaped: {pass}"
        );
        let deferred = pass["finalizer_defers"].as_i64().unwrap_or(0);
        if deferred > 0 {
            // While it is deferred the non-owner never moved the task.
            passes += 1;
            let stage = stage_of(&env, task);
            assert!(
                stage == "deploy-staging" || worker.try_wait().expect("try_wait").is_some(),
                "a non-owner advanced to {stage}"
            );
        }
        defers += deferred;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(worker.wait().expect("wait").success());
    assert!(passes >= 3, "only {passes} passes saw the finalizer");
    assert_eq!(defers, passes, "one deferral per pass");
    let shown = env.json(&["task", "show", &task.to_string()]);
    assert_eq!(shown["task"]["stage"], "deploy");
    let history = shown["history"].as_array().expect("history");
    assert_eq!(
        history
            .iter()
            .filter(|h| h["kind"] == "advance" && h["from_stage"] == "deploy-staging")
            .count(),
        1,
        "advanced more than once"
    );
    assert!(
        history.iter().all(|h| h["kind"] != "rollback"),
        "false rollback"
    );
}

/// Seed ORCH-113 TC-06 (within grace): with the liveness switch off only the
/// finalize grace protects a finalizer; inside it (default 300 s) the job is
/// neither reaped nor counted as a deferral, and the owner advances once.
#[test]
fn orch113_tc06_within_grace_a_finalizer_is_neither_reaped_nor_deferred() {
    let env = slow_finalizer_env("reaper_finalizer_liveness_enabled = false");
    let mut worker = env
        .orch_std()
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut passes = 0;
    while worker.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "worker never finished");
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        assert!(
            pass["reaped"].as_array().is_none_or(Vec::is_empty),
            "reaped within the grace: {pass}"
        );
        assert_eq!(pass["finalizer_defers"].as_i64().unwrap_or(0), 0, "{pass}");
        passes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(worker.wait().expect("wait").success());
    assert!(passes >= 3, "only {passes} passes ran");
    assert_eq!(stage_of(&env, 1), "review");
}

/// ORCH-113 TC-06: with the finalizer-liveness kill-switch off, the seeds'
/// plain grace rule returns — and the claim fence still allows one advance.
#[test]
fn orch113_tc06_killswitch_off_reaps_past_the_grace_and_still_advances_once() {
    let env = slow_finalizer_env(
        "reaper_finalize_grace_s = 0\nreaper_finalizer_liveness_enabled = false",
    );
    let mut worker = env
        .orch_std()
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut reaped = 0;
    while worker.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "worker never finished");
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        reaped += pass["reaped"].as_array().map_or(0, Vec::len);
        std::thread::sleep(Duration::from_millis(100));
    }
    worker.wait().expect("wait");
    assert!(reaped >= 1, "the switch-off grace rule never reaped");
    // The reaped job waits for a worker to finalize it; the late owner's
    // commit lost the fence.
    assert_eq!(stage_of(&env, 1), "development");
    env.orch().args(["run-agent", "--next"]).assert().success();
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "review");
    let advances = shown["history"]
        .as_array()
        .expect("h")
        .iter()
        .filter(|h| h["kind"] == "advance" && h["from_stage"] == "development")
        .count();
    assert_eq!(advances, 1);
    let reviewers = shown["jobs"]
        .as_array()
        .expect("j")
        .iter()
        .filter(|j| j["agent"] == "reviewer")
        .count();
    assert_eq!(reviewers, 1);
}

/// Seed 001 TC-04: past `reaper_max_running_s` the backstop stops a live
/// owner (proven by its lock), its agent group dies, the job is reaped.
#[test]
fn orch065_tc04_orch113_tc03_backstop_stops_a_live_owner_past_the_ceiling() {
    let env = install(
        "reaper_max_running_s = 4\nagent_timeout_s = 1\nagent_kill_grace_seconds = 1\n\
         merge_retest_timeout_s = 1\nreaper_finalize_grace_s = 1",
    );
    create_task(&env, "t");
    // An owner hung in its finalization: the gate's command never ends.
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config").replace(
        "merge_gate_repos = \"demo\"",
        &format!(
            "merge_gate_repos = \"demo\"\nstaging_image_check_cmd = \"{}\"",
            "exec sleep 300.8491"
        ),
    );
    std::fs::write(&path, config).expect("config");
    drive_to(&env, 1, "deploy-staging");
    let mut worker = env
        .orch_std()
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let argv = ["sleep", "300.8491"];
    while common::host_pids_of(&argv).is_empty() {
        assert!(Instant::now() < deadline, "the hung check never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Within the ceiling: alive, never reaped.
    let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
    assert!(
        pass["reaped"].as_array().is_none_or(Vec::is_empty),
        "{pass}"
    );
    std::thread::sleep(Duration::from_secs(4));
    let config = std::fs::read_to_string(&path)
        .expect("config")
        .replace("exec sleep 300.8491", "exit 0");
    std::fs::write(&path, config).expect("config");
    let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
    assert_eq!(pass["backstopped"], 1, "{pass}");
    assert!(
        worker.wait().expect("wait").code().is_none(),
        "the owner was killed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !common::host_pids_of(&argv).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the hung check survived its owner"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pass["reaped"][0]["job_id"], 6, "{pass}");
    assert_eq!(env.json(&["status"])["counts"]["running"], 0);
}

/// Seed 001 TC-05: a non-zero exit requeues while attempts remain, then
/// fails with a notification; TC-09: the reap unblocks the queue at concurrency 1.
#[test]
fn orch065_tc05_nonzero_exit_requeues_then_fails_and_tc09_unblocks_the_queue() {
    let env = install("");
    create_task(&env, "a");
    create_task(&env, "b");
    for attempt in 1..=2 {
        let out = orch_out(
            &env,
            &[
                ("ORCH_CRASH_AT", "run.exited"),
                ("ORCH_AGENT_CMD", "exit 4"),
            ],
            &["run-agent", "--job", "1"],
        );
        assert_eq!(signal_of(&out), Some(9), "attempt {attempt}");
        // The zombie blocks the whole queue at max_concurrency 1 …
        env.orch().arg("claim").assert().code(3);
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        let expected = if attempt == 1 { "queued" } else { "failed" };
        assert_eq!(pass["reaped"][0]["outcome"], expected, "{pass}");
    }
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert!(notes.contains("failed for good"), "{notes}");
    // … and the reap unblocks it.
    assert_eq!(env.json(&["claim"])["claimed"]["id"], 2);
}

/// ORCH-090 TC-04: a job of a cancelled task is never requeued by the reaper.
#[test]
fn orch090_tc04_reaper_cancels_a_dead_job_of_a_cancelled_task() {
    let env = install("");
    create_task(&env, "t");
    let out = orch_out(
        &env,
        &[("ORCH_CRASH_AT", "run.recorded")],
        &["run-agent", "--next"],
    );
    assert_eq!(signal_of(&out), Some(9));
    env.exec("UPDATE tasks SET stage = 'cancelled' WHERE id = 1");
    let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
    assert_eq!(pass["reaped"][0]["outcome"], "cancelled", "{pass}");
    assert_eq!(env.json(&["job", "show", "1"])["status"], "cancelled");
}

/// Seed 001 TC-07: with the reaper switched off, a dead owner's job is left alone.
#[test]
fn orch065_tc07_kill_switches_keep_their_meaning() {
    let env = install("reaper_enabled = false\nlease_reclaim_enabled = false");
    create_task(&env, "t");
    let out = orch_out(
        &env,
        &[("ORCH_CRASH_AT", "run.recorded")],
        &["run-agent", "--next"],
    );
    assert_eq!(signal_of(&out), Some(9));
    env.exec(
        "INSERT INTO merge_leases (repo, task_id, branch, token, acquired_at) VALUES ('demo', 1, 'x', 't', 0)",
    );
    for _ in 0..3 {
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        assert!(
            pass["reaped"].as_array().is_none_or(Vec::is_empty),
            "{pass}"
        );
    }
    assert_eq!(env.json(&["job", "show", "1"])["status"], "running");
    assert_eq!(env.sql_i64("SELECT count(*) FROM merge_leases"), 1);
}

/// Seed 001 TC-10…TC-15 as properties: a lease is reclaimed once its holder
/// cannot use it, and never while it can (live merge, parked on deploy).
#[test]
fn orch065_tc10_tc15_leases_are_reclaimed_exactly_when_their_holder_cannot_use_them() {
    let env = install("");
    let task = create_task(&env, "t");
    let lease = |env: &Env, acquired_at: i64| {
        env.exec(&format!(
            "DELETE FROM merge_leases WHERE repo = 'demo';
             INSERT INTO merge_leases (repo, task_id, branch, token, acquired_at)
             VALUES ('demo', 1, 'feature/DEMO-1-t', 'tok', {acquired_at})"
        ));
    };
    let set_stage = |env: &Env, stage: &str| {
        env.exec(&format!("UPDATE tasks SET stage = '{stage}' WHERE id = 1"));
    };
    let reclaimed = |env: &Env| {
        env.json(&["reclaim-leases"])["reclaimed"]
            .as_array()
            .map_or(0, Vec::len)
    };
    // No lease at all: the pass is a no-op (seed TC-14 no file, TC-21 callable).
    assert_eq!(reclaimed(&env), 0);
    // Parked on deploy (awaiting Confirm Deploy): kept, however old.
    set_stage(&env, "deploy");
    lease(&env, 0);
    assert_eq!(reclaimed(&env), 0);
    // Rolled back: reclaimed.
    set_stage(&env, "development");
    assert_eq!(reclaimed(&env), 1);
    // On deploy-staging with its job queued to resume: kept within the TTL, reclaimed past it.
    set_stage(&env, "deploy-staging");
    lease(&env, orch::storage::now());
    assert_eq!(reclaimed(&env), 0);
    lease(&env, 0);
    assert_eq!(reclaimed(&env), 1);
    // Done or cancelled: reclaimed.
    for stage in ["done", "cancelled"] {
        set_stage(&env, stage);
        lease(&env, orch::storage::now());
        assert_eq!(reclaimed(&env), 1, "{stage}");
    }
    // The reclaim is counted and notified.
    let status = env.json(&["status"]);
    assert_eq!(status["counters"]["lease_reclaimed_total"]["value"], 4);
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert!(notes.contains("merge lease for demo reclaimed"), "{notes}");
    let _ = task;
}

/// Seed 001 TC-17: after a crash the re-drive finds the branch up to date and
/// does not re-run the expensive re-test; TC-24: a red catch-up releases the
/// lease, rolls back, and leaves main untouched.
#[test]
fn orch065_tc17_redrive_skips_the_retest_and_tc24_red_catch_up_leaves_main_green() {
    let env = install("");
    let task = create_task(&env, "t");
    drive_to(&env, task, "deploy-staging");
    move_main(&env, "first");
    let out = orch_out(
        &env,
        &[("ORCH_CRASH_AT", "finalize.evaluated")],
        &["run-agent", "--next"],
    );
    assert_eq!(signal_of(&out), Some(9));
    let retests = |env: &Env| {
        env.sql_i64(
            "SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'merge_gate_retests_total'",
        )
    };
    let before = retests(&env);
    orch_out(&env, &[], &["reap"]);
    // The reap hands the finalization to a worker instead of doing it.
    assert_eq!(stage_of(&env, task), "deploy-staging");
    orch_out(&env, &[], &["run-agent", "--next"]);
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(shown["task"]["stage"], "deploy");
    assert_eq!(retests(&env), before, "the re-drive re-ran the re-test");

    // A red catch-up: main gains a commit that breaks the feature's test.
    let env = install("");
    let task = create_task(&env, "t");
    drive_to(&env, task, "deploy-staging");
    let main_before = orch::git::Git::at(env.state().join("forge/demo.git"))
        .rev("main")
        .expect("rev");
    common::push_to_main(&env, "red", "tests/zz_red_test.sh", "exit 1\n");
    let forge = env.state().join("forge/demo.git");
    let main_red = orch::git::Git::at(&forge).rev("main").expect("rev");
    assert_ne!(main_before, main_red);
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(v["evaluation"]["decision"]["decision"], "rollback", "{v}");
    assert_eq!(stage_of(&env, task), "development");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "lease kept after red"
    );
    assert_eq!(
        orch::git::Git::at(&forge).rev("main").expect("rev"),
        main_red,
        "main moved"
    );
}

/// Seed ORCH-065 TC-17 with its switch off: `merge_retest_skip_when_current_enabled
/// = false` makes the re-drive re-test a branch that is already caught up
/// (the switch is what buys the skip above).
#[test]
fn orch065_tc17_skip_when_current_switch_off_retests_the_caught_up_branch() {
    let env = install("merge_retest_skip_when_current_enabled = false");
    let task = create_task(&env, "t");
    drive_to(&env, task, "deploy-staging");
    move_main(&env, "first");
    let out = orch_out(
        &env,
        &[("ORCH_CRASH_AT", "finalize.evaluated")],
        &["run-agent", "--next"],
    );
    assert_eq!(signal_of(&out), Some(9));
    let retests = |env: &Env| {
        env.sql_i64(
            "SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'merge_gate_retests_total'",
        )
    };
    let before = retests(&env);
    orch_out(&env, &[], &["reap"]);
    orch_out(&env, &[], &["run-agent", "--next"]);
    assert_eq!(stage_of(&env, task), "deploy");
    assert_eq!(
        retests(&env),
        before + 1,
        "with the switch off the caught-up branch must be re-tested"
    );
}

/// The merge gate's rebase conflict (seed ORCH-065 merge gate, red catch-up
/// family): main gained a conflicting change, so the rebase is aborted, the
/// lease released and the task rolled back to development; main is untouched.
#[test]
fn orch065_merge_gate_rebase_conflict_rolls_back_and_releases_the_lease() {
    let env = install("");
    let task = create_task(&env, "t");
    drive_to(&env, task, "deploy-staging");
    // The feature adds src/greet.sh; main adds a different one: add/add conflict.
    common::push_to_main(&env, "conflict", "src/greet.sh", "echo conflicting\n");
    let forge = env.state().join("forge/demo.git");
    let main_before = orch::git::Git::at(&forge).rev("main").expect("rev");
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(v["evaluation"]["decision"]["decision"], "rollback", "{v}");
    assert!(
        v["evaluation"]["decision"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("conflict rebasing"),
        "{v}"
    );
    assert_eq!(stage_of(&env, task), "development");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "lease kept"
    );
    assert_eq!(
        orch::git::Git::at(&forge).rev("main").expect("rev"),
        main_before,
        "main moved"
    );
    // No rebase was left half-done in the task's worktree (the developer reuses it).
    if env
        .state()
        .join("repos/demo/worktrees/DEMO-1/.git")
        .exists()
    {
        let git_dir = worktree_git_dir(&env);
        assert!(
            !git_dir.join("rebase-merge").exists(),
            "rebase left in progress"
        );
        assert!(
            !git_dir.join("rebase-apply").exists(),
            "rebase left in progress"
        );
    }
}

/// An infrastructure timeout of the re-test retries in place: no rollback,
/// no developer retry, and one alert when the bound is spent.
#[test]
fn orch110_tc01b_retest_timeout_retries_in_place_without_rollback() {
    let env = install(
        "merge_retest_timeout_s = 1\nmerge_infra_retry_max = 1\ntransient_backoff_base_s = 1\ntransient_backoff_max_s = 1",
    );
    let task = create_task(&env, "t");
    drive_to(&env, task, "deploy-staging");
    move_main(&env, "slow");
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config").replace(
        "test_command = \"sh ./test.sh\"",
        "test_command = \"sleep 5\"",
    );
    std::fs::write(&path, config).expect("config");
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(
        v["evaluation"]["decision"]["decision"], "retry_later",
        "{v}"
    );
    assert!(
        v["evaluation"]["decision"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("timeout"),
        "a timeout must be named as one: {v}"
    );
    assert_eq!(stage_of(&env, task), "deploy-staging");
    let job = env.json(&["job", "show", "6"]);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempts"], 0, "an infra retry spends no attempt");
    std::thread::sleep(Duration::from_millis(1500));
    // The re-drive re-tests the rebased commit (it never passed), times out again.
    orch_out(&env, &[], &["run-agent", "--next"]);
    assert_eq!(env.json(&["job", "show", "6"])["status"], "failed");
    let shown = env.json(&["task", "show", "1"]);
    assert!(
        shown["history"]
            .as_array()
            .expect("h")
            .iter()
            .all(|h| h["kind"] != "rollback")
    );
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert_eq!(notes.matches("failed for good").count(), 1, "{notes}");
}

/// The private git directory of the task's worktree (`<clone>/.git/worktrees/<name>`).
fn worktree_git_dir(env: &Env) -> std::path::PathBuf {
    let worktree = env.state().join("repos/demo/worktrees/DEMO-1");
    let text = std::fs::read_to_string(worktree.join(".git")).expect(".git file");
    let dir = text.trim().strip_prefix("gitdir:").expect("gitdir").trim();
    worktree.join(dir)
}

/// Leave behind the lock files a git killed together with its worker leaves:
/// the worktree's index and HEAD, and refs and the index of the clone.
fn plant_stale_git_locks(env: &Env) {
    let own = worktree_git_dir(env);
    let clone = env.state().join("repos/demo/clone/.git");
    let branch = env
        .sql_text("SELECT branch FROM tasks WHERE id = 1")
        .expect("branch");
    for lock in [
        own.join("index.lock"),
        own.join("HEAD.lock"),
        clone.join("index.lock"),
        clone.join("packed-refs.lock"),
        clone.join(format!("refs/heads/{branch}.lock")),
        clone.join("refs/remotes/origin/main.lock"),
        clone.join(format!("refs/remotes/origin/{branch}.lock")),
    ] {
        std::fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
        std::fs::write(&lock, "").expect("plant lock");
    }
}

/// Issue #13 (1): a worker SIGKILLed together with its git children leaves
/// git lock files in the task's worktree and the clone; the next worker that
/// takes the worktree over removes them (nothing else runs there), instead of
/// failing with "File exists" on every retry.
#[test]
fn stale_git_locks_of_a_killed_worker_do_not_fail_the_next_run() {
    let env = install("");
    let task = create_task(&env, "greet");
    drive_to(&env, task, "architecture");
    move_main(&env, "other");
    plant_stale_git_locks(&env);
    let out = orch_out(&env, &[], &["run-agent", "--next", "--json"]);
    let v = json_of(&out);
    assert!(
        out.status.success(),
        "run-agent failed: {v} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["committed"]["job"], "done", "{v}");
    assert_eq!(stage_of(&env, task), "development");
    assert!(
        !worktree_git_dir(&env).join("index.lock").exists(),
        "stale index.lock left"
    );
    assert_correct_end(&env, task, "stale git locks");
}

/// A worker killed inside `git worktree add` leaves git's `locked` file
/// ("initializing") in the worktree's private git directory and a worktree
/// that is half made: its files not checked out (the next commit then
/// deletes them from the branch), or no `HEAD` yet (git calls it "not a git
/// repository"). The next worker makes the worktree anew, and the task ends
/// with the repository's own files intact (seen in the chaos test).
#[test]
fn a_worktree_add_killed_midway_is_made_anew_by_the_next_worker() {
    let env = install("");
    let task = create_task(&env, "greet");
    drive_to(&env, task, "architecture");
    let clone = orch::git::Git::at(env.state().join("repos/demo/clone"));
    let worktree = env.state().join("repos/demo/worktrees/DEMO-1");
    let branch = env
        .sql_text("SELECT branch FROM tasks WHERE id = 1")
        .expect("branch");
    let worktree_str = worktree.to_string_lossy().into_owned();
    // Killed before the checkout: HEAD set, no file, no index.
    clone
        .run(["worktree", "remove", "--force", &worktree_str])
        .expect("remove");
    clone
        .run([
            "worktree",
            "add",
            "--quiet",
            "--no-checkout",
            "-B",
            &branch,
            &worktree_str,
            &format!("origin/{branch}"),
        ])
        .expect("add");
    std::fs::write(worktree_git_dir(&env).join("locked"), "initializing").expect("lock");
    assert!(!worktree.join("test.sh").exists());
    drive_to(&env, task, "development");
    assert!(
        worktree.join("test.sh").exists(),
        "the worktree was not made anew"
    );
    // Killed before HEAD was written.
    let own = worktree_git_dir(&env);
    std::fs::write(own.join("locked"), "initializing").expect("lock");
    std::fs::remove_file(own.join("HEAD")).expect("HEAD");
    drive_to(&env, task, "review");
    assert!(!worktree_git_dir(&env).join("locked").exists());
    assert_correct_end(&env, task, "worktree add killed midway");
    let main = orch::git::Git::at(env.state().join("forge/demo.git"))
        .run(["ls-tree", "-r", "--name-only", "main"])
        .expect("ls-tree");
    for file in ["README.md", "test.sh"] {
        assert!(main.contains(file), "{file} was lost from main: {main}");
    }
}

/// Drive `task` to deploy-staging, move main on, and leave a rebase of the
/// task's branch stopped after its first commit in its worktree (`--exec
/// false` stops it there, as a kill would). Returns the worktree and its git.
fn stop_a_rebase_midway(env: &Env, task: i64) -> (std::path::PathBuf, orch::git::Git) {
    drive_to(env, task, "deploy-staging");
    move_main(env, "other");
    let worktree = env.state().join("repos/demo/worktrees/DEMO-1");
    let git = orch::git::Git::at(&worktree);
    git.run(["fetch", "--quiet", "origin"]).expect("fetch");
    let stopped = git
        .output(["rebase", "--quiet", "--exec", "false", "origin/main"])
        .expect("rebase");
    assert!(!stopped.status.success(), "the rebase did not stop");
    assert!(worktree_git_dir(env).join("rebase-merge").exists());
    (worktree, git)
}

/// Issue #13 (2): a rebase left in progress in the task's worktree (its
/// process killed mid-way: HEAD detached, `rebase-merge/` present) is aborted
/// by the next worker, whose merge gate then rebases cleanly — instead of
/// reading "a rebase is already in progress" as a conflict and rolling back.
#[test]
fn a_rebase_left_in_progress_is_aborted_by_the_next_worker() {
    let env = install("");
    let task = create_task(&env, "greet");
    stop_a_rebase_midway(&env, task);
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(stage_of(&env, task), "deploy", "{v}");
    assert!(!worktree_git_dir(&env).join("rebase-merge").exists());
    assert_correct_end(&env, task, "rebase left in progress");
}

/// A kill inside one of the rebase's checkouts leaves files on disk that the
/// index does not know (seen in the chaos test: `git rebase --abort` then
/// refuses with "untracked working tree files would be overwritten by reset"
/// and the job failed for good). The next worker still drops the rebase,
/// restores the branch and finishes the task.
#[test]
fn a_rebase_killed_mid_checkout_is_dropped_even_when_abort_refuses() {
    let env = install("");
    let task = create_task(&env, "greet");
    let (worktree, git) = stop_a_rebase_midway(&env, task);
    // A file of the branch's tip the stopped rebase has not written yet,
    // left on disk with other bytes as a half-done checkout leaves it.
    let listed = |rev: &str| -> Vec<String> {
        git.run(["ls-tree", "-r", "--name-only", rev])
            .expect("ls-tree")
            .lines()
            .map(str::to_string)
            .collect()
    };
    let head = listed("HEAD");
    let in_the_way = listed("ORIG_HEAD")
        .into_iter()
        .find(|f| !head.contains(f))
        .expect("the stopped rebase has a file still to write");
    std::fs::write(worktree.join(&in_the_way), "half written\n").expect("plant");
    let abort = git.output(["rebase", "--abort"]).expect("abort");
    assert!(!abort.status.success(), "plain --abort copes here already");
    assert!(worktree_git_dir(&env).join("rebase-merge").exists());
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(stage_of(&env, task), "deploy", "{v}");
    assert!(!worktree_git_dir(&env).join("rebase-merge").exists());
    assert_ne!(
        std::fs::read_to_string(worktree.join(&in_the_way)).unwrap_or_default(),
        "half written\n",
        "the branch's own file is back"
    );
    assert_correct_end(&env, task, "rebase killed mid-checkout");
}

/// Issue #13 (4): a task blocked over budget while it holds the merge lease
/// (its re-test timed out and is retried in place) releases the lease in the
/// blocking transaction, so another task merges meanwhile; resumed, it takes
/// the lease again and finishes.
#[test]
fn a_task_blocked_over_budget_releases_its_merge_lease() {
    let env = install(
        "merge_retest_timeout_s = 1\ntransient_backoff_base_s = 1\ntransient_backoff_max_s = 1",
    );
    let first = create_task(&env, "greet");
    drive_to(&env, first, "deploy-staging");
    move_main(&env, "other");
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let slow = config.replace(
        "test_command = \"sh ./test.sh\"",
        "test_command = \"sleep 5\"",
    );
    std::fs::write(&path, slow).expect("config");
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(
        v["evaluation"]["decision"]["decision"], "retry_later",
        "{v}"
    );
    assert!(
        v["evaluation"]["decision"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("timeout"),
        "a timeout must be named as one: {v}"
    );
    assert_eq!(env.sql_i64("SELECT count(*) FROM merge_leases"), 1);
    std::fs::write(&path, config).expect("config");
    // The task can no longer afford a run: its next attempt blocks it.
    env.exec(&format!(
        "UPDATE tasks SET budget_usd = 1 WHERE id = {first}"
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert!(
        v["run_verdict"]
            .as_str()
            .is_some_and(|s| s.contains("over budget")),
        "{v}"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "a blocked task kept its merge lease"
    );
    // Another task is not held up by it: it merges and finishes.
    let second = create_task(&env, "other task");
    drive_to(&env, second, "done");
    env.orch()
        .args([
            "task",
            "resume",
            "--task",
            &first.to_string(),
            "--budget",
            "40",
        ])
        .assert()
        .success();
    drive_to(&env, first, "done");
    assert_eq!(env.sql_i64("SELECT count(*) FROM merge_leases"), 0);
}

/// Issue #13 (4): a task escalated to a human (its merge re-test went red
/// after the last developer retry) releases its merge lease in the
/// escalating transaction, and another task merges.
#[test]
fn an_escalated_task_releases_its_merge_lease() {
    let env = install("");
    let task = create_task(&env, "greet");
    drive_to(&env, task, "deploy-staging");
    common::push_to_main(&env, "red", "tests/zz_red_test.sh", "exit 1\n");
    for _ in 0..3 {
        env.exec(&format!(
            "INSERT INTO task_transitions (task_id, from_stage, to_stage, kind, reason, at)
             VALUES ({task}, 'review', 'development', 'rollback', 'earlier', 0)"
        ));
    }
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(v["committed"]["escalated"], true, "{v}");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "an escalated task kept its merge lease"
    );
    // Fix main, and another task merges past the escalated one.
    common::push_to_main(&env, "green", "tests/zz_red_test.sh", "exit 0\n");
    let other = create_task(&env, "other task");
    drive_to(&env, other, "done");
}

/// Issue #13 (5): `orch reap` does not finalize a dead owner's exit-0 job
/// in-process — no rebase, push, re-test or merge — but requeues it as a
/// finalize-only continuation; the next worker finalizes it without running
/// the agent again, spending no extra attempt.
#[test]
fn orch065_tc05_orch113_tc03_reap_hands_an_exit_0_orphan_to_a_worker_without_finalizing_it() {
    let env = install("");
    let task = create_task(&env, "greet");
    drive_to(&env, task, "deploy-staging");
    move_main(&env, "other");
    let out = orch_out(
        &env,
        &[("ORCH_CRASH_AT", "run.exited")],
        &["run-agent", "--next"],
    );
    assert_eq!(signal_of(&out), Some(9));
    let forge = orch::git::Git::at(env.state().join("forge/demo.git"));
    let branch_before = forge.run(["show-ref"]).expect("refs");
    let counter = |env: &Env, name: &str| {
        env.sql_i64(&format!(
            "SELECT coalesce(sum(value), 0) FROM counters WHERE name = '{name}'"
        ))
    };
    let runs_before = env.sql_i64("SELECT count(*) FROM agent_runs");
    let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
    assert_eq!(pass["reaped"][0]["outcome"], "queued", "{pass}");
    assert_eq!(
        counter(&env, "merge_gate_retests_total"),
        0,
        "reap re-tested"
    );
    assert_eq!(counter(&env, "merge_gate_rebases_total"), 0, "reap rebased");
    assert_eq!(
        forge.run(["show-ref"]).expect("refs"),
        branch_before,
        "reap pushed or merged"
    );
    assert_eq!(stage_of(&env, task), "deploy-staging");
    let job = env.json(&["job", "show", "6"]);
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
    assert!(job["finalize_run_id"].is_i64(), "{job}");
    // The next worker finalizes it: rebase, push, re-test, merge.
    let v = json_of(&orch_out(&env, &[], &["run-agent", "--next", "--json"]));
    assert_eq!(v["committed"]["stage"], "deploy", "{v}");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM agent_runs"),
        runs_before,
        "the agent ran again"
    );
    assert_eq!(env.json(&["job", "show", "6"])["attempts"], 1);
    assert_correct_end(&env, task, "finalize-only continuation");
}

/// Issue #13 (5): a finalization whose worker is killed every time spends an
/// attempt each time and ends — the job fails for good with one
/// notification — instead of being re-adopted for ever.
#[test]
fn a_finalization_killed_every_time_ends_failed_after_its_worker_died_too_often() {
    // Each death of a worker is an owner death: no attempt is spent, but it
    // counts against max_transient_attempts, so a crash loop ends.
    let env = install("max_transient_attempts = 2");
    create_task(&env, "t");
    let out = orch_out(
        &env,
        &[("ORCH_CRASH_AT", "run.exited")],
        &["run-agent", "--next"],
    );
    assert_eq!(signal_of(&out), Some(9));
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
        let outcome = pass["reaped"][0]["outcome"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        outcomes.push(outcome.clone());
        if outcome != "queued" {
            break;
        }
        let out = orch_out(
            &env,
            &[("ORCH_CRASH_AT", "finalize.pushed")],
            &["run-agent", "--next"],
        );
        assert_eq!(signal_of(&out), Some(9), "{outcomes:?}");
    }
    // Continuation (attempt given back), two killed finalizations requeued
    // (two owner deaths allowed), the third fails for good.
    assert_eq!(outcomes, ["queued", "queued", "queued", "failed"]);
    let job = env.json(&["job", "show", "1"]);
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["attempts"], 1,
        "no attempt spent on orch's deaths: {job}"
    );
    assert_eq!(job["transient_attempts"], 2, "{job}");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM agent_runs"),
        1,
        "the agent ran again"
    );
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert_eq!(notes.matches("failed for good").count(), 1, "{notes}");
}

/// orch killed in the instant between its Claude agent's exit and recording
/// the run: the log ends in the CLI's success result, so the run did its
/// work. The reaper settles the run from the log (success, its cost) and
/// hands the job to a worker to finalize; the agent is not run — and paid —
/// again.
#[test]
fn a_claude_run_that_succeeded_before_orch_died_is_finalized_not_rerun() {
    let env = install("");
    create_task(&env, "t");
    let init = r#"{"type":"system","subtype":"init","session_id":"s"}"#;
    let result = r#"{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.3,"result":"done"}"#;
    let agent = format!(
        "'{}' demo-agent && echo '{init}' && echo '{result}'",
        env!("CARGO_BIN_EXE_orch")
    );
    let out = orch_out(
        &env,
        &[("ORCH_AGENT_CMD", &agent), ("ORCH_CRASH_AT", "run.ended")],
        &["run-agent", "--next"],
    );
    assert_eq!(signal_of(&out), Some(9), "never reached run.ended");
    let pass = json_of(&orch_out(&env, &[], &["reap", "--json"]));
    assert_eq!(pass["reaped"][0]["outcome"], "queued", "{pass}");
    let run = &env.rows("SELECT outcome, cost_usd FROM agent_runs")[0];
    assert_eq!(
        (run[0].as_str(), run[1].as_f64()),
        (Some("success"), Some(0.3))
    );
    // The next worker finalizes without an agent (an agent now would fail).
    let out = orch_out(
        &env,
        &[("ORCH_AGENT_CMD", "exit 1")],
        &["run-agent", "--next", "--json"],
    );
    let report = json_of(&out);
    assert!(
        report["run_verdict"]
            .as_str()
            .unwrap_or("")
            .starts_with("success"),
        "{report}"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM agent_runs"),
        1,
        "the agent ran again"
    );
    assert_eq!(env.json(&["job", "show", "1"])["status"], "done");
}
