//! The real Claude Code CLI as orch's agent, offline.
//!
//! Every test here runs the pinned `@anthropic-ai/claude-code` from npm (the
//! binary `.ci/run` installs and names in `$ORCH_TEST_CLAUDE`) with orch's
//! default agent command, against the loopback Messages API stand-in of
//! `common::messages_api`. The stand-in plays the model: it answers each
//! stage's prompt with the tool calls a model would make (Write the
//! artifacts with their frontmatter, Bash to run the tests), or with the API
//! errors and limits whose classification is under test. Where the machine
//! allows it (root, or user namespaces), the whole pipeline runs in a network
//! namespace with only loopback, and the test fails if anything tried to
//! reach another address.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::Env;
use common::messages_api::{self, Block, MessagesApi, Reply, Request};
use serde_json::{Value, json};

/// The stages' artifacts, as the demo agent writes them (the gates' contract).
fn stage_writes(agent: &str, wi: &str) -> Vec<(String, String)> {
    let dir = format!("docs/work-items/{wi}");
    let files: Vec<(String, String)> = match agent {
        "analyst" => vec![
            (
                format!("{dir}/01-brd.md"),
                format!("---\ntype: brd\nwork_item_id: {wi}\n---\n# BRD\n\nGreet by name.\n"),
            ),
            (
                format!("{dir}/02-trz.md"),
                format!("---\ntype: trz\nwork_item_id: {wi}\n---\n# TRZ\n\n`src/greet.sh NAME`.\n"),
            ),
            (
                format!("{dir}/03-acceptance-criteria.md"),
                format!("---\ntype: acceptance-criteria\nwork_item_id: {wi}\n---\n- AC-1 greets\n"),
            ),
            (
                format!("{dir}/04-test-plan.yaml"),
                format!("work_item: {wi}\ntests:\n  - id: TC-01\n    expected: PASS\n"),
            ),
        ],
        "architect" => vec![(
            format!("{dir}/06-adr/ADR-001-shell.md"),
            format!("---\ntype: adr\nstatus: accepted\nwork_item_id: {wi}\n---\n# ADR-001\n"),
        )],
        "developer" => vec![
            (
                "src/greet.sh".into(),
                "#!/bin/sh\nprintf 'Hello, %s!\\n' \"${1:-world}\"\n".into(),
            ),
            (
                "tests/greet_test.sh".into(),
                "#!/bin/sh\nset -e\n[ \"$(sh src/greet.sh Ada)\" = \"Hello, Ada!\" ]\n".into(),
            ),
        ],
        "reviewer" => vec![(
            format!("{dir}/12-review.md"),
            format!(
                "---\ntype: review\nwork_item_id: {wi}\nverdict: APPROVED\nversion: 1\n---\nLGTM\n"
            ),
        )],
        "tester" => vec![(
            format!("{dir}/13-test-report.md"),
            format!("---\ntype: test-report\nwork_item_id: {wi}\nresult: PASS\n---\nTC-01 PASS\n"),
        )],
        _ => vec![],
    };
    files
}

/// Which agent and work item a prompt is for: the task file starts with
/// `# <agent>: <work item> — <title>`.
fn agent_and_item(req: &Request) -> Option<(String, String)> {
    let text = req.all_text();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("# ")?;
        let (agent, tail) = rest.split_once(": ")?;
        let (wi, _) = tail.split_once(" — ")?;
        (!agent.contains(' ') && !wi.contains(' ')).then(|| (agent.to_owned(), wi.to_owned()))
    })
}

