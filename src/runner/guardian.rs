//! The guardian: a tiny `orch` process that sits between the runner and the
//! agent so that no agent outlives its `orch` process, even one killed with
//! SIGKILL.
//!
//! Why a separate process: the parent-death signal (`PR_SET_PDEATHSIG`) is
//! the kernel's only notice that a parent died, it reaches only the direct
//! child, and setting it in the agent itself would need `unsafe` `pre_exec`.
//! So the runner starts `orch debug guard --parent-pid <runner> -- <agent…>`
//! as the leader of a new process group; the guardian arms the parent-death
//! signal on itself and starts the agent as its child in the same group. When
//! the runner dies, the kernel signals the guardian, which SIGKILLs the whole
//! group, itself included.
//!
//! Otherwise the guardian is transparent: signals sent to the group reach the
//! agent directly (the guardian swallows them), and the guardian ends the way
//! the agent ended — same exit code, or death by the same signal — so the
//! runner reads the agent's own exit status.
//!
//! Limitation: a descendant that calls `setsid` (or `setpgid`) leaves the
//! group and escapes both the guardian and the runner's group kill. Under
//! systemd the worker unit's cgroup (`KillMode=control-group`, the default)
//! is the last net for those.

use std::process::{Command, ExitCode};

use anyhow::Context as _;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{Pid, getpgrp, getpid, getppid, setpgid};

/// The signal the kernel sends the guardian when the runner dies.
const PARENT_DEATH: Signal = Signal::SIGUSR2;

/// Exit code when the agent program cannot be started (as a shell does).
const CANNOT_START: u8 = 127;

/// Guard `program args…` on behalf of the runner process `parent_pid`.
///
/// Must be called before any other thread is started: the signal mask set
/// here is inherited only by threads created after it.
pub fn run(parent_pid: i32, program: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    // The guardian kills its own group, so it must lead one: never the group
    // of whoever ran `orch debug guard` by hand.
    if getpgrp() != getpid() {
        setpgid(Pid::from_raw(0), Pid::from_raw(0)).context("becoming a process group leader")?;
    }

    // Children inherit the signal mask (std does not reset it; only SIGPIPE's
    // disposition), so the agent is started with an empty mask *before* the
    // guardian blocks anything. In the instant between the two, a signal to
    // the group would end the guardian by its default action; the runner then
    // sees the guardian gone and cleans up the group itself.
    SigSet::empty()
        .thread_set_mask()
        .context("clearing the signal mask")?;
    let mut child = match Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            log::error!("guard: cannot start {program}: {e}");
            return Ok(ExitCode::from(CANNOT_START));
        }
    };

    // Handled by the waiting thread below, so blocked in every thread.
    // Signals sent to the group (TERM on timeout, INT/HUP from a terminal)
    // reach the agent directly; the guardian just waits for the agent.
    let mut handled = SigSet::empty();
    for s in [
        PARENT_DEATH,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        handled.add(s);
    }
    // SIGPIPE is blocked too (never waited for): once the runner is gone, our
    // stderr is a pipe without a reader, and orch's main sets SIGPIPE to its
    // default, so a log line would otherwise kill the guardian before it
    // kills the group. Blocked, a write just fails with EPIPE.
    let mut blocked = handled;
    blocked.add(Signal::SIGPIPE);
    blocked.thread_block().context("blocking signals")?;

    // Armed only once blocked, so it cannot kill the guardian by its default
    // action and leave the agent unguarded. The runner may have died before
    // it was armed: then nobody will signal us, and our parent is already
    // someone else.
    nix::sys::prctl::set_pdeathsig(PARENT_DEATH).context("arming the parent-death signal")?;
    if getppid().as_raw() != parent_pid {
        log::error!("guard: parent {parent_pid} already gone: killing the agent's group");
        kill_group();
    }

    std::thread::Builder::new()
        .name("guard-signals".into())
        .spawn(move || {
            loop {
                match handled.wait() {
                    Ok(PARENT_DEATH) => {
                        // SIGKILLs the guardian too; nobody is left to read a log line.
                        kill_group();
                    }
                    // Already delivered to the agent by the group signal.
                    Ok(_) => {}
                    Err(e) => {
                        log::error!("guard: waiting for signals: {e}");
                        kill_group();
                    }
                }
            }
        })
        .context("starting the signal thread")?;

    let status = child.wait().context("waiting for the agent")?;
    if let Some(code) = status.code() {
        return Ok(ExitCode::from(code as u8));
    }
    let signo = std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0);
    Ok(die_like(signo))
}

/// SIGKILL the guardian's whole group, the guardian included.
fn kill_group() {
    let _ = nix::sys::signal::killpg(getpgrp(), Signal::SIGKILL);
}

/// Die by signal `signo` so the runner sees the agent's WIFSIGNALED status.
/// Falls back to the shell convention 128+signo for a signal that cannot be
/// re-raised (one whose disposition is "ignore", such as SIGPIPE in a Rust
/// program, or a real-time signal nix does not name).
fn die_like(signo: i32) -> ExitCode {
    if let Ok(signal) = Signal::try_from(signo) {
        let mut only = SigSet::empty();
        only.add(signal);
        // `raise` targets the calling thread, which now accepts it.
        if only.thread_unblock().is_ok() {
            let _ = nix::sys::signal::raise(signal);
        }
    }
    ExitCode::from((128 + signo) as u8)
}
