//! Random SIGKILLs, not only where we expect them.
//!
//! Several tasks on two repositories under the merge gate, three worker
//! loops of `orch run-agent --next`, `orch reap` + `orch reclaim-leases`
//! every half second and `orch reconcile` every two seconds — the shipped
//! timers, sped up — while the test SIGKILLs a random worker at a random
//! moment every 0.15–0.55 s: three times in four the orch process alone, once
//! in four its whole process group and its agent's group, as a cgroup kill,
//! the OOM killer or a power cut would. Reaps are killed too now and then.
//! Then the kills stop and the normal machinery must finish everything with
//! no human but the analysis approval a person gives anyway.
//!
//! The run is seeded (`ORCH_CHAOS_SEED`, else the clock) and prints its seed
//! and what it did, so a failure can be replayed. At the end: every task is
//! `done`; no stage was entered twice except after a recorded rollback; no
//! job runs or waits; no lease is held; no agent process is alive; each
//! task's change is on main exactly once; the default budget settings apply.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const WORKERS: usize = 3;
const SETTLE: Duration = Duration::from_secs(80);

/// Tasks per repository (`ORCH_CHAOS_TASKS`, default 4) and seconds of kills
/// (`ORCH_CHAOS_SECONDS`, default 25): `scripts/chaos-soak.sh` raises both.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough randomness for a schedule, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Two repositories on local forges, both under the merge gate, with a test
/// suite slow enough that kills land inside it. Budgets are the defaults.
fn install() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let forge = env.state().join("forge");
    let cloned = Command::new("git")
        .args(["clone", "--quiet", "--bare", "demo.git", "other.git"])
        .current_dir(&forge)
        .status()
        .expect("git clone");
    assert!(cloned.success());
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let slow_tests = "sleep 0.3; sh ./test.sh";
    let config = config.replace(
        "test_command = \"sh ./test.sh\"",
        &format!("test_command = \"{slow_tests}\""),
    );
    std::fs::write(
        &path,
        format!(
            "merge_gate_repos = \"demo,other\"\n{config}\n[repos.other]\nremote = \"{}\"\n\
             default_branch = \"main\"\ntest_command = \"{slow_tests}\"\nwork_item_prefix = \"OTHER\"\n",
            common::remote(forge.join("other.git"))
        ),
    )
    .expect("config");
    env.orch().arg("init").assert().success();
    env
}

/// An orch process in a process group of its own, so the group can be killed.
fn spawn(env: &Env, args: &[&str]) -> Child {
    env.orch_std()
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orch")
}

fn reaped(child: &mut Option<Child>) -> bool {
    match child {
        Some(c) => match c.try_wait() {
            Ok(Some(_)) => {
                *child = None;
                true
            }
            _ => false,
        },
        None => true,
    }
}

/// Every row of `sql`, each column as text.
fn sql_rows(env: &Env, sql: &str) -> Vec<Vec<String>> {
    env.rows(sql)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect()
        })
        .collect()
}

/// Approve every analysis that waits for its human approval.
fn approve_waiting(env: &Env) {
    let waiting = sql_rows(
        env,
        "SELECT t.id FROM tasks t WHERE t.stage = 'analysis' AND NOT EXISTS (
             SELECT 1 FROM jobs j WHERE j.task_id = t.id AND j.status IN ('queued', 'running'))",
    );
    for row in waiting {
        let _ = env
            .orch_std()
            .args(["advance", "--task", &row[0], "--approve"])
            .output();
    }
}

#[derive(Default, Debug)]
struct Kills {
    worker_pid: u32,
    worker_and_agent_groups: u32,
    reaper: u32,
}