/// A model that does each stage's work: Write its files (deploy stages write
/// their log from the task text), run the tests with Bash in development,
/// then say it is done. It gives up if a tool call was refused.
fn stage_model(req: &Request) -> Reply {
    if !req.has_tools() {
        return Reply::Message(vec![Block::Text("Stage work".into())]);
    }
    let Some((agent, wi)) = agent_and_item(req) else {
        return Reply::Message(vec![Block::Text("I cannot tell what to do.".into())]);
    };
    let cwd = req.working_dir().unwrap_or_default();
    if req.last_tool_results().iter().any(|(_, err, _)| *err) {
        return Reply::Message(vec![Block::Text("A tool call failed; stopping.".into())]);
    }
    let mut files = stage_writes(&agent, &wi);
    let dir = format!("docs/work-items/{wi}");
    match agent.as_str() {
        "deployer" if req.all_text().contains("15-staging-log.md") => files.push((
            format!("{dir}/15-staging-log.md"),
            "---\nstaging_status: SUCCESS\ntimestamp: 2026-01-01T00:00:00Z\nbase_url: http://127.0.0.1:8501\n---\nok\n".into(),
        )),
        "deployer" => files.push((
            format!("{dir}/14-deploy-log.md"),
            format!("---\ndeploy_status: SUCCESS\nwork_item: {wi}\n---\nok\n"),
        )),
        _ => {}
    }
    match req.turn() {
        1 => {
            let mut blocks = vec![Block::Text(format!(
                "I will write the {agent} deliverables."
            ))];
            blocks.extend(files.into_iter().map(|(path, content)| {
                Block::Tool(
                    "Write",
                    json!({"file_path": format!("{cwd}/{path}"), "content": content}),
                )
            }));
            Reply::Message(blocks)
        }
        2 if agent == "developer" => Reply::Message(vec![Block::Tool(
            "Bash",
            json!({"command": "sh ./test.sh", "description": "Run the test suite"}),
        )]),
        _ => Reply::Message(vec![Block::Text(format!("The {agent} stage is done."))]),
    }
}

/// A network namespace with only loopback, held open by a sleeping process.
struct NetNs {
    holder: std::process::Child,
}

impl NetNs {
    /// A new namespace, or `None` (with a loud message) where the machine
    /// does not allow one.
    fn new() -> Option<NetNs> {
        use std::io::BufRead as _;
        let mut holder = Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                "ip link set lo up && echo ready && exec sleep 3600",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let ready = holder
            .stdout
            .take()
            .is_some_and(|out| std::io::BufReader::new(out).read_line(&mut line).is_ok());
        if !ready || line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            eprintln!("\n*** NOT ISOLATED: no network namespace here (unshare --net failed) ***\n");
            return None;
        }
        Some(NetNs { holder })
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// A loopback listener inside the namespace: bound from a thread that
    /// joined it, so the socket lives there.
    fn listener(&self) -> std::net::TcpListener {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind in netns")
        })
        .join()
        .expect("listener thread")
    }

    /// Packets the namespace could not route anywhere (IPv4 and IPv6): any
    /// attempt to reach a non-loopback address, DNS included, counts.
    fn no_route_count(&self) -> u64 {
        let pid = self.holder.id();
        let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).expect("snmp");
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
        let names: Vec<&str> = ip.next().expect("Ip header").split_whitespace().collect();
        let values: Vec<&str> = ip.next().expect("Ip values").split_whitespace().collect();
        let v4: u64 = names
            .iter()
            .position(|n| *n == "OutNoRoutes")
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse().ok())
            .expect("OutNoRoutes");
        let snmp6 = std::fs::read_to_string(format!("/proc/{pid}/net/snmp6")).unwrap_or_default();
        let v6: u64 = snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Ip6OutNoRoutes"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        v4 + v6
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// An installation whose agent is the real CLI with orch's default command:
/// the demo forge and config, minus the demo agent.
struct Rig {
    env: Env,
    api: MessagesApi,
    claude: PathBuf,
    netns: Option<NetNs>,
    /// Run orch (and so the agent) as this uid, like the shipped units' user.
    user: Option<u32>,
}

