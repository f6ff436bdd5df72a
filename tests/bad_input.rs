//! Bad input gets one clear line on stderr, the documented exit code, no
//! panic, and leaves nothing half-written.

mod common;

use common::Env;
use predicates::prelude::*;

/// Assert a failed run printed exactly one `orch: error:` line and no panic.
fn one_line_error(assert: &assert_cmd::assert::Assert) -> String {
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("orch: error: "), "{stderr}");
    stderr
}

/// A config text, extra environment, and the text the error must contain.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

fn count(env: &Env, table: &str) -> i64 {
    env.sqlite()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

#[test]
fn unknown_task_and_job_ids_exit_1() {
    let env = Env::new();
    for args in [
        &["task", "show", "42"][..],
        &["job", "show", "42"],
        &["job", "retry", "42"],
    ] {
        let a = env.orch().args(args).assert().code(1);
        let err = one_line_error(&a);
        assert!(err.contains("42 not found"), "{err}");
    }
}

#[test]
fn non_numeric_ids_are_usage_errors() {
    let env = Env::new();
    env.orch().args(["task", "show", "abc"]).assert().code(2);
    env.orch().args(["job", "show", "-1x"]).assert().code(2);
}

#[test]
fn unknown_repo_exits_2_and_writes_nothing() {
    let env = Env::new();
    let a = env
        .orch()
        .args(["task", "create", "--repo", "nope", "--title", "x"])
        .assert()
        .code(2);
    assert!(one_line_error(&a).contains(r#"unknown repo "nope" (declared: demo)"#));
    let a = env
        .orch()
        .args(["job", "enqueue", "--agent", "developer", "--repo", "nope"])
        .assert()
        .code(2);
    one_line_error(&a);
    assert_eq!(count(&env, "tasks"), 0);
    assert_eq!(count(&env, "jobs"), 0);
}

#[test]
fn hostile_work_item_ids_are_refused_and_nothing_is_written() {
    let env = Env::new();
    for id in [
        "../etc",
        "-rf",
        "--upload-pack=x",
        "a b",
        "x\ny",
        "a\u{7}b",
        "feature/x",
    ] {
        let a = env
            .orch()
            .args([
                "task",
                "create",
                "--repo",
                "demo",
                "--title",
                "t",
                &format!("--work-item={id}"),
            ])
            .assert()
            .code(2);
        assert!(one_line_error(&a).contains("invalid work-item id"));
    }
    assert_eq!(count(&env, "tasks"), 0);
    assert_eq!(count(&env, "jobs"), 0);
}

#[test]
fn a_duplicate_work_item_is_refused() {
    let env = Env::new();
    let create = |env: &Env| {
        env.orch()
            .args([
                "task",
                "create",
                "--repo",
                "demo",
                "--title",
                "t",
                "--work-item",
                "DEMO-7",
            ])
            .assert()
    };
    create(&env).success();
    let a = create(&env).code(2);
    assert!(one_line_error(&a).contains("already exists"));
    assert_eq!(count(&env, "tasks"), 1);
    assert_eq!(count(&env, "jobs"), 1);
}

#[test]
fn state_dir_that_is_a_file_is_refused() {
    let env = Env::bare();
    let file = env.state().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let a = env
        .orch()
        .env("ORCH_STATE_DIR", &file)
        .arg("init")
        .assert()
        .code(2);
    assert!(one_line_error(&a).contains("is not a directory"));
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
}

#[test]
fn state_dir_below_a_file_cannot_be_created() {
    let env = Env::bare();
    std::fs::write(env.state().join("f"), "x").expect("write");
    let a = env
        .orch()
        .env("ORCH_STATE_DIR", env.state().join("f/sub"))
        .arg("init")
        .assert()
        .code(1);
    assert!(one_line_error(&a).contains("creating directory"));
}

#[test]
fn commands_before_init_say_run_init() {
    let env = Env::bare();
    let a = env.orch().arg("status").assert().code(1);
    assert!(one_line_error(&a).contains("run `orch init` first"));
    assert!(!env.db_path().exists(), "status must not create a database");
}

#[test]
fn corrupt_database_is_refused_untouched() {
    let env = Env::bare();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(env.db_path(), &garbage).expect("write");
    for cmd in ["status", "init", "claim"] {
        let a = env.orch().arg(cmd).assert().code(1);
        assert!(one_line_error(&a).contains("not an orch database"), "{cmd}");
    }
    assert_eq!(std::fs::read(env.db_path()).expect("read"), garbage);
}

#[test]
fn foreign_sqlite_database_is_refused_untouched() {
    let env = Env::bare();
    {
        let c = rusqlite::Connection::open(env.db_path()).expect("open");
        c.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT);")
            .expect("create");
    }
    let before = std::fs::read(env.db_path()).expect("read");
    for cmd in ["init", "status"] {
        let a = env.orch().arg(cmd).assert().code(1);
        assert!(one_line_error(&a).contains("not an orch database"), "{cmd}");
    }
    assert_eq!(std::fs::read(env.db_path()).expect("read"), before);
}

#[test]
fn a_database_from_a_newer_orch_is_refused() {
    let env = Env::new();
    env.sqlite()
        .pragma_update(None, "user_version", 99)
        .expect("bump");
    let a = env.orch().arg("status").assert().code(1);
    assert!(one_line_error(&a).contains("newer than this orch"));
}

#[test]
fn invalid_config_values_exit_78() {
    let env = Env::new();
    let cases: [Case<'_>; 6] = [
        ("max_concurrency = \"many\"", &[], "max_concurrency"),
        ("max_concurency = 3", &[], "max_concurency"),
        ("this is not toml", &[], "orch.toml"),
        (
            "",
            &[("ORCH_REAPER_ENABLED", "maybe")],
            "ORCH_REAPER_ENABLED",
        ),
        (
            "",
            &[("ORCH_MAX_CONCURRENCY", "0")],
            "max_concurrency must be at least 1",
        ),
        ("tracker = \"jira\"", &[], "tracker"),
    ];
    for (text, vars, needle) in cases {
        env.write_config(text);
        let mut cmd = env.orch();
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let a = cmd.arg("status").assert().code(78);
        let err = one_line_error(&a);
        assert!(err.contains(needle), "{text:?} {vars:?}: {err}");
    }
}

#[test]
fn a_named_config_file_must_exist() {
    let env = Env::new();
    let a = env
        .orch()
        .args(["--config", "/nonexistent/orch.toml", "status"])
        .assert()
        .code(78);
    assert!(one_line_error(&a).contains("/nonexistent/orch.toml"));
}

#[test]
fn init_is_idempotent_and_keeps_data() {
    let env = Env::new();
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "keep me"])
        .assert()
        .success();
    env.orch()
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains("already initialised"));
    let v = env.json(&["init"]);
    assert_eq!(v["created"], false);
    assert_eq!(
        v["schema_version"],
        orch::storage::schema::MIGRATIONS.len() as i64
    );
    assert_eq!(count(&env, "tasks"), 1);
}

