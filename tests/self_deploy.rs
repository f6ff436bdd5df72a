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

fn sql_i64(env: &Env, sql: &str) -> i64 {
    env.db().conn().query_row(sql, [], |r| r.get(0)).expect(sql)
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
fn tc09_phase_a_parks_on_deploy_keeps_the_lease_and_asks_for_confirm_deploy() {
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
    assert_eq!(
        sql_i64(&env, "SELECT count(*) FROM merge_leases WHERE task_id = 1"),
        1,
        "lease kept"
    );
    assert_eq!(
        main_head(&env),
        main_before,
        "nothing merged before Confirm Deploy"
    );
    assert_eq!(
        sql_i64(&env, "SELECT count(*) FROM jobs WHERE status = 'queued'"),
        0,
        "no deployer job"
    );
    assert_eq!(
        sql_i64(
            &env,
            "SELECT count(*) FROM deploys WHERE staging_sha IS NOT NULL"
        ),
        1
    );
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert!(notes.contains("Confirm Deploy"), "{notes}");
    // The lease survives a reclaim pass while parked.
    assert_eq!(
        env.json(&["reclaim-leases"])["reclaimed"]
            .as_array()
            .map_or(0, Vec::len),
        0
    );
}

#[test]
fn tc07_approved_on_deploy_is_a_logged_noop() {
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

#[test]
fn phase_b_merges_and_starts_the_hook_once_and_phase_c_finishes() {
    let env = self_hosting();
    to_phase_a(&env);
    let staging_sha: String = env
        .db()
        .conn()
        .query_row(
            "SELECT staging_sha FROM deploys WHERE task_id = 1",
            [],
            |r| r.get(0),
        )
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
        sql_i64(&env, "SELECT count(*) FROM merge_leases"),
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
    assert_eq!(sql_i64(&env, "SELECT count(*) FROM merge_leases"), 0);
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

#[test]
fn stop_during_the_deploy_is_deferred_and_applied_by_the_finalizer() {
    let env = self_hosting();
    to_phase_a(&env);
    env.orch()
        .args(["advance", "--task", "1", "--confirm-deploy"])
        .assert()
        .success();
    let v = json(&run(&env, &[], &["cancel", "--task", "1", "--json"]));
    assert_eq!(v["note"], "deferred-critical-window", "{v}");
    assert_eq!(stage(&env), "deploy");
    wait_for_hook(&env);
    env.orch().args(["run-agent", "--next"]).assert().success();
    assert_eq!(
        stage(&env),
        "cancelled",
        "the deferred STOP applied after the deploy"
    );
}

#[test]
fn other_repos_keep_the_deployer_agent_path() {
    let env = Env::bare();
    env.orch().args(["demo"]).assert().success();
    assert_eq!(sql_i64(&env, "SELECT count(*) FROM deploys"), 0);
    assert_eq!(
        sql_i64(
            &env,
            "SELECT count(*) FROM jobs WHERE agent = 'deployer' AND stage = 'deploy' AND status = 'done'"
        ),
        1
    );
}
