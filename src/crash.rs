//! Crash points: a test facility that makes the binary kill itself with
//! SIGKILL at a named step, so tests can prove that every partial state is
//! brought to a correct end by `orch reap` (and `orch reconcile`).
//!
//! Inert unless `ORCH_CRASH_AT` names a point; `orch debug crash-points`
//! lists every point so a test can enumerate them and none is forgotten.
//! With `ORCH_CRASH_KILL=group` the SIGKILL goes to orch's whole process
//! group — as systemd or an operator's `kill -9 -PGID` would, taking
//! children with it — but only when orch leads its own group, so a test that
//! forgets to start it that way never kills itself.

use std::sync::OnceLock;

/// Every crash point, in the order a job passes them.
pub const POINTS: &[(&str, &str)] = &[
    (
        "claim.locked",
        "the worker holds its lock file but has not claimed yet",
    ),
    (
        "claim.committed",
        "the claim is committed; nothing else has happened",
    ),
    (
        "run.worktree",
        "run-agent prepared the worktree but recorded no run",
    ),
    (
        "run.recorded",
        "the agent run is recorded; the agent is not started",
    ),
    (
        "run.ended",
        "the agent has ended; its outcome is not judged or recorded",
    ),
    (
        "run.exited",
        "the agent exited and its outcome is recorded; nothing is committed or pushed",
    ),
    (
        "push.staged",
        "commit-and-push staged the worktree (git add); nothing committed",
    ),
    (
        "push.committed",
        "commit-and-push committed the worktree locally; nothing pushed",
    ),
    (
        "finalize.pushed",
        "the worktree is committed and pushed; gates not evaluated",
    ),
    (
        "merge.leased",
        "the merge gate holds the merge lease; nothing rebased or re-tested",
    ),
    (
        "merge.rebased_local",
        "the branch is rebased onto main in the worktree; the rebase is not pushed",
    ),
    (
        "merge.rebased",
        "the branch is rebased onto main and pushed; not re-tested",
    ),
    (
        "finalize.evaluated",
        "the gates were evaluated (and a merge done); the decision is not committed",
    ),
    (
        "finalize.committed",
        "the job outcome and the advance are committed; the outbox is not delivered",
    ),
    (
        "deploy.merged",
        "Confirm Deploy merged the verified commit; the deploy is not initiated",
    ),
    (
        "deploy.initiated",
        "the deploy is recorded as initiated and its finalizer queued; the hook is not started",
    ),
    (
        "deploy.hook_started",
        "the deploy hook is started (detached); its pid is not recorded",
    ),
    (
        "deploy.finalized",
        "the deploy's outcome is committed; a deferred STOP is not yet applied",
    ),
    (
        "monitor.checked",
        "a post-deploy check is counted; the monitor job is not requeued or ended",
    ),
    (
        "monitor.logged",
        "the post-deploy verdict is recorded and 16-post-deploy-log.md pushed; the job is not ended",
    ),
    (
        "cancel.requested",
        "a cancel is recorded and the task's jobs cancelled; nothing torn down yet",
    ),
    (
        "cancel.torn_down",
        "worktree removed and branch deleted; the task is not yet marked cancelled",
    ),
];

/// Die by SIGKILL here if `ORCH_CRASH_AT` names this point.
pub fn point(name: &str) {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var("ORCH_CRASH_AT").ok());
    if target.as_deref() == Some(name) {
        debug_assert!(
            POINTS.iter().any(|(p, _)| *p == name),
            "unregistered crash point {name}"
        );
        let group = std::env::var("ORCH_CRASH_KILL").is_ok_and(|k| k == "group")
            && nix::unistd::getpgrp() == nix::unistd::getpid();
        if group {
            log::warn!("ORCH_CRASH_AT={name}: killing my process group with SIGKILL");
            let _ =
                nix::sys::signal::killpg(nix::unistd::getpgrp(), nix::sys::signal::Signal::SIGKILL);
        }
        log::warn!("ORCH_CRASH_AT={name}: killing myself with SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
