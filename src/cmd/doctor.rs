//! `orch doctor`: check an installation the way an operator would before
//! trusting it, one line per check, each `ok`, `warn` or `fail` with what to
//! do about it.
//!
//! It exists because orch has no daemon to complain at start-up: a missing
//! token, an unreachable remote or a world-writable state directory would
//! otherwise surface only when a timer's run fails in the journal. Doctor
//! never changes anything (the database is opened read-only, probes of the
//! state and lock directories create and remove a scratch file) and never
//! prints a secret's value or length, only whether it is present and where it
//! comes from.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backends::forge::gitea::{self, GiteaForge};
use crate::backends::notifier::telegram::{self, Telegram};
use crate::backends::tracker::plane::{self, PlaneClient};
use crate::cli::GlobalOpts;
use crate::config::Config;
use crate::context::{Ctx, resolve_state_dir};
use crate::output;
use crate::webhooks::Source;

/// Arguments of `orch doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip every check that needs the network: `git ls-remote` of remote
    /// URLs (local paths are still checked) and the Plane, Gitea and Telegram
    /// API probes.
    #[arg(long)]
    pub offline: bool,
    /// Print the checks as JSON: `{"ok": bool, "failures": n, "warnings": n,
    /// "checks": [{"check", "level", "message", "hint"}]}`.
    #[arg(long)]
    pub json: bool,
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but something is off or could not be checked.
    Warn,
    /// Broken: orch will fail because of this.
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `database` or `credential plane_api_token`.
    pub check: String,
    /// The verdict.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do about it (warn and fail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The checks, in order.
#[derive(Debug, Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, check: &str, level: Level, message: String, hint: Option<String>) {
        self.checks.push(Check {
            check: check.to_owned(),
            level,
            message,
            hint,
        });
    }
    fn ok(&mut self, check: &str, message: impl Into<String>) {
        self.push(check, Level::Ok, message.into(), None);
    }
    fn warn(&mut self, check: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.push(check, Level::Warn, message.into(), Some(hint.into()));
    }
    fn fail(&mut self, check: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.push(check, Level::Fail, message.into(), Some(hint.into()));
    }
    fn count(&self, level: Level) -> usize {
        self.checks.iter().filter(|c| c.level == level).count()
    }
}

/// Free space under which the state directory gets a warning.
const MIN_FREE_BYTES: u64 = 1 << 30;