impl Rig {
    fn new(model: impl messages_api::Model, extra_config: &str, isolate: bool) -> Option<Rig> {
        let claude = messages_api::real_claude()?;
        let env = Env::bare();
        env.orch().args(["demo", "--setup-only"]).assert().success();
        let path = env.state().join("orch.toml");
        let config = std::fs::read_to_string(&path).expect("config");
        // The demo's agent and any key the test sets itself go.
        let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
        let overridden: Vec<String> = extra_config.lines().map(key).collect();
        let config: Vec<&str> = config
            .lines()
            .filter(|l| !l.starts_with("agent_cmd") && !overridden.contains(&key(l)))
            .collect();
        let config = config.join("\n");
        std::fs::write(&path, format!("{extra_config}\n{config}")).expect("config");
        let netns = if isolate { NetNs::new() } else { None };
        let api = match &netns {
            Some(ns) => MessagesApi::serve(ns.listener(), model),
            None => MessagesApi::start(model),
        };
        Some(Rig {
            env,
            api,
            claude,
            netns,
            user: None,
        })
    }

    /// From now on run orch as the unprivileged `uid`, owner of the state
    /// directory (HOME included), as the shipped units run it as `orch`.
    /// `None` (loudly) where that cannot be done: not root, or the binaries
    /// are not reachable by that user.
    fn run_as(mut self, uid: u32) -> Option<Rig> {
        let reachable = |bin: &std::path::Path| {
            Command::new("setpriv")
                .args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                ])
                .arg(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !nix::unistd::geteuid().is_root()
            || !reachable(std::path::Path::new(env!("CARGO_BIN_EXE_orch")))
            || !reachable(&self.claude)
        {
            eprintln!("\n*** SKIPPED: cannot run orch and claude as uid {uid} here ***\n");
            return None;
        }
        let chown = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{uid}"))
            .arg(self.env.state())
            .status()
            .expect("chown");
        assert!(chown.success());
        self.user = Some(uid);
        Some(self)
    }

