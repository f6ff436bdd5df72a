//! orch's state is private to its user (src/private_state.rs): created 0700
//! and 0600 whatever the umask, and a state directory or config file another
//! user owns or can write to is refused with exit 78.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use common::Env;

const NOBODY: u32 = 65534;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// `orch --state-dir <state> <args>`, started under `umask 022`.
fn orch_umask_022(env: &Env, state: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("sh")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.state())
        .env("RUST_LOG", "warn")
        .env("ORCH_UMASK_TEST_BIN", env!("CARGO_BIN_EXE_orch"))
        .args([
            "-c",
            "umask 022 && exec \"$ORCH_UMASK_TEST_BIN\" \"$@\"",
            "orch",
        ])
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run")
}

/// Whether this test process can give files away (root, as in CI); loud when not.
fn can_chown() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("\n*** SKIPPED: chown to uid {NOBODY} needs root ***\n");
    }
    root
}

fn assert_refused(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(what), "{stderr}");
}

#[test]
fn under_umask_022_the_state_dir_is_0700_and_the_database_and_logs_0600() {
    let env = Env::bare();
    let state = env.state().join("fresh/orch");
    let out = orch_umask_022(&env, &state, &["demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&state), 0o700);
    assert_eq!(
        mode(&env.state().join("fresh")),
        0o700,
        "created parents too"
    );
    for file in ["orch.db", "orch.toml"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    for dir in ["logs", "locks", "repos", "runs"] {
        assert_eq!(mode(&state.join(dir)), 0o700, "{dir}");
    }
    let log = state.join("runs/job-1-run1/agent.log");
    assert_eq!(mode(&log), 0o600, "agent log");
    // And doctor agrees.
    let doctor = orch_umask_022(&env, &state, &["doctor", "--offline"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("private files:"))
        .unwrap_or_default();
    assert!(line.starts_with("ok"), "{text}");
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    if !can_chown() {
        return;
    }
    let env = Env::new();
    std::os::unix::fs::chown(env.state(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let out = env.orch().arg("status").output().expect("status");
    assert_refused(&out, &format!("is owned by uid {NOBODY}"));
    // Doctor says so as a fail line instead.
    let doctor = env
        .orch()
        .args(["doctor", "--offline"])
        .output()
        .expect("doctor");
    assert_eq!(doctor.status.code(), Some(1));
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("fail") && l.contains("state dir:") && l.contains("uid")),
        "{text}"
    );
}

#[test]
fn a_state_dir_symlink_owned_by_another_user_is_refused() {
    if !can_chown() {
        return;
    }
    let env = Env::new();
    let link = env.state().join("link");
    std::os::unix::fs::symlink(env.state(), &link).expect("symlink");
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).expect("lchown");
    let out = env
        .orch()
        .env("ORCH_STATE_DIR", &link)
        .arg("status")
        .output()
        .expect("status");
    assert_refused(&out, "is a symlink owned by uid 65534");
}

#[test]
fn a_world_or_group_writable_state_dir_is_refused() {
    let env = Env::new();
    for (m, what) in [(0o777, "world-writable"), (0o770, "group-writable")] {
        std::fs::set_permissions(env.state(), std::fs::Permissions::from_mode(m)).expect("chmod");
        let out = env.orch().arg("status").output().expect("status");
        assert_refused(&out, what);
    }
    // A demo into a directory others can write refuses before writing anything.
    std::fs::set_permissions(env.state(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = env.orch().arg("demo").output().expect("demo");
    assert_refused(&out, "world-writable");
    assert!(
        !env.state().join("forge").exists(),
        "the demo wrote into it"
    );
}

#[test]
fn a_config_file_another_user_owns_or_can_write_is_refused() {
    let env = Env::new();
    let config = env.state().join("orch.toml");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = env.orch().arg("status").output().expect("status");
    assert_refused(&out, "world-writable");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    env.orch().arg("status").assert().success();
    if !can_chown() {
        return;
    }
    std::os::unix::fs::chown(&config, Some(NOBODY), Some(NOBODY)).expect("chown");
    assert_eq!(std::fs::metadata(&config).expect("meta").uid(), NOBODY);
    let out = env.orch().arg("status").output().expect("status");
    assert_refused(&out, "config file");
    // --config names it explicitly: the same rule.
    let out = env
        .orch()
        .arg("--config")
        .arg(&config)
        .arg("status")
        .output()
        .expect("status");
    assert_refused(&out, "is owned by uid 65534");
}

#[test]
fn doctor_fails_a_world_readable_database_with_the_chmod_that_fixes_it() {
    let env = Env::new();
    std::fs::set_permissions(env.db_path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = env
        .orch()
        .args(["doctor", "--offline"])
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("private files:"))
        .unwrap_or_default();
    assert!(line.starts_with("fail"), "{text}");
    assert!(
        line.contains(&format!("chmod 600 {}", env.db_path().display())),
        "{line}"
    );
}
