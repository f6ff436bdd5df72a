//! `orch demo`: from nothing to a task at `done`, offline, on the embedded
//! defaults — a local tracker, a bare git repository as the forge, and the
//! scripted demo agent — with one line of progress per stage.
//!
//! The demo drives the pipeline the way an installation runs: it starts
//! `orch run-agent --next` processes as a timer would, and does the human
//! step (approving the analysis) with `orch advance --approve` as a person
//! would. What it leaves behind is a working installation.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::git::Git;

/// Arguments of `orch demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Make the demo agent misbehave to show the rollback paths, e.g.
    /// `review=request_changes*1,testing=fail*1` (see `orch demo-agent`).
    #[arg(long, value_name = "SPEC", default_value = "")]
    pub script: String,
    /// Title of the demo task.
    #[arg(long, default_value = "Greet the user by name")]
    pub title: String,
    /// Only set up the installation (config, forge, database); run nothing.
    #[arg(long)]
    pub setup_only: bool,
    /// Give up after this many agent runs.
    #[arg(long, default_value_t = 40)]
    pub max_runs: u32,
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Create the bare repository that plays the forge, with a first commit on main.
fn create_forge(forge: &Path) -> anyhow::Result<()> {
    if forge.join("HEAD").exists() {
        return Ok(());
    }
    let parent = forge.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let seed = parent.join("demo-seed.tmp");
    let _ = std::fs::remove_dir_all(&seed);
    std::fs::create_dir_all(seed.join("tests"))?;
    std::fs::write(
        seed.join("README.md"),
        "# demo\n\nA repository for `orch demo`.\n",
    )?;
    std::fs::write(
        seed.join("test.sh"),
        "#!/bin/sh\n# Run every tests/*.sh; fail if any fails.\nset -e\nfor t in tests/*.sh; do\n  [ -e \"$t\" ] || continue\n  sh \"$t\"\ndone\necho \"all tests passed\"\n",
    )?;
    std::fs::write(seed.join("tests/.keep"), "")?;
    let git = Git::at(&seed);
    git.run(["init", "--quiet", "-b", "main"])?;
    git.run(["add", "--all"])?;
    git.run(["commit", "--quiet", "-m", "Initial commit"])?;
    let forge_str = forge.to_string_lossy().into_owned();
    Git::at(parent).run([
        "clone",
        "--quiet",
        "--bare",
        "--",
        "demo-seed.tmp",
        &forge_str,
    ])?;
    std::fs::remove_dir_all(&seed)?;
    Ok(())
}

/// The demo's installation: the binary that runs it, its state dir, the
/// demo agent's script, and when it started (for the progress lines).
struct Session<'a> {
    exe: PathBuf,
    state: PathBuf,
    script: &'a str,
    started: Instant,
}