    /// `orch <args>` as the installation runs it, inside the namespace if any.
    fn orch(&self, args: &[&str]) -> Output {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend([
                "nsenter".into(),
                format!("--net={}", ns.path()),
                "--".into(),
            ]);
        }
        if let Some(uid) = self.user {
            argv.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ]);
        }
        argv.push(env!("CARGO_BIN_EXE_orch").into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let path = format!(
            "{}:{}",
            self.claude.parent().expect("bin dir").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env_clear()
            .env("PATH", path)
            .env("ORCH_STATE_DIR", self.env.state())
            .env("RUST_LOG", "warn")
            .envs(messages_api::offline_env(
                &self.api,
                &self.env.state().join("home"),
            ))
            .args(args);
        cmd.output().expect("run orch")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.orch(&all);
        assert!(
            out.status.success(),
            "orch {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn sql(&self, sql: &str) -> Vec<Vec<Value>> {
        self.env.rows(sql)
    }

    fn create_task(&self) {
        let out = self.orch(&[
            "task",
            "create",
            "--repo",
            "demo",
            "--title",
            "Greet by name",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One `orch run-agent --next`: its exit code and JSON report.
    fn run_next(&self) -> (Option<i32>, Value) {
        let out = self.orch(&["run-agent", "--next", "--json"]);
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| json!({"stderr": String::from_utf8_lossy(&out.stderr)}));
        (out.status.code(), report)
    }

    fn job(&self) -> Value {
        let rows = self.sql(
            "SELECT status, attempts, transient_attempts, available_at - strftime('%s','now'), error
             FROM jobs ORDER BY id DESC LIMIT 1",
        );
        let r = &rows[0];
        json!({"status": r[0], "attempts": r[1], "transient": r[2], "wait_s": r[3], "error": r[4]})
    }

    /// The files on `main` of the forge (read as whoever owns it).
    fn files_on_main(&self) -> String {
        let out = Command::new("git")
            .args(["-c", "safe.directory=*", "-C"])
            .arg(self.env.state().join("forge/demo.git"))
            .args(["ls-tree", "-r", "--name-only", "main"])
            .output()
            .expect("git ls-tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn one_task_goes_from_created_to_done_with_the_real_cli_on_every_stage() {
    let Some(rig) = Rig::new(stage_model, "", true) else {
        return;
    };
    drive_to_done(&rig);
}

#[test]
fn the_default_command_works_for_an_unprivileged_user_like_the_shipped_units() {
    // The shipped units run orch as the system user `orch`, whose home is the
    // state directory; nobody (65534) stands in for it.
    let Some(rig) = Rig::new(stage_model, "", true).and_then(|r| r.run_as(65534)) else {
        return;
    };
    drive_to_done(&rig);
    let brd = rig
        .env
        .state()
        .join("repos/demo/worktrees/DEMO-1/docs/work-items/DEMO-1/01-brd.md");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&brd).expect("brd"));
    assert_eq!(owner, 65534, "the agent wrote as the unprivileged user");
}

/// Create a task and run it to `done` with `orch run-agent --next`, approving
/// the analysis as a person would; then check the ledger and main.
fn drive_to_done(rig: &Rig) {
    rig.create_task();
    let mut stages = Vec::new();
    for _ in 0..30 {
        let task = rig.json(&["task", "show", "1"]);
        let stage = task["task"]["stage"].as_str().unwrap_or("").to_owned();
        if stage == "done" {
            break;
        }
        stages.push(stage.clone());
        let (code, report) = rig.run_next();
        if code == Some(3) {
            let out = rig.orch(&["advance", "--task", "1", "--approve"]);
            assert!(
                out.status.success(),
                "approve: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            assert_eq!(report["run_verdict"], "success", "{stage}: {report:#}");
        }
    }
    let task = rig.json(&["task", "show", "1"]);
    assert_eq!(
        task["task"]["stage"], "done",
        "stages seen: {stages:?}\n{task:#}"
    );

    // Every stage ran the real CLI with the default command, and the ledger
    // holds what the CLI reported: cost, tokens, turns.
    let runs = rig.sql(
        "SELECT stage, command, outcome, cost_usd, input_tokens, output_tokens, num_turns
         FROM agent_runs ORDER BY id",
    );
    let ran: Vec<&str> = runs.iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(
        ran,
        [
            "analysis",
            "architecture",
            "development",
            "review",
            "testing",
            "deploy-staging",
            "deploy"
        ]
    );
    for r in &runs {
        assert_eq!(r[1], orch::config::DEFAULT_AGENT_CMD, "{r:?}");
        assert_eq!(r[2], "success", "{r:?}");
        assert!(
            r[3].as_f64().is_some_and(|c| c > 0.0),
            "cost recorded: {r:?}"
        );
        assert!(
            r[4].as_i64()
                .is_some_and(|t| t >= messages_api::INPUT_TOKENS as i64),
            "{r:?}"
        );
        assert!(
            r[5].as_i64()
                .is_some_and(|t| t >= messages_api::OUTPUT_TOKENS as i64),
            "{r:?}"
        );
        assert!(r[6].as_i64().is_some_and(|t| t >= 2), "{r:?}");
    }
    let total: f64 = runs.iter().filter_map(|r| r[3].as_f64()).sum();
    let ledger = task["cost"]["spent_usd"].as_f64().expect("ledger total");
    assert!(
        (ledger - total).abs() < 1e-9,
        "ledger {ledger} vs runs {total}"
    );

    // The change is on main, with its tests; the artifacts too.
    let files = rig.files_on_main();
    for f in [
        "src/greet.sh",
        "tests/greet_test.sh",
        "12-review.md",
        "15-staging-log.md",
    ] {
        assert!(files.contains(f), "{f} not on main: {files}");
    }
    // The CLI talked to the stand-in only: every request was a Messages
    // call, and (isolated) nothing tried to leave loopback.
    assert!(
        rig.api.messages_calls() >= 14,
        "{}",
        rig.api.messages_calls()
    );
    if let Some(ns) = &rig.netns {
        assert_eq!(
            ns.no_route_count(),
            0,
            "something tried to reach a non-loopback address"
        );
    }
}

/// A model that answers every agent turn with `reply` (side requests get text).
fn always(reply: Reply) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    move |req: &Request| {
        if req.has_tools() {
            reply.clone()
        } else {
            Reply::Message(vec![Block::Text("title".into())])
        }
    }
}

/// One analysis run of a fresh task under `model`: the report, then the job.
fn one_run(model: impl messages_api::Model, extra_config: &str) -> Option<(Rig, Value, Value)> {
    let rig = Rig::new(model, extra_config, true)?;
    rig.create_task();
    let (code, report) = rig.run_next();
    // run-agent's exit code tells the ending apart (docs/exit-codes.md).
    let expected = match report["ending"].as_str().unwrap_or("") {
        "advanced" | "awaiting_human" | "finished" => 0,
        "gates_failed" | "rolled_back" | "retry_later" => 4,
        "agent_failed" | "agent_killed" => 5,
        "refused" => 6,
        _ => 1,
    };
    assert_eq!(code, Some(expected), "{report:#}");
    let job = rig.job();
    Some((rig, report, job))
}

fn verdict(report: &Value) -> &str {
    report["run_verdict"].as_str().unwrap_or("")
}

#[test]
fn a_429_is_transient_whatever_its_message_and_however_claude_is_spelled() {
    let Some(claude) = messages_api::real_claude() else {
        return;
    };
    // An absolute path behind `env` with an assignment: still read the Claude
    // way, because the output is a Claude stream.
    let cmd = orch::config::DEFAULT_AGENT_CMD.replacen(
        "claude",
        &format!("env ORCH_SPELLING=1 {}", claude.display()),
        1,
    );
    let config = format!(
        "agent_cmd = {}",
        serde_json::to_string(&cmd).expect("quote")
    );
    let model = always(Reply::Error(
        429,
        "rate_limit_error",
        "Slow down, please".into(),
    ));
    let Some((_rig, report, job)) = one_run(model, &config) else {
        return;
    };
    assert!(
        verdict(&report).starts_with("transient: API error 429"),
        "{report:#}"
    );
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "no attempt spent: {job}");
    assert_eq!(job["transient"], 1, "{job}");
    assert!(
        job["wait_s"].as_i64().is_some_and(|w| w > 0),
        "backed off: {job}"
    );
}

#[test]
fn overload_server_errors_and_a_broken_stream_are_transient_with_growing_backoff() {
    let replies = [
        Reply::Error(529, "overloaded_error", "Overloaded".into()),
        Reply::Error(500, "api_error", "Internal server error".into()),
        Reply::StreamError("overloaded_error", "Overloaded".into()),
    ];
    let step = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&step);
    let model = move |req: &Request| {
        let i = seen.load(std::sync::atomic::Ordering::SeqCst);
        always(replies[i.min(2)].clone())(req)
    };
    let Some(rig) = Rig::new(model, "transient_backoff_base_s = 10", true) else {
        return;
    };
    rig.create_task();
    let mut waits = Vec::new();
    for (i, status) in ["529", "500", "529"].iter().enumerate() {
        step.store(i, std::sync::atomic::Ordering::SeqCst);
        let (_, report) = rig.run_next();
        assert!(
            verdict(&report).starts_with(&format!("transient: API error {status}")),
            "case {i}: {report:#}"
        );
        let job = rig.job();
        assert_eq!(job["attempts"], 0, "case {i}: {job}");
        assert_eq!(job["transient"], i as i64 + 1, "case {i}: {job}");
        waits.push(job["wait_s"].as_i64().unwrap_or(0));
        rig.sql("UPDATE jobs SET available_at = 0");
    }
    // base 10 s, doubling, ±20 % jitter (docs/claude-code.md): 8–12, 16–24, 32–48
    // (one second less when the clock ticked between the write and the read).
    for (w, (lo, hi)) in waits.iter().zip([(7, 12), (15, 24), (31, 48)]) {
        assert!((lo..=hi).contains(w), "backoff {waits:?}");
    }
}

#[test]
fn a_400_fails_the_job_for_good() {
    let model = always(Reply::Error(
        400,
        "invalid_request_error",
        "prompt is too long".into(),
    ));
    let Some((_rig, report, job)) = one_run(model, "") else {
        return;
    };
    assert!(
        verdict(&report).starts_with("permanent failure: API refused the request (400)"),
        "{report:#}"
    );
    assert_eq!(job["status"], "failed", "{job}");
}

#[test]
fn max_turns_and_max_budget_spend_an_attempt() {
    // Every turn reads a file, so the turn limit is what ends the run.
    let reader = |req: &Request| {
        let cwd = req.working_dir().unwrap_or_default();
        always(Reply::Message(vec![Block::Tool(
            "Read",
            json!({"file_path": format!("{cwd}/README.md")}),
        )]))(req)
    };
    let Some((_rig, report, job)) = one_run(reader, "agent_max_turns = 2") else {
        return;
    };
    assert!(
        verdict(&report).starts_with("failure: the turn limit was reached"),
        "{report:#}"
    );
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "{job}"
    );

    // One turn costs more than the run may spend.
    let Some((rig, report, job)) = one_run(stage_model, "agent_max_budget_usd = \"0.005\"") else {
        return;
    };
    assert!(
        verdict(&report).starts_with("failure: the run's budget was spent"),
        "{report:#}"
    );
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "{job}"
    );
    let cost = rig.sql("SELECT cost_usd FROM agent_runs");
    assert!(
        cost[0][0].as_f64().is_some_and(|c| c > 0.005),
        "the cost is recorded: {cost:?}"
    );
}

