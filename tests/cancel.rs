//! STOP (`orch cancel`), seed ORCH-090 TC-02…TC-14 and the D7 critical-window
//! scenarios, through the real binary with real git and real processes.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::Env;

fn install() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    env
}

fn out(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = env.orch_std();
    for (k, v) in vars {
        c.env(k, v);
    }
    c.args(args).output().expect("run")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn task_json(env: &Env, id: i64) -> serde_json::Value {
    env.json(&["task", "show", &id.to_string()])
}

fn remote_branches(env: &Env) -> String {
    orch::git::Git::at(env.state().join("forge/demo.git"))
        .run(["branch", "--list"])
        .expect("branches")
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Run the analyst (so a worktree, a pushed branch and artifacts exist).
fn with_branch(env: &Env) -> i64 {
    let id = env.json(&["task", "create", "--repo", "demo", "--title", "stop me"])["id"]
        .as_i64()
        .expect("id");
    env.orch().args(["run-agent", "--next"]).assert().success();
    id
}

#[test]
fn orch090_tc02_stop_active_agent_kills_it_and_cancels_everything() {
    let env = install();
    let task = with_branch(&env);
    env.orch()
        .args(["advance", "--task", "1", "--approve"])
        .assert()
        .success();
    let argv = ["sleep", "300.6902"];
    let mut worker = env
        .orch_std()
        .env("ORCH_AGENT_CMD", "sleep 300.6902 & wait")
        .args(["run-agent", "--next"])
        .spawn()
        .expect("spawn");
    wait_until("the agent", 20, || !common::host_pids_of(&argv).is_empty());
    let v = json(&out(
        &env,
        &[],
        &[
            "cancel",
            "--task",
            &task.to_string(),
            "--reason",
            "Plane STOP status",
            "--json",
        ],
    ));
    assert_eq!(v["note"], "cancelled", "{v}");
    assert_eq!(v["deferred"], false);
    assert_eq!(v["stopped"], 1);
    assert!(
        worker.wait().expect("wait").code().is_none(),
        "the owner was stopped"
    );
    wait_until("the agent to die", 5, || {
        common::host_pids_of(&argv).is_empty()
    });
    let shown = task_json(&env, task);
    assert_eq!(shown["task"]["stage"], "cancelled");
    assert!(
        shown["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .all(|j| j["status"] != "running" && j["status"] != "queued")
    );
    // Claim skips cancelled jobs (TC-03).
    env.orch().arg("claim").assert().code(3);
}

#[test]
fn orch090_tc02_idle_task_stops_nothing_and_tc03_queued_jobs_are_cancelled() {
    let env = install();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "idle"])
        .assert()
        .success();
    let v = json(&out(&env, &[], &["cancel", "--task", "1", "--json"]));
    assert_eq!(v["stopped"], 0);
    assert_eq!(v["note"], "cancelled");
    assert_eq!(env.json(&["job", "show", "1"])["status"], "cancelled");
    env.orch().args(["run-agent", "--next"]).assert().code(3);
    env.orch().args(["job", "retry", "1"]).assert().code(2);
}

#[test]
fn orch090_tc05_full_reset_removes_worktree_and_branch_tc06_keeps_row_and_artifacts() {
    let env = install();
    let task = with_branch(&env);
    let worktree = env.state().join("repos/demo/worktrees/DEMO-1");
    assert!(worktree.exists());
    assert!(remote_branches(&env).contains("feature/DEMO-1-stop-me"));
    env.orch()
        .args(["cancel", "--task", &task.to_string()])
        .assert()
        .success();
    assert!(!worktree.exists(), "worktree left behind");
    assert!(
        !remote_branches(&env).contains("feature/DEMO-1"),
        "branch left behind"
    );
    assert!(remote_branches(&env).contains("main"), "main must survive");
    let archived = env.state().join("archive/demo/DEMO-1/01-brd.md");
    assert!(archived.exists(), "artifacts must be kept");
    assert_eq!(task_json(&env, task)["task"]["stage"], "cancelled");
}

#[test]
fn orch090_tc05_delete_remote_branch_refuses_main_and_master() {
    let env = install();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let ctx = orch::context::Ctx {
        state_dir: env.state().to_path_buf(),
        config: orch::config::Config::load(None, &env.state().join("orch.toml"), &|_| None)
            .expect("config"),
    };
    let forge = orch::backends::forge::for_repo(&ctx, "demo").expect("forge");
    for protected in ["main", "master"] {
        assert!(
            forge.delete_branch(protected).is_err(),
            "{protected} deleted"
        );
    }
    assert!(remote_branches(&env).contains("main"));
    assert!(
        !forge.delete_branch("feature/gone").expect("missing branch"),
        "a missing branch is already gone"
    );
}

#[test]
fn orch090_tc07_idempotent_on_cancelled_done_and_missing_tasks() {
    let env = install();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env.orch()
        .args(["cancel", "--task", "1"])
        .assert()
        .success();
    let again = json(&out(&env, &[], &["cancel", "--task", "1", "--json"]));
    assert!(
        again["note"]
            .as_str()
            .unwrap_or("")
            .starts_with("already-terminal"),
        "{again}"
    );
    let missing = out(&env, &[], &["cancel", "--task", "99", "--json"]);
    assert_eq!(missing.status.code(), Some(3));
    assert_eq!(json(&missing)["note"], "no-task");
    env.exec("UPDATE tasks SET stage = 'done' WHERE id = 1");
    let done = out(&env, &[], &["cancel", "--task", "1", "--json"]);
    assert_eq!(done.status.code(), Some(3));
    // One comment and one notification for the one real cancel.
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM outbox WHERE dedup_key LIKE 'cancel-1:%'"),
        2
    );
}