impl Session<'_> {
    /// Run `orch <args>` against the demo state dir; return (exit code, stdout).
    fn orch(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new(&self.exe)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("ORCH_DEMO_SCRIPT", self.script)
            .env_remove("ORCH_CONFIG")
            .env_remove("ORCH_AGENT_CMD")
            .output()
            .with_context(|| format!("running orch {}", args.join(" ")))?;
        let code = out.status.code().unwrap_or(1);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // `run-agent` exits 4, 5 or 6 with its report when a stage did not pass.
        let reported = matches!(code, 4..=6) && !stdout.trim().is_empty();
        if code != 0 && code != 3 && !reported {
            bail!(
                "orch {} failed ({code}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((code, stdout))
    }

    /// Time since the demo started, for the progress lines.
    fn elapsed(&self) -> String {
        format!("{:6.1}s", self.started.elapsed().as_secs_f64())
    }

    /// One progress line: time, stage, who, gates, what happened.
    fn progress(&self, stage: &str, who: &str, gates: &str, outcome: &str) {
        crate::say!(
            "{} {:<15} {:<10} {:<60} {}",
            self.elapsed(),
            stage,
            who,
            gates,
            outcome
        );
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

/// Run `orch demo` in `state` (the state dir chosen by the caller).
pub fn run(state: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("locating the orch binary")?;
    crate::private_state::create_private_dir(state)?;
    crate::private_state::check_state_dir(state)?;
    let state: PathBuf = state
        .canonicalize()
        .with_context(|| format!("resolving {}", state.display()))?;
    let forge = state.join("forge").join("demo.git");
    create_forge(&forge)?;
    write_config_once(
        &state.join("orch.toml"),
        &exe,
        &forge_remote(&forge, shares_queue()),
    )?;
    let s = Session {
        exe,
        state,
        script: args.script.as_str(),
        started,
    };
    s.orch(&["init"])?;
    if args.setup_only {
        crate::say!(
            "orch demo: installation ready in {} (repo demo, forge {}); create a task with\n  orch --state-dir {} task create --repo demo --title \"...\"",
            s.state.display(),
            forge.display(),
            s.state.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let task_id = create_task(&s, &args.title, &forge)?;
    let Some(runs) = drive(&s, task_id, args.max_runs)? else {
        return Ok(ExitCode::from(1));
    };
    let orch = invocation();
    crate::say!(
        "{} done: task {task_id} reached `done` after {runs} agent runs; main of {} holds the change.\n\
         Look around:\n  {orch} --state-dir {st} status\n  {orch} --state-dir {st} task show {task_id}\n  {orch} --state-dir {st} job list\n  git -C {f} log --oneline main",
        s.elapsed(),
        forge.display(),
        st = s.state.display(),
        f = forge.display()
    );
    if shares_queue() {
        crate::say!("(each needs ORCH_DB_URL as this demo had it: the queue is in PostgreSQL)");
    }
    if orch != "orch" {
        crate::say!(
            "(`orch` on your PATH is not this binary: `cargo install --path .` puts it in ~/.cargo/bin)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the installation's queue is a PostgreSQL database (`ORCH_DB_URL`;
/// the demo writes the config, so no `db_url` is in one yet).
fn shares_queue() -> bool {
    std::env::var_os("ORCH_DB_URL").is_some_and(|u| !u.is_empty())
}

/// How the config names the forge: its path, or with a database shared by
/// hosts (`db_url`) a `file://` URL, as a remote that is a path on one host
/// is refused there (`Config::validate`).
fn forge_remote(forge: &Path, shared: bool) -> String {
    let path = forge.to_string_lossy();
    if shared {
        format!("file://{path}")
    } else {
        path.into_owned()
    }
}

/// Write the demo's `orch.toml` unless one exists: the scripted demo agent
/// for every stage and the bare repository at `remote` as the forge.
fn write_config_once(config: &Path, exe: &Path, remote: &str) -> anyhow::Result<()> {
    if config.exists() {
        return Ok(());
    }
    let agent = format!("{} demo-agent", sh_quote(&exe.to_string_lossy()));
    std::fs::write(
        config,
        format!(
            "# Written by `orch demo`: embedded tracker, a bare repository as the forge,\n\
             # and the scripted demo agent for every stage.\n\
             agent_cmd = {}\n\
             agent_timeout_s = 120\n\
             agent_stall_timeout_s = 60\n\
             agent_kill_grace_seconds = 2\n\n\
             [repos.demo]\n\
             remote = {}\n\
             default_branch = \"main\"\n\
             test_command = \"sh ./test.sh\"\n\
             work_item_prefix = \"DEMO\"\n",
            toml_string(&agent),
            toml_string(remote)
        ),
    )
    .with_context(|| format!("writing {}", config.display()))
}

/// Create the demo task and say so; return its id.
fn create_task(s: &Session<'_>, title: &str, forge: &Path) -> anyhow::Result<i64> {
    let (_, out) = s.orch(&[
        "task", "create", "--repo", "demo", "--title", title, "--json",
    ])?;
    let task = json(&out);
    let task_id = task["id"].as_i64().context("task create printed no id")?;
    crate::say!(
        "orch demo: state dir {}\n  task {task_id} ({}) \"{}\" on repo demo (forge {})",
        s.state.display(),
        task["work_item_id"].as_str().unwrap_or("?"),
        title,
        forge.display()
    );
    Ok(task_id)
}

/// Run agents as a timer would, approving the analysis as a person would,
/// until the task is `done`: the number of agent runs, or `None` when the
/// task was escalated to a human (said on the way).
fn drive(s: &Session<'_>, task_id: i64, max_runs: u32) -> anyhow::Result<Option<u32>> {
    let id = task_id.to_string();
    let mut runs = 0;
    loop {
        let (code, out) = s.orch(&["run-agent", "--next", "--json"])?;
        if code != 3 {
            runs += 1;
            report_run(s, &json(&out));
            if runs >= max_runs {
                bail!(
                    "gave up after {runs} agent runs; see `orch --state-dir {} status`",
                    s.state.display()
                );
            }
            continue;
        }
        // Nothing claimable: the task waits for a human, or it is finished.
        let (_, out) = s.orch(&["task", "show", &id, "--json"])?;
        let shown = json(&out);
        let stage = shown["task"]["stage"].as_str().unwrap_or("?").to_owned();
        if stage == "done" {
            return Ok(Some(runs));
        }
        if shown["task"]["escalated_at"].is_i64() {
            crate::say!(
                "orch demo: task {task_id} was escalated to a human on {stage}; see `orch --state-dir {} task show {task_id}`",
                s.state.display()
            );
            return Ok(None);
        }
        if stage == "analysis" {
            let (code, _) = s.orch(&["advance", "--task", &id, "--approve", "--json"])?;
            let outcome = if code == 0 {
                "→ architecture (orch advance --approve)"
            } else {
                "approval recorded"
            };
            s.progress("analysis", "human", "check_analysis_approved pass", outcome);
            if code == 0 {
                continue;
            }
        }
        bail!(
            "task {task_id} is stuck on {stage} with nothing to run; see `orch --state-dir {} status`",
            s.state.display()
        );
    }
}

/// The progress line of one `run-agent --json` report: its gates and what
/// the pipeline decided.
fn report_run(s: &Session<'_>, r: &serde_json::Value) {
    let eval = &r["evaluation"];
    let gates: Vec<String> = eval["gates"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    format!(
                        "{} {}",
                        g["gate"].as_str().unwrap_or("?"),
                        g["verdict"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let reason = eval["decision"]["reason"].as_str().unwrap_or("");
    let mut outcome = match eval["decision"]["decision"].as_str() {
        Some("advance") => format!("→ {}", eval["decision"]["to"].as_str().unwrap_or("?")),
        Some("rollback") => format!("↩ development ({reason})"),
        Some("await_human") => "waits for a human".to_owned(),
        Some("retry") => format!("retry ({reason})"),
        _ => format!("run {}", r["run_verdict"].as_str().unwrap_or("?")),
    };
    if r["committed"]["escalated"].as_bool() == Some(true) {
        outcome.push_str(" — escalated to a human");
    }
    let gates = if gates.is_empty() {
        "-".to_owned()
    } else {
        gates.join(", ")
    };
    s.progress(
        r["stage"].as_str().unwrap_or("?"),
        r["agent"].as_str().unwrap_or("?"),
        &gates,
        &outcome,
    );
}

/// How to run this very binary from a shell: `orch` when that is what PATH
/// finds, else its full path (as after `cargo run`, where nothing is installed).
fn invocation() -> String {
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let on_path =
        crate::runner::program::find_in_path("orch").and_then(|p| std::fs::canonicalize(p).ok());
    match (me, on_path) {
        (Some(me), Some(found)) if me == found => "orch".to_owned(),
        (Some(me), _) => format!("'{}'", me.display()),
        (None, _) => "orch".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forge_is_a_file_url_when_the_queue_is_shared() {
        let forge = Path::new("/srv/orch-demo/forge/demo.git");
        assert_eq!(forge_remote(forge, false), "/srv/orch-demo/forge/demo.git");
        assert_eq!(
            forge_remote(forge, true),
            "file:///srv/orch-demo/forge/demo.git"
        );
    }
}
