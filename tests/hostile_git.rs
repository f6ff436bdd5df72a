//! An agent that plants commands in the clone's shared git directory (config,
//! hooks, attributes, includes, per-worktree config) never gets orch's own git
//! to run them: not in its own task's commit and push, not in a later
//! unrelated task's fetch and checkout (src/git_config_guard.rs).
//!
//! These agents run unsandboxed (`sandbox = "off"`): this is the wall that
//! holds where the sandbox cannot run, and in the sandbox the common dir is
//! read-only, so nothing could be planted (tests/sandbox.rs).

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::Env;

/// An installation made by `orch demo --setup-only`: repo `demo` on a local
/// forge, agents unsandboxed.
fn demo_env() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("sandbox = \"off\"\n{config}")).expect("config");
    env
}

/// Where the planted commands record that they ran.
fn fired(env: &Env) -> PathBuf {
    env.state().join("fired")
}

/// Write an executable `bin/<name>` that records `name` in [`fired`] and
/// then behaves like `cat` (so a filter or textconv would still "work").
fn trap(env: &Env, name: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = env.state().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    let path = bin.join(name.replace('/', "-"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{name} $*\" >> '{}'\ncat \"$@\" 2>/dev/null\nexit 0\n",
            fired(env).display()
        ),
    )
    .expect("write trap");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

const HOOKS: &[&str] = &[
    "post-checkout",
    "pre-commit",
    "post-commit",
    "commit-msg",
    "prepare-commit-msg",
    "reference-transaction",
    "post-rewrite",
    "post-merge",
    "pre-push",
    "post-index-change",
    "pre-rebase",
    "pre-auto-gc",
];

/// The shell script of an agent that plants every kind of command it can in
/// the clone's common dir and its worktree's own git dir.
fn plant_script(env: &Env) -> String {
    let hooks_path = env.state().join("bin/hookspath");
    std::fs::create_dir_all(&hooks_path).expect("mkdir");
    for hook in HOOKS {
        let trap = trap(env, &format!("hookspath/{hook}"));
        std::fs::copy(&trap, hooks_path.join(hook)).expect("copy hook");
    }
    let include = env.state().join("evil.inc");
    std::fs::write(
        &include,
        format!(
            "[core]\n\tfsmonitor = {}\n[filter \"inc\"]\n\tclean = {}\n\tsmudge = {}\n",
            trap(env, "include-fsmonitor"),
            trap(env, "include-clean"),
            trap(env, "include-smudge"),
        ),
    )
    .expect("include");
    let mut s = String::from(
        "set -e\ncd \"$ORCH_WORKTREE\"\n\
         common=$(git rev-parse --path-format=absolute --git-common-dir)\n\
         mkdir -p \"$common/hooks\" \"$common/info\"\n",
    );
    for hook in HOOKS {
        writeln!(
            s,
            "cp '{}' \"$common/hooks/{hook}\"",
            trap(env, &format!("hooks/{hook}"))
        )
        .expect("write");
    }
    let settings = [
        ("core.fsmonitor", trap(env, "fsmonitor")),
        ("core.hooksPath", hooks_path.display().to_string()),
        ("filter.evil.clean", trap(env, "filter-clean")),
        ("filter.evil.smudge", trap(env, "filter-smudge")),
        ("filter.evil.required", "true".to_owned()),
        ("diff.external", trap(env, "diff-external")),
        ("diff.evil.textconv", trap(env, "diff-textconv")),
        ("diff.evil.command", trap(env, "diff-command")),
        (
            "merge.evil.driver",
            format!("{} %O %A %B", trap(env, "merge-driver")),
        ),
        ("core.sshCommand", trap(env, "ssh-command")),
        ("core.editor", trap(env, "editor")),
        ("sequence.editor", trap(env, "sequence-editor")),
        ("core.pager", trap(env, "pager")),
        ("pager.log", trap(env, "pager-log")),
        ("core.askPass", trap(env, "askpass")),
        ("credential.helper", trap(env, "credential")),
        ("gpg.program", trap(env, "gpg")),
        ("commit.gpgSign", "true".to_owned()),
        ("core.gitProxy", trap(env, "git-proxy")),
        ("protocol.ext.allow", "always".to_owned()),
        ("remote.origin.uploadpack", trap(env, "uploadpack")),
        ("remote.origin.receivepack", trap(env, "receivepack")),
        ("include.path", include.display().to_string()),
        ("extensions.worktreeConfig", "true".to_owned()),
    ];
    for (key, value) in settings {
        writeln!(s, "git config '{key}' '{value}'").expect("write");
    }
    // Per-worktree config, read by every git run in this worktree.
    write!(
        s,
        "git config --worktree core.fsmonitor '{}'\n\
         git config --worktree filter.wt.clean '{}'\n\
         git config --worktree filter.wt.smudge '{}'\n",
        trap(env, "worktree-fsmonitor"),
        trap(env, "worktree-clean"),
        trap(env, "worktree-smudge"),
    )
    .expect("write");
    // Attributes that select the planted drivers, for the whole repository
    // (info/attributes) and in the tree the agent commits.
    s += "printf '*.md filter=evil diff=evil merge=evil\\n*.sh filter=inc\\n' > \"$common/info/attributes\"\n\
          printf '*.txt filter=wt\\n' > .gitattributes\n\
          echo planted > planted.txt\n";
    s
}

fn assert_nothing_fired(env: &Env) {
    let fired = std::fs::read_to_string(fired(env)).unwrap_or_default();
    assert!(fired.is_empty(), "orch ran planted commands:\n{fired}");
}

fn run_next(env: &Env, agent: Option<&str>) -> serde_json::Value {
    let mut cmd = env.orch();
    if let Some(agent) = agent {
        cmd.env("ORCH_AGENT_CMD", agent);
    }
    let out = cmd
        .args(["run-agent", "--next", "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "run-agent failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The job of run report `report` ended `done` after a successful run.
fn assert_job_done(env: &Env, report: &serde_json::Value) {
    assert_eq!(report["run_verdict"], "success", "{report}");
    let id = report["job_id"].as_i64().expect("job id").to_string();
    let job = env.json(&["job", "show", &id]);
    assert_eq!(job["status"], "done", "{job}\nrun: {report}");
}

fn clone_git_dir(env: &Env) -> PathBuf {
    env.state().join("repos/demo/clone/.git")
}

/// The keys left in the clone's config (read by git, includes not followed).
fn clone_config_keys(env: &Env) -> Vec<String> {
    let out = std::process::Command::new("git")
        .args(["config", "--no-includes", "--name-only", "--list", "--file"])
        .arg(clone_git_dir(env).join("config"))
        .output()
        .expect("git config");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            found.push(p.clone());
        }
        if p.is_dir() && !p.is_symlink() {
            found.extend(files_named(&p, name));
        }
    }
    found
}

#[test]
fn commands_planted_in_the_clones_git_dir_never_run_in_orchs_git() {
    let env = demo_env();
    let exe = env!("CARGO_BIN_EXE_orch");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "hostile"])
        .assert()
        .success();
    // The agent does its stage's work (the demo agent, which runs no git),
    // then plants; orch's commit and push of this very run come next.
    let agent = format!(
        "'{exe}' demo-agent && sh -c {}",
        shell_quote(&plant_script(&env))
    );
    let first = run_next(&env, Some(&agent));
    assert_nothing_fired(&env);
    assert_job_done(&env, &first);
    assert!(
        clone_git_dir(&env).join("worktrees").exists(),
        "the plant ran in a worktree"
    );
    assert_nothing_fired(&env);
    // The planted .gitattributes and file were committed as plain content.
    let branch = env.json(&["task", "show", "1"])["task"]["branch"]
        .as_str()
        .expect("branch")
        .to_owned();
    let pushed = orch::git::Git::at(env.state().join("forge/demo.git"))
        .run(["show", &format!("{branch}:planted.txt")])
        .expect("planted.txt was pushed");
    assert_eq!(pushed, "planted", "planted.txt was pushed unfiltered");

    // A later, unrelated task: fetch, worktree add (checkout, smudge), add, commit, push.
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "innocent"])
        .assert()
        .success();
    let second = run_next(&env, None);
    assert_nothing_fired(&env);
    assert_eq!(second["task_id"], 2, "{second}");
    assert_job_done(&env, &second);
    assert_nothing_fired(&env);
    // The hostile task goes on too: its existing worktree is reused.
    env.orch()
        .args(["advance", "--task", "1", "--approve"])
        .assert()
        .success();
    let third = run_next(&env, None);
    assert_eq!(third["task_id"], 1, "{third}");
    assert_job_done(&env, &third);
    assert_nothing_fired(&env);

    // What is left of the clone's git dir is what orch writes.
    for key in clone_config_keys(&env) {
        assert!(
            orch::git_config_guard::allowed(&key),
            "{key} survived in the clone's config"
        );
    }
    assert!(
        files_named(&clone_git_dir(&env), "config.worktree").is_empty(),
        "a config.worktree survived"
    );
    let hooks: Vec<_> = std::fs::read_dir(clone_git_dir(&env).join("hooks"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".sample"))
                .collect()
        })
        .unwrap_or_default();
    assert!(hooks.is_empty(), "hooks survived: {hooks:?}");
}

