//! Process-group bookkeeping: who is still alive in a group, and the
//! TERM → grace → KILL sequence that empties it.
//!
//! Liveness of a group is read from `/proc`, not from `killpg(pgid, 0)`,
//! because the runner deliberately leaves the group leader (the guardian) an
//! unreaped zombie until the group is empty: as long as that zombie exists the
//! kernel cannot hand its pid out again, so the group id the runner signals is
//! guaranteed to be the group it started. A zombie still answers `kill(…, 0)`,
//! so the probe counts only members that are not zombies.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How often the group is probed while waiting for it to empty.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// How long to wait for SIGKILLed members to disappear before giving up.
/// SIGKILL is only delayed by uninterruptible sleep (a hung NFS read, say).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The pids of the members of process group `pgid` that are not zombies.
pub fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|(state, pgrp)| pgrp == pgid && !is_dead_state(state))
        })
        .collect()
}

/// `(state, pgrp)` of `pid` from `/proc/<pid>/stat`, or `None` if it is gone.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether a `/proc` state letter means the process has already died
/// (`Z` zombie, `X` dead): it runs no code and holds no resource but its pid.
pub fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// Send `signal` to every member of group `pgid`; an already empty group is fine.
pub fn signal_group(pgid: i32, signal: Signal) -> nix::Result<()> {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Poll `done` until it holds or `deadline` passes; whether it held.
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(PROBE_INTERVAL.min(deadline - now));
    }
}

/// Empty group `pgid`: SIGTERM to all, up to `grace` for them to exit,
/// then SIGKILL to whoever is left, and wait until every member is dead.
///
/// Returns whether the group is empty at the end (false only if a member
/// survives SIGKILL for 5 s, i.e. it is stuck in the kernel).
pub fn terminate(pgid: i32, grace: Duration) -> bool {
    let empty = || live_members(pgid).is_empty();
    if empty() {
        return true;
    }
    if let Err(e) = signal_group(pgid, Signal::SIGTERM) {
        log::warn!("SIGTERM to process group {pgid}: {e}");
    }
    if wait_until(Instant::now() + grace, empty) {
        return true;
    }
    log::info!("process group {pgid} still alive after {grace:?} grace: SIGKILL");
    if let Err(e) = signal_group(pgid, Signal::SIGKILL) {
        log::warn!("SIGKILL to process group {pgid}: {e}");
    }
    let gone = wait_until(Instant::now() + KILL_WAIT, empty);
    if !gone {
        log::warn!(
            "process group {pgid} still has live members {:?} after SIGKILL",
            live_members(pgid)
        );
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_is_readable() {
        let me = std::process::id() as i32;
        let (state, pgrp) = proc_stat(me).expect("own /proc stat");
        assert!(!is_dead_state(state));
        assert_eq!(pgrp, nix::unistd::getpgrp().as_raw());
        assert!(live_members(pgrp).contains(&me));
    }

    #[test]
    fn missing_pid_has_no_stat() {
        // Above the largest pid_max Linux allows (2^22).
        assert_eq!(proc_stat(5_000_000), None);
    }
}