#[test]
fn random_sigkills_of_workers_and_groups_end_with_every_task_done() {
    let seed = std::env::var("ORCH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("chaos: seed {seed} (replay with ORCH_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let tasks_per_repo = knob("ORCH_CHAOS_TASKS", 4);
    let chaos_for = Duration::from_secs(knob("ORCH_CHAOS_SECONDS", 25));
    let env = install();
    for repo in ["demo", "other"] {
        for i in 0..tasks_per_repo {
            env.orch()
                .args([
                    "task",
                    "create",
                    "--repo",
                    repo,
                    "--title",
                    &format!("{repo} {i}"),
                ])
                .assert()
                .success();
        }
    }
    let mut kills = Kills::default();
    let mut workers: Vec<Option<Child>> = (0..WORKERS).map(|_| None).collect();
    let mut reaper: Option<Child> = None;
    let mut reconciler: Option<Child> = None;
    let started = Instant::now();
    let mut next_kill = started + Duration::from_millis(150 + rng.below(400));
    let mut next_reap = started;
    let mut next_reconcile = started;
    loop {
        let now = Instant::now();
        let chaos = now < started + chaos_for;
        let done = sql_rows(&env, "SELECT count(*) FROM tasks WHERE stage <> 'done'")[0][0] == "0";
        if done || now > started + chaos_for + SETTLE {
            break;
        }
        for w in &mut workers {
            if reaped(w) {
                *w = Some(spawn(&env, &["run-agent", "--next"]));
            }
        }
        if now >= next_reap && reaped(&mut reaper) {
            reaper = Some(spawn(&env, &["reap"]));
            let _ = env.orch_std().arg("reclaim-leases").output();
            next_reap = now + Duration::from_millis(500);
        }
        if now >= next_reconcile && reaped(&mut reconciler) {
            reconciler = Some(spawn(&env, &["reconcile"]));
            next_reconcile = now + Duration::from_secs(2);
        }
        approve_waiting(&env);
        if chaos && now >= next_kill {
            next_kill = now + Duration::from_millis(150 + rng.below(400));
            let pick = rng.below(WORKERS as u64 + 1) as usize;
            let target = if pick == WORKERS {
                reaper.as_ref().map(|c| (c.id(), true))
            } else {
                workers[pick].as_ref().map(|c| (c.id(), false))
            };
            if let Some((pid, is_reap)) = target {
                let pid = Pid::from_raw(pid as i32);
                if is_reap {
                    let _ = kill(pid, Signal::SIGKILL);
                    kills.reaper += 1;
                } else if rng.below(4) == 0 {
                    // A cgroup kill: orch's group (its git children) and the
                    // group of whatever agent it runs.
                    let agents = sql_rows(
                        &env,
                        &format!(
                            "SELECT pid FROM jobs WHERE status = 'running' AND owner_pid = {pid} AND pid IS NOT NULL"
                        ),
                    );
                    let _ = killpg(pid, Signal::SIGKILL);
                    for a in agents {
                        if let Ok(pgid) = a[0].parse::<i32>() {
                            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                        }
                    }
                    kills.worker_and_agent_groups += 1;
                } else {
                    let _ = kill(pid, Signal::SIGKILL);
                    kills.worker_pid += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the last processes end, then one more reap as the timer would.
    for c in workers.iter_mut().chain([&mut reaper, &mut reconciler]) {
        if let Some(mut child) = c.take() {
            let _ = child.wait();
        }
    }
    env.orch().arg("reap").assert().success();
    eprintln!(
        "chaos: {kills:?} in {:.1}s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
    assert_end_state(&env, seed);
}

fn assert_end_state(env: &Env, seed: u64) {
    let tasks = sql_rows(
        env,
        "SELECT id, stage, work_item_id, repo, coalesce(blocked_reason, '') FROM tasks ORDER BY id",
    );
    let not_done: Vec<&Vec<String>> = tasks.iter().filter(|t| t[1] != "done").collect();
    assert!(
        not_done.is_empty(),
        "seed {seed}: tasks not done: {not_done:?}\n{}",
        String::from_utf8_lossy(
            &env.orch_std()
                .args(["status"])
                .output()
                .expect("status")
                .stdout
        )
    );
    assert!(
        tasks.iter().all(|t| t[4].is_empty()),
        "seed {seed}: a task was blocked: {tasks:?}"
    );
    // No stage entered twice, except after a recorded rollback.
    let transitions = sql_rows(
        env,
        "SELECT task_id, kind, to_stage FROM task_transitions ORDER BY id",
    );
    let mut entered: BTreeMap<(String, String), u32> = BTreeMap::new();
    for t in &transitions {
        if t[1] == "rollback" {
            entered.retain(|(task, _), _| task != &t[0]);
        } else if t[1] == "advance" {
            let n = entered.entry((t[0].clone(), t[2].clone())).or_default();
            *n += 1;
            assert_eq!(
                *n, 1,
                "seed {seed}: task {} entered {} twice: {transitions:?}",
                t[0], t[2]
            );
        }
    }
    let busy = sql_rows(
        env,
        "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running') AND agent <> 'post-deploy-monitor'",
    );
    assert_eq!(busy[0][0], "0", "seed {seed}: jobs left");
    let leases = sql_rows(env, "SELECT count(*) FROM merge_leases");
    assert_eq!(leases[0][0], "0", "seed {seed}: a lease is held");
    // The lock files every killed owner left are gone after the last reap,
    // but for a job still running. (On PostgreSQL owners hold advisory
    // locks, which leave nothing behind: there is no file to look for.)
    if !common::on_postgres() {
        let running: Vec<String> = sql_rows(
            env,
            "SELECT claim_token FROM jobs WHERE status = 'running' AND claim_token IS NOT NULL",
        )
        .into_iter()
        .map(|r| format!("{}.lock", r[0]))
        .collect();
        let left: Vec<String> = std::fs::read_dir(env.state().join("locks"))
            .expect("locks dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| !running.contains(f))
            .collect();
        assert!(left.is_empty(), "seed {seed}: lock files left: {left:?}");
    }
    // No orch, agent or test process of this installation survived: every
    // one of them has the state directory in its environment.
    let state = env.state().display().to_string();
    let alive: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            String::from_utf8_lossy(&environ).contains(&state)
                && !status
                    .lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect();
    assert!(alive.is_empty(), "seed {seed}: processes left: {alive:?}");
    // Each task's change is on its repository's main exactly once.
    for t in &tasks {
        let forge = env.state().join("forge").join(format!("{}.git", t[3]));
        let out = Command::new("git")
            .arg("-C")
            .arg(&forge)
            .args(["log", "main", "--format=%H", "--diff-filter=A", "--"])
            .arg(format!("docs/work-items/{}/12-review.md", t[2]))
            .output()
            .expect("git log");
        let adds = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(
            adds, 1,
            "seed {seed}: task {} ({}) is on main {adds} times",
            t[0], t[2]
        );
    }
}
