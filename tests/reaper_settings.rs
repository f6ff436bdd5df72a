//! The reaper's settings as an operator sees them through `orch status`:
//! their defaults, their `ORCH_*` environment overrides, and the budget
//! invariant that refuses a backstop shorter than a re-test plus its grace
//! (seed ORCH-065 configuration cases and ORCH-113 TC-07).

mod common;

use common::Env;

fn reaper(env: &Env, vars: &[(&str, &str)]) -> serde_json::Value {
    let mut c = env.orch();
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.args(["status", "--json"]).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["reaper"].clone()
}

/// Seed ORCH-065 `test_reaper_settings_defaults` and TC-18 (the queue view
/// has a reaper block): `orch status` shows the reaper's switches and
/// limits with their defaults, and its pass counters.
#[test]
fn orch065_tc18_status_has_the_reaper_block_with_its_defaults() {
    let env = Env::new();
    let r = reaper(&env, &[]);
    assert_eq!(r["enabled"], true, "{r}");
    assert_eq!(r["max_running_s"], 5400, "{r}");
    assert_eq!(r["finalize_grace_s"], 300, "{r}");
    assert_eq!(r["start_grace_s"], 30, "{r}");
    assert_eq!(r["finalizer_liveness_enabled"], true, "{r}");
    assert_eq!(r["passes_total"], 0, "{r}");
    for key in [
        "last_pass",
        "reaped_total",
        "last_reaped",
        "finalizer_defers_total",
        "backstop_total",
    ] {
        assert!(r.get(key).is_some(), "{key} missing: {r}");
    }
}

/// Seed ORCH-065 `test_reaper_settings_env_override`: every reaper setting
/// is read from its `ORCH_*` variable over the file's value.
#[test]
fn orch065_reaper_settings_env_override() {
    let env = Env::new();
    let r = reaper(
        &env,
        &[
            ("ORCH_REAPER_ENABLED", "false"),
            ("ORCH_REAPER_MAX_RUNNING_S", "1200"),
            ("ORCH_REAPER_FINALIZE_GRACE_S", "30"),
            ("ORCH_REAPER_START_GRACE_S", "5"),
            ("ORCH_REAPER_FINALIZER_LIVENESS_ENABLED", "false"),
            ("ORCH_MERGE_RETEST_TIMEOUT_S", "600"),
            ("ORCH_MERGE_LOCK_TIMEOUT_S", "900"),
            // The backstop must also outlast an agent's own timeout.
            ("ORCH_AGENT_TIMEOUT_S", "600"),
        ],
    );
    assert_eq!(r["enabled"], false, "{r}");
    assert_eq!(r["max_running_s"], 1200, "{r}");
    assert_eq!(r["finalize_grace_s"], 30, "{r}");
    assert_eq!(r["start_grace_s"], 5, "{r}");
    assert_eq!(r["finalizer_liveness_enabled"], false, "{r}");
}

/// Seed ORCH-113 TC-07: the defaults keep grace 300 and ceiling 5400, and
/// the ceiling must exceed the re-test timeout plus the finalize grace (orch
/// measures no coverage, so that term of the seed's sum is gone): a config
/// that breaks it is refused with exit 78 before anything runs.
#[test]
fn orch113_tc07_budget_invariant_preserved() {
    let env = Env::new();
    let r = reaper(&env, &[]);
    assert_eq!(r["finalize_grace_s"], 300);
    assert_eq!(r["max_running_s"], 5400);
    env.write_config("reaper_max_running_s = 1100\nmerge_retest_timeout_s = 900");
    let out = env.orch().arg("status").output().expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reaper_max_running_s (1100) must exceed merge_retest_timeout_s + reaper_finalize_grace_s (1200)"),
        "{err}"
    );
}
