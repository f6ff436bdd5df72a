//! The sandbox every agent and every repository test command runs in
//! (docs/security.md, "The sandbox").
//!
//! An agent runs code a language model chose, in a repository anyone who can
//! open an issue can influence, under orch's own uid. Without a boundary it
//! could read orch's database and credentials, rewrite the git configuration
//! orch's own git later obeys, or signal orch's processes. bubblewrap (`bwrap`,
//! Debian `bubblewrap`, the tool Flatpak and Claude Code's Linux sandbox are
//! built on) gives each run its own mount, PID, IPC and UTS namespaces without
//! privileges: the whole filesystem read-only, the worktree writable, a
//! private `/tmp`, `/run` and HOME, the state directory and the real HOME
//! hidden, the git common directory read-only (orch commits, the agent does
//! not), no capabilities, a new session (no keystrokes pushed into the
//! operator's terminal), and the network shared or cut (`sandbox_network`).
//!
//! This module only turns a [`Spec`] into the same command under `bwrap`; the
//! runner's process group, timeouts and guardian are unchanged (killing the
//! sandbox's init ends every process in its PID namespace).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::Spec;

/// Whether runs are sandboxed (`sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// bubblewrap when it works on this machine, else unsandboxed (reported
    /// by `orch doctor` and once per run in the log).
    Auto,
    /// bubblewrap, and a run fails to start when it does not work.
    Required,
    /// No sandbox.
    Off,
}

impl Mode {
    /// The setting's value: `auto`, `bwrap` or `off`.
    pub fn parse(value: &str) -> Option<Mode> {
        match value {
            "auto" => Some(Mode::Auto),
            "bwrap" => Some(Mode::Required),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

/// What a run may see and touch, besides the read-only system.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Directories hidden behind an empty tmpfs (orch's state directory, the
    /// real HOME). Later binds show parts of them again.
    pub hidden: Vec<PathBuf>,
    /// Shown read-only even inside a hidden directory (the git common dir,
    /// the task file, `sandbox_expose`, the programs run).
    pub readable: Vec<PathBuf>,
    /// Writable (the worktree, the run's own directory, `sandbox_writable`).
    pub writable: Vec<PathBuf>,
    /// Read-only inside a writable directory (the worktree's `.git` file,
    /// which orch's own git follows after the run).
    pub pinned: Vec<PathBuf>,
    /// HOME inside the sandbox: a writable directory, or a fresh one in the
    /// private `/tmp` when `None`.
    pub home: Option<PathBuf>,
    /// Cut the network (`sandbox_network = "none"`): only a loopback of its own.
    pub no_network: bool,
}

/// Where `bwrap` is, when it can build a sandbox on this machine; the reason
/// otherwise. Probed once per process (one `bwrap … true`, a few ms).
pub fn probe() -> &'static Result<PathBuf, String> {
    static PROBE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        let bwrap = super::program::find_in_path("bwrap")
            .ok_or_else(|| "bwrap (Debian package bubblewrap) is not installed".to_owned())?;
        let out = Command::new(&bwrap)
            .args(["--ro-bind", "/", "/", "--unshare-user", "--unshare-pid"])
            .args(["--dev", "/dev", "--proc", "/proc", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("running {}: {e}", bwrap.display()))?;
        if out.status.success() {
            Ok(bwrap)
        } else {
            let why = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "bwrap cannot create namespaces here: {}",
                why.trim().lines().next().unwrap_or("no reason given")
            ))
        }
    })
}

/// `spec` run inside the sandbox `plan` by `bwrap`: same working
/// directory, same environment plus HOME and TMPDIR.
pub fn wrap(spec: Spec, bwrap: &Path, plan: &Plan) -> Spec {
    let mut args = args(plan, &spec.cwd);
    args.push(spec.program.clone());
    args.extend(spec.args.iter().cloned());
    Spec {
        program: bwrap.display().to_string(),
        args,
        ..spec
    }
}

/// The `bwrap` arguments of `plan`, up to and including the `--` the
/// command follows, starting in `cwd`.
pub fn args(plan: &Plan, cwd: &Path) -> Vec<String> {
    let mut args = base_args(plan);
    for dir in &plan.hidden {
        if dir.is_dir() && dir != Path::new("/") {
            push(&mut args, "--tmpfs", dir, None);
        }
    }
    for path in &plan.readable {
        push(&mut args, "--ro-bind-try", path, Some(path));
    }
    for path in &plan.writable {
        push(&mut args, "--bind-try", path, Some(path));
    }
    for path in &plan.pinned {
        push(&mut args, "--ro-bind-try", path, Some(path));
    }
    let home = if let Some(home) = &plan.home {
        home.display().to_string()
    } else {
        args.extend(["--dir".to_owned(), "/tmp/home".to_owned()]);
        "/tmp/home".to_owned()
    };
    args.extend(["--setenv".into(), "HOME".into(), home]);
    args.extend(["--setenv".into(), "TMPDIR".into(), "/tmp".into()]);
    args.extend(["--chdir".into(), cwd.display().to_string()]);
    args.push("--".into());
    args
}

