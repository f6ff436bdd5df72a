//! The self-hosting repo's production deploy with Confirm Deploy (seeds
//! ORCH-036/059): phase A asks, phase B merges and starts the detached hook
//! exactly once, phase C finalizes; other repos keep the deployer agent.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Env, self_hosting, to_phase_a};

fn run(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = env.orch_std();
    for (k, v) in vars {
        c.env(k, v);
    }
    c.args(args).output().expect("run")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn stage(env: &Env) -> String {
    env.json(&["task", "show", "1"])["task"]["stage"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn main_head(env: &Env) -> String {
    orch::git::Git::at(env.state().join("forge/demo.git"))
        .rev("main")
        .expect("rev")
        .unwrap_or_default()
}

fn hook_runs(env: &Env) -> usize {
    std::fs::read_to_string(env.state().join("hook.count")).map_or(0, |s| s.lines().count())
}

fn wait_for_hook(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.state().join("hook.count").exists() {
        assert!(Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn orch059_tc09_phase_a_parks_on_deploy_keeps_the_lease_and_asks_for_confirm_deploy() {
    let env = self_hosting();
    let main_before = main_head(&env);
    to_phase_a(&env);
    let shown = env.json(&["task", "show", "1"]);
    assert_eq!(
        shown["task"]["tracker_state"], "In Review",
        "approval pending"
    );
    let cta = shown["comments"]
        .as_array()
        .expect("comments")
        .iter()
        .filter_map(|c| c["body"].as_str())
        .find(|b| b.contains("Confirm Deploy"))
        .expect("a call to action")
        .to_owned();
    assert!(
        cta.contains("\"Approved\" does NOT start the production deploy"),
        "{cta}"
    );
    assert!(!cta.contains("set \"Approved\""), "{cta}");
    // Exactly one call to action, not one per pass.
    assert_eq!(
        shown["comments"]
            .as_array()
            .expect("comments")
            .iter()
            .filter_map(|c| c["body"].as_str())
            .filter(|b| b.contains("Confirm Deploy"))
            .count(),
        1
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases WHERE task_id = 1"),
        1,
        "lease kept"
    );
    assert_eq!(
        main_head(&env),
        main_before,
        "nothing merged before Confirm Deploy"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status = 'queued'"),
        0,
        "no deployer job"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM deploys WHERE staging_sha IS NOT NULL"),
        1
    );
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert!(notes.contains("Confirm Deploy"), "{notes}");
    assert_eq!(notes.matches("Confirm Deploy").count(), 1, "{notes}");
    assert!(!notes.contains("set \"Approved\""), "{notes}");
    // The lease survives a reclaim pass while parked.
    assert_eq!(
        env.json(&["reclaim-leases"])["reclaimed"]
            .as_array()
            .map_or(0, Vec::len),
        0
    );
}

#[test]
fn orch059_tc07_approved_on_deploy_is_a_logged_noop() {
    let env = self_hosting();
    to_phase_a(&env);
    let o = run(&env, &[], &["advance", "--task", "1", "--json"]);
    assert_eq!(o.status.code(), Some(3));
    let v = json(&o);
    assert!(
        v["evaluation"]["gates"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "no gate ran: {v}"
    );
    assert!(
        v["evaluation"]["decision"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("approved-on-deploy-noop")
    );
    assert_eq!(stage(&env), "deploy");
    assert_eq!(hook_runs(&env), 0);
}

fn outbox_rows(env: &Env) -> i64 {
    env.sql_i64("SELECT count(*) FROM outbox")
}

/// Prepend top-level settings to the installation's config.
fn prepend_config(env: &Env, extra: &str) {
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{extra}\n{config}")).expect("config");
}

/// Issue #14: on a task parked awaiting Confirm Deploy, `orch advance`
/// (plain or `--approve`) is the same logged no-op as the "Approved"
/// webhook: no state change, no comment, no notification, however often.
#[test]
fn advance_and_approve_on_a_parked_deploy_post_nothing() {
    let env = self_hosting();
    to_phase_a(&env);
    let rows = outbox_rows(&env);
    let transitions = env.sql_i64("SELECT count(*) FROM task_transitions");
    for args in [
        &["advance", "--task", "1"][..],
        &["advance", "--task", "1", "--approve"][..],
        &["advance", "--task", "1"][..],
    ] {
        let o = run(&env, &[], args);
        assert_eq!(o.status.code(), Some(3), "{args:?}");
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(said.contains("approved-on-deploy-noop"), "{args:?}: {said}");
    }
    assert_eq!(outbox_rows(&env), rows, "tracker or notifier traffic");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM task_transitions"),
        transitions,
        "\"Approved\" was recorded on deploy"
    );
    assert_eq!(
        env.json(&["task", "show", "1"])["task"]["tracker_state"],
        "In Review"
    );
    assert_eq!(stage(&env), "deploy");
    assert_eq!(hook_runs(&env), 0);
}

/// Issue #14: the reconciler leaves a task parked awaiting Confirm Deploy
/// alone, pass after pass, even past its grace.
#[test]
fn the_reconciler_posts_nothing_for_a_parked_deploy() {
    let env = self_hosting();
    prepend_config(&env, "reconcile_grace_overrides_json = '{\"deploy\": 0}'");
    to_phase_a(&env);
    let rows = outbox_rows(&env);
    for _ in 0..3 {
        let o = run(&env, &[], &["reconcile", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r = json(&o);
        assert_eq!(r["skipped"]["awaiting Confirm Deploy"], 1, "{r}");
        assert!(r["advanced"].as_array().is_some_and(Vec::is_empty), "{r}");
    }
    assert_eq!(outbox_rows(&env), rows, "tracker or notifier traffic");
    assert_eq!(stage(&env), "deploy");
}

#[test]
fn orch059_tc07_tc08_phase_b_merges_and_starts_the_hook_once_and_phase_c_finishes() {
    let env = self_hosting();
    to_phase_a(&env);
    let staging_sha = env
        .sql_text("SELECT staging_sha FROM deploys WHERE task_id = 1")
        .expect("sha");
    let first = json(&run(
        &env,
        &[],
        &["advance", "--task", "1", "--confirm-deploy", "--json"],
    ));
    assert_eq!(first["note"], "self-deploy-initiated", "{first}");
    assert_eq!(
        main_head(&env),
        staging_sha,
        "main is exactly the staging-verified commit"
    );
    // A double click or a duplicate webhook is a no-op.
    let second = json(&run(
        &env,
        &[],
        &["advance", "--task", "1", "--confirm-deploy", "--json"],
    ));
    assert_eq!(second["note"], "self-deploy-already-initiated");
    wait_for_hook(&env);
    // Phase C through the finalizer job.
    let o = run(&env, &[], &["run-agent", "--next", "--json"]);
    assert!(o.status.success());
    assert_eq!(stage(&env), "done");
    assert_eq!(hook_runs(&env), 1, "the hook ran exactly once");
    let log = std::fs::read_to_string(
        env.state()
            .join("repos/demo/worktrees/DEMO-1/docs/work-items/DEMO-1/14-deploy-log.md"),
    )
    .expect("deploy log");
    for field in [
        "deploy_status: SUCCESS",
        "hook_exit_code: 0",
        "deployed_by: deploy-finalizer",
    ] {
        assert!(log.contains(field), "{field}: {log}");
    }
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "lease released"
    );
    // Idempotent.
    let again = run(&env, &[], &["finalize-deploy", "--task", "1", "--json"]);
    assert_eq!(again.status.code(), Some(3));
    assert_eq!(json(&again)["note"], "already-finalized");
}

#[test]
fn a_failed_hook_rolls_back_to_development() {
    let env = self_hosting();
    std::fs::write(env.state().join("hook.exit"), "2").expect("exit code");
    to_phase_a(&env);
    env.orch()
        .args(["advance", "--task", "1", "--confirm-deploy"])
        .assert()
        .success();
    wait_for_hook(&env);
    let o = run(
        &env,
        &[],
        &["finalize-deploy", "--task", "1", "--wait", "20", "--json"],
    );
    let v = json(&o);
    assert_eq!(v["deploy_status"], "FAILED", "{v}");
    assert_eq!(v["hook_exit_code"], 2);
    assert_eq!(stage(&env), "development");
    assert_eq!(env.sql_i64("SELECT count(*) FROM merge_leases"), 0);
}

#[test]
fn a_main_that_moved_since_staging_is_refused_and_restaged() {
    let env = self_hosting();
    to_phase_a(&env);
    // Someone pushes to main after staging verified the branch.
    common::push_to_main(&env, "mover", "other.md", "x\n");
    let moved = main_head(&env);
    let v = json(&run(
        &env,
        &[],
        &["advance", "--task", "1", "--confirm-deploy", "--json"],
    ));
    assert_eq!(v["note"], "refused-main-moved", "{v}");
    assert_eq!(main_head(&env), moved, "nothing merged");
    assert_eq!(hook_runs(&env), 0, "nothing deployed");
    assert_eq!(stage(&env), "deploy-staging");
    let shown = env.json(&["task", "show", "1"]);
    assert!(shown["comments"].as_array().expect("c").iter().any(|c| {
        c["body"]
            .as_str()
            .unwrap_or("")
            .contains("main moved since staging")
    }));
    // Re-staging verifies the new main and asks again.
    env.orch().args(["run-agent", "--next"]).assert().success();
    assert_eq!(stage(&env), "deploy");
    assert_eq!(
        json(&run(
            &env,
            &[],
            &["advance", "--task", "1", "--confirm-deploy", "--json"]
        ))["note"],
        "self-deploy-initiated"
    );
}

/// Press STOP during the production deploy (phase B done, hook running);
/// the finalizer exits `code` (0 deployed, 4 rolled back).
fn stop_during_the_deploy(env: &Env, code: i32) {
    to_phase_a(env);
    env.orch()
        .args(["advance", "--task", "1", "--confirm-deploy"])
        .assert()
        .success();
    let v = json(&run(env, &[], &["cancel", "--task", "1", "--json"]));
    assert_eq!(v["note"], "deferred-critical-window", "{v}");
    assert_eq!(stage(env), "deploy");
    wait_for_hook(env);
    env.orch().args(["run-agent", "--next"]).assert().code(code);
}

fn outbox_count(env: &Env, key_like: &str) -> i64 {
    env.sql_i64(&format!(
        "SELECT count(*) FROM outbox WHERE dedup_key LIKE '{key_like}'"
    ))
}

#[test]
fn a_deploy_that_succeeded_under_a_pending_stop_ends_done_and_says_the_stop_came_too_late() {
    let env = self_hosting();
    // A probe, so `done` arms the post-deploy monitor.
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{config}health_check_cmd = \"true\"\n")).expect("config");
    stop_during_the_deploy(&env, 0);
    // Production runs the change: the task tells the truth.
    assert_eq!(stage(&env), "done", "production runs the change");
    assert_eq!(hook_runs(&env), 1);
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE agent = 'post-deploy-monitor'"),
        1,
        "the monitor is armed"
    );
    let branch = env
        .sql_text("SELECT branch FROM tasks WHERE id = 1")
        .expect("branch");
    let heads = orch::git::Git::at(env.state().join("forge/demo.git"))
        .run(["branch", "--list", &branch])
        .expect("branches");
    assert!(heads.contains(&branch), "the branch is kept: {heads}");
    // The operator is told once; reap and reconcile change nothing after.
    assert_eq!(outbox_count(&env, "stop-too-late-1:notify"), 1);
    env.orch().arg("reap").assert().success();
    env.orch().arg("reconcile").assert().success();
    assert_eq!(stage(&env), "done");
    assert_eq!(outbox_count(&env, "stop-too-late-1:%"), 2);
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM task_transitions WHERE kind = 'cancel'"),
        0
    );
}

#[test]
fn orch090_d7_deferred_stop_applied_after_a_failed_deploy() {
    let env = self_hosting();
    std::fs::write(env.state().join("hook.exit"), "1").expect("hook exit");
    stop_during_the_deploy(&env, 4);
    assert_eq!(
        stage(&env),
        "cancelled",
        "the deferred STOP applied after the deploy"
    );
    assert_eq!(outbox_count(&env, "stop-too-late-%"), 0);
}

/// Make the merge gate's re-test wait on a marker, so a test can act while
/// the deploy-staging job is inside its critical window.
fn hold_the_retest(env: &Env) {
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let held = format!(
        "if [ -f {d}/hold ]; then touch {d}/in-retest; sleep 2; fi; sh ./test.sh",
        d = env.shared().display()
    );
    let config = config.replace(
        "test_command = \"sh ./test.sh\"",
        &format!(
            "test_command = {}",
            serde_json::to_string(&held).expect("quote")
        ),
    );
    std::fs::write(&path, config).expect("config");
}

/// Run task 1 up to its deploy-staging job, then start that job in the
/// background with the re-test held, press STOP while it is inside the
/// merge gate, and return the worker's output once it ended.
fn stop_inside_the_merge_gate(env: &Env, worker_env: &[(&str, &str)]) -> Output {
    hold_the_retest(env);
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "self"])
        .assert()
        .success();
    for _ in 0..20 {
        if stage(env) == "deploy-staging" {
            break;
        }
        if run(env, &[], &["run-agent", "--next"]).status.code() == Some(3) {
            env.orch()
                .args(["advance", "--task", "1", "--approve"])
                .assert()
                .success();
        }
    }
    assert_eq!(stage(env), "deploy-staging");
    // main moves, so the gate must rebase and re-test (a current branch
    // that was tested already is merged without a re-test).
    common::push_to_main(env, "mover", "other.md", "x\n");
    std::fs::write(env.shared().join("hold"), "").expect("hold");
    let mut worker = env.orch_std();
    for (k, v) in worker_env {
        worker.env(k, v);
    }
    let worker = worker
        .args(["run-agent", "--next", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("worker");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.shared().join("in-retest").exists() {
        assert!(Instant::now() < deadline, "the merge gate never re-tested");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = json(&run(env, &[], &["cancel", "--task", "1", "--json"]));
    assert_eq!(v["note"], "deferred-critical-window", "{v}");
    worker.wait_with_output().expect("worker")
}

#[test]
fn a_stop_deferred_by_the_merge_gate_is_final_when_the_gate_passes() {
    let env = self_hosting();
    let out = stop_inside_the_merge_gate(&env, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The gate passed, and the worker leaving the window applied the STOP:
    // no confirmation asked, no job enqueued after it, nothing deployed.
    assert_eq!(stage(&env), "cancelled");
    assert_eq!(
        outbox_count(&env, "%:confirm%"),
        0,
        "nobody asked to confirm"
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"),
        0
    );
    assert_eq!(hook_runs(&env), 0);
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM task_transitions WHERE kind = 'cancel'"),
        1,
        "cancelled exactly once"
    );
    // Later passes find nothing to do.
    env.orch().arg("reap").assert().success();
    env.orch().arg("reconcile").assert().success();
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM task_transitions WHERE kind = 'cancel'"),
        1
    );
}

#[test]
fn confirm_deploy_is_refused_while_a_stop_is_pending_and_reap_applies_the_stop() {
    let env = self_hosting();
    // The worker dies right after committing the gate's pass: the task is
    // parked on deploy with the STOP still pending — the window in which a
    // Confirm Deploy used to be honoured.
    let out = stop_inside_the_merge_gate(&env, &[("ORCH_CRASH_AT", "finalize.committed")]);
    assert_eq!(out.status.code(), None, "killed at the crash point");
    assert_eq!(stage(&env), "deploy");
    let v = json(&run(
        &env,
        &[],
        &["advance", "--task", "1", "--confirm-deploy", "--json"],
    ));
    assert_eq!(v["note"], "refused-stop-pending", "{v}");
    assert_eq!(hook_runs(&env), 0, "nothing reached production");
    let before = main_head(&env);
    env.orch().arg("reap").assert().success();
    assert_eq!(stage(&env), "cancelled");
    assert_eq!(main_head(&env), before, "nothing merged");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM merge_leases"),
        0,
        "the lease is free"
    );
}

#[test]
fn main_moving_under_confirm_deploy_never_counts_as_a_developer_retry() {
    let env = self_hosting();
    to_phase_a(&env);
    for i in 0..3 {
        common::push_to_main(&env, &format!("mover{i}"), &format!("other{i}.md"), "x\n");
        let v = json(&run(
            &env,
            &[],
            &["advance", "--task", "1", "--confirm-deploy", "--json"],
        ));
        assert_eq!(v["note"], "refused-main-moved", "{v}");
        env.orch().args(["run-agent", "--next"]).assert().success();
        assert_eq!(stage(&env), "deploy", "re-staged and parked again");
    }
    let retries = orch::pipeline::engine::developer_retry_count(env.db().conn(), 1).expect("count");
    assert_eq!(
        retries, 0,
        "three main-moved refusals are not developer retries"
    );
}

#[test]
fn orch059_tc12_other_repos_keep_the_deployer_agent_path() {
    let env = Env::bare();
    env.orch().args(["demo"]).assert().success();
    assert_eq!(env.sql_i64("SELECT count(*) FROM deploys"), 0);
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE agent = 'deployer' AND stage = 'deploy' AND status = 'done'"
        ),
        1
    );
}

/// Seed ORCH-059 TC-12 on the deploy stage itself: for a repo that is not
/// the self-hosting one, a Confirm Deploy is `not-self-hosting` — nothing is
/// initiated, no finalizer job, the deployer agent's job is the way on.
#[test]
fn orch059_tc12_confirm_deploy_on_another_repo_initiates_nothing() {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "other"])
        .assert()
        .success();
    for _ in 0..20 {
        if stage(&env) == "deploy" {
            break;
        }
        if run(&env, &[], &["run-agent", "--next"]).status.code() == Some(3) {
            run(&env, &[], &["advance", "--task", "1", "--approve"]);
        }
    }
    assert_eq!(stage(&env), "deploy");
    let o = run(
        &env,
        &[],
        &["advance", "--task", "1", "--confirm-deploy", "--json"],
    );
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(json(&o)["note"], "not-self-hosting");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM deploys WHERE initiated_at IS NOT NULL"),
        0
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE agent = 'deploy-finalizer'"),
        0
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE agent = 'deployer' AND status = 'queued'"),
        1,
        "the deployer agent is the way on"
    );
}
