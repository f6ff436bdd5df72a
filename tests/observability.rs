//! Never-raise observability through the real binary: `orch status` shows
//! every block it can read when one cannot be, `orch reap` goes on past a job
//! it cannot reap, and `orch status` reports the reconciler's last pass.

mod common;

use common::Env;

fn exec(env: &Env, sql: &str) {
    env.sqlite().execute_batch(sql).expect(sql);
}

/// One unreadable block (its table is gone) is an error entry; every other
/// block is still printed, in JSON and in text; the exit code is 1 (partial).
#[test]
fn orch090_tc09_status_shows_every_block_it_can_read() {
    let env = Env::new();
    env.enqueue_many(2);
    exec(&env, "DROP TABLE post_deploys");
    let out = env.orch().args(["status", "--json"]).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["errors"]["post_deploy"]
            .as_str()
            .is_some_and(|e| e.contains("post_deploys")),
        "{v}"
    );
    assert!(v["post_deploy"]["error"].is_string(), "{v}");
    assert_eq!(
        v["errors"].as_object().map_or(0, serde_json::Map::len),
        1,
        "{v}"
    );
    assert_eq!(v["counts"]["queued"], 2, "{v}");
    assert!(v["stop"]["enabled"].is_boolean(), "{v}");
    assert!(v["costs"]["total_usd"].is_number(), "{v}");
    let text = env.orch().arg("status").output().expect("run");
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("post-deploy ERROR"), "{text}");
    for line in [
        "jobs ",
        "reaper ",
        "reconcile ",
        "stop ",
        "outbox ",
        "recent jobs",
    ] {
        assert!(text.contains(line), "{line:?} missing: {text}");
    }
}

/// Seed §5 (one bad job never stops a reap pass): a database error on one
/// job is collected and the pass reaps the others (exit 1, `errors` says which).
#[test]
fn orch065_tc08_orch113_tc08_a_database_error_on_one_job_does_not_stop_the_reap_pass() {
    let env = Env::new();
    let ids = env.enqueue_many(2);
    for id in &ids {
        exec(
            &env,
            &format!(
                "UPDATE jobs SET status = 'running', claim_token = 'dead-owner-{id}', attempts = 1, started_at = 1 WHERE id = {id}"
            ),
        );
    }
    exec(
        &env,
        &format!(
            "CREATE TRIGGER injected BEFORE UPDATE ON jobs WHEN old.id = {} BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
            ids[0]
        ),
    );
    let out = env.orch().args(["reap", "--json"]).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pass: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let errors = pass["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 1, "{pass}");
    assert!(
        errors[0].as_str().is_some_and(
            |e| e.starts_with(&format!("job {}:", ids[0])) && e.contains("injected fault")
        ),
        "{pass}"
    );
    assert_eq!(pass["reaped"][0]["job_id"], ids[1], "{pass}");
    assert_ne!(
        env.json(&["job", "show", &ids[1].to_string()])["status"],
        "running"
    );
    assert_eq!(
        env.json(&["job", "show", &ids[0].to_string()])["status"],
        "running"
    );
    // The pass was still recorded.
    assert_eq!(env.json(&["status"])["reaper"]["passes_total"], 1);
}

/// `orch status` has a `reconcile` block: how many passes, and what the last did.
#[test]
fn status_reports_the_last_reconcile_pass() {
    let env = Env::new();
    let before = env.json(&["status"]);
    assert_eq!(before["reconcile"]["passes_total"], 0, "{before}");
    assert!(before["reconcile"]["last_pass"].is_null(), "{before}");
    env.orch()
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
    exec(&env, "UPDATE tasks SET stage = 'done'");
    env.orch().arg("reconcile").assert().success();
    env.orch().arg("reconcile").assert().success();
    let after = env.json(&["status"]);
    let rc = &after["reconcile"];
    assert_eq!(rc["enabled"], true, "{after}");
    assert_eq!(rc["passes_total"], 2, "{after}");
    assert!(
        rc["last_pass"]["at"].as_i64().is_some_and(|t| t > 0),
        "{after}"
    );
    assert_eq!(rc["last_pass"]["skipped"]["terminal"], 1, "{after}");
    assert_eq!(rc["last_pass"]["advanced"], 0, "{after}");
    assert!(
        rc["last_pass"]["errors"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{after}"
    );
    let text = env.orch().arg("status").output().expect("run");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("reconcile  on  passes 2, last pass"),
        "{text}"
    );
}

/// The steps after the job loop are best-effort too: a pending STOP that
/// cannot be applied for one task does not keep the others' from applying,
/// nor the lease sweep and the pass record from running.
#[test]
fn a_failing_pending_stop_does_not_stop_the_rest_of_the_reap_pass() {
    let env = Env::new();
    for title in ["a", "b"] {
        env.orch()
            .args([
                "task",
                "create",
                "--repo",
                "demo",
                "--title",
                title,
                "--no-start",
            ])
            .assert()
            .success();
    }
    exec(&env, "UPDATE tasks SET cancel_requested_at = 1");
    exec(
        &env,
        "CREATE TRIGGER injected BEFORE UPDATE ON tasks WHEN old.id = 1 BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    );
    let out = env.orch().args(["reap", "--json"]).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pass: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(pass["cancels_applied"], serde_json::json!([2]), "{pass}");
    let errors = pass["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.starts_with("task 1:") && e.contains("injected fault"))),
        "{pass}"
    );
    assert_eq!(
        env.json(&["status"])["reaper"]["passes_total"],
        1,
        "the pass was recorded"
    );
}
