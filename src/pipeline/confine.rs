//! What an agent run or a repository test command may see: the sandbox plan
//! for one task, from the settings (`sandbox`, `sandbox_network`,
//! `sandbox_expose`, `sandbox_writable`, `sandbox_home_seed`) and the task's
//! own paths. The mechanism is [`crate::runner::sandbox`]; this is the policy
//! (docs/security.md, "The sandbox").

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::context::Ctx;
use crate::pipeline::task::Task;
use crate::runner::Spec;
use crate::runner::program;
use crate::runner::sandbox::{self, Mode, Plan};
use crate::workspace::Workspace;

/// The run-specific part of a sandbox: an agent's brief and its own
/// writable directory (HOME and `$ORCH_COST_FILE` live there).
#[derive(Debug, Clone, Copy)]
pub struct AgentFiles<'a> {
    /// `$ORCH_TASK_FILE`, readable.
    pub task_file: &'a Path,
    /// The run's writable directory; HOME is `<dir>/home`.
    pub dir: &'a Path,
}

/// `spec` (a shell command in `worktree`) as it must run for `task`: inside
/// the sandbox when the settings and the machine allow, unchanged with
/// `sandbox = "off"`. With `sandbox = "auto"` on a machine without a working
/// bubblewrap the command runs unsandboxed and its log says so first.
pub fn confine(
    ctx: &Ctx,
    task: &Task,
    worktree: &Path,
    agent: Option<AgentFiles<'_>>,
    spec: Spec,
) -> anyhow::Result<Spec> {
    let mode = Mode::parse(&ctx.config.sandbox).unwrap_or(Mode::Auto);
    if mode == Mode::Off {
        return Ok(spec);
    }
    let bwrap = match (sandbox::probe(), mode) {
        (Ok(bwrap), _) => bwrap,
        (Err(why), Mode::Required) => {
            bail!("sandbox = \"bwrap\" but no sandbox can be built: {why}")
        }
        (Err(why), _) => {
            note_unsandboxed(&spec.log_path, why);
            return Ok(spec);
        }
    };
    let plan = plan(ctx, task, worktree, agent, &spec)?;
    Ok(sandbox::wrap(spec, bwrap, &plan))
}

/// Every path the sandbox of this run hides, shows or lets write.
fn plan(
    ctx: &Ctx,
    task: &Task,
    worktree: &Path,
    agent: Option<AgentFiles<'_>>,
    spec: &Spec,
) -> anyhow::Result<Plan> {
    let config = &ctx.config;
    let workspace = Workspace::new(&ctx.repos_dir(), &task.repo, config.repo(&task.repo)?)?;
    let command = spec.args.last().map_or("", String::as_str);
    let mut plan = common_plan(ctx, command);
    plan.readable.push(workspace.clone_dir().join(".git"));
    plan.writable.push(worktree.to_path_buf());
    // The `.git` file says where orch's own git finds the repository: an
    // agent that could rewrite it would hand orch a git directory (and a
    // config) of its own making.
    plan.pinned.push(worktree.join(".git"));
    if let Some(files) = agent {
        plan.readable.push(files.task_file.to_path_buf());
        plan.writable.push(files.dir.to_path_buf());
        let home = files.dir.join("home");
        seed_home(&home, &config.sandbox_home_seed)?;
        plan.home = Some(home);
    }
    Ok(plan)
}

/// What every sandbox of this installation hides and shows, whatever the
/// task: the state directory and the real HOME hidden; the programs run
/// (the command's first word and orch itself: agents may call `orch`) and
/// `sandbox_expose` shown; `sandbox_writable` writable.
fn common_plan(ctx: &Ctx, command: &str) -> Plan {
    let config = &ctx.config;
    let mut hidden = vec![ctx.state_dir.clone()];
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from)
        && home.is_absolute()
    {
        hidden.push(home);
    }
    let mut programs = program::agent_program(command)
        .map(|p| sandbox::program_dirs(&p))
        .unwrap_or_default();
    if let Ok(orch) = std::env::current_exe()
        && let Some(dir) = orch.parent()
    {
        programs.push(dir.to_path_buf());
    }
    // A program's directory never unhides a hidden one (`~/bin/tool` must
    // not show all of HOME); `sandbox_expose` is the operator's explicit word.
    let mut readable: Vec<PathBuf> = programs
        .into_iter()
        .filter(|dir| !hidden.iter().any(|h| h.starts_with(dir)))
        .collect();
    readable.extend(paths(&config.sandbox_expose));
    Plan {
        hidden,
        readable,
        writable: paths(&config.sandbox_writable),
        pinned: Vec::new(),
        home: None,
        no_network: config.sandbox_network == "none",
    }
}

/// Whether `program` (the first word of `command`) is found inside this
/// installation's sandbox; `None` when there is no sandbox to look in.
pub fn finds_in_sandbox(ctx: &Ctx, command: &str, program: &str) -> Option<bool> {
    if Mode::parse(&ctx.config.sandbox) == Some(Mode::Off) {
        return None;
    }
    let bwrap = sandbox::probe().as_ref().ok()?;
    let plan = common_plan(ctx, command);
    let args = sandbox::args(&plan, Path::new("/"));
    let status = std::process::Command::new(bwrap)
        .args(args)
        .args(["sh", "-c", "command -v \"$1\" >/dev/null", "sh", program])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    Some(status.success())
}

/// The colon-separated absolute paths of a setting.
pub fn paths(setting: &str) -> Vec<PathBuf> {
    std::env::split_paths(setting)
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// Create the run's private HOME, with a copy of `sandbox_home_seed` (the
/// agent's own settings and login) when one is set. A copy, not a bind: what
/// one run writes there never reaches another.
fn seed_home(home: &Path, seed: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    if seed.trim().is_empty() {
        return Ok(());
    }
    copy_tree(Path::new(seed.trim()), home)
        .with_context(|| format!("copying sandbox_home_seed {seed} into {}", home.display()))
}

/// Directories and regular files only; symlinks and special files are
/// skipped (the seed is the operator's, but a link could name anything).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The first line of the log of a run that `sandbox = "auto"` could not
/// sandbox, and a warning in orch's own log.
fn note_unsandboxed(log: &Path, why: &str) {
    use std::io::Write as _;
    log::warn!("running without a sandbox: {why}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "orch: running without a sandbox: {why}");
    }
}