#[test]
fn orch090_tc08_kill_switch_and_scope() {
    let env = install();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let off = out(
        &env,
        &[("ORCH_STOP_STATUS_ENABLED", "false")],
        &["cancel", "--task", "1", "--json"],
    );
    assert_eq!(off.status.code(), Some(3));
    assert!(
        json(&off)["note"]
            .as_str()
            .unwrap_or("")
            .starts_with("not-applicable")
    );
    let scoped = out(
        &env,
        &[("ORCH_STOP_STATUS_REPOS", "enduro-trails")],
        &["cancel", "--task", "1", "--json"],
    );
    assert_eq!(scoped.status.code(), Some(3));
    assert_eq!(
        task_json(&env, 1)["task"]["stage"],
        "analysis",
        "nothing changed"
    );
    assert_eq!(env.json(&["job", "show", "1"])["status"], "queued");
    let in_scope = out(
        &env,
        &[("ORCH_STOP_STATUS_REPOS", "enduro-trails,demo")],
        &["cancel", "--task", "1"],
    );
    assert!(in_scope.status.success());
}

#[test]
fn orch090_tc09_status_has_the_stop_block() {
    let env = install();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env.orch()
        .args(["cancel", "--task", "1"])
        .assert()
        .success();
    let status = env.json(&["status"]);
    let stop = &status["stop"];
    assert_eq!(stop["enabled"], true);
    assert_eq!(stop["cancelled_count"], 1);
    assert_eq!(stop["recent"][0]["task_id"], 1);
    for key in [
        "counts",
        "gates",
        "recent",
        "reaper",
        "merge_gate",
        "outbox",
    ] {
        assert!(status.get(key).is_some(), "status lost {key}");
    }
}

#[test]
fn orch090_tc13_end_to_end_stop_tombstones_the_keys_so_the_issue_can_start_afresh() {
    let env = install();
    with_branch(&env);
    env.exec("UPDATE tasks SET plane_id = 'PL-110', plane_issue_id = 'uuid-110' WHERE id = 1");
    env.orch()
        .args(["cancel", "--task", "1"])
        .assert()
        .success();
    let t = &task_json(&env, 1)["task"];
    assert_eq!(t["plane_id"], "PL-110#cancelled-1");
    assert_eq!(t["plane_issue_id"], "uuid-110#cancelled-1");
    assert_eq!(t["work_item_id"], "DEMO-1#cancelled-1");
    assert!(t["cancelled_at"].is_i64());
    let by_old = orch::pipeline::task::by_plane_id(env.db().conn(), "PL-110").expect("lookup");
    assert!(by_old.is_none());
    // The same work item starts afresh.
    env.orch()
        .args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            "again",
            "--work-item",
            "DEMO-1",
        ])
        .assert()
        .success();
}