#[test]
fn concurrent_inits_do_not_collide() {
    let env = Env::bare();
    env.write_config("");
    let children: Vec<_> = (0..6)
        .map(|_| env.orch_std().arg("init").spawn().expect("spawn"))
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success());
    }
    env.orch().arg("status").assert().success();
}

#[test]
fn empty_title_is_refused() {
    let env = Env::new();
    let a = env
        .orch()
        .args(["task", "create", "--repo", "demo", "--title", "  "])
        .assert()
        .code(2);
    one_line_error(&a);
}

/// A demo installation with one more repository whose name is 23 characters
/// long (so its work-item ids are 25: `ABCDEFGHIJKLMNOPQRSTUVW-1`).
fn long_repo_installation() -> (Env, &'static str) {
    const REPO: &str = "abcdefghijklmnopqrstuvw";
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let forge = env.state().join("forge");
    let out = std::process::Command::new("git")
        .args([
            "clone",
            "--quiet",
            "--bare",
            "demo.git",
            &format!("{REPO}.git"),
        ])
        .current_dir(&forge)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let extra = format!(
        "\n[repos.{REPO}]\nremote = \"{}/{REPO}.git\"\ndefault_branch = \"main\"\ntest_command = \"sh ./test.sh\"\n",
        forge.display()
    );
    std::fs::write(&path, config + &extra).expect("config");
    (env, REPO)
}

