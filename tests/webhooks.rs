//! Webhook intake and routing end to end: signed deliveries through the real
//! `orch ingest-webhook`, processed against a loopback fake of Plane (real
//! payload shapes: the state is an object, one webhook per changed field) and
//! Telegram, with real git and SQLite. Seed ORCH-059 routing and ORCH-090
//! TC-01, TC-10, TC-11 as properties.

mod common;

use std::io::Write as _;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::fake::{Fake, PROJECT, sign};

const SECRET: &str = "s3cret";

struct Setup {
    env: Env,
    fake: Fake,
}

fn setup(extra: &str) -> Setup {
    let fake = Fake::start();
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config").replace(
        "[repos.demo]",
        &format!("[repos.demo]\nplane_project = \"{PROJECT}\""),
    );
    std::fs::write(
        &path,
        format!(
            "tracker = \"plane\"\nplane_url = \"{}\"\nplane_workspace = \"ws\"\nplane_bot_user_id = \"orch-bot\"\ntelegram_api_url = \"{}\"\ntelegram_chat_id = \"42\"\n{extra}\n{config}",
            fake.url, fake.url
        ),
    )
    .expect("config");
    Setup { env, fake }
}

impl Setup {
    fn orch(&self, args: &[&str]) -> Output {
        self.env
            .orch_std()
            .env("ORCH_PLANE_API_TOKEN", "plane-token")
            .env("ORCH_TELEGRAM_BOT_TOKEN", "123:telegram-token")
            .env("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
            .env("ORCH_GITEA_WEBHOOK_SECRET", SECRET)
            .args(args)
            .output()
            .expect("run orch")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.orch(args);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Deliver `body` as Plane would (signed), returning the ingest's output.
    fn deliver(&self, source: &str, event: &str, delivery: &str, body: &str) -> Output {
        self.deliver_bytes(source, event, delivery, body.as_bytes())
    }

    /// Any bytes, correctly signed, then wait until the router it started is
    /// done (ingest answers before routing).
    fn deliver_bytes(&self, source: &str, event: &str, delivery: &str, body: &[u8]) -> Output {
        let out = self.ingest_bytes(source, event, delivery, body);
        self.settle();
        out
    }

    /// Wait until no delivery waits for its first routing (the detached router
    /// of each stored delivery has been through it).
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sql(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND attempts = 0",
        ) > 0
        {
            assert!(
                Instant::now() < deadline,
                "a stored delivery was never routed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Any bytes, correctly signed, as ingest answers them (routing may not
    /// have happened yet). A write error is ignored: orch stops reading an
    /// oversize body early.
    fn ingest_bytes(&self, source: &str, event: &str, delivery: &str, body: &[u8]) -> Output {
        let mut child = self
            .env
            .orch_std()
            .env("ORCH_PLANE_API_TOKEN", "plane-token")
            .env("ORCH_TELEGRAM_BOT_TOKEN", "123:telegram-token")
            .env("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
            .env("ORCH_GITEA_WEBHOOK_SECRET", SECRET)
            .args([
                "ingest-webhook",
                "--source",
                source,
                "--event",
                event,
                "--delivery",
                delivery,
                "--signature",
                &sign(SECRET, body),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingest");
        let _ = child.stdin.take().expect("stdin").write_all(body);
        child.wait_with_output().expect("wait")
    }

    fn tasks(&self) -> Vec<serde_json::Value> {
        self.json(&["task", "list", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn task(&self, id: i64) -> serde_json::Value {
        self.json(&["task", "show", &id.to_string(), "--json"])
    }

    fn sql(&self, sql: &str) -> i64 {
        self.env
            .sqlite()
            .query_row(sql, [], |r| r.get(0))
            .expect(sql)
    }
}

#[test]
fn orch090_tc11_an_issue_moved_to_to_analyse_starts_the_pipeline_once() {
    let s = setup("");
    let item = s.fake.add_item("Greet people", 7, "To Analyse");
    let body = s.fake.webhook(&item, "state", "alice");
    let out = s.deliver("plane", "issue", "d-1", &body);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks = s.tasks();
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!(t["work_item_id"], "DEMO-7");
    assert_eq!(t["plane_issue_id"], item.as_str());
    assert_eq!(t["plane_project_id"], PROJECT);
    assert_eq!(t["stage"], "analysis");
    // The REST API sends no `description_stripped`: the brief is the text of
    // the issue's `description_html`.
    assert_eq!(
        s.task(1)["task"]["description"],
        "Greet people (from Plane)"
    );
    // Plane retries with a new delivery id and the same body: one effect.
    let again = s.deliver("plane", "issue", "d-2", &body);
    assert!(String::from_utf8_lossy(&again.stdout).contains("duplicate"));
    // Another field of the same edit: a new delivery, still one task and one job.
    let other = s.fake.webhook(&item, "priority", "alice");
    assert!(s.deliver("plane", "issue", "d-3", &other).status.success());
    assert_eq!(s.tasks().len(), 1);
    assert_eq!(s.sql("SELECT count(*) FROM jobs"), 1);
    assert_eq!(s.sql("SELECT count(*) FROM webhook_deliveries"), 2);
}

#[test]
fn orch090_tc10_the_start_status_mid_pipeline_relaunches_nothing_and_tc11_resumes_an_idle_analysis()
{
    let s = setup("");
    let item = s.fake.add_item("x", 8, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    // Idle on analysis (its job was lost): the start status resumes it once.
    s.env
        .sqlite()
        .execute("UPDATE jobs SET status = 'failed' WHERE id = 1", [])
        .expect("fail");
    s.fake.set_state(&item, "In Progress");
    s.deliver(
        "plane",
        "issue",
        "d-2",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM jobs WHERE status = 'queued' AND agent = 'analyst'"),
        1
    );
    s.fake.set_state(&item, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-3",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM jobs WHERE status = 'queued'"),
        1,
        "no second analyst"
    );
    // Mid-pipeline: nothing is relaunched (the relaunch hole is closed).
    s.env
        .sqlite()
        .execute_batch("UPDATE jobs SET status = 'done'; UPDATE tasks SET stage = 'development'")
        .expect("mid-pipeline");
    s.fake.set_state(&item, "In Progress");
    s.deliver(
        "plane",
        "issue",
        "d-4",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM jobs WHERE status = 'queued'"),
        0
    );
    let note: String = s
        .env
        .sqlite()
        .query_row(
            "SELECT error FROM webhook_deliveries ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("note");
    assert!(note.contains("does not relaunch"), "{note}");
}

#[test]
fn orch059_tc06_approved_on_analysis_advances_and_reports_back_to_plane_once() {
    let s = setup("");
    let item = s.fake.add_item("Greet", 9, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    let run = s.orch(&["run-agent", "--next"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        s.fake.state_of(&item),
        "In Review",
        "orch asked for approval in Plane"
    );
    s.fake.set_state(&item, "Approved");
    s.deliver(
        "plane",
        "issue",
        "d-2",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(s.task(1)["task"]["stage"], "architecture");
    let comments = s
        .fake
        .world()
        .comments
        .get(&item)
        .cloned()
        .unwrap_or_default();
    assert!(!comments.is_empty());
    for c in &comments {
        assert_eq!(c["external_source"], "orch");
        assert!(
            c["external_id"]
                .as_str()
                .unwrap_or("")
                .starts_with("orch-outbox-")
        );
    }
    // A reconcile retry of everything posts nothing twice.
    let before = comments.len();
    s.env
        .sqlite()
        .execute(
            "UPDATE outbox SET status = 'pending', next_attempt_at = 0",
            [],
        )
        .expect("replay");
    s.orch(&["reconcile"]);
    assert_eq!(
        s.fake.world().comments.get(&item).map_or(0, Vec::len),
        before,
        "a comment was posted twice"
    );
}

#[test]
fn events_caused_by_orchs_own_user_are_ignored() {
    let s = setup("");
    let item = s.fake.add_item("x", 10, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "orch-bot"),
    );
    assert!(s.tasks().is_empty());
    let note: String = s
        .env
        .sqlite()
        .query_row("SELECT error FROM webhook_deliveries", [], |r| r.get(0))
        .expect("note");
    assert!(note.contains("own API user"), "{note}");
}

#[test]
fn an_unknown_project_is_recorded_and_ignored() {
    let s = setup("");
    let item = s.fake.add_item("x", 11, "To Analyse");
    let body = s
        .fake
        .webhook(&item, "state", "alice")
        .replace(PROJECT, "99999999-0000-4000-8000-000000000000");
    assert!(s.deliver("plane", "issue", "d-1", &body).status.success());
    assert!(s.tasks().is_empty());
    assert_eq!(
        s.sql("SELECT count(*) FROM webhook_deliveries WHERE status = 'ignored'"),
        1
    );
}

/// Seed ORCH-090 TC-01: the STOP status is routed to the cancel, "Approved"
/// is not (on analysis it advances, it never cancels), and STOP on an issue
/// orch has no task for is a recorded no-op, not an error.
#[test]
fn orch090_tc01_stop_routed_and_unknown_is_noop() {
    let s = setup("");
    let item = s.fake.add_item("x", 12, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    s.env
        .sqlite()
        .execute("UPDATE jobs SET status = 'done'", [])
        .expect("analysis ran");
    s.fake.set_state(&item, "Approved");
    let approved = s.deliver(
        "plane",
        "issue",
        "d-approved",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert!(approved.status.success());
    let stage = s.task(1)["task"]["stage"].clone();
    assert_ne!(stage, "cancelled", "Approved was routed to the cancel");
    assert_eq!(
        s.sql("SELECT count(*) FROM jobs WHERE status = 'cancelled'"),
        0
    );
    s.fake.set_state(&item, "STOP");
    s.deliver(
        "plane",
        "issue",
        "d-2",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(s.task(1)["task"]["stage"], "cancelled");
    // STOP on an issue without a task: exit 0, recorded as ignored.
    let stray = s.fake.add_item("never started", 30, "STOP");
    let out = s.deliver(
        "plane",
        "issue",
        "d-stray",
        &s.fake.webhook(&stray, "state", "alice"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM webhook_deliveries WHERE error LIKE '%STOP on an issue without a task%'"),
        1
    );
    // A fresh "To Analyse" starts a new task for the same issue (keys were tombstoned).
    s.fake.set_state(&item, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-3",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(s.tasks().len(), 2);
}

/// The self-hosting settings, with the hook counting its runs in the state
/// directory (absolute: the detached hook's working directory is not ours).
fn setup_self_hosting() -> Setup {
    let s = setup("");
    let path = s.env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let hook = format!("echo run >> {}/hook.count", s.env.state().display());
    std::fs::write(
        &path,
        format!(
            "self_hosting_repo = \"demo\"\nmerge_gate_repos = \"demo\"\ndeploy_hook_cmd = {}\n{config}",
            serde_json::to_string(&hook).expect("quote")
        ),
    )
    .expect("config");
    s
}

/// Start `item` by webhook and run it to phase A (parked on deploy).
fn webhook_to_deploy(s: &Setup, item: &str) {
    s.deliver(
        "plane",
        "issue",
        "d-start",
        &s.fake.webhook(item, "state", "alice"),
    );
    for _ in 0..20 {
        if s.task(1)["task"]["stage"] == "deploy" {
            return;
        }
        if s.orch(&["run-agent", "--next"]).status.code() == Some(3) {
            s.orch(&["advance", "--task", "1", "--approve"]);
        }
    }
    panic!("never reached deploy: {}", s.task(1)["task"]["stage"]);
}

fn last_note(s: &Setup) -> String {
    s.env
        .sqlite()
        .query_row(
            "SELECT coalesce(error, '') FROM webhook_deliveries ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("note")
}

fn hook_runs(s: &Setup) -> usize {
    std::fs::read_to_string(s.env.state().join("hook.count")).map_or(0, |t| t.lines().count())
}

fn finalizer_jobs(s: &Setup) -> i64 {
    s.sql("SELECT count(*) FROM jobs WHERE agent = 'deploy-finalizer'")
}

fn initiated(s: &Setup) -> i64 {
    s.sql("SELECT count(*) FROM deploys WHERE initiated_at IS NOT NULL")
}

/// Seed ORCH-059 TC-04/TC-04b: "Confirm Deploy" routes to phase B only on a
/// task on deploy; on any other stage it is a recorded no-op.
#[test]
fn orch059_tc04_confirm_deploy_routes_to_phase_b_only_on_deploy() {
    let s = setup_self_hosting();
    let item = s.fake.add_item("x", 13, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    // Not on deploy (TC-04b): a stray Confirm Deploy perturbs nothing.
    s.fake.set_state(&item, "Confirm Deploy");
    s.deliver(
        "plane",
        "issue",
        "d-2",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(s.task(1)["task"]["stage"], "analysis");
    let note = last_note(&s);
    assert!(note.contains("no-op"), "{note}");
    assert_eq!(initiated(&s), 0);
    // On deploy (TC-04): phase B runs, not the verdict path (no stage move).
    s.fake.set_state(&item, "To Analyse");
    webhook_to_deploy(&s, &item);
    s.fake.set_state(&item, "Confirm Deploy");
    let out = s.deliver(
        "plane",
        "issue",
        "d-confirm",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let note = last_note(&s);
    assert!(note.contains("self-deploy-initiated"), "{note}");
    assert_eq!(s.task(1)["task"]["stage"], "deploy");
}

/// Seed ORCH-059 TC-10 (and the ORCH-036 "prod hook exactly once"): a person's
/// "Confirm Deploy" by webhook initiates the production deploy once — the
/// marker, one `deploy-finalizer` job, one hook run, stage still deploy — and
/// a repeated delivery is `self-deploy-already-initiated`.
#[test]
fn orch059_tc10_confirm_deploy_by_webhook_initiates_once() {
    let s = setup_self_hosting();
    let item = s.fake.add_item("self", 17, "To Analyse");
    webhook_to_deploy(&s, &item);
    assert_eq!(initiated(&s), 0);
    s.fake.set_state(&item, "Confirm Deploy");
    s.deliver(
        "plane",
        "issue",
        "d-confirm-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert!(last_note(&s).contains("self-deploy-initiated"));
    assert_eq!(initiated(&s), 1, "the initiated marker");
    assert_eq!(finalizer_jobs(&s), 1, "one deploy-finalizer job");
    assert_eq!(s.task(1)["task"]["stage"], "deploy");
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook_runs(&s) == 0 {
        assert!(Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The state change is delivered again (a person re-sets it; a new edit).
    s.deliver(
        "plane",
        "issue",
        "d-confirm-2",
        &s.fake.webhook(&item, "state", "alice"),
    );
    let note = last_note(&s);
    assert!(note.contains("self-deploy-already-initiated"), "{note}");
    assert_eq!(finalizer_jobs(&s), 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hook_runs(&s), 1, "the hook ran twice");
}

/// "Confirm Deploy" set by orch's own tracker user is refused: nothing is
/// merged or initiated, and a comment asks a person to confirm; a person's
/// confirmation afterwards still works.
#[test]
fn orch059_confirm_deploy_by_orchs_own_tracker_user_is_refused() {
    let s = setup_self_hosting();
    let item = s.fake.add_item("self", 18, "To Analyse");
    webhook_to_deploy(&s, &item);
    let comments = s.fake.world().comments.get(&item).map_or(0, Vec::len);
    s.fake.set_state(&item, "Confirm Deploy");
    let out = s.deliver(
        "plane",
        "issue",
        "d-bot",
        &s.fake.webhook(&item, "state", "orch-bot"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let note = last_note(&s);
    assert!(note.contains("refused-own-user"), "{note}");
    assert_eq!(initiated(&s), 0);
    assert_eq!(finalizer_jobs(&s), 0);
    assert_eq!(hook_runs(&s), 0);
    let asked = s
        .fake
        .world()
        .comments
        .get(&item)
        .cloned()
        .unwrap_or_default();
    assert!(asked.len() > comments, "no comment asked a person");
    assert!(
        asked
            .iter()
            .any(|c| c.to_string().contains("A person must")),
        "{asked:?}"
    );
    s.deliver(
        "plane",
        "issue",
        "d-person",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert!(last_note(&s).contains("self-deploy-initiated"));
    assert_eq!(initiated(&s), 1);
}

/// Seed ORCH-090 TC-08/TC-10 with the switch off: STOP is inert, and the
/// start status mid-pipeline relaunches the idle stage's agent once (the
/// legacy behaviour the switch restores).
#[test]
fn orch090_tc08_tc10_stop_off_is_inert_and_the_start_status_relaunches_an_idle_stage() {
    let s = setup("stop_status_enabled = false");
    let item = s.fake.add_item("x", 19, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    s.env
        .sqlite()
        .execute_batch("UPDATE jobs SET status = 'done'; UPDATE tasks SET stage = 'development'")
        .expect("mid-pipeline");
    s.fake.set_state(&item, "STOP");
    s.deliver(
        "plane",
        "issue",
        "d-stop",
        &s.fake.webhook(&item, "state", "alice"),
    );
    assert_eq!(
        s.task(1)["task"]["stage"],
        "development",
        "STOP acted while off"
    );
    s.fake.set_state(&item, "In Progress");
    for n in 0..2 {
        s.deliver(
            "plane",
            "issue",
            &format!("d-start-{n}"),
            &s.fake.webhook(&item, "state", "alice"),
        );
    }
    assert_eq!(
        s.sql("SELECT count(*) FROM jobs WHERE status = 'queued' AND agent = 'developer'"),
        1,
        "one relaunch, not one per delivery"
    );
}

/// Seed ORCH-059 TC-05/TC-11 (issue #14): "Approved" on a task parked
/// awaiting Confirm Deploy is a logged no-op through the webhook and the
/// reconciler's poll: no initiate (no marker, no `deploy-finalizer` job),
/// nothing posted to Plane or the notifier, stage still deploy.
#[test]
fn orch059_tc05_tc11_approved_on_a_parked_deploy_by_webhook_initiates_nothing_and_posts_nothing() {
    let hook = "echo run >> hook.count";
    let s = setup(&format!(
        "self_hosting_repo = \"demo\"\nmerge_gate_repos = \"demo\"\ndeploy_hook_cmd = \"{hook}\"\nreconcile_grace_overrides_json = '{{\"deploy\": 0}}'"
    ));
    let item = s.fake.add_item("self", 16, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    for _ in 0..20 {
        if s.task(1)["task"]["stage"] == "deploy" {
            break;
        }
        if s.orch(&["run-agent", "--next"]).status.code() == Some(3) {
            s.orch(&["advance", "--task", "1", "--approve"]);
        }
    }
    assert_eq!(s.task(1)["task"]["stage"], "deploy");
    let rows = s.sql("SELECT count(*) FROM outbox");
    let comments = s.fake.world().comments.get(&item).map_or(0, Vec::len);
    s.fake.set_state(&item, "Approved");
    for n in 0..2 {
        s.deliver(
            "plane",
            "issue",
            &format!("d-approved-{n}"),
            &s.fake.webhook(&item, "state", "alice"),
        );
    }
    let r = s.json(&["reconcile", "--json"]);
    assert_eq!(r["skipped"]["awaiting Confirm Deploy"], 1, "{r}");
    assert_eq!(
        s.sql(
            "SELECT count(*) FROM webhook_deliveries WHERE error LIKE '%approved-on-deploy-noop%'"
        ),
        2
    );
    assert_eq!(s.sql("SELECT count(*) FROM outbox"), rows, "traffic queued");
    assert_eq!(
        s.fake.world().comments.get(&item).map_or(0, Vec::len),
        comments,
        "a comment was posted"
    );
    assert_eq!(
        s.fake.state_of(&item),
        "Approved",
        "the human's state was overridden"
    );
    assert_eq!(s.task(1)["task"]["stage"], "deploy");
    assert_eq!(initiated(&s), 0, "Approved initiated the deploy");
    assert_eq!(finalizer_jobs(&s), 0, "Approved enqueued a finalizer");
}

#[test]
fn orch065_tc11_gitea_pr_merged_releases_the_lease_and_an_absent_lease_is_a_noop() {
    let s = setup("");
    s.env
        .orch()
        .args([
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            "x",
            "--no-start",
        ])
        .assert()
        .success();
    s.env
        .sqlite()
        .execute(
            "INSERT INTO merge_leases (repo, task_id, branch, token, acquired_at) VALUES ('demo', 1, 'feature/DEMO-1-x', 't', 0)",
            [],
        )
        .expect("lease");
    // What Gitea sends when a PR is merged: services/webhook/notifier.go
    // (`MergePullRequest`: a `pull_request` event with action
    // `HookIssueClosed`), fields of `PullRequestPayload`
    // (modules/structs/hook.go) and `PullRequest`/`PRBranchInfo`
    // (modules/structs/pull.go), go-gitea/gitea.
    let sha = "5f1c0e7a9b7c3d2e1f0a9b8c7d6e5f4a3b2c1d0e";
    let branch_info = |label: &str, sha: &str| {
        serde_json::json!({
            "label": label, "ref": label, "sha": sha, "repo_id": 3,
            "repo": {"id": 3, "name": "demo", "full_name": "org/demo", "default_branch": "main"}
        })
    };
    let body = serde_json::json!({
        "action": "closed",
        "number": 3,
        "pull_request": {
            "id": 41, "url": "https://gitea.example/org/demo/pulls/3", "number": 3,
            "user": {"id": 2, "login": "orch", "username": "orch"},
            "title": "DEMO-1: x", "body": "", "labels": [], "milestone": null,
            "assignee": null, "assignees": null, "state": "closed", "is_locked": false,
            "comments": 0, "html_url": "https://gitea.example/org/demo/pulls/3",
            "diff_url": "https://gitea.example/org/demo/pulls/3.diff",
            "patch_url": "https://gitea.example/org/demo/pulls/3.patch",
            "mergeable": true, "merged": true, "merged_at": "2026-12-05T10:05:00Z",
            "merge_commit_sha": sha, "merged_by": {"id": 2, "login": "orch", "username": "orch"},
            "base": branch_info("main", "0000000000000000000000000000000000000001"),
            "head": branch_info("feature/DEMO-1-x", sha),
            "merge_base": "0000000000000000000000000000000000000001",
            "due_date": null, "created_at": "2026-12-05T10:00:00Z",
            "updated_at": "2026-12-05T10:05:00Z", "closed_at": "2026-12-05T10:05:00Z"
        },
        "requested_reviewer": null,
        "repository": {"id": 3, "name": "demo", "full_name": "org/demo", "default_branch": "main"},
        "sender": {"id": 2, "login": "orch", "username": "orch"},
        "commit_id": "",
        "review": null
    })
    .to_string();
    let out = s.deliver("gitea", "pull_request", "g-1", &body);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.sql("SELECT count(*) FROM merge_leases"), 0);
    // Releasing a lease that is already gone is a no-op, not an error (seed
    // ORCH-065 merge-gate TC-11): another merged PR of the same branch.
    let again = s.deliver(
        "gitea",
        "pull_request",
        "g-2",
        &body.replace("\"number\":3", "\"number\":4"),
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(s.sql("SELECT count(*) FROM merge_leases"), 0);
    assert_eq!(
        s.sql("SELECT count(*) FROM webhook_deliveries"),
        2,
        "the second event was taken for a duplicate"
    );
}

#[test]
fn reconcile_polls_plane_for_a_lost_webhook() {
    let s = setup("");
    s.fake.add_item("Never delivered", 14, "To Analyse");
    s.fake.add_item("Still in backlog", 15, "Backlog");
    let r = s.json(&["reconcile", "--json"]);
    assert_eq!(r["polled"].as_array().map_or(0, Vec::len), 1, "{r}");
    assert_eq!(s.tasks().len(), 1);
    // Idempotent.
    s.orch(&["reconcile"]);
    assert_eq!(s.tasks().len(), 1);
}

#[test]
fn notifications_go_to_telegram_once_and_survive_a_429() {
    let s = setup("notifier = \"telegram\"");
    s.fake.world().fail_next.push(("/sendMessage".into(), 429));
    let item = s.fake.add_item("x", 16, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    s.orch(&["run-agent", "--next"]);
    // The first message met a 429 and waits; the next pass delivers it.
    s.env
        .sqlite()
        .execute(
            "UPDATE outbox SET next_attempt_at = 0 WHERE status = 'pending'",
            [],
        )
        .expect("due");
    s.orch(&["reconcile"]);
    let sent = s.fake.world().telegram.clone();
    assert!(!sent.is_empty());
    let texts: Vec<String> = sent
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_owned())
        .collect();
    let mut unique = texts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        texts.len(),
        "a message was sent twice: {texts:?}"
    );
    assert!(
        sent.iter()
            .all(|m| m["parse_mode"] == "HTML" && m["chat_id"] == 42)
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM outbox WHERE status <> 'delivered'"),
        0
    );
}

#[test]
fn a_plane_outage_leaves_messages_pending_then_dead_letters_a_4xx() {
    let s = setup("");
    let item = s.fake.add_item("x", 17, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    s.fake.world().fail_next.push(("/comments".into(), 503));
    s.orch(&["run-agent", "--next"]);
    assert!(
        s.sql("SELECT count(*) FROM outbox WHERE status = 'pending' AND last_error IS NOT NULL")
            >= 1
    );
    s.env
        .sqlite()
        .execute("UPDATE outbox SET next_attempt_at = 0", [])
        .expect("due");
    s.orch(&["reconcile"]);
    assert_eq!(
        s.sql("SELECT count(*) FROM outbox WHERE status = 'pending'"),
        0
    );
    // A permanent 4xx is dead-lettered at once and shown by status.
    s.fake.world().fail_next.push(("/comments".into(), 403));
    s.env
        .sqlite()
        .execute(
            "INSERT INTO outbox (dedup_key, channel, task_id, payload, next_attempt_at, created_at)
             VALUES ('manual', 'tracker', 1, '{\"kind\":\"comment\",\"task_id\":1,\"author\":\"orch\",\"body\":\"hi\"}', 0, 0)",
            [],
        )
        .expect("row");
    s.orch(&["reconcile"]);
    assert_eq!(
        s.sql("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        1
    );
    assert_eq!(s.json(&["status", "--json"])["outbox"]["dead"], 1);
}

#[test]
fn hostile_bodies_never_panic_and_never_store() {
    let s = setup("");
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[1,2,3]".to_vec(),
        b"\"string\"".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        "{\"a\":".repeat(20_000).into_bytes(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        b"{\"event\":\"issue\",\"data\":{\"id\":123}}".to_vec(),
    ];
    // Generated: truncations and byte flips of a real payload.
    let real = s
        .fake
        .webhook(&s.fake.add_item("x", 18, "Backlog"), "state", "alice")
        .into_bytes();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..40 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut b = real.clone();
        if i % 2 == 0 {
            b.truncate((seed as usize) % real.len());
        } else {
            let at = (seed as usize) % b.len();
            b[at] ^= (seed >> 8) as u8 | 1;
        }
        bodies.push(b);
    }
    for (i, body) in bodies.iter().enumerate() {
        let out = s.deliver_bytes("plane", "issue", &format!("h-{i}"), body);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "body {i} panicked: {stderr}");
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 65)),
            "body {i}: exit {code:?}: {stderr}"
        );
    }
    // Only syntactically valid JSON objects were stored; none made a task.
    assert!(s.tasks().is_empty());
}

/// Issue #15 (1): Gitea's `status` webhook names the commit, not the branch.
/// The payload is built from the fields of Gitea's `CommitStatusPayload`
/// (go-gitea/gitea, modules/structs/hook.go: `commit`, `context`,
/// `created_at`, `description`, `id`, `repository`, `sender`, `sha`, `state`,
/// `target_url`, `updated_at` — no `branches`, which only GitHub sends).
/// A green status on the commit orch pushed for a developing task advances
/// it; a green status on any other commit changes nothing.
#[test]
fn gitea_status_on_the_pushed_commit_advances_a_developing_task() {
    let s = setup("");
    let green = s.env.shared().join("ci-green");
    let path = s.env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config").replace(
        "test_command = \"sh ./test.sh\"",
        &format!("test_command = \"test -f {}\"", green.display()),
    );
    std::fs::write(&path, config).expect("config");
    // The pipeline up to the developer, whose pushed commit CI has not passed yet.
    s.env
        .orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    for _ in 0..10 {
        if s.task(1)["task"]["stage"] == "development"
            && s.sql("SELECT count(*) FROM jobs WHERE agent = 'developer' AND status = 'done'") > 0
        {
            break;
        }
        if s.orch(&["run-agent", "--next"]).status.code() == Some(3) {
            s.orch(&["advance", "--task", "1", "--approve"]);
        }
    }
    assert_eq!(s.task(1)["task"]["stage"], "development");
    s.env
        .sqlite()
        .execute(
            "UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'",
            [],
        )
        .expect("idle");
    let branch = s.task(1)["task"]["branch"]
        .as_str()
        .expect("branch")
        .to_owned();
    let clone = s.env.state().join("repos/demo/clone");
    let head = std::process::Command::new("git")
        .current_dir(&clone)
        .args(["rev-parse", &format!("refs/heads/{branch}")])
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert_eq!(head.len(), 40, "{head}");
    std::fs::write(&green, "").expect("ci green");
    let status = |sha: &str| {
        serde_json::json!({
            "commit": {
                "id": sha,
                "message": "developer: x\n",
                "url": format!("https://gitea.example/org/demo/commit/{sha}"),
                "author": {"name": "orch", "email": "orch@example", "username": ""},
                "committer": {"name": "orch", "email": "orch@example", "username": ""},
                "verification": null,
                "timestamp": "2026-12-05T10:00:00Z",
                "added": null,
                "removed": null,
                "modified": null
            },
            "context": "ci/woodpecker",
            "created_at": "2026-12-05T10:01:00Z",
            "description": "Build succeeded",
            "id": 17,
            "repository": {"id": 3, "name": "demo", "full_name": "org/demo", "default_branch": "main"},
            "sender": {"id": 2, "login": "ci", "username": "ci"},
            "sha": sha,
            "state": "success",
            "target_url": "https://ci.example/org/demo/42",
            "updated_at": "2026-12-05T10:01:00Z"
        })
        .to_string()
    };
    let other = "0123456789abcdef0123456789abcdef01234567";
    let out = s.deliver("gitea", "status", "g-st-1", &status(other));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.task(1)["task"]["stage"],
        "development",
        "a status on a commit orch did not push moved the task"
    );
    let out = s.deliver("gitea", "status", "g-st-2", &status(&head));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes: Vec<String> = s
        .env
        .rows("SELECT error FROM webhook_deliveries ORDER BY id")
        .into_iter()
        .map(|r| r[0].to_string())
        .collect();
    assert_eq!(
        s.task(1)["task"]["stage"],
        "review",
        "the green status of the pushed head did not advance the task: {notes:?}"
    );
}

/// Issue #15 (4): ingest answers at once whatever Plane's latency. With a
/// Plane that takes 3 s per call, the delivery is stored and ingest exits in
/// well under one call; the detached router then starts the pipeline.
#[test]
fn ingest_answers_at_once_with_a_slow_plane_and_routes_afterwards() {
    let s = setup("");
    let item = s.fake.add_item("Slow Plane", 19, "To Analyse");
    let body = s.fake.webhook(&item, "state", "alice");
    s.fake.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let out = s.ingest_bytes("plane", "issue", "slow-1", body.as_bytes());
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "stored delivery 1\n");
    eprintln!("ingest answered in {took:?} with a 3 s Plane");
    assert!(
        took < Duration::from_millis(1500),
        "ingest took {took:?}: it waited for Plane"
    );
    // Stored before the answer; routed afterwards.
    assert_eq!(s.sql("SELECT count(*) FROM webhook_deliveries"), 1);
    s.settle();
    let routed = started.elapsed();
    eprintln!("routed {routed:?} after the delivery");
    assert_eq!(s.tasks().len(), 1, "the router did not start the pipeline");
    assert_eq!(
        s.sql("SELECT count(*) FROM webhook_deliveries WHERE status = 'processed'"),
        1
    );
}

/// A state change that failed and is retried later must not undo a newer
/// one: the PATCH to "In Review" that got a 503 is retired, not re-sent,
/// once the task's issue was moved on. And a task's comments reach Plane in
/// the order they were written, even when the first one had to be retried.
#[test]
fn an_older_state_change_never_overwrites_a_newer_one_and_comments_stay_in_order() {
    let s = setup("");
    let item = s.fake.add_item("x", 17, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    s.orch(&["reconcile"]);
    let push = |key: &str, payload: &str| {
        s.env
            .sqlite()
            .execute(
                "INSERT INTO outbox (dedup_key, channel, task_id, payload, next_attempt_at, created_at)
                 VALUES (?1, 'tracker', 1, ?2, 0, 0)",
                [key, payload],
            )
            .expect("row");
    };
    let due_now = || {
        s.env
            .sqlite()
            .execute(
                "UPDATE outbox SET next_attempt_at = 0 WHERE status = 'pending'",
                [],
            )
            .expect("due");
    };
    // 1. "In Review" fails (503); then the task is done and "Done" is delivered.
    s.fake.world().fail_next.push(("/work-items/".into(), 503));
    push(
        "t-review",
        r#"{"kind":"state","task_id":1,"state":"In Review"}"#,
    );
    s.orch(&["reconcile"]);
    assert_eq!(
        s.sql("SELECT count(*) FROM outbox WHERE dedup_key = 't-review' AND status = 'pending'"),
        1
    );
    push("t-done", r#"{"kind":"state","task_id":1,"state":"Done"}"#);
    due_now();
    s.orch(&["reconcile"]);
    due_now();
    s.orch(&["reconcile"]);
    assert_eq!(
        s.fake.state_of(&item),
        "Done",
        "the stale In Review overwrote Done"
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM outbox WHERE dedup_key = 't-review' AND status = 'delivered' AND last_error LIKE 'superseded%'"),
        1
    );
    // 2. Comment A fails once; B, written after it, must not overtake it.
    s.fake.world().fail_next.push(("/comments".into(), 503));
    push(
        "c-a",
        r#"{"kind":"comment","task_id":1,"author":"orch","body":"first"}"#,
    );
    push(
        "c-b",
        r#"{"kind":"comment","task_id":1,"author":"orch","body":"second"}"#,
    );
    s.orch(&["reconcile"]);
    assert_eq!(
        s.sql("SELECT count(*) FROM outbox WHERE dedup_key = 'c-b' AND status = 'pending'"),
        1,
        "the second comment waits for the first"
    );
    due_now();
    s.orch(&["reconcile"]);
    let bodies: Vec<String> = s
        .fake
        .world()
        .comments
        .get(&item)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["comment_html"].as_str().map(str::to_owned))
                .filter(|b| b.contains("first") || b.contains("second"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies[0].contains("first") && bodies[1].contains("second"),
        "{bodies:?}"
    );
}

/// The board is read once and shared: deliveries routed by separate orch
/// processes cost one `GET …/states/` between them (for up to five minutes),
/// and a state id the shared board does not know — a state re-created on the
/// board — is looked up again at once instead of being ignored.
#[test]
fn the_plane_board_is_shared_between_processes_and_refreshed_for_an_unknown_state() {
    let s = setup("");
    let states_gets = |s: &Setup| {
        s.fake
            .world()
            .requests
            .iter()
            .filter(|r| r.starts_with("GET") && r.ends_with("/states/"))
            .count()
    };
    let a = s.fake.add_item("a", 21, "To Analyse");
    let b = s.fake.add_item("b", 22, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-a",
        &s.fake.webhook(&a, "state", "alice"),
    );
    s.orch(&["reconcile"]);
    s.deliver(
        "plane",
        "issue",
        "d-b",
        &s.fake.webhook(&b, "state", "alice"),
    );
    s.orch(&["reconcile"]);
    assert_eq!(
        s.sql("SELECT count(*) FROM tasks"),
        2,
        "both deliveries started a task"
    );
    assert_eq!(
        states_gets(&s),
        1,
        "the second process used the shared board"
    );
    // "To Analyse" is deleted and re-created on the board: a new id.
    {
        let mut w = s.fake.world();
        for (id, name) in &mut w.states {
            if name == "To Analyse" {
                *id = "state-recreated".to_owned();
            }
        }
    }
    let c = s.fake.add_item("c", 23, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-c",
        &s.fake.webhook(&c, "state", "alice"),
    );
    s.orch(&["reconcile"]);
    assert_eq!(states_gets(&s), 2, "the unknown state id was looked up");
    assert_eq!(
        s.sql("SELECT count(*) FROM tasks"),
        3,
        "and the delivery acted on it"
    );
}

/// A Telegram 429 that asks for more than orch waits in place (3 s) is
/// retried when Telegram said — `retry_after` — not after orch's own 30 s+
/// backoff.
#[test]
fn a_telegram_429_is_retried_after_its_retry_after() {
    let s = setup("notifier = \"telegram\"");
    {
        let mut w = s.fake.world();
        w.retry_after = 7;
        w.fail_next.push(("/sendMessage".into(), 429));
    }
    let item = s.fake.add_item("x", 18, "To Analyse");
    s.deliver(
        "plane",
        "issue",
        "d-1",
        &s.fake.webhook(&item, "state", "alice"),
    );
    s.orch(&["run-agent", "--next"]);
    let wait = s.sql(
        "SELECT next_attempt_at - strftime('%s','now') FROM outbox
         WHERE channel = 'notifier' AND status = 'pending' AND last_error LIKE '%429%'",
    );
    assert!(
        (5..=7).contains(&wait),
        "retried in {wait}s, Telegram asked for 7s"
    );
}

/// A work-item id of a signed payload goes into an API path: one that is not
/// a Plane id (a dot segment, a path, an encoded dot) is recorded as ignored
/// with the reason, and Plane is asked nothing with it.
#[test]
fn hostile_work_item_ids_never_reach_a_plane_api_path() {
    let s = setup("");
    let item = s.fake.add_item("x", 12, "To Analyse");
    let hostile = ["..", "../../users/me", "a/b", "%2e%2e", "."];
    for (i, id) in hostile.iter().enumerate() {
        let mut body: serde_json::Value =
            serde_json::from_str(&s.fake.webhook(&item, "state", "alice")).expect("json");
        body["data"]["id"] = serde_json::json!(id);
        let out = s.deliver("plane", "issue", &format!("d-{i}"), &body.to_string());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let requests = s.fake.world().requests.clone();
    for r in &requests {
        let path = r.split_once(' ').map_or("", |(_, p)| p);
        assert!(
            path.split('/').all(|seg| seg != ".." && seg != ".")
                && !path.contains("users")
                && !path.contains("%2"),
            "a hostile id reached Plane: {requests:?}"
        );
    }
    let db = s.env.sqlite();
    let mut stmt = db
        .prepare("SELECT status, error FROM webhook_deliveries ORDER BY id")
        .expect("prepare");
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), hostile.len());
    for (status, note) in rows {
        assert_eq!(status, "ignored", "{note}");
        assert!(note.contains("not a Plane id"), "{note}");
    }
    assert!(s.tasks().is_empty());
}
