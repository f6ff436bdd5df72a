//! Run one command — an agent, a test suite — so that it cannot run forever
//! and leaves nothing behind (docs/architecture.md, decision 7).
//!
//! The command runs in a process group of its own under a *guardian* (see
//! [`guardian`]): a wall-clock timeout and an optional stall timeout (no
//! output for too long) end it with SIGTERM to the whole group, a grace
//! period, then SIGKILL; processes the command leaves running after it exits
//! get the same treatment; and if the `orch` process running it dies, even by
//! SIGKILL, the guardian kills the group. Its stdout and stderr are appended
//! to a log file; its stdin is `/dev/null`.
//!
//! With `tree_kill` off (the kill-switch `subprocess_tree_kill_enabled`) the
//! command runs directly as a plain child and only that child is signalled:
//! the never-break fallback of the seeds.
//!
//! Limits: a descendant that calls `setsid` leaves the group and escapes the
//! group kill (under systemd the worker's cgroup, `KillMode=control-group`,
//! is the last net; the runner then stops waiting for the output pipes it
//! holds after a short drain). Processes that ignore SIGTERM in the group are
//! reached by the SIGKILL; a process stuck in uninterruptible sleep is
//! reported in the log, not waited for forever.

pub mod claude;
pub mod group;
pub mod guardian;
pub mod program;
mod pump;
pub mod sandbox;
pub mod untrusted;

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use pump::Pump;

/// The longest pause between two checks of a running command.
const MAX_POLL: Duration = Duration::from_millis(100);

/// How long to wait for the output pipes to close once the group is gone.
/// Only a process that escaped the group (setsid) can keep them open.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The program (looked up in `PATH` when it has no `/`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// File the output of the whole group (stdout and stderr) is appended to.
    pub log_path: PathBuf,
    /// Once the log holds this many bytes it is moved to `<log>.1` and a new
    /// one started, so at most about twice this is kept (0 = no cap).
    pub log_max_bytes: u64,
    /// Stop the command after this long.
    pub wall_timeout: Duration,
    /// Stop the command when it has printed nothing for this long.
    pub stall_timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Run in a guarded process group and kill the whole tree (normal); when
    /// false, signal only the direct child (kill-switch
    /// `subprocess_tree_kill_enabled` off).
    pub tree_kill: bool,
    /// The `orch` binary (an absolute path), started as the guardian
    /// (`orch debug guard`); its own messages go to the log too.
    pub guard_program: PathBuf,
}

/// Which timeout stopped a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Timeout {
    /// The wall-clock limit [`Spec::wall_timeout`].
    Wall,
    /// No output for [`Spec::stall_timeout`].
    Stall,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Set when the runner stopped it.
    pub timed_out: Option<Timeout>,
    /// From spawn to reap.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    /// The pid of the process the runner started: the guardian, whose pid is
    /// also the group's pgid (or the command itself without `tree_kill`).
    pub pid: u32,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Run `spec` to its end; `on_spawn(pid)` is called once it has started