#[test]
fn a_refused_write_outside_the_worktree_fails_the_run_and_writes_nothing_there() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("escaped.md");
    let escape = target.display().to_string();
    let model = move |req: &Request| match stage_model(req) {
        Reply::Message(mut blocks) if req.turn() == 1 && req.has_tools() => {
            blocks.push(Block::Tool(
                "Write",
                json!({"file_path": escape, "content": "x"}),
            ));
            Reply::Message(blocks)
        }
        other => other,
    };
    let Some((_rig, report, job)) = one_run(model, "") else {
        return;
    };
    assert!(
        verdict(&report).starts_with("failure: 1 tool call(s) refused: Write"),
        "{report:#}"
    );
    assert!(verdict(&report).contains("escaped.md"), "{report:#}");
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "{job}"
    );
    assert!(!target.exists(), "the agent wrote outside its worktree");
}

#[test]
fn a_command_without_write_permission_fails_at_once_instead_of_burning_attempts() {
    // The command orch shipped before: no permission mode, so `-p` refuses
    // every Write and Bash call and still reports success.
    let old = "claude -p --output-format stream-json --verbose --max-turns \"$ORCH_MAX_TURNS\" \
               --session-id \"$ORCH_SESSION_ID\" < \"$ORCH_TASK_FILE\"";
    let config = format!("agent_cmd = {}", serde_json::to_string(old).expect("quote"));
    let Some((rig, report, job)) = one_run(stage_model, &config) else {
        return;
    };
    assert!(
        verdict(&report).starts_with("permanent failure: 4 tool call(s) refused"),
        "{report:#}"
    );
    assert!(
        verdict(&report).contains("does not give the agent write permission"),
        "{report:#}"
    );
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{job}"
    );
    let brd = rig
        .env
        .state()
        .join("repos/demo/worktrees/DEMO-1/docs/work-items/DEMO-1/01-brd.md");
    assert!(!brd.exists());
}