/// Run `orch doctor`. It resolves the state directory and config itself, so
/// that a broken config is a `fail` line rather than the end of the run.
pub fn run(global: &GlobalOpts, args: &Args) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let mut r = Report::default();
    let state_dir = resolve_state_dir(global.state_dir.as_deref(), &env)?;
    let config = match Config::load(global.config.as_deref(), &state_dir.join("orch.toml"), &env) {
        Ok(config) => {
            let origin = global.config.clone().unwrap_or(state_dir.join("orch.toml"));
            let origin = if origin.exists() {
                origin.display().to_string()
            } else {
                "defaults (no config file)".to_owned()
            };
            r.ok(
                "config",
                format!(
                    "loaded and valid: {origin}; {} repositories; tracker {}, forge {}, notifier {}",
                    config.repos.len(),
                    config.tracker,
                    config.forge,
                    config.notifier
                ),
            );
            if config.repos.is_empty() {
                r.warn(
                    "repos",
                    "no repositories are declared",
                    "add a [repos.<name>] table with a remote (docs/configuration.md)",
                );
            }
            Some(config)
        }
        Err(e) => {
            r.fail(
                "config",
                format!("{e:#}"),
                "fix the file or the ORCH_* variable named above (docs/configuration.md)",
            );
            None
        }
    };
    let ctx = Ctx {
        state_dir: state_dir.clone(),
        config: config.clone().unwrap_or_default(),
    };
    check_state_dir(&mut r, &state_dir);
    check_database(&mut r, &ctx, config.is_some());
    check_dir_writable(&mut r, "locks", &ctx.locks_dir());
    check_private_modes(&mut r, &ctx);
    check_tools(&mut r);
    check_disk(&mut r, &state_dir);
    if let Some(config) = &config {
        check_repos(&mut r, config, args.offline);
        check_agents(&mut r, config);
        check_sandbox(&mut r, &ctx);
        let creds = check_credentials(&mut r, config);
        if args.offline {
            if config.tracker == "plane" || config.forge == "gitea" || config.notifier == "telegram"
            {
                r.ok("remote APIs", "skipped (--offline)");
            }
        } else {
            check_apis(&mut r, config, &creds);
        }
    }
    let failures = r.count(Level::Fail);
    let warnings = r.count(Level::Warn);
    if args.json {
        output::print_json(&serde_json::json!({
            "ok": failures == 0,
            "failures": failures,
            "warnings": warnings,
            "checks": r.checks,
        }))?;
    } else {
        for c in &r.checks {
            match &c.hint {
                Some(hint) => println!(
                    "{:<4}  {}: {} — {hint}",
                    c.level.as_str(),
                    c.check,
                    c.message
                ),
                None => println!("{:<4}  {}: {}", c.level.as_str(), c.check, c.message),
            }
        }
        println!(
            "{} checks: {} ok, {warnings} warnings, {failures} failures",
            r.checks.len(),
            r.count(Level::Ok)
        );
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_state_dir(r: &mut Report, dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            r.fail(
                "state dir",
                format!("{}: {e}", dir.display()),
                "run `orch init` (or pass the right --state-dir)",
            );
            return;
        }
    };
    if !meta.is_dir() {
        r.fail(
            "state dir",
            format!("{} is not a directory", dir.display()),
            "point --state-dir / ORCH_STATE_DIR at a directory",
        );
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if let Some(why) = crate::private_state::untrusted_reason(dir) {
        r.fail(
            "state dir",
            format!("{} {why}", dir.display()),
            format!(
                "orch refuses it, another user could replace the config, database or lock files: chown it to this user and chmod 700 {}",
                dir.display()
            ),
        );
        return;
    }
    match probe_writable(dir) {
        Ok(()) => r.ok(
            "state dir",
            format!("{} (mode {mode:04o}, writable)", dir.display()),
        ),
        Err(e) => r.fail(
            "state dir",
            format!("{} is not writable by this user: {e}", dir.display()),
            "run orch as the owner of the state dir (the orch user under systemd)",
        ),
    }
}

fn check_dir_writable(r: &mut Report, name: &str, dir: &Path) {
    if !dir.is_dir() {
        r.fail(
            name,
            format!("{} does not exist", dir.display()),
            "run `orch init`",
        );
        return;
    }
    match probe_writable(dir) {
        Ok(()) => r.ok(name, format!("{} writable", dir.display())),
        Err(e) => r.fail(
            name,
            format!("{} is not writable: {e}", dir.display()),
            "workers cannot take their owner lock; fix the directory's owner or mode",
        ),
    }
}

/// Fail when the state dir, the database (and its WAL) or the logs are
/// readable or writable by every user, with the chmod that fixes it: they
/// hold task texts, agent output and the queue. orch itself creates them
/// private; this catches an installation made before, or by hand.
fn check_private_modes(r: &mut Report, ctx: &Ctx) {
    use std::os::unix::fs::PermissionsExt as _;
    let db = ctx.db_path();
    let paths = [
        (ctx.state_dir.clone(), true),
        (db.clone(), false),
        (PathBuf::from(format!("{}-wal", db.display())), false),
        (PathBuf::from(format!("{}-shm", db.display())), false),
        (ctx.logs_dir(), true),
        (ctx.state_dir.join("runs"), true),
    ];
    let (mut seen, mut open, mut fixes) = (Vec::new(), Vec::new(), Vec::new());
    for (path, is_dir) in paths {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        seen.push(format!("{} {mode:04o}", path.display()));
        if mode & 0o006 != 0 {
            open.push(format!("{} (mode {mode:04o})", path.display()));
            let want = if is_dir { "700" } else { "600" };
            fixes.push(format!("chmod {want} {}", path.display()));
        }
    }
    if open.is_empty() {
        r.ok("private files", seen.join(", "));
    } else {
        r.fail(
            "private files",
            format!("readable or writable by every user: {}", open.join(", ")),
            fixes.join("; "),
        );
    }
}

