//! Workers on several hosts sharing one PostgreSQL queue (issue #19): two
//! state directories stand for two machines — each its own repos, logs and
//! lock scope, nothing shared on disk but the forge, reached by a
//! `file://` URL as a shared mount would be — and one `ORCH_DB_URL`.
//!
//! Owner liveness is a session advisory lock, so what one host knows of
//! another's workers comes from the server alone: a worker alive on host A
//! is alive to host B's reaper, a SIGKILLed one is dead to it at once, and
//! one whose session the server ends (`pg_terminate_backend`, what a cut
//! network comes to once keepalives give up) frees its job.
//!
//! Needs a PostgreSQL server: `ORCH_TEST_PG_URL` (see tests/common/pg.rs).

mod common;

use std::collections::HashSet;
use std::process::Child;
use std::time::{Duration, Instant};

use common::Env;
use common::pg::{self, Database};

/// One host: its own state directory, the shared database.
struct Host<'a> {
    env: Env,
    db: &'a Database,
}

impl Host<'_> {
    fn orch(&self) -> assert_cmd::Command {
        let mut c = self.env.orch();
        c.env("ORCH_DB_URL", &self.db.url);
        c
    }

    fn orch_std(&self) -> std::process::Command {
        let mut c = self.env.orch_std();
        c.env("ORCH_DB_URL", &self.db.url);
        c
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.orch().args(args).arg("--json").output().expect("run");
        assert!(
            out.status.success(),
            "orch {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }
}

/// Two hosts on `db` with repo `demo`. With `forge`, the repository is the
/// demo's bare repository (on a "shared mount": host A's disk, by URL) and
/// every stage runs the demo agent; else a remote nothing clones.
fn two_hosts(db: &Database, forge: bool) -> (Host<'_>, Host<'_>) {
    let a = Env::bare();
    let b = Env::bare();
    let config = if forge {
        a.orch().args(["demo", "--setup-only"]).assert().success();
        let written = std::fs::read_to_string(a.state().join("orch.toml")).expect("demo config");
        let path = a.state().join("forge/demo.git");
        let quoted = format!("{:?}", path.display().to_string());
        let url = format!("\"file://{}\"", path.display());
        // Under ORCH_TEST_BACKEND=postgres the demo ran with ORCH_DB_URL and
        // wrote the URL itself.
        assert!(
            written.contains(&quoted) || written.contains(&url),
            "{written}"
        );
        written.replace(&quoted, &url)
    } else {
        "[repos.demo]\nremote = \"file:///nonexistent/demo.git\"\n".to_owned()
    };
    for env in [&a, &b] {
        std::fs::write(env.state().join("orch.toml"), &config).expect("config");
    }
    let (a, b) = (Host { env: a, db }, Host { env: b, db });
    a.orch().arg("init").assert().success();
    b.orch().arg("init").assert().success();
    (a, b)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn eight_claimers_on_two_hosts_claim_every_job_exactly_once() {
    let Some(db) = pg::fresh("eight_claimers_on_two_hosts_claim_every_job_exactly_once") else {
        return;
    };
    let (a, b) = two_hosts(&db, false);
    let jobs: i64 = 120;
    db.client()
        .execute(
            "INSERT INTO jobs (agent, repo, created_at)
             SELECT 'developer', 'demo', 0 FROM generate_series(1, $1::bigint)",
            &[&jobs],
        )
        .expect("seed");
    let claimed: Vec<i64> = std::thread::scope(|s| {
        let loops: Vec<_> = (0..8)
            .map(|i| {
                let host = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let out = host
                            .orch()
                            .env("ORCH_MAX_CONCURRENCY", "1000")
                            .env("ORCH_SERIAL_GATE_ENABLED", "false")
                            .args(["claim", "--json"])
                            .output()
                            .expect("claim");
                        match out.status.code() {
                            Some(0) => {
                                let v: serde_json::Value =
                                    serde_json::from_slice(&out.stdout).expect("json");
                                mine.push(v["claimed"]["id"].as_i64().expect("id"));
                            }
                            Some(3) => return mine,
                            other => panic!(
                                "orch claim exited {other:?}: {}",
                                String::from_utf8_lossy(&out.stderr)
                            ),
                        }
                    }
                })
            })
            .collect();
        loops
            .into_iter()
            .flat_map(|l| l.join().expect("claimer"))
            .collect()
    });
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len() as i64, jobs, "claims made");
    assert_eq!(unique.len() as i64, jobs, "a job was claimed twice");
    assert_eq!(
        db.i64("SELECT count(*) FROM jobs WHERE status = 'running' AND attempts = 1"),
        jobs
    );
    assert_eq!(
        db.i64("SELECT count(DISTINCT claim_token) FROM jobs"),
        jobs,
        "every claim has its own owner"
    );
}

