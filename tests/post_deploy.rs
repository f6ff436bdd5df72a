//! The post-deploy monitor through the real binary (seeds ORCH-021): a task
//! that reaches `done` arms one `post-deploy-monitor` job that probes a
//! loopback health server over a short window, writes
//! `16-post-deploy-log.md`, alerts on degradation, rolls back only non-self
//! repositories with auto-rollback on, survives SIGKILL without counting a
//! check twice, and does nothing at all with the kill-switch off.

mod common;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Env;

/// A loopback health endpoint answering with scripted `(status, delay_ms)`
/// replies in order; the last one repeats.
struct Health {
    url: String,
    hits: Arc<AtomicUsize>,
}

fn health_server(script: &[(u16, u64)]) -> Health {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let addr = server.server_addr().to_ip().expect("ip address");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let script = script.to_vec();
    std::thread::spawn(move || {
        for (i, request) in server.incoming_requests().enumerate() {
            let (status, delay) = script.get(i).or(script.last()).copied().unwrap_or((200, 0));
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(delay));
            let _ =
                request.respond(tiny_http::Response::from_string("ok").with_status_code(status));
        }
    });
    Health {
        url: format!("http://{addr}/health"),
        hits,
    }
}

/// The demo installation with top-level `settings` and `repo` lines added to `[repos.demo]`.
fn install(settings: &str, repo: &str) -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    add_config(&env, settings, repo);
    env
}

/// Prepend top-level settings and append lines to the last table (`[repos.demo]`).
fn add_config(env: &Env, settings: &str, repo: &str) {
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{settings}\n{config}\n{repo}\n")).expect("config");
}

fn run(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = env.orch_std();
    for (k, v) in vars {
        c.env(k, v);
    }
    c.args(args).output().expect("run")
}

