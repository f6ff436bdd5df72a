//! `orch demo-agent`: the scripted agent shipped with orch. It does what a
//! real agent would at each stage — writes the artifacts the stage's gate
//! reads, and code with tests in development — so the whole pipeline runs
//! offline. It reads its instructions from the same environment variables a
//! real agent gets.
//!
//! `ORCH_DEMO_SCRIPT` makes it misbehave on purpose, to show every rollback
//! path: a comma-separated list of `stage=behaviour[*N]` (the first N runs of
//! that stage; default every run). Behaviours: `request_changes` (review),
//! `fail` (testing: FAIL; deploy-staging and deploy: FAILED), `exit1`,
//! `break_tests` (development: commit a failing test), `sleep:S`, `hang`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::error::OrchError;
use crate::pipeline::Stage;

/// Arguments of `orch demo-agent` (none: everything comes from the environment).
#[derive(Debug, clap::Args)]
pub struct Args {}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| {
        OrchError::Usage(format!(
            "{name} is not set: orch demo-agent is run by orch run-agent"
        ))
        .into()
    })
}

/// The behaviour the script asks for on this run of `stage`, if any.
fn scripted(script: &str, stage: Stage, run: u32) -> Option<String> {
    script.split(',').find_map(|item| {
        let (st, behaviour) = item.trim().split_once('=')?;
        if st.trim() != stage.as_str() {
            return None;
        }
        let (behaviour, times) = match behaviour.split_once('*') {
            Some((b, n)) => (b, n.trim().parse::<u32>().ok()),
            None => (behaviour, None),
        };
        times
            .is_none_or(|n| run <= n)
            .then(|| behaviour.trim().to_owned())
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Count this run of `stage` in the worktree and return its number (1-based).
fn bump_run_counter(artifacts: &Path, stage: Stage) -> anyhow::Result<u32> {
    let path = artifacts.join(".demo").join(format!("{stage}.runs"));
    let n = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    write(&path, &format!("{n}\n"))?;
    Ok(n)
}

/// Run the demo agent.
pub fn run(_args: &Args) -> anyhow::Result<ExitCode> {
    let stage: Stage = var("ORCH_STAGE")?
        .parse()
        .map_err(|e: String| OrchError::Usage(e))?;
    let wi = var("ORCH_WORK_ITEM")?;
    crate::names::validate_work_item_id(&wi)?;
    let worktree = PathBuf::from(var("ORCH_WORKTREE")?);
    let artifacts = PathBuf::from(var("ORCH_ARTIFACT_DIR")?);
    let run = bump_run_counter(&artifacts, stage)?;
    let script = std::env::var("ORCH_DEMO_SCRIPT").unwrap_or_default();
    let behaviour = scripted(&script, stage, run).unwrap_or_default();
    println!(
        "demo-agent: {stage} run {run} for {wi} ({})",
        if behaviour.is_empty() {
            "normal"
        } else {
            &behaviour
        }
    );
    if let Some(secs) = behaviour.strip_prefix("sleep:") {
        let secs: u64 = secs.parse().unwrap_or(1);
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    match behaviour.as_str() {
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "exit1" => {
            println!("demo-agent: failing on purpose");
            return Ok(ExitCode::from(1));
        }
        _ => {}
    }
    let fail = behaviour == "fail";
    let a = |name: &str| artifacts.join(name);
    match stage {
        Stage::Analysis => {
            write(
                &a("01-brd.md"),
                &format!(
                    "---\ntype: brd\nwork_item_id: {wi}\n---\n# Business requirements\n\nGreet the user by name from a shell script.\n"
                ),
            )?;
            write(
                &a("02-trz.md"),
                &format!(
                    "---\ntype: trz\nwork_item_id: {wi}\n---\n# Technical requirements\n\n`src/greet.sh NAME` prints `Hello, NAME!`.\n"
                ),
            )?;
            write(
                &a("03-acceptance-criteria.md"),
                &format!(
                    "---\ntype: acceptance-criteria\nwork_item_id: {wi}\n---\n- AC-1: `sh src/greet.sh Ada` prints `Hello, Ada!` (PASS/FAIL)\n"
                ),
            )?;
            write(
                &a("04-test-plan.yaml"),
                &format!(
                    "work_item: {wi}\ntitle: greeting\ntests:\n  - id: TC-01\n    type: unit\n    description: greet prints the name\n    module: src/greet.sh\n    expected: PASS\n"
                ),
            )?;
        }
        Stage::Architecture => {
            write(
                &a("06-adr/ADR-001-shell-greeting.md"),
                &format!(
                    "---\ntype: adr\nstatus: accepted\nwork_item_id: {wi}\n---\n# ADR-001: a POSIX shell script\n\nContext, decision, alternatives, consequences.\n"
                ),
            )?;
        }
        Stage::Development => {
            write(
                &worktree.join("src/greet.sh"),
                "#!/bin/sh\n# Print a greeting for the name given as $1.\nprintf 'Hello, %s!\\n' \"${1:-world}\"\n",
            )?;
            let expected = if behaviour == "break_tests" {
                "Hi, Ada!"
            } else {
                "Hello, Ada!"
            };
            write(
                &worktree.join("tests/greet_test.sh"),
                &format!(
                    "#!/bin/sh\nset -e\nout=$(sh src/greet.sh Ada)\n[ \"$out\" = \"{expected}\" ] || {{ echo \"greet: got '$out'\"; exit 1; }}\n"
                ),
            )?;
        }
        Stage::Review => {
            let verdict = if behaviour == "request_changes" {
                "REQUEST_CHANGES"
            } else {
                "APPROVED"
            };
            write(
                &a("12-review.md"),
                &format!(
                    "---\ntype: review\nwork_item_id: {wi}\nverdict: {verdict}\nversion: {run}\n---\n# Review v{run}\n\nP2: none blocking.\n"
                ),
            )?;
        }
        Stage::Testing => {
            let result = if fail { "FAIL" } else { "PASS" };
            write(
                &a("13-test-report.md"),
                &format!(
                    "---\ntype: test-report\nwork_item_id: {wi}\nresult: {result}\n---\n# Test report\n\nTC-01: {result}\n"
                ),
            )?;
        }
        Stage::DeployStaging => {
            let status = if fail { "FAILED" } else { "SUCCESS" };
            write(
                &a("15-staging-log.md"),
                &format!(
                    "---\nstaging_status: {status}\ntimestamp: 2026-01-01T00:00:00Z\nbase_url: http://localhost:8501\n---\nstaging checks: {status}\n"
                ),
            )?;
        }
        Stage::Deploy => {
            let status = if fail { "FAILED" } else { "SUCCESS" };
            write(
                &a("14-deploy-log.md"),
                &format!(
                    "---\ndeploy_status: {status}\nwork_item: {wi}\nhook_exit_code: 0\ndeployed_by: demo-agent\n---\nproduction deploy: {status}\n"
                ),
            )?;
        }
        Stage::Created | Stage::Done | Stage::Cancelled => {
            return Err(OrchError::Usage(format!("no agent works on stage {stage}")).into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_applies_to_the_first_n_runs() {
        let s = "review=request_changes*2, testing=fail";
        assert_eq!(
            scripted(s, Stage::Review, 1).as_deref(),
            Some("request_changes")
        );
        assert_eq!(
            scripted(s, Stage::Review, 2).as_deref(),
            Some("request_changes")
        );
        assert_eq!(scripted(s, Stage::Review, 3), None);
        assert_eq!(scripted(s, Stage::Testing, 9).as_deref(), Some("fail"));
        assert_eq!(scripted(s, Stage::Deploy, 1), None);
        assert_eq!(scripted("", Stage::Deploy, 1), None);
    }
}