/// A worker process, killed when the test ends however it ends.
struct Worker(Child);

impl Worker {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Host A runs one agent that sleeps; the job's row says who owns it.
fn start_a_worker(db: &Database, a: &Host<'_>, marker: &str) -> (Worker, i64) {
    let task = a.json(&["task", "create", "--repo", "demo", "--title", "far away"])["id"]
        .as_i64()
        .expect("id");
    let worker = a
        .orch_std()
        .env("ORCH_AGENT_CMD", format!("sleep {marker} & wait"))
        .args(["run-agent", "--next"])
        .spawn()
        .map(Worker)
        .expect("spawn the worker");
    wait_until("the agent to start", 30, || {
        db.i64(&format!(
            "SELECT count(*) FROM jobs WHERE task_id = {task} AND status = 'running' AND pid IS NOT NULL"
        )) == 1
    });
    (worker, task)
}

fn job_of(db: &Database, task: i64) -> (i64, String, i64) {
    let row = db
        .client()
        .query_one(
            "SELECT id, status, attempts FROM jobs WHERE task_id = $1 ORDER BY id LIMIT 1",
            &[&task],
        )
        .expect("job");
    (row.get(0), row.get(1), row.get(2))
}

/// `orch reap` on `host`: the outcomes of the jobs it reaped.
fn reap(host: &Host<'_>) -> Vec<String> {
    let v = host.json(&["reap"]);
    v["reaped"]
        .as_array()
        .expect("reaped")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn no_agent_left(marker: &str) {
    wait_until("the agent to die with its worker", 10, || {
        common::host_pids_of(&["sleep", marker]).is_empty()
    });
}

#[test]
fn a_worker_killed_on_one_host_is_requeued_by_reap_on_the_other() {
    let Some(db) = pg::fresh("a_worker_killed_on_one_host_is_requeued_by_reap_on_the_other") else {
        return;
    };
    let (a, b) = two_hosts(&db, true);
    let marker = "300.5151";
    let (mut worker, task) = start_a_worker(&db, &a, marker);

    // Alive on A, so alive to B: B's reaper leaves it alone, and so does
    // B's status.
    assert!(
        reap(&b).is_empty(),
        "a live worker on another host was reaped"
    );
    assert_eq!(job_of(&db, task).1, "running");
    let status = b.json(&["status"]);
    assert_eq!(status["running"][0]["owner"], "alive", "{status}");

    worker.kill();
    no_agent_left(marker);
    let mut outcomes = Vec::new();
    wait_until("B's reaper to requeue the job", 10, || {
        outcomes = reap(&b);
        !outcomes.is_empty()
    });
    assert_eq!(outcomes, ["queued"]);
    let (job, status, _) = job_of(&db, task);
    assert_eq!(status, "queued");
    // Any host may take it up again.
    let claimed = b.json(&["claim"]);
    assert_eq!(claimed["claimed"]["id"], job);
}

#[test]
fn a_worker_whose_session_the_server_ends_frees_its_job() {
    let Some(db) = pg::fresh("a_worker_whose_session_the_server_ends_frees_its_job") else {
        return;
    };
    let (a, b) = two_hosts(&db, true);
    let marker = "300.6262";
    let (mut worker, task) = start_a_worker(&db, &a, marker);
    assert!(reap(&b).is_empty());

    // The network between A and the server is cut: the server ends A's
    // sessions (as its keepalives would, within their bound).
    let ended = db.i64(&format!(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'orch:%:{}') t",
        worker.pid()
    ));
    assert!(ended >= 1, "the worker's lock session was not found");
    let mut outcomes = Vec::new();
    wait_until("B's reaper to free the job", 10, || {
        outcomes = reap(&b);
        !outcomes.is_empty()
    });
    assert_eq!(outcomes, ["queued"]);
    assert_eq!(job_of(&db, task).1, "queued");
    worker.kill();
    no_agent_left(marker);
}

#[test]
fn on_postgresql_a_remote_only_this_host_can_reach_is_refused() {
    let Some(db) = pg::fresh("on_postgresql_a_remote_only_this_host_can_reach_is_refused") else {
        return;
    };
    let env = Env::bare();
    env.write_config("");
    let host = Host { env, db: &db };
    host.orch()
        .arg("init")
        .assert()
        .code(78)
        .stderr(predicates::str::contains("is a path on this host"));
}

#[test]
fn a_merge_lease_whose_holder_died_on_one_host_is_reclaimed_from_the_other() {
    let Some(db) =
        pg::fresh("a_merge_lease_whose_holder_died_on_one_host_is_reclaimed_from_the_other")
    else {
        return;
    };
    let (a, b) = two_hosts(&db, true);
    let marker = "300.7373";
    let (mut worker, task) = start_a_worker(&db, &a, marker);
    let (job, _, _) = job_of(&db, task);
    // The task is merging on A: on deploy-staging, its job running there,
    // the repository's merge lease in its name.
    let mut client = db.client();
    client
        .execute(
            "UPDATE tasks SET stage = 'deploy-staging' WHERE id = $1",
            &[&task],
        )
        .expect("stage");
    client
        .execute(
            "INSERT INTO merge_leases (repo, task_id, branch, work_item_id, token, holder_job_id, owner_pid, acquired_at)
             SELECT repo, id, branch, work_item_id, 'task-' || id, $2, 0, 0 FROM tasks WHERE id = $1",
            &[&task, &job],
        )
        .expect("lease");
    let reclaimed = |host: &Host<'_>| -> usize {
        host.json(&["reclaim-leases"])["reclaimed"]
            .as_array()
            .expect("reclaimed")
            .len()
    };
    assert_eq!(
        reclaimed(&b),
        0,
        "a live merger's lease was taken from another host"
    );
    assert_eq!(db.i64("SELECT count(*) FROM merge_leases"), 1);

    worker.kill();
    no_agent_left(marker);
    wait_until("B to reclaim the dead holder's lease", 10, || {
        reclaimed(&b) == 1
    });
    assert_eq!(db.i64("SELECT count(*) FROM merge_leases"), 0);
}

#[test]
fn doctor_checks_the_postgresql_database_not_a_file() {
    let Some(db) = pg::fresh("doctor_checks_the_postgresql_database_not_a_file") else {
        return;
    };
    let (a, _b) = two_hosts(&db, false);
    let out = a
        .orch()
        .args(["doctor", "--offline"])
        .output()
        .expect("doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("database:"))
        .unwrap_or_else(|| panic!("no database line in:\n{stdout}"));
    assert!(line.starts_with("ok "), "{line}");
    assert!(
        line.contains("PostgreSQL") && line.contains("schema v"),
        "{line}"
    );
    assert!(
        !stdout.contains("journal mode"),
        "a SQLite check ran:\n{stdout}"
    );
}