fn stage(env: &Env) -> String {
    env.json(&["task", "show", "1"])["task"]["stage"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Create task 1 and run the pipeline (the deployer agent path) to `done`.
fn to_done(env: &Env, vars: &[(&str, &str)]) {
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "watch me"])
        .assert()
        .success();
    for _ in 0..30 {
        if stage(env) == "done" {
            return;
        }
        let o = run(env, vars, &["run-agent", "--next"]);
        if o.status.code() == Some(3) {
            let a = run(env, vars, &["advance", "--task", "1", "--approve"]);
            assert!(a.status.success(), "stuck on {}", stage(env));
        } else {
            assert!(
                o.status.success(),
                "run-agent failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    panic!("never reached done: {}", stage(env));
}

/// The self-hosting flow to `done`: phase A, Confirm Deploy, the finalizer job.
fn self_hosting_to_done(env: &Env) {
    common::to_phase_a(env);
    env.orch()
        .args(["advance", "--task", "1", "--confirm-deploy"])
        .assert()
        .success();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.state().join("hook.count").exists() {
        assert!(Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = run(env, &[], &["run-agent", "--next"]);
    assert!(o.status.success());
    assert_eq!(stage(env), "done");
}

/// Run workers as the timer would until the monitor finished; returns the
/// run verdicts seen.
fn monitor_to_end(env: &Env) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut verdicts = Vec::new();
    loop {
        if env.sql_i64(
            "SELECT count(*) FROM post_deploys WHERE task_id = 1 AND finished_at IS NOT NULL",
        ) == 1
        {
            return verdicts;
        }
        assert!(Instant::now() < deadline, "the monitor never finished");
        let o = run(env, &[], &["run-agent", "--next", "--json"]);
        if o.status.code() == Some(3) {
            std::thread::sleep(Duration::from_millis(150));
            continue;
        }
        assert!(
            o.status.success(),
            "run-agent failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        verdicts.push(v["run_verdict"].as_str().unwrap_or("").to_owned());
    }
}

fn monitor(env: &Env) -> serde_json::Value {
    env.json(&["task", "show", "1"])["post_deploy"].clone()
}

fn post_deploy_log(env: &Env) -> String {
    std::fs::read_to_string(
        env.state()
            .join("repos/demo/worktrees/DEMO-1/docs/work-items/DEMO-1/16-post-deploy-log.md"),
    )
    .expect("16-post-deploy-log.md")
}

fn notifications(env: &Env) -> String {
    std::fs::read_to_string(env.state().join("notifications.log")).unwrap_or_default()
}

fn count_lines(env: &Env, name: &str) -> usize {
    std::fs::read_to_string(env.state().join(name)).map_or(0, |s| s.lines().count())
}

#[test]
fn a_healthy_deploy_is_watched_over_the_whole_window_without_holding_a_worker() {
    let health = health_server(&[(200, 0)]);
    let env = install(
        "post_deploy_window_s = 2\npost_deploy_checks = 3",
        &format!("health_url = \"{}\"", health.url),
    );
    to_done(&env, &[]);
    // Armed by the commit that moved the task to done: one row, one job.
    assert_eq!(env.sql_i64("SELECT count(*) FROM post_deploys"), 1);
    assert_eq!(
        env.sql_i64(
            "SELECT count(*) FROM jobs WHERE agent = 'post-deploy-monitor' AND stage = 'done'"
        ),
        1
    );
    let verdicts = monitor_to_end(&env);
    assert!(
        verdicts.iter().any(|v| v.ends_with("waiting")),
        "the monitor never gave its worker back between checks: {verdicts:?}"
    );
    let m = monitor(&env);
    assert_eq!(m["status"], "healthy", "{m}");
    assert_eq!(m["action_taken"], "NONE");
    assert_eq!(m["checks_done"], 3);
    assert_eq!(m["checks_failed"], 0);
    let checks = m["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 3);
    // Spread over the window: no check before its due time (a late first
    // check on a loaded machine may run close to the second), the last one
    // no earlier than the window's end.
    let started = m["started_at"].as_i64().unwrap_or(0);
    for (k, check) in checks.iter().enumerate() {
        let due = orch::pipeline::post_deploy::due_at(started, 2, 3, k as i64 + 1);
        assert!(
            check["at"].as_i64().unwrap_or(0) >= due,
            "check {} ran before its due time {due}: {m}",
            k + 1
        );
    }
    assert!(
        checks[2]["at"].as_i64().unwrap_or(0) >= started + 2,
        "the window was not watched to its end: {m}"
    );
    assert_eq!(health.hits.load(Ordering::SeqCst), 3, "one probe per check");
    // The job waited without spending attempts or the transient budget.
    let job = &env.rows(
        "SELECT status, attempts, transient_attempts FROM jobs WHERE agent = 'post-deploy-monitor'",
    )[0];
    assert_eq!(job, &[serde_json::json!("done"), 1.into(), 0.into()]);
    let log = post_deploy_log(&env);
    for field in [
        "post_deploy_status: HEALTHY",
        "action_taken: NONE",
        "work_item: DEMO-1",
        "window_s: 2",
        "checks_total: 3",
        "checks_failed: 0",
    ] {
        assert!(log.contains(field), "{field}: {log}");
    }
    // Committed and pushed to the task's branch.
    let branch = env.json(&["task", "show", "1"])["task"]["branch"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let pushed = orch::git::Git::at(env.state().join("forge/demo.git"))
        .run([
            "show",
            &format!("{branch}:docs/work-items/DEMO-1/16-post-deploy-log.md"),
        ])
        .expect("the log is pushed");
    assert!(pushed.contains("post_deploy_status: HEALTHY"));
    assert!(!notifications(&env).contains("DEGRADED"));
    // orch status reports the block, in JSON and for people.
    let status = env.json(&["status"]);
    let pd = &status["post_deploy"];
    assert_eq!(pd["enabled"], true);
    assert_eq!(pd["window_s"], 2);
    assert_eq!(pd["running"].as_array().map_or(9, Vec::len), 0);
    assert_eq!(pd["recent"][0]["status"], "healthy");
    let human = env.orch().arg("status").output().expect("status");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("post-deploy on"), "{text}");
    assert!(text.contains("HEALTHY"), "{text}");
    let shown = env
        .orch()
        .args(["task", "show", "1"])
        .output()
        .expect("show");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("post-deploy monitor"), "{text}");
    // Nothing left to do.
    assert_eq!(
        run(&env, &[], &["run-agent", "--next"]).status.code(),
        Some(3)
    );
}

#[test]
fn a_deploy_that_degrades_mid_window_is_reported_degraded_with_an_alert() {
    let health = health_server(&[(200, 0), (200, 0), (503, 0)]);
    let env = install(
        "post_deploy_window_s = 3\npost_deploy_checks = 5\npost_deploy_max_failures = 2",
        &format!(
            "health_url = \"{}\"\nrollback_cmd = \"echo run >> {}/rollback.count\"",
            health.url,
            env_state_placeholder()
        ),
    );
    fix_placeholder(&env);
    to_done(&env, &[]);
    let running = env.json(&["status"]);
    assert_eq!(
        running["post_deploy"]["running"][0]["task_id"], 1,
        "{running}"
    );
    monitor_to_end(&env);
    let m = monitor(&env);
    assert_eq!(m["status"], "degraded", "{m}");
    assert_eq!(
        m["action_taken"], "ALERT",
        "auto-rollback is off: alert only"
    );
    assert_eq!(m["checks_failed"], 2);
    assert_eq!(m["checks_done"], 4, "the window ended early: {m}");
    assert!(
        m["last_error"].as_str().unwrap_or("").contains("HTTP 503"),
        "{m}"
    );
    let log = post_deploy_log(&env);
    assert!(log.contains("post_deploy_status: DEGRADED"), "{log}");
    assert!(log.contains("action_taken: ALERT"), "{log}");
    assert!(log.contains("checks_failed: 2"), "{log}");
    let notes = notifications(&env);
    assert_eq!(
        notes.matches("post-deploy DEGRADED").count(),
        1,
        "one alert: {notes}"
    );
    assert_eq!(count_lines(&env, "rollback.count"), 0, "no rollback");
    assert_eq!(health.hits.load(Ordering::SeqCst), 4);
}

/// `install` writes the config before the state directory is known to the
/// caller; the rollback command names it through this placeholder.
fn env_state_placeholder() -> &'static str {
    "@STATE@"
}

fn fix_placeholder(env: &Env) {
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        config.replace(env_state_placeholder(), &env.state().display().to_string()),
    )
    .expect("config");
}

#[test]
fn a_probe_that_times_out_counts_as_a_failed_check() {
    let health = health_server(&[(200, 3000)]);
    let env = install(
        "post_deploy_window_s = 2\npost_deploy_checks = 3\npost_deploy_probe_timeout_s = 1\npost_deploy_max_failures = 1",
        &format!("health_url = \"{}\"", health.url),
    );
    to_done(&env, &[]);
    let t0 = Instant::now();
    monitor_to_end(&env);
    let m = monitor(&env);
    assert_eq!(m["status"], "degraded", "{m}");
    assert_eq!(m["checks_failed"], 1);
    assert_eq!(m["checks_done"], 1);
    let err = m["last_error"].as_str().unwrap_or("");
    assert!(err.contains("timed out"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the probe was not bounded"
    );
}

#[test]
fn a_hanging_health_check_cmd_is_stopped_at_the_probe_timeout_and_counted_failed() {
    let env = install(
        "post_deploy_window_s = 2\npost_deploy_checks = 2\npost_deploy_probe_timeout_s = 1\npost_deploy_max_failures = 2",
        "health_check_cmd = \"sleep 30\"",
    );
    to_done(&env, &[]);
    let t0 = Instant::now();
    monitor_to_end(&env);
    assert!(t0.elapsed() < Duration::from_secs(20), "not bounded");
    let m = monitor(&env);
    assert_eq!(m["status"], "degraded", "{m}");
    assert_eq!(m["checks_failed"], 2);
    assert!(
        m["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("health_check_cmd timed out after 1s"),
        "{m}"
    );
}

#[test]
fn a_non_self_repo_with_auto_rollback_runs_rollback_cmd_exactly_once() {
    let health = health_server(&[(500, 0)]);
    let env = install(
        "post_deploy_window_s = 2\npost_deploy_checks = 3\npost_deploy_max_failures = 1\npost_deploy_auto_rollback = true",
        &format!(
            "health_url = \"{}\"\nrollback_cmd = \"echo run >> @STATE@/rollback.count\"",
            health.url
        ),
    );
    fix_placeholder(&env);
    to_done(&env, &[]);
    monitor_to_end(&env);
    let m = monitor(&env);
    assert_eq!(m["status"], "degraded", "{m}");
    assert_eq!(m["action_taken"], "ROLLBACK");
    assert_eq!(m["rollback_exit_code"], 0);
    assert_eq!(count_lines(&env, "rollback.count"), 1);
    // More workers and reaper passes change nothing.
    for _ in 0..3 {
        run(&env, &[], &["run-agent", "--next"]);
        run(&env, &[], &["reap"]);
    }
    assert_eq!(count_lines(&env, "rollback.count"), 1, "rolled back twice");
    let log = post_deploy_log(&env);
    assert!(log.contains("action_taken: ROLLBACK"), "{log}");
    assert!(log.contains("rollback_exit_code: 0"), "{log}");
    assert!(notifications(&env).contains("rollback_cmd succeeded"));
}

#[test]
fn the_self_hosting_repo_only_alerts_even_with_auto_rollback_on() {
    let health = health_server(&[(500, 0)]);
    let env = common::self_hosting();
    add_config(
        &env,
        "post_deploy_window_s = 2\npost_deploy_checks = 3\npost_deploy_max_failures = 1\npost_deploy_auto_rollback = true",
        &format!(
            "health_url = \"{}\"\nrollback_cmd = \"echo run >> {}/rollback.count\"",
            health.url,
            env.state().display()
        ),
    );
    self_hosting_to_done(&env);
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE agent = 'post-deploy-monitor'"),
        1,
        "the self-deploy finalizer path arms the monitor too"
    );
    monitor_to_end(&env);
    let m = monitor(&env);
    assert_eq!(m["status"], "degraded", "{m}");
    assert_eq!(m["action_taken"], "ALERT");
    assert!(m["rollback_started_at"].is_null());
    assert_eq!(
        count_lines(&env, "rollback.count"),
        0,
        "orch never rolls its own production back"
    );
    let notes = notifications(&env);
    assert!(notes.contains("post-deploy DEGRADED"), "{notes}");
    assert!(notes.contains("never rolled back automatically"), "{notes}");
    assert!(post_deploy_log(&env).contains("action_taken: ALERT"));
}

#[test]
fn the_kill_switch_makes_the_monitor_inert() {
    let health = health_server(&[(200, 0)]);
    let env = install(
        "post_deploy_window_s = 2\npost_deploy_checks = 3",
        &format!("health_url = \"{}\"", health.url),
    );
    let off = [("ORCH_POST_DEPLOY_ENABLED", "false")];
    to_done(&env, &off);
    assert_eq!(env.sql_i64("SELECT count(*) FROM post_deploys"), 0);
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE agent = 'post-deploy-monitor'"),
        0
    );
    assert_eq!(
        env.sql_i64("SELECT count(*) FROM jobs WHERE status <> 'done'"),
        0
    );
    assert_eq!(health.hits.load(Ordering::SeqCst), 0);
    let o = run(&env, &off, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["post_deploy"]["enabled"], false);
}

#[test]
fn a_monitor_killed_after_a_check_is_resumed_by_reap_without_double_counting() {
    let health = health_server(&[(200, 0)]);
    let env = install(
        "post_deploy_window_s = 2\npost_deploy_checks = 3",
        &format!("health_url = \"{}\"", health.url),
    );
    to_done(&env, &[]);
    let o = run(
        &env,
        &[("ORCH_CRASH_AT", "monitor.checked")],
        &["run-agent", "--next"],
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&o.status),
        Some(9),
        "the crash point was never reached: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        env.sql_i64("SELECT checks_done FROM post_deploys"),
        1,
        "the check was counted before the crash"
    );
    // On PostgreSQL past the start grace (see common::start_grace_over).
    let reap = run(&env, common::start_grace_over(), &["reap", "--json"]);
    let reap: serde_json::Value = serde_json::from_slice(&reap.stdout).expect("json");
    assert_eq!(reap["reaped"][0]["agent"], "post-deploy-monitor", "{reap}");
    assert_eq!(reap["reaped"][0]["outcome"], "queued", "{reap}");
    monitor_to_end(&env);
    let m = monitor(&env);
    assert_eq!(m["status"], "healthy", "{m}");
    assert_eq!(m["checks_done"], 3, "{m}");
    let seqs: Vec<i64> = m["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["seq"].as_i64())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(health.hits.load(Ordering::SeqCst), 3, "no check ran twice");
    assert_eq!(
        env.sql_i64(
            "SELECT count(*) FROM jobs WHERE agent = 'post-deploy-monitor' AND status = 'done'"
        ),
        1
    );
}

#[test]
fn the_monitor_is_not_held_back_by_max_concurrency_or_the_serial_gate() {
    let health = health_server(&[(200, 0)]);
    let env = install(
        "post_deploy_window_s = 2\npost_deploy_checks = 3\nmax_concurrency = 1",
        &format!("health_url = \"{}\"", health.url),
    );
    to_done(&env, &[]);
    // An agent of another task of the same repository runs for an hour.
    let mut db = env.db();
    db.write(|tx| {
        let id = orch::queue::enqueue(
            tx,
            &orch::queue::NewJob {
                agent: "developer",
                repo: "demo",
                task_id: None,
                stage: None,
                task_content: "",
                max_attempts: 2,
            },
            orch::storage::now(),
        )?;
        let busy = orch::queue::Claimer {
            token: "busy",
            pid: 1,
            boot_id: "boot",
        };
        orch::queue::claim_by_id(tx, &env.locks(), id, busy, 10, orch::storage::now())?;
        Ok(())
    })
    .expect("a busy job");
    drop(db);
    monitor_to_end(&env);
    assert_eq!(monitor(&env)["status"], "healthy");
    assert_eq!(health.hits.load(Ordering::SeqCst), 3);
}
