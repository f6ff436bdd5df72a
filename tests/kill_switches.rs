//! Kill-switches through the real binary: each setting that switches a
//! mechanism off does what docs/configuration.md says — the merge gate off or
//! out of scope touches nothing, and with the proactive lease reclaim off the
//! lazy reclaim on acquire still frees an expired lease.

mod common;

use std::process::Output;

use common::Env;

/// The demo installation with `extra` top-level settings.
fn install(extra: &str) -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{extra}\n{config}")).expect("config");
    env
}

fn orch(env: &Env, args: &[&str]) -> Output {
    env.orch_std().args(args).output().expect("run orch")
}

fn sql(env: &Env, sql: &str) -> i64 {
    env.sql_i64(sql)
}

fn counter(env: &Env, name: &str) -> i64 {
    sql(
        env,
        &format!("SELECT coalesce(sum(value), 0) FROM counters WHERE name = '{name}'"),
    )
}

fn stage(env: &Env, task: i64) -> String {
    env.json(&["task", "show", &task.to_string()])["task"]["stage"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn create(env: &Env, title: &str) -> i64 {
    env.json(&["task", "create", "--repo", "demo", "--title", title])["id"]
        .as_i64()
        .expect("id")
}

/// Run jobs (approving the analysis) until `task` is on `stage`.
fn drive_to(env: &Env, task: i64, stage_name: &str) {
    for _ in 0..30 {
        if stage(env, task) == stage_name {
            return;
        }
        if orch(env, &["run-agent", "--next"]).status.code() == Some(3) {
            orch(env, &["advance", "--task", &task.to_string(), "--approve"]);
        }
    }
    panic!(
        "task {task} never reached {stage_name} (on {})",
        stage(env, task)
    );
}

/// `merge_gate_enabled = false`, or a repo outside `merge_gate_repos`: the
/// deploy-staging → deploy edge takes no lease, and never rebases, pushes or
/// re-tests a branch that fell behind main; the forge's merge refuses it
/// (behind) and the task goes back to development.
#[test]
fn orch065_tc13_the_merge_gate_off_or_out_of_scope_touches_nothing() {
    for switch in [
        "merge_gate_enabled = false\nmerge_gate_repos = \"demo\"",
        "merge_gate_repos = \"elsewhere\"",
    ] {
        let env = install(switch);
        let task = create(&env, "t");
        drive_to(&env, task, "deploy-staging");
        common::push_to_main(&env, "other", "other.md", "another change\n");
        let branch = env.json(&["task", "show", "1"])["task"]["branch"]
            .as_str()
            .expect("branch")
            .to_owned();
        orch(&env, &["run-agent", "--next"]);
        assert_eq!(counter(&env, "merge_gate_rebases_total"), 0, "{switch}");
        assert_eq!(counter(&env, "merge_gate_retests_total"), 0, "{switch}");
        let forge = orch::git::Git::at(env.state().join("forge/demo.git"));
        assert!(
            !forge
                .check(["merge-base", "--is-ancestor", "main", &branch])
                .expect("merge-base"),
            "{switch}: the branch was rebased onto main and pushed"
        );
        assert_eq!(
            sql(&env, "SELECT count(*) FROM merge_leases"),
            0,
            "{switch}"
        );
        assert_eq!(stage(&env, task), "development", "{switch}");
    }
}

/// Seed §6.5: with `lease_reclaim_enabled = false` only the lazy reclaim on
/// acquire remains — an expired lease whose holder cannot use it is taken
/// over by the next merge (counted, notified); a fresh one is not.
#[test]
fn orch065_tc15_with_the_proactive_reclaim_off_an_expired_lease_is_reclaimed_on_acquire() {
    // With the serial gate on, the claim is where the merge waits; with it
    // off, the job runs and the merge gate's acquire is.
    for serial in [true, false] {
        reclaimed_on_acquire(serial);
    }
}

fn reclaimed_on_acquire(serial: bool) {
    let env = install(&format!(
        "merge_gate_repos = \"demo\"\nlease_reclaim_enabled = false\nserial_gate_enabled = {serial}"
    ));
    let old = env.json(&[
        "task",
        "create",
        "--repo",
        "demo",
        "--title",
        "old",
        "--no-start",
    ])["id"]
        .as_i64()
        .expect("id");
    let task = create(&env, "t");
    drive_to(&env, task, "deploy-staging");
    let lease = |acquired_at: i64| {
        env.exec(&format!(
            "DELETE FROM merge_leases WHERE repo = 'demo';
             INSERT INTO merge_leases (repo, task_id, branch, token, acquired_at)
             VALUES ('demo', {old}, 'feature/old', 'tok', {acquired_at})"
        ));
    };
    // Within the TTL: the holder keeps it, the merge waits (lock-busy).
    lease(orch::storage::now() - 60);
    let o = orch(&env, &["run-agent", "--next"]);
    if serial {
        assert_eq!(o.status.code(), Some(3), "the serial gate holds the merge");
    } else {
        assert_eq!(counter(&env, "merge_gate_lock_busy_total"), 1);
    }
    assert_eq!(stage(&env, task), "deploy-staging");
    // The reaper's and reclaim-leases' proactive passes stay off.
    orch(&env, &["reap"]);
    orch(&env, &["reclaim-leases"]);
    assert_eq!(counter(&env, "lease_reclaimed_total"), 0);
    // Past the TTL (merge_lock_timeout_s, 3600 s by default), with a holder that cannot use it: reclaimed on acquire.
    lease(orch::storage::now() - 3601);
    env.exec("UPDATE jobs SET available_at = 0 WHERE status = 'queued'");
    orch(&env, &["run-agent", "--next"]);
    assert_eq!(stage(&env, task), "deploy", "serial {serial}");
    assert_eq!(counter(&env, "lease_reclaimed_total"), 1);
    let notes = std::fs::read_to_string(env.state().join("notifications.log")).expect("notes");
    assert!(
        notes.contains("merge lease for demo reclaimed (on acquire"),
        "{notes}"
    );
}

/// A config file of an earlier version that sets a removed setting still
/// loads: one warning line per key, naming it and pointing at the docs.
/// A key orch never knew is still refused (exit 78).
#[test]
fn a_removed_setting_loads_with_one_warning_and_a_typo_is_refused() {
    let env = Env::bare();
    env.write_config("staging = true\nreaper_interval_s = 30\nhost_repos_dir = \"/srv\"");
    let out = env.orch().arg("init").output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["staging", "reaper_interval_s", "host_repos_dir"] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("`{key}` was removed")))
            .collect();
        assert_eq!(lines.len(), 1, "{key}: {stderr}");
        assert!(lines[0].contains("docs/configuration.md"), "{stderr}");
    }
    env.write_config("staging_enabled = true");
    let out = env.orch().arg("status").output().expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("staging_enabled"));
}
