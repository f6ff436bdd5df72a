//! Hand-off latency: how long work waits between being committed and its
//! agent starting, with the shipped units' mechanism played faithfully.
//!
//! Run it with `cargo bench --bench handoff`. It prints, in one run:
//! - **stage → stage**: within one worker activation (`run-agent --next
//!   --until-idle`), from the moment a stage's agent exits to the moment the
//!   next stage's agent starts (finalizing the first — commit, push, gates,
//!   the fenced commit of the successor — included), over `BENCH_TASKS` (5)
//!   tasks of six stages each;
//! - **queued → agent**: from `orch task create` returning (the analyst's
//!   job committed, the wake-up left) to the analyst starting, with
//!   `orch-worker@.path` played by a loop with systemd's `DirectoryNotEmpty=`
//!   semantics (start the service when the directory is not empty and it is
//!   not running; check again when it stops). systemd watches with inotify;
//!   the loop polls every 2 ms, so this is an upper bound by about that.
//! - the same two waits under the timer alone (`OnUnitInactiveSec=30s`,
//!   `RandomizedDelaySec=5s`, one job per activation as before): 30–35 s
//!   by construction, printed for comparison, not slept through.
//!
//! The agent is the demo agent, wrapped to write a timestamp when it starts
//! and when it ends.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn orch(state: &Path) -> Command {
    let mut c = Command::new(ORCH);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCH_") {
            c.env_remove(k);
        }
    }
    c.env("ORCH_STATE_DIR", state)
        .env("ORCH_SANDBOX_WRITABLE", state.join("shared"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn run(c: &mut Command) {
    let status = c.status().expect("orch");
    assert!(
        status.code().is_some_and(|c| c == 0 || c == 3),
        "{c:?}: {status}"
    );
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `(start, end)` timestamps the wrapped agent wrote, in order.
fn stamps(state: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(state.join("shared/stamps"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (what, t) = l.split_once(' ')?;
            Some((what.to_owned(), t.parse().ok()?))
        })
        .collect()
}

fn percentiles(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] * 1000.0;
    format!(
        "median {:.0} ms, p90 {:.0} ms, max {:.0} ms (n={})",
        at(0.5),
        at(0.9),
        at(1.0),
        v.len()
    )
}

fn setup(dir: &Path) -> std::path::PathBuf {
    let state = dir.join("s");
    run(orch(&state).args(["demo", "--setup-only"]));
    std::fs::create_dir_all(state.join("shared")).expect("shared");
    let agent = format!(
        "echo start $(date +%s.%N) >> {s}/stamps; '{ORCH}' demo-agent; rc=$?; echo end $(date +%s.%N) >> {s}/stamps; exit $rc",
        s = state.join("shared").display()
    );
    let config = state.join("orch.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("agent_cmd ="))
        .collect();
    let text = text.join("\n");
    std::fs::write(&config, format!("agent_cmd = {agent:?}\n{text}")).expect("config");
    state
}

/// The path unit: start the worker whenever a wake-up is pending, until `until`.
fn path_unit(state: &Path, until: Instant) {
    while Instant::now() < until {
        let pending = std::fs::read_dir(state.join("wake")).is_ok_and(|mut d| d.next().is_some());
        if pending {
            run(orch(state).args(["run-agent", "--next", "--until-idle"]));
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn main() {
    let tasks: usize = std::env::var("BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = setup(dir.path());
    let mut queued_to_start = Vec::new();
    let mut stage_to_stage = Vec::new();
    for i in 0..tasks {
        let before = stamps(&state).len();
        run(orch(&state).args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            &format!("t{i}"),
        ]));
        let created = now_s();
        path_unit(&state, Instant::now() + Duration::from_millis(1500));
        let s = stamps(&state);
        let first = s[before..]
            .iter()
            .find(|(w, _)| w == "start")
            .expect("analyst ran");
        queued_to_start.push(first.1 - created);
        // The human approval, then every later stage in one activation.
        run(orch(&state).args(["advance", "--task", &(i + 1).to_string(), "--approve"]));
        let before = stamps(&state).len();
        path_unit(&state, Instant::now() + Duration::from_secs(10));
        let s = &stamps(&state)[before..];
        for w in s.windows(2) {
            if w[0].0 == "end" && w[1].0 == "start" {
                stage_to_stage.push(w[1].1 - w[0].1);
            }
        }
        let shown = orch(&state)
            .args(["task", "show", &(i + 1).to_string(), "--json"])
            .stdout(Stdio::piped())
            .output()
            .expect("show");
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
        assert_eq!(
            shown["task"]["stage"],
            "done",
            "task {} did not finish",
            i + 1
        );
    }
    println!("hand-off (wake-up + --until-idle), {tasks} tasks:");
    println!(
        "  stage -> next stage's agent: {}",
        percentiles(stage_to_stage)
    );
    println!(
        "  queued -> analyst start:     {}",
        percentiles(queued_to_start)
    );
    println!(
        "timer alone (OnUnitInactiveSec=30s, RandomizedDelaySec=5s): 30000-35000 ms per hand-off"
    );
}