/// The PostgreSQL database of `db_url`: reachable, an orch schema of this
/// binary's version (a read-only session: nothing is created or migrated).
fn check_postgres(r: &mut Report, ctx: &Ctx) {
    match ctx.open_db_read_only() {
        Ok(mut db) => {
            let shown = db.describe();
            match db.schema_version() {
                Ok(v) => r.ok("database", format!("{shown} (schema v{v})")),
                Err(e) => r.fail("database", format!("{shown}: {e:#}"), "check db_url"),
            }
        }
        Err(e) => r.fail(
            "database",
            format!("{e:#}"),
            "check db_url, that the server is up and reachable from this host, and run `orch init` once",
        ),
    }
}

/// Create and remove a scratch file in `dir`.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".orch-doctor-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)
}

fn check_database(r: &mut Report, ctx: &Ctx, config_ok: bool) {
    if ctx.db_url().is_some() {
        check_postgres(r, ctx);
        return;
    }
    let path = ctx.db_path();
    if !config_ok && !path.exists() {
        r.warn(
            "database",
            format!("{} not found (config did not load)", path.display()),
            "fix the config first",
        );
        return;
    }
    if !path.exists() {
        r.fail(
            "database",
            format!("no database at {}", path.display()),
            "run `orch init`",
        );
        return;
    }
    let h = match crate::storage::health(&path, ctx.busy_timeout()) {
        Ok(h) => h,
        Err(e) => {
            r.fail(
                "database",
                format!("{e:#}"),
                "restore the database from a backup, or move it away and run `orch init`",
            );
            return;
        }
    };
    if !h.is_orch {
        r.fail(
            "database",
            format!("{} is not an orch database", path.display()),
            "point db_path at the orch database",
        );
        return;
    }
    match h.schema_version.cmp(&h.latest_version) {
        std::cmp::Ordering::Equal => r.ok(
            "database",
            format!("{} (schema v{})", path.display(), h.schema_version),
        ),
        std::cmp::Ordering::Less => r.warn(
            "database",
            format!(
                "schema v{} is older than this orch's v{}",
                h.schema_version, h.latest_version
            ),
            "run `orch init` (any command migrates it forward)",
        ),
        std::cmp::Ordering::Greater => r.fail(
            "database",
            format!(
                "schema v{} is newer than this orch understands (v{})",
                h.schema_version, h.latest_version
            ),
            "upgrade orch",
        ),
    }
    if h.quick_check == ["ok"] {
        r.ok("database integrity", "PRAGMA quick_check: ok");
    } else {
        let first: Vec<&str> = h.quick_check.iter().take(3).map(String::as_str).collect();
        r.fail(
            "database integrity",
            format!("PRAGMA quick_check: {}", first.join("; ")),
            "stop the timers, back up the file, and restore or rebuild it (docs/operations.md)",
        );
    }
    if h.journal_mode == "wal" {
        r.ok("journal mode", "wal");
    } else {
        r.warn(
            "journal mode",
            format!("{} (not wal)", h.journal_mode),
            "the database should be on a local file system; concurrent orch processes will block each other",
        );
    }
}

/// The full path of `program` on `PATH` (or `program` itself if it has a `/`
/// and is executable).
fn check_tools(r: &mut Report) {
    for (tool, why) in [
        ("git", "orch clones, branches, rebases and pushes with git"),
        (
            "setsid",
            "the self-deploy hook is detached with setsid (util-linux)",
        ),
    ] {
        match crate::runner::program::find_in_path(tool) {
            Some(p) => r.ok(&format!("tool {tool}"), p.display().to_string()),
            None => r.fail(
                &format!("tool {tool}"),
                format!("{tool} is not on PATH"),
                format!("install it: {why}"),
            ),
        }
    }
}