#[test]
fn orch090_tc14_migration_is_idempotent_and_the_columns_exist() {
    let env = install();
    env.orch().arg("init").assert().success();
    env.orch().arg("init").assert().success();
    let columns = if common::on_postgres() {
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'tasks'"
    } else {
        "SELECT name FROM pragma_table_info('tasks')"
    };
    let cols: Vec<String> = env
        .rows(columns)
        .into_iter()
        .filter_map(|r| r[0].as_str().map(str::to_owned))
        .collect();
    for c in ["cancelled_at", "cancel_requested_at"] {
        assert!(cols.iter().any(|x| x == c), "{c} missing");
    }
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    env.orch().arg("claim").assert().success();
}

fn hold_lease(env: &Env) {
    env.exec(&format!(
        "INSERT INTO merge_leases (repo, task_id, branch, token, acquired_at)
         VALUES ('demo', 1, 'feature/DEMO-1-stop-me', 'task-1', {})",
        orch::storage::now()
    ));
}

/// D7: STOP while the task's merge/deploy actor runs with the lease held is
/// deferred (queued jobs cancelled, the actor untouched, one notification),
/// and applied once the window closes.
#[test]
fn orch090_d7_stop_in_the_critical_window_defers_then_applies() {
    let env = install();
    with_branch(&env);
    env.exec(
        "UPDATE jobs SET status = 'done' WHERE id = 1;
         UPDATE tasks SET stage = 'deploy-staging' WHERE id = 1;
         INSERT INTO jobs (agent, repo, task_id, stage, created_at) VALUES ('deployer', 'demo', 1, 'deploy-staging', 0);
         INSERT INTO jobs (agent, repo, task_id, stage, created_at) VALUES ('deployer', 'demo', 1, 'deploy-staging', 0);",
    );
    hold_lease(&env);
    let started = env.shared().join("actor.started");
    let mut worker = env
        .orch_std()
        .env(
            "ORCH_AGENT_CMD",
            format!("touch {}; sleep 3; exit 1", started.display()),
        )
        .args(["run-agent", "--job", "2"])
        .spawn()
        .expect("spawn");
    wait_until("the actor", 20, || started.exists());
    let first = json(&out(&env, &[], &["cancel", "--task", "1", "--json"]));
    assert_eq!(first["note"], "deferred-critical-window", "{first}");
    assert_eq!(first["deferred"], true);
    let second = json(&out(&env, &[], &["cancel", "--task", "1", "--json"]));
    assert_eq!(second["note"], "deferred-already-pending");
    assert_eq!(
        env.json(&["job", "show", "3"])["status"],
        "cancelled",
        "queued job cancelled"
    );
    assert_eq!(
        env.json(&["job", "show", "2"])["status"],
        "running",
        "the actor is untouched"
    );
    assert_eq!(task_json(&env, 1)["task"]["stage"], "deploy-staging");
    assert!(task_json(&env, 1)["task"]["cancel_requested_at"].is_i64());
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM outbox WHERE dedup_key = 'cancel-deferred-1'"),
        1
    );
    // The actor's agent exits 1: an agent failure (5).
    assert_eq!(worker.wait().expect("wait").code(), Some(5));
    // The worker leaving the window applied the pending request at once;
    // the next reap finds nothing left to apply.
    assert_eq!(task_json(&env, 1)["task"]["stage"], "cancelled");
    let pass = json(&out(&env, &[], &["reap", "--json"]));
    assert_eq!(pass["cancels_applied"], serde_json::json!([]), "{pass}");
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM task_transitions WHERE kind = 'cancel'"),
        1
    );
    assert_eq!(env.sql_i64("SELECT count(*) FROM merge_leases"), 0);
    assert!(!remote_branches(&env).contains("feature/DEMO-1"));
}

/// D7: a task parked on deploy holding the lease, with no running job, is
/// NOT in a critical window: STOP resets it fully, lease and branch included.
#[test]
fn orch090_d7_stop_on_deploy_awaiting_confirm_is_a_full_reset() {
    let env = install();
    with_branch(&env);
    env.exec("UPDATE jobs SET status = 'done' WHERE id = 1; UPDATE tasks SET stage = 'deploy' WHERE id = 1;");
    hold_lease(&env);
    let v = json(&out(&env, &[], &["cancel", "--task", "1", "--json"]));
    assert_eq!(v["note"], "cancelled", "{v}");
    assert_eq!(env.sql_i64("SELECT count(*) FROM merge_leases"), 0);
    assert!(!remote_branches(&env).contains("feature/DEMO-1"));
}
