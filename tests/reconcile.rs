//! The reconciler (`orch reconcile`) through the real binary: what it never
//! touches, and each of its skip rules as it reports them in `--json`'s
//! `skipped` map (reason → count).

mod common;

use common::Env;

/// The demo installation (agents, forge, gates) with `extra` top-level settings.
fn install(extra: &str) -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{extra}\n{config}")).expect("config");
    env
}

fn sql(env: &Env, sql: &str) -> i64 {
    env.sql_i64(sql)
}

fn exec(env: &Env, sql: &str) {
    env.exec(sql);
}

fn stage(env: &Env, task: i64) -> String {
    env.json(&["task", "show", &task.to_string()])["task"]["stage"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Seed rule (ORCH-053): the reconciler never touches `analysis`, the human's
/// gate — not even with every gate green and the grace long past: it posts
/// nothing (no "In Review" over the state a person set) and moves nothing.
#[test]
fn the_reconciler_never_touches_analysis() {
    let env = install("reconcile_grace_overrides_json = '{\"analysis\": 0}'");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "t"])
        .assert()
        .success();
    // The analyst runs; the analysis is complete and waits for a human.
    env.orch()
        .args(["run-agent", "--next"])
        .output()
        .expect("run");
    assert_eq!(stage(&env, 1), "analysis");
    // A person set "Approved" (green gate); the webhook that would advance it was lost.
    exec(
        &env,
        "UPDATE tasks SET tracker_state = 'Approved', updated_at = 0 WHERE id = 1",
    );
    let rows = sql(&env, "SELECT count(*) FROM outbox");
    for _ in 0..3 {
        let r = env.json(&["reconcile"]);
        assert_eq!(r["skipped"]["analysis (human gate)"], 1, "{r}");
        assert!(r["advanced"].as_array().is_some_and(Vec::is_empty), "{r}");
    }
    assert_eq!(
        sql(&env, "SELECT count(*) FROM outbox"),
        rows,
        "something was posted"
    );
    assert_eq!(stage(&env, 1), "analysis");
    assert_eq!(
        env.json(&["task", "show", "1"])["task"]["tracker_state"],
        "Approved",
        "the human's state was overridden"
    );
}

/// The other skip rules, one task each: escalated, blocked (tracker state),
/// busy (a running job), terminal, within the grace. None is advanced and
/// nothing is posted.
#[test]
fn orch090_tc12_the_reconciler_skips_escalated_blocked_busy_cancelled_and_fresh_tasks() {
    let env = install("");
    for n in 1..=5 {
        env.orch()
            .args([
                "task",
                "create",
                "--repo",
                "demo",
                "--title",
                &format!("t{n}"),
                "--no-start",
            ])
            .assert()
            .success();
    }
    // All on review (a cheap gate), idle past the grace, then one rule each.
    exec(&env, "UPDATE tasks SET stage = 'review', updated_at = 0");
    exec(&env, "UPDATE tasks SET escalated_at = 1 WHERE id = 1");
    exec(
        &env,
        "UPDATE tasks SET tracker_state = 'Blocked' WHERE id = 2",
    );
    let job = env.enqueue_many(1)[0];
    exec(
        &env,
        &format!(
            "UPDATE jobs SET task_id = 3, status = 'running', claim_token = 'tok', started_at = 1 WHERE id = {job}"
        ),
    );
    // Cancelled (seed ORCH-090 TC-12): terminal, so no Plane call either.
    exec(&env, "UPDATE tasks SET stage = 'cancelled' WHERE id = 4");
    exec(
        &env,
        &format!(
            "UPDATE tasks SET updated_at = {} WHERE id = 5",
            orch::storage::now()
        ),
    );
    let rows = sql(&env, "SELECT count(*) FROM outbox");
    let r = env.json(&["reconcile"]);
    let skipped = &r["skipped"];
    for reason in [
        "escalated",
        "blocked or needs input",
        "busy",
        "terminal",
        "within grace",
    ] {
        assert_eq!(skipped[reason], 1, "{reason}: {r}");
    }
    assert_eq!(
        skipped.as_object().map_or(0, serde_json::Map::len),
        5,
        "another rule fired: {r}"
    );
    assert!(r["advanced"].as_array().is_some_and(Vec::is_empty), "{r}");
    assert_eq!(sql(&env, "SELECT count(*) FROM outbox"), rows);
    assert_eq!(stage(&env, 2), "review");
}

/// With Plane down, each step of a pass is best-effort: the poll's failure is
/// collected in `errors` (exit 1, partial), a pending STOP is still applied,
/// and the final outbox flush still delivers its notification.
#[test]
fn plane_down_is_a_partial_pass_and_the_final_flush_still_runs() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let env = install(
        "tracker = \"plane\"\nplane_url = \"http://127.0.0.1:9\"\nplane_workspace = \"ws\"\nhttp_timeout_s = 2",
    );
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path)
        .expect("config")
        .replace("[repos.demo]", "[repos.demo]\nplane_project = \"p-1\"");
    std::fs::write(&path, config).expect("config");
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
    // A STOP recorded while its task was in a critical window, now closed.
    exec(
        &env,
        "UPDATE tasks SET cancel_requested_at = 1 WHERE id = 1",
    );
    let out = env
        .orch()
        .env("ORCH_PLANE_API_TOKEN", "t")
        .args(["reconcile", "--json"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.starts_with("tracker poll of demo:"))),
        "{r}"
    );
    assert_eq!(r["cancels_applied"][0], 1, "{r}");
    assert_eq!(stage(&env, 1), "cancelled");
    // The cancel's notification went out in the final flush, after the poll failed.
    assert_eq!(
        sql(
            &env,
            "SELECT count(*) FROM outbox WHERE channel = 'notifier' AND status = 'pending'"
        ),
        0,
        "{r}"
    );
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).unwrap_or_default();
    assert!(notes.contains("cancel"), "{notes}");
    // The failed pass is recorded with its errors.
    let status = env.json(&["status"]);
    assert_eq!(status["reconcile"]["passes_total"], 1, "{status}");
    assert!(
        status["reconcile"]["last_pass"]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{status}"
    );
}