/// Available bytes on the file system of `dir`, from `df -Pk`.
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .arg("-Pk")
        .arg("--")
        .arg(dir)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "df: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_df(&String::from_utf8_lossy(&out.stdout))
}

/// The "Available" column (KiB) of the last line of `df -Pk` output, in bytes.
fn parse_df(text: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("df printed no data line"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read df output {line:?}"))?;
    Ok(kib * 1024)
}

fn check_disk(r: &mut Report, dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    match free_bytes(dir) {
        Ok(bytes) => {
            let gib = bytes as f64 / f64::from(1u32 << 30);
            if bytes < MIN_FREE_BYTES {
                r.warn(
                    "disk",
                    format!("{gib:.2} GiB free under {}", dir.display()),
                    "worktrees, agent logs and the WAL need room: free space or move the state dir",
                );
            } else {
                r.ok("disk", format!("{gib:.1} GiB free under {}", dir.display()));
            }
        }
        Err(e) => r.warn(
            "disk",
            format!("cannot tell free space: {e:#}"),
            "check `df -h` by hand",
        ),
    }
}

/// Whether `remote` names a local path (checked even with --offline).
fn is_local_remote(remote: &str) -> bool {
    if remote.contains("://") {
        return remote.starts_with("file://");
    }
    // scp-like `host:path` (but not `/a:b` or `./a:b`).
    match remote.find(':') {
        Some(colon) => remote[..colon].contains('/'),
        None => true,
    }
}

fn check_repos(r: &mut Report, config: &Config, offline: bool) {
    let timeout = Duration::from_secs(config.http_timeout_s.clamp(1, 20));
    for (name, repo) in &config.repos {
        let check = format!("repo {name}");
        let local = is_local_remote(&repo.remote);
        if offline && !local {
            r.ok(
                &check,
                format!("{} (not contacted: --offline)", repo.remote),
            );
            continue;
        }
        match ls_remote(&repo.remote, timeout) {
            Ok(refs) => r.ok(&check, format!("{} reachable ({refs} refs)", repo.remote)),
            Err(e) => r.fail(
                &check,
                format!("{}: {e:#}", repo.remote),
                "check the remote URL, the network, and the orch user's git credentials (ssh key or credential helper)",
            ),
        }
    }
}

/// `git ls-remote --heads -- <remote>` bounded by `timeout`; the number of refs.
fn ls_remote(remote: &str, timeout: Duration) -> anyhow::Result<usize> {
    let mut child = crate::git::Git::at(std::env::temp_dir())
        .command(["ls-remote", "--heads", "--", remote])
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o ConnectTimeout=10",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("git ls-remote timed out after {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = crate::git::one_line(&String::from_utf8_lossy(&out.stderr));
        anyhow::bail!("git ls-remote failed: {err}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

fn check_agents(r: &mut Report, config: &Config) {
    let mut commands: Vec<(String, &str)> = vec![("agent".to_owned(), config.agent_cmd.as_str())];
    for (stage, cmd) in &config.agent_cmds {
        commands.push((format!("agent {stage}"), cmd.as_str()));
    }
    let overridden = std::env::var_os("ORCH_AGENT_CMD").is_some();
    for (check, command) in commands {
        let from = if overridden && check == "agent" {
            " (from ORCH_AGENT_CMD)"
        } else {
            ""
        };
        let Some(program) = crate::runner::program::agent_program(command) else {
            r.ok(
                &check,
                format!("command starts with shell syntax; program not checked{from}"),
            );
            continue;
        };
        match crate::runner::program::find_in_path(&program) {
            Some(p) => {
                r.ok(&check, format!("{program} → {}{from}", p.display()));
                if p.file_name().is_some_and(|n| n == "claude") {
                    check_claude(r, &check, &p, command);
                }
            }
            None if program == "claude" => r.warn(
                &check,
                format!("claude is not on PATH{from}"),
                "install Claude Code for the orch user (`npm install -g @anthropic-ai/claude-code`, then log in or set ANTHROPIC_API_KEY), or set agent_cmd",
            ),
            None => r.warn(
                &check,
                format!("{program} is not on PATH{from}"),
                "every agent run will fail: install it or fix agent_cmd / [agent_cmds]",
            ),
        }
    }
}

/// Whether agents and test commands run sandboxed here, and whether each
/// agent's program can be found inside the sandbox (a program under a
/// hidden HOME needs `sandbox_expose`).
fn check_sandbox(r: &mut Report, ctx: &Ctx) {
    use crate::runner::sandbox::{self, Mode};
    let config = &ctx.config;
    let install = "install bubblewrap (Debian: apt install bubblewrap) and allow unprivileged user namespaces (docs/security.md, \"The sandbox\")";
    match (Mode::parse(&config.sandbox), sandbox::probe()) {
        (Some(Mode::Off), _) => r.warn(
            "sandbox",
            "off: agents and test commands run with orch's own rights",
            "set sandbox = \"auto\" (docs/security.md, \"The sandbox\")",
        ),
        (Some(Mode::Required), Err(why)) => r.fail("sandbox", why.clone(), install),
        (_, Err(why)) => r.warn(
            "sandbox",
            format!("none: {why}; agents and test commands run with orch's own rights"),
            install,
        ),
        (_, Ok(bwrap)) => {
            r.ok(
                "sandbox",
                format!(
                    "{}: agents and test commands run in bubblewrap (network: {})",
                    bwrap.display(),
                    config.sandbox_network
                ),
            );
            for command in std::iter::once(&config.agent_cmd).chain(config.agent_cmds.values()) {
                let Some(program) = crate::runner::program::agent_program(command) else {
                    continue;
                };
                if crate::pipeline::confine::finds_in_sandbox(ctx, command, &program) == Some(false)
                {
                    r.fail(
                        "sandbox",
                        format!("{program} is not reachable inside the sandbox"),
                        "it lies in a hidden directory (HOME, the state directory, /tmp): install it elsewhere or name its directory in sandbox_expose",
                    );
                }
            }
        }
    }
}

/// The Claude Code CLI behind an agent command: its version, and whether the
/// command will let the agent write (see `runner::claude::permissions`).
fn check_claude(r: &mut Report, check: &str, binary: &Path, command: &str) {
    use crate::runner::claude::permissions::{self, Grant, MIN_VERSION, TESTED_VERSION};
    let version_check = format!("{check} version");
    match claude_version(binary) {
        Ok(text) => match permissions::parse_version(&text) {
            Some(v) if v >= MIN_VERSION => r.ok(
                &version_check,
                format!("Claude Code {}.{}.{} (tested: {TESTED_VERSION})", v.0, v.1, v.2),
            ),
            Some(v) => r.fail(
                &version_check,
                format!("Claude Code {}.{}.{} is older than {}.{}.{}", v.0, v.1, v.2, MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2),
                format!("its result events lack the fields orch judges runs by: install @anthropic-ai/claude-code@{TESTED_VERSION}"),
            ),
            None => r.warn(
                &version_check,
                format!("`claude --version` printed {:?}", text.trim()),
                format!("expected e.g. \"{TESTED_VERSION} (Claude Code)\": is this Claude Code?"),
            ),
        },
        Err(e) => r.fail(
            &version_check,
            format!("`{} --version` failed: {e}", binary.display()),
            "reinstall Claude Code (npm install -g @anthropic-ai/claude-code); with --ignore-scripts the binary is a stub",
        ),
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let grant = permissions::grant(
        &crate::runner::program::shell_words(command),
        home.as_deref(),
        nix::unistd::geteuid().as_raw(),
        std::env::var_os("IS_SANDBOX").is_some_and(|v| v == "1"),
    );
    let permission_check = format!("{check} permissions");
    let hint = "use the default agent_cmd (--permission-mode acceptEdits --allowedTools Bash); docs/claude-code.md";
    match grant {
        Grant::Works(how) => r.ok(&permission_check, format!("the agent may write: {how}")),
        Grant::EditsOnly(how) => r.warn(&permission_check, how, hint),
        Grant::Refused(why) | Grant::WontStart(why) => r.fail(&permission_check, why, hint),
    }
}

/// What `claude --version` prints, within 10 seconds.
fn claude_version(binary: &Path) -> anyhow::Result<String> {
    let mut child = Command::new(binary)
        .arg("--version")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                std::io::Read::read_to_string(&mut stdout, &mut out)?;
            }
            anyhow::ensure!(status.success(), "exit status {status}");
            return Ok(out);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("no answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Plane project's board against the board contract: a state orch sets
/// that is missing fails (those changes would be dead-lettered); a state a
/// person uses to ask orch for something only warns.
fn check_board(r: &mut Report, check: &str, project: &str, states: &plane::States) {
    use crate::backends::tracker::{CONTRACT, Use, key_for_name};
    let has = |name: &str| key_for_name(name).is_some_and(|k| states.get(k).is_some());
    let missing_set: Vec<&str> = CONTRACT
        .iter()
        .filter(|(name, u)| *u == Use::Sets && !has(name))
        .map(|(name, _)| *name)
        .collect();
    let missing_read: Vec<String> = CONTRACT
        .iter()
        .filter_map(|(name, u)| match u {
            Use::Reads(what) if !has(name) => Some(format!("{name} (to {what})")),
            _ => None,
        })
        .collect();
    let hint = "add the states with these exact names to the project's board (docs/integrations.md, \"The board\")";
    if !missing_set.is_empty() {
        r.fail(
            check,
            format!(
                "project {project}: the board lacks {}, which orch sets: those state changes would be refused and dead-lettered",
                missing_set.join(", ")
            ),
            hint,
        );
    } else if !missing_read.is_empty() {
        r.warn(
            check,
            format!(
                "project {project}: the board lacks {}: nobody can ask for that from Plane",
                missing_read.join(", ")
            ),
            hint,
        );
    } else {
        r.ok(
            check,
            format!(
                "project {project}: every state of the board contract is there ({} known)",
                states.len()
            ),
        );
    }
}

/// Which tokens were found, so the API checks skip the ones that are missing.
#[derive(Debug, Default)]
struct Creds {
    plane: bool,
    gitea: bool,
    telegram: bool,
}

fn check_credentials(r: &mut Report, config: &Config) -> Creds {
    let mut creds = Creds::default();
    for (needed, secret, backend, found) in [
        (
            config.tracker == "plane",
            plane::TOKEN_SECRET,
            "tracker = \"plane\"",
            &mut creds.plane,
        ),
        (
            config.forge == "gitea",
            gitea::TOKEN_SECRET,
            "forge = \"gitea\"",
            &mut creds.gitea,
        ),
        (
            config.notifier == "telegram",
            telegram::TOKEN_SECRET,
            "notifier = \"telegram\"",
            &mut creds.telegram,
        ),
    ] {
        if !needed {
            continue;
        }
        let check = format!("credential {secret}");
        match crate::secrets::origin(secret) {
            Some(origin) => {
                *found = true;
                r.ok(&check, format!("present ({origin})"));
            }
            None => r.fail(
                &check,
                format!("absent, and {backend} needs it"),
                format!(
                    "set {} or the systemd credential {} (LoadCredential=, see systemd/README.md)",
                    crate::secrets::env_name(secret),
                    crate::secrets::credential_name(secret)
                ),
            ),
        }
    }
    let env = |k: &str| std::env::var(k).ok();
    for (needed, source) in [
        (config.tracker == "plane", Source::Plane),
        (config.forge == "gitea", Source::Gitea),
    ] {
        if !needed {
            continue;
        }
        let var = crate::webhooks::secret::env_var(source);
        let check = format!("webhook secret {}", source.as_str());
        match crate::webhooks::secret::webhook_secret_origin(source, &env) {
            Ok(Some(origin)) => r.ok(&check, format!("present ({origin})")),
            Ok(None) => r.warn(
                &check,
                "absent: `orch ingest-webhook` refuses every delivery from this source (exit 77)",
                format!(
                    "set {var} or the credential {}-webhook-secret, or rely on `orch reconcile` polling",
                    source.as_str()
                ),
            ),
            Err(e) => r.fail(&check, e.to_string(), "fix the credential file's permissions"),
        }
    }
    creds
}

fn check_apis(r: &mut Report, config: &Config, creds: &Creds) {
    let timeout = Duration::from_secs(config.http_timeout_s.clamp(1, 20));
    if config.tracker == "plane" && creds.plane {
        match PlaneClient::from_config(config, timeout) {
            Err(e) => r.fail(
                "api plane",
                format!("{e:#}"),
                "set plane_url and plane_workspace",
            ),
            Ok(client) => {
                let projects: Vec<(&String, &String)> = config
                    .repos
                    .iter()
                    .filter(|(_, repo)| !repo.plane_project.is_empty())
                    .map(|(name, repo)| (name, &repo.plane_project))
                    .collect();
                if projects.is_empty() {
                    r.warn(
                        "api plane",
                        "no repository declares plane_project",
                        "set [repos.<name>].plane_project to the Plane project id",
                    );
                }
                for (name, project) in projects {
                    let check = format!("api plane {name}");
                    match client.project_states(project) {
                        Ok(states) if states.is_empty() => r.warn(
                            &check,
                            format!("project {project} has no states"),
                            "check the project id",
                        ),
                        Ok(states) => check_board(r, &check, project, &states),
                        Err(e) => r.fail(
                            &check,
                            format!("{e:#}"),
                            "check plane_url, plane_workspace, the project id and the token's access",
                        ),
                    }
                }
            }
        }
    }
    if config.forge == "gitea" && creds.gitea {
        for name in config.repos.keys() {
            let check = format!("api gitea {name}");
            match GiteaForge::from_config(config, name, timeout).and_then(|f| f.check_access()) {
                Ok((full, true)) => r.ok(&check, format!("{full} readable and writable")),
                Ok((full, false)) => r.fail(
                    &check,
                    format!("{full}: the token cannot push"),
                    "give orch's Gitea user write access to the repository",
                ),
                Err(e) => r.fail(
                    &check,
                    format!("{e:#}"),
                    "check gitea_url, gitea_owner, the repository name and the token",
                ),
            }
        }
    }
    if config.notifier == "telegram" && creds.telegram {
        match Telegram::from_config(config, timeout).and_then(|t| Ok(t.get_me()?)) {
            Ok(user) => r.ok("api telegram", format!("bot @{user} (getMe)")),
            Err(e) => r.fail(
                "api telegram",
                format!("{e:#}"),
                "check telegram_api_url, telegram_chat_id and the bot token",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_output_is_parsed() {
        let text = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n\
                    /dev/vda1        61255492  20438680  37675428      36% /\n";
        assert_eq!(parse_df(text).expect("parse"), 37_675_428 * 1024);
        assert!(parse_df("Filesystem\n").is_err());
    }

    #[test]
    fn local_remotes_are_recognised() {
        assert!(is_local_remote("/srv/git/demo.git"));
        assert!(is_local_remote("../demo.git"));
        assert!(is_local_remote("file:///srv/git/demo.git"));
        assert!(!is_local_remote("https://git.example.com/o/r.git"));
        assert!(!is_local_remote("git@git.example.com:o/r.git"));
        assert!(is_local_remote("./a:b"));
    }
}
