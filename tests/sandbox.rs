//! Hostile agents against the real sandbox (bubblewrap, `.ci/run` installs
//! it): an agent runs code a model chose in a repository anyone can
//! influence, under orch's own uid. Each test plays an attacker inside an
//! agent and checks that nothing leaks, nothing runs outside, and the worker
//! still brings the task to a correct end.
//!
//! Without a working `bwrap` the tests print SKIPPED (and fail with
//! `ORCH_TEST_SANDBOX_REQUIRED=1`, as CI sets it).

mod common;

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Env;

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn sandbox_works() -> bool {
    let ok = std::process::Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-user", "--unshare-pid"])
        .args(["--dev", "/dev", "--proc", "/proc", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("ORCH_TEST_SANDBOX_REQUIRED").is_none(),
            "bwrap does not work here and ORCH_TEST_SANDBOX_REQUIRED is set"
        );
        eprintln!("\n*** SKIPPED: bwrap (bubblewrap) cannot build a sandbox here ***\n");
    }
    ok
}

/// A demo installation (bare-repo forge, demo agent for every stage).
fn demo_env() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    env
}

fn set_config(env: &Env, extra: &str) {
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{extra}\n{config}")).expect("config");
}

/// Run jobs (approving the analysis) until task 1 is done or nothing moves.
fn drive_to_done(env: &Env, with: &[(&str, &str)]) -> String {
    for _ in 0..30 {
        let stage = env.json(&["task", "show", "1"])["task"]["stage"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if stage == "done" || stage == "cancelled" {
            return stage;
        }
        let mut c = env.orch_std();
        c.args(["run-agent", "--next"]);
        for (k, v) in with {
            c.env(k, v);
        }
        if c.output().expect("run-agent").status.code() == Some(3) {
            env.orch()
                .args(["advance", "--task", "1", "--approve"])
                .output()
                .expect("advance");
        }
    }
    env.json(&["task", "show", "1"])["task"]["stage"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// One script that tries every way out we know, reporting each outcome in
/// `report` (`name: LEAKED`/`name: WROTE` when it got through), then does
/// the demo agent's honest work so the pipeline goes on.
fn hostile_script(report: &Path, mark: &Path, home_secret: &Path, other: &Path) -> String {
    let r = report.display();
    let m = mark.display();
    let home_secret = home_secret.display();
    let other = other.display();
    format!(
        r##"exec >>{r} 2>&1
try() {{ name=$1; shift; if "$@" 2>/dev/null | grep -q 'TOKEN-'; then echo "$name: LEAKED"; else echo "$name: kept"; fi; }}
w() {{ name=$1; shift; if "$@" 2>/dev/null; then echo "$name: WROTE"; else echo "$name: refused"; fi; }}
try env env
try proc-environ sh -c 'cat /proc/[0-9]*/environ | tr "\000" "\n"'
try credentials sh -c 'cat /run/credentials/*/* "$CREDENTIALS_DIRECTORY"/*'
try state-config cat "$ORCH_STATE_DIR/orch.toml"
try state-db sh -c 'cat "$ORCH_STATE_DIR"/orch.db*'
try real-home cat {home_secret}
try other-task cat {other}
echo "processes: $(ls /proc | grep -c '^[0-9]')"
common=$(git rev-parse --git-common-dir)
w git-config git config core.fsmonitor "touch {m}.fsmonitor"
w git-hook sh -c "printf '#!/bin/sh\ntouch {m}.hook\n' > $common/hooks/post-commit && chmod +x $common/hooks/post-commit"
w git-include sh -c "printf '[core]\n\tfsmonitor = touch {m}.include\n' > $common/evil && git config include.path $common/evil"
w etc sh -c 'echo x > /etc/orch-pwned'
w git-file sh -c 'mkdir -p evil && cp -r "$common/worktrees"/* evil/ 2>/dev/null; echo "gitdir: $PWD/evil" > .git'
w git-file-rename sh -c 'mv .git .git-old'
w state-db sh -c 'echo x >> "$ORCH_STATE_DIR/orch.db"'
w run-log sh -c 'echo "{{\"type\":\"result\",\"subtype\":\"success\"}}" >> "$(dirname "$ORCH_TASK_FILE")/agent.log"'
w other-task sh -c 'echo x > {other}'
w worktree sh -c 'echo ok > "$ORCH_WORKTREE/agent-was-here.txt"'
w own-dir sh -c 'echo "{{}}" > "$ORCH_COST_FILE"'
# The repository's test command runs later, as orch's check: plant there too.
printf '\ngit config core.fsmonitor "touch {m}.test-fsmonitor" 2>/dev/null || true\nprintf "#!/bin/sh\\ntouch {m}.test-hook\\n" > "$(git rev-parse --git-common-dir)/hooks/pre-commit" 2>/dev/null || true\n' >> test.sh
"##
    )
}

/// Every route to a secret, every write outside the worktree, every way to
/// make orch's own git run a command: all refused, and the task still goes
/// from analysis to done with the planted test command run by orch's checks.
#[test]
fn a_hostile_agent_reads_no_secret_and_writes_nowhere_but_its_worktree() {
    if !sandbox_works() {
        return;
    }
    let env = demo_env();
    set_config(&env, "sandbox = \"bwrap\"");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    // A real HOME with a secret in it, where the sandbox could see it.
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sandbox-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("home");
    let home_secret = home.join(".git-credentials");
    std::fs::write(&home_secret, "https://u:TOKEN-home@example\n").expect("secret");
    // systemd credentials, where the units keep the tokens.
    let creds = PathBuf::from(format!("/run/credentials/orch-sbx-{}", std::process::id()));
    let have_creds = std::fs::create_dir_all(&creds).is_ok()
        && std::fs::write(creds.join("plane_api_token"), "TOKEN-cred").is_ok();
    // Another task's worktree.
    let other = env.state().join("repos/demo/worktrees/DEMO-99/secret.txt");
    std::fs::create_dir_all(other.parent().expect("dir")).expect("other");
    std::fs::write(&other, "TOKEN-other").expect("other");
    std::fs::write(
        env.state().join("orch.toml"),
        format!(
            "# TOKEN-config\n{}",
            std::fs::read_to_string(env.state().join("orch.toml")).expect("config")
        ),
    )
    .expect("config");
    let report = env.shared().join("report");
    let mark = env.shared().join("ran");
    std::fs::write(
        env.shared().join("hostile.sh"),
        hostile_script(&report, &mark, &home_secret, &other),
    )
    .expect("script");
    let agent = format!(
        "if [ \"$ORCH_STAGE\" = development ]; then sh {}; fi; exec '{ORCH}' demo-agent",
        env.shared().join("hostile.sh").display()
    );
    let mut with = vec![
        ("ORCH_AGENT_CMD", agent.as_str()),
        ("ORCH_PLANE_API_TOKEN", "TOKEN-env"),
        ("HOME", home.to_str().expect("utf-8")),
    ];
    let creds_dir = creds.display().to_string();
    if have_creds {
        with.push(("CREDENTIALS_DIRECTORY", &creds_dir));
    }
    let stage = drive_to_done(&env, &with);
    let text = std::fs::read_to_string(&report).expect("the hostile agent ran");
    let _ = std::fs::remove_dir_all(&creds);
    let _ = std::fs::remove_dir_all(&home);
    assert!(!text.contains("LEAKED"), "a secret leaked:\n{text}");
    for kept in [
        "env: kept",
        "proc-environ: kept",
        "state-config: kept",
        "real-home: kept",
        "other-task: kept",
    ] {
        assert!(text.contains(kept), "{kept} missing:\n{text}");
    }
    // Read-only mounts refuse; in hidden directories a write lands in the
    // sandbox's own empty tmpfs and never reaches the real file.
    for refused in [
        "git-config",
        "git-hook",
        "git-include",
        "git-file",
        "git-file-rename",
        "etc",
        "other-task",
    ] {
        assert!(
            text.contains(&format!("{refused}: refused")),
            "{refused} was written:\n{text}"
        );
    }
    let db = std::fs::read(env.state().join("orch.db")).expect("db");
    assert!(
        !db.ends_with(b"x\n"),
        "the agent appended to orch's database"
    );
    assert_eq!(
        std::fs::read_to_string(&other).expect("other"),
        "TOKEN-other"
    );
    for run in std::fs::read_dir(env.state().join("runs")).expect("runs") {
        let log = run.expect("run").path().join("agent.log");
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !log.contains(r#"{"type":"result","subtype":"success"}"#),
            "the agent forged its own log"
        );
    }
    assert!(text.contains("worktree: WROTE"), "{text}");
    assert!(text.contains("own-dir: WROTE"), "{text}");
    let processes: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("processes: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("process count");
    assert!(
        processes < 10,
        "the agent saw {processes} processes:\n{text}"
    );
    // Nothing planted ever ran, in orch's git or its checks; the task ended.
    for suffix in [
        "fsmonitor",
        "hook",
        "include",
        "test-fsmonitor",
        "test-hook",
    ] {
        let planted = PathBuf::from(format!("{}.{suffix}", mark.display()));
        assert!(!planted.exists(), "{suffix} ran outside the sandbox");
    }
    assert!(!Path::new("/etc/orch-pwned").exists());
    assert_eq!(
        stage,
        "done",
        "{}",
        serde_json::to_string_pretty(&env.json(&["task", "show", "1"])).unwrap_or_default()
    );
    let config = std::fs::read_to_string(env.state().join("repos/demo/clone/.git/config"))
        .expect("clone config");
    assert!(
        !config.contains("fsmonitor") && !config.contains("include"),
        "{config}"
    );
}

/// `kill -9 -1` kills every process the caller may signal. In the sandbox
/// that is the sandbox's own: orch survives, judges the run, and the job
/// ends normally. Run as an unprivileged user and with `sandbox = "bwrap"`
/// (no fallback), so a broken sandbox cannot take the test runner down.
#[test]
fn kill_minus_one_in_the_sandbox_reaches_only_the_sandbox() {
    if !sandbox_works() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let env = demo_env();
    set_config(&env, "sandbox = \"bwrap\"\nagent_protocol = \"exit-code\"");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    assert!(
        std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(env.state())
            .status()
            .expect("chown")
            .success()
    );
    // A process of the same user outside the sandbox: kill -1 must miss it.
    let mut sentinel = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "60.1357",
        ])
        .spawn()
        .expect("sentinel");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", ORCH])
        .args(["run-agent", "--next", "--json"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.state())
        .env("ORCH_STATE_DIR", env.state())
        .env("ORCH_AGENT_CMD", "sleep 0.2; kill -9 -1; sleep 5")
        .output()
        .expect("run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "orch did not survive: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let sentinel_alive = matches!(sentinel.try_wait(), Ok(None));
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    assert!(
        sentinel_alive,
        "kill -9 -1 in the sandbox reached a process outside it"
    );
    // The agent itself went on (kill -1 spares the caller) and was judged.
    assert_eq!(report["exit_code"], 0, "{report}");
    assert!(
        report["evaluation"]["decision"]["decision"].is_string(),
        "{report}"
    );
}

/// `sandbox_network = "none"` cuts the agent off from the host's network (a
/// loopback service here: what a metadata endpoint or a local database
/// would be); `host` (the default) lets it through.
#[test]
fn the_network_setting_decides_what_the_agent_reaches() {
    if !sandbox_works() {
        return;
    }
    for (network, reached) in [("none", false), ("host", true)] {
        let env = demo_env();
        set_config(
            &env,
            &format!(
                "sandbox = \"bwrap\"\nsandbox_network = \"{network}\"\nagent_protocol = \"exit-code\""
            ),
        );
        env.orch()
            .args(["task", "create", "--repo", "demo", "--title", "x"])
            .assert()
            .success();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let reached_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&reached_flag);
        // Answers anything with a 404 so the agent's git does not wait.
        let server = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok((mut s, _)) = listener.accept() {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = std::io::Write::write_all(
                        &mut s,
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let agent = format!("git ls-remote http://127.0.0.1:{port}/x.git; exit 0");
        let out = env
            .orch()
            .env("ORCH_AGENT_CMD", agent)
            .args(["run-agent", "--next"])
            .timeout(Duration::from_secs(60))
            .output()
            .expect("run");
        // The agent ran and wrote no artifacts: the gates fail (4).
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = reached_flag.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(got, reached, "sandbox_network = {network}");
        if got {
            server.join().expect("server");
        }
    }
}

/// Whatever an agent prints — here 1 GiB in one line, in the sandbox — orch
/// streams it to a capped log and reads it back in bounded chunks: its peak
/// RSS stays under 32 MiB (measured by a python3 parent with
/// `getrusage(RUSAGE_CHILDREN)`), the disk holds a few times the cap, and
/// the worker ends.
#[test]
fn a_gibibyte_of_output_leaves_orch_under_32_mib() {
    if !sandbox_works() {
        return;
    }
    let env = demo_env();
    set_config(&env, "log_max_bytes = 8388608");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let agent = "head -c 1073741824 /dev/zero | tr '\\0' x; echo; exit 0";
    // The agent ran and wrote no artifacts: the gates fail (4).
    let peak_kib = common::run_agent_peak_rss_kib(&env, agent, 4).expect("peak RSS");
    assert!(
        peak_kib < 32 * 1024,
        "peak RSS {peak_kib} KiB for 1 GiB of output"
    );
    let runs = env.state().join("runs/job-1-run1");
    let kept: u64 = ["agent.log", "agent.log.1"]
        .iter()
        .map(|f| std::fs::metadata(runs.join(f)).map_or(0, |m| m.len()))
        .sum();
    // Each file is rotated at a line end past the cap, or mid-line at twice
    // it: one endless line keeps at most four times the cap.
    assert!(kept <= 4 * 8 * 1024 * 1024, "kept {kept} bytes of 1 GiB");
}

/// `orch doctor` says whether runs are sandboxed, and fails an agent whose
/// program the sandbox hides until `sandbox_expose` names it. A program's
/// own directory is shown by itself, unless that would unhide a hidden
/// directory: here the program lies at the top of the state directory.
#[test]
fn doctor_reports_the_sandbox_and_an_agent_it_hides() {
    if !sandbox_works() {
        return;
    }
    let env = demo_env();
    let agent = env.state().join("my-agent");
    let bin = agent.clone();
    std::fs::write(&agent, "#!/bin/sh\nexit 0\n").expect("agent");
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let doctor = |expose: &str| {
        let out = env
            .orch()
            .env("ORCH_AGENT_CMD", agent.display().to_string())
            .env("ORCH_SANDBOX_EXPOSE", expose)
            .args(["doctor", "--offline"])
            .output()
            .expect("doctor");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let hidden = doctor("");
    assert!(
        hidden.contains("agents and test commands run in bubblewrap"),
        "{hidden}"
    );
    assert!(
        hidden.contains("my-agent is not reachable inside the sandbox"),
        "{hidden}"
    );
    let shown = doctor(&bin.display().to_string());
    assert!(!shown.contains("not reachable"), "{shown}");
    // And a run uses what doctor checked: the exposed agent runs.
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "x"])
        .assert()
        .success();
    let out = env
        .orch()
        .env("ORCH_AGENT_CMD", agent.display().to_string())
        .env("ORCH_SANDBOX_EXPOSE", bin.display().to_string())
        .env("ORCH_AGENT_PROTOCOL", "exit-code")
        .args(["run-agent", "--next", "--json"])
        .output()
        .expect("run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["exit_code"], 0, "{report}");
}

/// A machine where bwrap is installed but cannot create namespaces (a
/// kernel with unprivileged user namespaces off): `auto` runs the agent
/// unsandboxed and says so first in the run's log; `bwrap` starts nothing,
/// and the job waits to retry (a bounded number of times) with the reason.
#[test]
fn without_a_working_bwrap_auto_says_so_and_required_refuses() {
    let env = demo_env();
    let fake = env.shared().join("fake-bin");
    std::fs::create_dir_all(&fake).expect("bin");
    let bwrap = fake.join("bwrap");
    std::fs::write(
        &bwrap,
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n",
    )
    .expect("fake bwrap");
    std::fs::set_permissions(&bwrap, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for title in ["required", "auto"] {
        env.orch()
            .args(["task", "create", "--repo", "demo", "--title", title])
            .assert()
            .success();
    }
    let run = |mode: &str| {
        env.orch()
            .env("PATH", &path)
            .env("ORCH_SANDBOX", mode)
            .env("ORCH_AGENT_PROTOCOL", "exit-code")
            .env("ORCH_AGENT_CMD", "echo agent ran; exit 1")
            .args(["run-agent", "--next", "--json"])
            .output()
            .expect("run")
    };
    // Required: nothing runs, nothing is recorded, the job waits to retry.
    let required = run("bwrap");
    assert_eq!(
        required.status.code(),
        Some(6),
        "refused: {}",
        String::from_utf8_lossy(&required.stderr)
    );
    let refused: serde_json::Value = serde_json::from_slice(&required.stdout).expect("json");
    assert_eq!(refused["ending"], "refused", "{refused}");
    let job = env.json(&["job", "show", "1"]);
    assert_eq!(job["status"], "queued", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "the agent could not be started: sandbox = \"bwrap\" but no sandbox can be built"
        ) && error.contains("No permissions"),
        "{job}"
    );
    let runs: i64 = env
        .sqlite()
        .query_row("SELECT count(*) FROM agent_runs", [], |r| r.get(0))
        .expect("runs");
    assert_eq!(runs, 0, "no run was recorded (none is charged)");
    let auto = run("auto");
    let report: serde_json::Value = serde_json::from_slice(&auto.stdout).expect("json");
    let log = std::fs::read_to_string(report["log_path"].as_str().expect("log")).expect("log");
    assert!(
        log.starts_with("orch: running without a sandbox: bwrap cannot create namespaces here"),
        "{log}"
    );
    assert!(log.contains("agent ran"), "{log}");
    let doctor = env
        .orch()
        .env("PATH", &path)
        .args(["doctor", "--offline"])
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("warn  sandbox: none: bwrap cannot create namespaces here"),
        "{text}"
    );
}

/// `sandbox_home_seed` is copied into each run's private HOME (the agent's
/// own settings and login); what one run writes there never reaches the
/// seed or the next run.
#[test]
fn each_run_gets_a_fresh_home_from_the_seed() {
    if !sandbox_works() {
        return;
    }
    let env = demo_env();
    let seed =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("seed-{}", std::process::id()));
    std::fs::create_dir_all(seed.join(".claude")).expect("seed");
    std::fs::write(seed.join(".claude/settings.json"), "{\"seeded\": true}").expect("seed");
    set_config(
        &env,
        &format!(
            "sandbox = \"bwrap\"\nagent_protocol = \"exit-code\"\nsandbox_home_seed = \"{}\"",
            seed.display()
        ),
    );
    for title in ["one", "two"] {
        env.orch()
            .args(["task", "create", "--repo", "demo", "--title", title])
            .assert()
            .success();
    }
    let seen = env.shared().join("seen");
    let agent = format!(
        "{{ echo \"HOME=$HOME\"; cat \"$HOME/.claude/settings.json\"; echo; ls -A \"$HOME\"; }} >> {s}; echo leftover > \"$HOME/leftover\"; exit 0",
        s = seen.display()
    );
    for _ in 0..2 {
        env.orch()
            .env("ORCH_AGENT_CMD", &agent)
            .args(["run-agent", "--next"])
            .assert()
            .code(4); // no artifacts: the gates fail
    }
    let text = std::fs::read_to_string(&seen).expect("seen");
    let _ = std::fs::remove_dir_all(&seed);
    assert_eq!(text.matches("{\"seeded\": true}").count(), 2, "{text}");
    assert!(
        !text.contains("leftover"),
        "a run saw another run's HOME:\n{text}"
    );
    let homes: std::collections::BTreeSet<&str> =
        text.lines().filter(|l| l.starts_with("HOME=")).collect();
    assert_eq!(homes.len(), 2, "each run has a HOME of its own:\n{text}");
    assert!(homes.iter().all(|h| h.ends_with("/agent/home")), "{text}");
}