#[test]
fn long_repo_names_and_titles_still_give_a_branch_and_the_task_runs() {
    for title in [
        "Add a health endpoint to the server now, please",
        "Überarbeite die Größenänderung der Straßenkarte für Ärzte",
    ] {
        let (env, repo) = long_repo_installation();
        let id = "1";
        env.orch()
            .args(["task", "create", "--repo", repo, "--title", title])
            .assert()
            .success();
        let show = env.json(&["task", "show", id]);
        let branch = show["task"]["branch"].as_str().expect("branch").to_owned();
        let wi = format!("{}-{id}", repo.to_ascii_uppercase());
        assert!(branch.starts_with(&format!("feature/{wi}-")), "{branch}");
        assert!(branch.len() <= "feature/".len() + 64, "{branch}");
        // The analyst runs (the demo agent) and the task waits for its human gate.
        env.orch()
            .args(["run-agent", "--next"])
            .assert()
            .success()
            .stdout(predicate::str::contains("(success)"))
            .stdout(predicate::str::contains("outcome: waiting for a human"));
        env.orch()
            .args(["advance", "--task", id, "--approve"])
            .assert()
            .success();
        assert_eq!(
            env.json(&["task", "show", id])["task"]["stage"],
            "architecture"
        );
    }
}

#[test]
fn a_plane_project_that_is_not_a_plane_id_exits_78() {
    let env = Env::new();
    for project in ["..", "../x", "a/b", "%2e%2e"] {
        std::fs::write(
            env.state().join("orch.toml"),
            format!(
                "[repos.demo]\nremote = \"/nonexistent/demo.git\"\nplane_project = \"{project}\"\n"
            ),
        )
        .expect("config");
        let a = env.orch().arg("status").assert().code(78);
        let err = one_line_error(&a);
        assert!(err.contains("plane_project"), "{project}: {err}");
    }
}

/// A title that would set the terminal's title, clear the screen, start a
/// CSI without ESC (U+009B) and reverse the text (U+202E).
const HOSTILE_TITLE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31mred\u{202e}txet\u{2066} end";

fn assert_terminal_safe(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}', '\u{2066}'] {
        assert!(!text.contains(bad), "{what} prints {bad:?} raw:\n{text}");
    }
}

#[test]
fn escape_codes_in_titles_are_shown_escaped_and_json_keeps_them_exact() {
    let env = Env::new();
    let out = env
        .orch()
        .args(["task", "create", "--repo", "demo", "--title", HOSTILE_TITLE])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_terminal_safe("task create", &out.stdout);
    for args in [
        &["task", "list"][..],
        &["task", "show", "1"],
        &["status"],
        &["job", "list"],
        &["job", "show", "1"],
    ] {
        let out = env.orch().args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert_terminal_safe(&format!("{args:?}"), &out.stdout);
        assert_terminal_safe(&format!("{args:?} (stderr)"), &out.stderr);
    }
    let show = env
        .orch()
        .args(["task", "show", "1"])
        .output()
        .expect("run");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains(r"\x1b]0;pwned\x07\x1b[2J\u{9b}31mred\u{202e}txet\u{2066} end"),
        "{show}"
    );
    assert_eq!(
        env.json(&["task", "show", "1"])["task"]["title"],
        HOSTILE_TITLE
    );
    assert_eq!(env.json(&["task", "list"])[0]["title"], HOSTILE_TITLE);
}