/// An agent can also point its worktree's `.git` file at a git directory of
/// its own, whose config the sanitiser never sees: orch refuses to run git
/// there and says why.
#[test]
fn a_worktree_whose_git_file_points_elsewhere_is_refused_with_a_reason() {
    let env = demo_env();
    let exe = env!("CARGO_BIN_EXE_orch");
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "hostile"])
        .assert()
        .success();
    let evil = env.state().join("evil");
    let agent = format!(
        "'{exe}' demo-agent && git init -q '{e}' && git -C '{e}' config core.fsmonitor '{f}' \
         && git -C '{e}' config filter.x.clean '{c}' && echo '* filter=x' > '{e}/.git/info/attributes' \
         && echo 'gitdir: {e}/.git' > \"$ORCH_WORKTREE/.git\"",
        e = evil.display(),
        f = trap(&env, "redirected-fsmonitor"),
        c = trap(&env, "redirected-clean"),
    );
    let out = env
        .orch()
        .env("ORCH_AGENT_CMD", agent)
        .args(["run-agent", "--next", "--json"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_nothing_fired(&env);
    let job = env.json(&["job", "show", "1"]);
    let error = job["error"].as_str().unwrap_or("");
    assert!(
        error.contains("does not point into orch's clone"),
        "job error: {error}\nrun: {stdout}"
    );
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