/// (with tree kill, `pid` is also the pgid to signal).
///
/// The calling thread must live until `run` returns (it does, `run` blocks):
/// the kernel sends the guardian its parent-death signal when the *thread*
/// that started it exits.
///
/// Errors only when the command cannot be started or waited for; a command
/// that fails or times out is an [`Outcome`].
pub fn run(spec: &Spec, on_spawn: impl FnOnce(u32)) -> anyhow::Result<Outcome> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .with_context(|| format!("opening log {}", spec.log_path.display()))?;

    let mut command = if spec.tree_kill {
        let mut c = Command::new(&spec.guard_program);
        c.args(["debug", "guard", "--parent-pid"])
            .arg(std::process::id().to_string())
            .arg("--")
            .arg(&spec.program)
            .args(&spec.args)
            .process_group(0);
        c
    } else {
        let mut c = Command::new(&spec.program);
        c.args(&spec.args);
        c
    };
    // Secrets never reach what we run: agents, tests, probes and hooks get
    // orch's environment minus tokens, webhook secrets and the systemd
    // credential directory.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_secret_var(&name) {
            command.env_remove(name.as_ref());
        }
    }
    command
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let started = Instant::now();
    let mut child = command.spawn().with_context(|| {
        if spec.tree_kill {
            format!("starting guardian {}", spec.guard_program.display())
        } else {
            format!("starting {}", spec.program)
        }
    })?;
    let pid = child.id();
    let mut sources: Vec<Box<dyn Read + Send>> = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        sources.push(Box::new(out));
    }
    if let Some(err) = child.stderr.take() {
        sources.push(Box::new(err));
    }
    let pump = Pump::start(log, &spec.log_path, spec.log_max_bytes, sources);
    on_spawn(pid);

    let timed_out = match watch(&mut child, spec, started, &pump) {
        Ok(t) => t,
        Err(e) => {
            // Never leave a command running unwatched.
            if spec.tree_kill {
                group::terminate(pid as i32, Duration::ZERO);
            } else {
                let _ = child.kill();
            }
            let _ = child.wait();
            return Err(e);
        }
    };
    if let Some(t) = timed_out {
        log::info!(
            "command {} (pid {pid}) timed out ({t:?}): stopping it",
            spec.program
        );
    }

    let status = if spec.tree_kill {
        // The guardian is still unreaped here (exited or not), so its pid,
        // the pgid, cannot have been reused: signalling the group is safe.
        let pgid = pid as i32;
        let leftovers = group::live_members(pgid);
        if timed_out.is_none() && !leftovers.is_empty() {
            log::warn!(
                "command {} exited leaving processes {leftovers:?} behind: stopping them",
                spec.program
            );
        }
        group::terminate(pgid, spec.kill_grace);
        child.wait().context("reaping the guardian")?
    } else if timed_out.is_some() {
        stop_child(&mut child, spec.kill_grace)?
    } else {
        child.wait().context("reaping the command")?
    };
    let duration = started.elapsed();

    if !pump.finish(DRAIN_WAIT) {
        log::warn!(
            "output pipes of {} still open after the group ended: a process escaped it",
            spec.program
        );
    }
    Ok(Outcome {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        duration,
        pid,
    })
}

/// Wait until the started process ends (`None`) or a timeout is due.
fn watch(
    child: &mut Child,
    spec: &Spec,
    started: Instant,
    pump: &Pump,
) -> anyhow::Result<Option<Timeout>> {
    let mut poll = Duration::from_millis(5);
    loop {
        if has_exited(child, spec.tree_kill)? {
            return Ok(None);
        }
        if started.elapsed() >= spec.wall_timeout {
            return Ok(Some(Timeout::Wall));
        }
        if spec.stall_timeout.is_some_and(|t| pump.silent_for() >= t) {
            return Ok(Some(Timeout::Stall));
        }
        std::thread::sleep(poll);
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// Whether the started process has ended. With tree kill it is only
/// peeked at (`WNOWAIT`), so that it stays a zombie holding its pgid.
fn has_exited(child: &mut Child, tree_kill: bool) -> anyhow::Result<bool> {
    if !tree_kill {
        return Ok(child.try_wait().context("polling the command")?.is_some());
    }
    let pid = Pid::from_raw(child.id() as i32);
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags).context("polling the guardian")? {
        WaitStatus::StillAlive => Ok(false),
        _ => Ok(true),
    }
}

/// The fallback stop: SIGTERM to the direct child only, grace, SIGKILL, reap.
fn stop_child(child: &mut Child, grace: Duration) -> anyhow::Result<ExitStatus> {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait().context("polling the command")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = kill(pid, Signal::SIGKILL);
    child.wait().context("reaping the command")
}

/// Whether an environment variable carries a secret orch must not pass on.
pub fn is_secret_var(name: &str) -> bool {
    name == "CREDENTIALS_DIRECTORY"
        || name == "ORCH_DB_URL"
        || name == "PGPASSWORD"
        || name == "PGPASSFILE"
        || (name.starts_with("ORCH_")
            && (name.ends_with("_TOKEN") || name.ends_with("_SECRET") || name.contains("PASSWORD")))
}

#[cfg(test)]
mod secret_env_tests {
    #[test]
    fn tokens_and_secrets_are_scrubbed() {
        for v in [
            "ORCH_PLANE_API_TOKEN",
            "ORCH_GITEA_TOKEN",
            "ORCH_TELEGRAM_BOT_TOKEN",
            "ORCH_PLANE_WEBHOOK_SECRET",
            "CREDENTIALS_DIRECTORY",
            "ORCH_DB_URL",
            "PGPASSWORD",
        ] {
            assert!(super::is_secret_var(v), "{v}");
        }
        for v in ["ORCH_TASK_ID", "ORCH_STATE_DIR", "PATH", "HOME"] {
            assert!(!super::is_secret_var(v), "{v}");
        }
    }
}