/// The namespaces and the system view every sandbox has.
fn base_args(plan: &Plan) -> Vec<String> {
    let mut args: Vec<String> = [
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        // Sockets of other services (docker, dbus, the user's agents) and
        // systemd's credential directories live here.
        "--tmpfs",
        "/run",
        "--ro-bind-try",
        "/run/systemd/resolve",
        "/run/systemd/resolve",
        "--ro-bind-try",
        "/run/resolvconf",
        "/run/resolvconf",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
        "--new-session",
        "--die-with-parent",
    ]
    .map(str::to_owned)
    .to_vec();
    if plan.no_network {
        args.push("--unshare-net".to_owned());
    }
    args
}

fn push(args: &mut Vec<String>, flag: &str, src: &Path, dest: Option<&Path>) {
    args.push(flag.to_owned());
    args.push(src.display().to_string());
    if let Some(dest) = dest {
        args.push(dest.display().to_string());
    }
}

/// The directories `program` needs visible to run: where `PATH` finds it
/// and where it really lives (a symlinked launcher's target, the rest of an
/// npm package whose `bin/` holds it).
pub fn program_dirs(program: &str) -> Vec<PathBuf> {
    let Some(found) = super::program::find_in_path(program) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    if let Some(parent) = found.parent() {
        dirs.push(parent.to_path_buf());
    }
    if let Ok(real) = std::fs::canonicalize(&found)
        && let Some(parent) = real.parent()
    {
        let package = parent
            .parent()
            .filter(|p| parent.ends_with("bin") && p.join("package.json").is_file())
            .unwrap_or(parent);
        dirs.push(package.to_path_buf());
    }
    dirs.dedup();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> Spec {
        Spec {
            program: "sh".into(),
            args: vec!["-c".into(), "echo hi".into()],
            cwd: "/w/tree".into(),
            env: Vec::new(),
            log_path: "/l/log".into(),
            log_max_bytes: 0,
            wall_timeout: Duration::from_secs(1),
            stall_timeout: None,
            kill_grace: Duration::from_secs(1),
            tree_kill: true,
            guard_program: "/bin/orch".into(),
        }
    }

    #[test]
    fn the_command_runs_last_after_every_mount_in_plan_order() {
        let plan = Plan {
            hidden: vec!["/".into()],
            readable: vec!["/s/clone/.git".into()],
            writable: vec!["/w/tree".into()],
            pinned: vec!["/w/tree/.git".into()],
            home: Some("/s/run/home".into()),
            no_network: true,
        };
        let wrapped = wrap(spec(), Path::new("/usr/bin/bwrap"), &plan);
        assert_eq!(wrapped.program, "/usr/bin/bwrap");
        let a = wrapped.args.join(" ");
        assert!(
            a.starts_with("--ro-bind / / --dev /dev --proc /proc --tmpfs /tmp"),
            "{a}"
        );
        assert!(!a.contains("--tmpfs / "), "never hide the root: {a}");
        assert!(a.contains("--unshare-net"), "{a}");
        let ro = a
            .find("--ro-bind-try /s/clone/.git /s/clone/.git")
            .expect("ro");
        let rw = a.find("--bind-try /w/tree /w/tree").expect("rw");
        let pin = a
            .find("--ro-bind-try /w/tree/.git /w/tree/.git")
            .expect("pinned");
        assert!(ro < rw && rw < pin, "{a}");
        assert!(
            a.ends_with(
                "--setenv HOME /s/run/home --setenv TMPDIR /tmp --chdir /w/tree -- sh -c echo hi"
            ),
            "{a}"
        );
        assert_eq!(wrapped.cwd, PathBuf::from("/w/tree"));
    }

    #[test]
    fn without_a_home_the_sandbox_makes_one_in_its_private_tmp() {
        let wrapped = wrap(spec(), Path::new("bwrap"), &Plan::default());
        let a = wrapped.args.join(" ");
        assert!(a.contains("--dir /tmp/home --setenv HOME /tmp/home"), "{a}");
        assert!(!a.contains("--unshare-net"), "{a}");
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("auto"), Some(Mode::Auto));
        assert_eq!(Mode::parse("bwrap"), Some(Mode::Required));
        assert_eq!(Mode::parse("off"), Some(Mode::Off));
        assert_eq!(Mode::parse("on"), None);
    }
}