#[test]
fn a_stream_cut_by_the_network_backs_off() {
    let Some((rig, report, job)) = one_run(always(Reply::CutStream), "") else {
        return;
    };
    // The CLI retries, falls back to a non-streaming request, is cut again
    // and reports an API error without an HTTP status: the network, so the
    // job backs off without spending an attempt.
    assert!(
        verdict(&report).starts_with("transient: API unreachable"),
        "{report:#}"
    );
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "{job}"
    );
    let cost = rig.sql("SELECT cost_usd FROM agent_runs");
    assert!(
        cost[0][0].is_f64() || cost[0][0].is_i64(),
        "cost known from the result event: {cost:?}"
    );
}

#[test]
fn doctor_checks_the_real_cli_its_version_and_that_the_command_may_write() {
    let Some(rig) = Rig::new(stage_model, "", false) else {
        return;
    };
    let doctor = |rig: &Rig| {
        let out = rig.orch(&["doctor", "--offline", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).expect("doctor json");
        let find = |name: &str| -> (String, String) {
            let c = report["checks"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["check"] == name))
                .unwrap_or_else(|| panic!("no {name} check: {report:#}"));
            (
                c["level"].as_str().unwrap_or("").to_owned(),
                c["message"].as_str().unwrap_or("").to_owned(),
            )
        };
        (
            out.status.code(),
            find("agent version"),
            find("agent permissions"),
        )
    };
    let (_, version, permissions) = doctor(&rig);
    let installed = Command::new(&rig.claude)
        .arg("--version")
        .output()
        .expect("claude --version");
    let installed = String::from_utf8_lossy(&installed.stdout);
    let number = installed.split_whitespace().next().expect("a version");
    assert_eq!(version.0, "ok", "{version:?}");
    assert!(version.1.contains(number), "{version:?} vs {installed}");
    assert_eq!(permissions.0, "ok", "{permissions:?}");

    // The command orch shipped before cannot write: doctor fails it.
    let path = rig.env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let old = "claude -p --output-format stream-json --verbose < \"$ORCH_TASK_FILE\"";
    std::fs::write(
        &path,
        format!(
            "agent_cmd = {}\n{config}",
            serde_json::to_string(old).expect("q")
        ),
    )
    .expect("config");
    let (code, _, permissions) = doctor(&rig);
    assert_eq!(permissions.0, "fail", "{permissions:?}");
    assert!(permissions.1.contains("will be refused"), "{permissions:?}");
    assert_ne!(code, Some(0));

    // Bypassing permissions as root without IS_SANDBOX: the CLI would not start.
    if nix::unistd::geteuid().is_root() {
        let bypass = "claude -p --dangerously-skip-permissions < \"$ORCH_TASK_FILE\"";
        std::fs::write(
            &path,
            format!(
                "agent_cmd = {}\n{config}",
                serde_json::to_string(bypass).expect("q")
            ),
        )
        .expect("config");
        let (_, _, permissions) = doctor(&rig);
        assert_eq!(permissions.0, "fail", "{permissions:?}");
        assert!(permissions.1.contains("IS_SANDBOX"), "{permissions:?}");
        // And the real CLI agrees: it refuses to start.
        let out = Command::new(&rig.claude)
            .args(["-p", "--dangerously-skip-permissions", "hi"])
            .env_clear()
            .envs(messages_api::offline_env(
                &rig.api,
                &rig.env.state().join("home"),
            ))
            .output()
            .expect("claude");
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_cli_killed_mid_stream_is_a_failure_of_unknown_cost_and_leaves_no_process() {
    // The model hangs after the first bytes; the stall timeout stops the CLI.
    let model = always(Reply::Stall(std::time::Duration::from_secs(60)));
    let config = "agent_stall_timeout_s = 2\nagent_kill_grace_seconds = 1";
    let Some((rig, report, job)) = one_run(model, config) else {
        return;
    };
    assert!(
        verdict(&report).starts_with("failure: agent stopped: stall timeout after 2s"),
        "{report:#}"
    );
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "{job}"
    );
    let run = rig.sql("SELECT cost_usd, exit_code, signal FROM agent_runs");
    assert_eq!(
        run[0][0],
        Value::Null,
        "a Claude run without a result costs unknown: {run:?}"
    );
    // The CLI's whole process group is gone: no live member (a zombie is
    // dead, waiting for init to reap it).
    let pgid = rig.sql("SELECT pid FROM agent_runs")[0][0]
        .as_i64()
        .expect("pid");
    let ps = Command::new("ps")
        .args(["-eo", "pgid=,stat=,args="])
        .output()
        .expect("ps");
    let ps = String::from_utf8_lossy(&ps.stdout);
    let live: Vec<&str> = ps
        .lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(pgid.to_string().as_str()) && !f.next().unwrap_or("Z").starts_with('Z')
        })
        .collect();
    assert!(
        live.is_empty(),
        "the agent's process group {pgid} survived: {live:#?}"
    );
}
