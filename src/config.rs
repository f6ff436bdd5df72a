//! Settings: one TOML file, overridden key by key by `ORCH_<KEY>` environment
//! variables, with every setting and kill-switch of the seed system and its
//! default (docs/configuration.md lists them and says where the seeds disagree).
//!
//! Overrides are applied generically: the defaults are turned into a TOML
//! table, and for every top-level scalar key `k` the variable `ORCH_<K>` (if
//! set) is parsed with the type of the default. So a new setting gets its
//! environment override, its type check and its error message for free.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::error::OrchError;

/// The repository that hosts orch itself: its production deploy waits for a
/// human "Confirm Deploy" and its merges always go through the merge gate.
pub const DEFAULT_SELF_HOSTING_REPO: &str = "orchestrator";

/// The default agent: Claude Code headless, streaming JSON events so the
/// outcome is read from the final `result` event, with a turn and budget cap
/// and a session id per run. The prompt is the task file, on stdin.
///
/// Permissions: in `-p` mode nobody can answer a prompt, so without a mode
/// every Write, Edit and Bash call is refused and the run still "succeeds".
/// `acceptEdits` lets the agent create and edit files inside its working
/// directory (the task's worktree) and nowhere else; `--allowedTools Bash`
/// lets it run commands (the tests). Unlike `bypassPermissions` this works
/// as root without claiming to be in a sandbox. docs/claude-code.md says why.
pub const DEFAULT_AGENT_CMD: &str = "claude -p --output-format stream-json --verbose \
--permission-mode acceptEdits --allowedTools Bash \
--max-turns \"$ORCH_MAX_TURNS\" --max-budget-usd \"$ORCH_MAX_BUDGET_USD\" \
--session-id \"$ORCH_SESSION_ID\" < \"$ORCH_TASK_FILE\"";

/// How a run's outcome is read (`agent_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentProtocol {
    /// The final stream-json `result` event decides.
    Claude,
    /// The exit code decides.
    ExitCode,
    /// Claude when the run's output is a Claude Code stream (an `init` or
    /// `result` event), else the exit code: decided by what the command
    /// printed, not by how it is spelled.
    Auto,
}

/// Everything `orch` can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// SQLite database file; empty = `<state dir>/orch.db`. Unused when
    /// `db_url` names a PostgreSQL database.
    pub db_path: String,
    /// PostgreSQL database shared by workers on several hosts
    /// (`postgres://user@host/db`); empty = the SQLite file `db_path`.
    pub db_url: String,
    /// Root of the clone cache and the per-task worktrees; empty = `<state dir>/repos`.
    pub repos_dir: String,
    /// How long a process waits for the database write lock, in milliseconds.
    pub busy_timeout_ms: u64,

    /// Maximum number of `running` jobs across all repositories.
    pub max_concurrency: u32,
    /// Attempts a new job gets before a failure is final.
    pub max_attempts: u32,
    /// First delay of the transient-failure backoff, in seconds (doubles each time, ±20 % jitter).
    pub transient_backoff_base_s: u64,
    /// Cap of the transient-failure backoff, in seconds.
    pub transient_backoff_max_s: u64,
    /// Transient failures a job may have before it fails for good.
    pub max_transient_attempts: u32,
    /// Serial gate: one running job per repository, and deploy stages wait while another task holds the merge lease.
    pub serial_gate_enabled: bool,
    /// Task-dependency gate: a task's jobs wait for the task it depends on to be `done`, and run one at a time.
    pub task_deps_enabled: bool,

    /// The agent command of every stage, run with `sh -c` in the task's worktree;
    /// the task comes through `ORCH_*` environment variables and `$ORCH_TASK_FILE`,
    /// never through the command text. `ORCH_AGENT_CMD` overrides it and every
    /// per-stage command.
    pub agent_cmd: String,
    /// Per-stage agent commands, e.g. `review = "…"`; a stage not listed uses `agent_cmd`.
    pub agent_cmds: BTreeMap<String, String>,
    /// How a run's outcome is read: `claude` (the final stream-json `result` event
    /// decides), `exit-code`, or `auto` (claude when the run printed a Claude Code
    /// stream-json stream, whatever the command looks like).
    pub agent_protocol: String,
    /// `--max-turns` handed to Claude Code (as `$ORCH_MAX_TURNS`).
    pub agent_max_turns: u32,
    /// Per-run cost cap in USD, handed to Claude Code as `--max-budget-usd`
    /// (`$ORCH_MAX_BUDGET_USD`, lowered to the task's remaining budget).
    pub agent_max_budget_usd: String,
    /// Cost cap of one task in USD, across every stage and retry; 0 = no cap. A run
    /// starts only when the remaining budget covers the per-run cap (below), so a
    /// task stops before a run that could exceed it.
    pub task_budget_usd: f64,
    /// Wall-clock limit of one test run by `check_ci_green`/`check_tests_local`, in seconds.
    pub test_timeout_s: u64,
    /// Command run in the worktree by `check_staging_image_fresh`; empty = the check passes as not configured.
    pub staging_image_check_cmd: String,
    /// Wall-clock limit of one agent run, in seconds.
    pub agent_timeout_s: u64,
    /// An agent that prints nothing for this many seconds is stopped; 0 disables.
    pub agent_stall_timeout_s: u64,
    /// Grace between SIGTERM and SIGKILL of an agent's process group, in seconds.
    pub agent_kill_grace_seconds: u64,
    /// Bytes a command's log (agent, test suite, probe) may hold before it is
    /// moved to `<log>.1` and restarted; about twice this is kept. 0 = no cap.
    pub log_max_bytes: u64,
    /// Stop whole process groups (tree kill); false kills only the direct child.
    pub subprocess_tree_kill_enabled: bool,
    /// Run agents and repository test commands in a bubblewrap sandbox:
    /// `auto` (when bwrap works here, else unsandboxed with a warning),
    /// `bwrap` (required: a run fails to start without it) or `off`.
    pub sandbox: String,
    /// The sandbox's network: `host` (shared, the agent reaches its API) or
    /// `none` (a loopback of its own).
    pub sandbox_network: String,
    /// Colon-separated paths shown read-only inside the sandbox though they
    /// lie in a hidden directory (the real HOME, the state directory), e.g. a
    /// toolchain installed under HOME.
    pub sandbox_expose: String,
    /// Colon-separated paths the sandbox may write besides the worktree
    /// (e.g. a shared build cache).
    pub sandbox_writable: String,
    /// A directory copied into each agent run's private HOME (the agent's
    /// own settings and login, e.g. a prepared `.claude/`); empty = none.
    pub sandbox_home_seed: String,

    /// Reaper kill-switch: false leaves running jobs alone (only lease and sanitize sweeps run).
    pub reaper_enabled: bool,
    /// Backstop: a job running longer than this is stopped and reaped even if its owner lives.
    pub reaper_max_running_s: u64,
    /// Grace for a finalizer after its agent exited, in seconds.
    pub reaper_finalize_grace_s: u64,
    /// Grace for a job claimed by `orch claim` whose worker never took over, in seconds.
    pub reaper_start_grace_s: u64,
    /// A live finalizer (held owner lock) is never reaped; false restores the plain grace rule.
    pub reaper_finalizer_liveness_enabled: bool,
    /// Heal `queued` rows that still carry run ownership (ORCH-126).
    pub impossible_queued_sanitize_enabled: bool,

    /// Reclaim merge leases whose holder can no longer use them.
    pub lease_reclaim_enabled: bool,
    /// Merge-lease TTL backstop, in seconds; must exceed the re-test timeout.
    pub merge_lock_timeout_s: u64,
    /// Merge gate kill-switch.
    pub merge_gate_enabled: bool,
    /// Comma-separated repositories under the merge gate; empty = the self-hosting repo only.
    pub merge_gate_repos: String,
    /// Timeout of the re-test run after a rebase, in seconds.
    pub merge_retest_timeout_s: u64,
    /// Skip the re-test when the rebase was a proven no-op.
    pub merge_retest_skip_when_current_enabled: bool,
    /// In-place retries of a re-test that timed out before one alert is sent.
    pub merge_infra_retry_max: u32,

    /// Name of the self-hosting repository.
    pub self_hosting_repo: String,
    /// The self-hosting repo's production deploy waits for "Confirm Deploy".
    pub deploy_require_manual_approve: bool,
    /// Command that performs the self-hosting production deploy (run detached).
    pub deploy_hook_cmd: String,
    /// Roll a non-self-hosting deploy back automatically on post-deploy degradation.
    pub post_deploy_auto_rollback: bool,
    /// Base URL of production: a repository's `health_url` that is a path
    /// (starts with `/`) is resolved against it; also given to
    /// `health_check_cmd` as `$ORCH_POST_DEPLOY_BASE_URL`.
    pub post_deploy_base_url: String,
    /// Post-deploy monitor kill-switch: false arms no monitor after `done`.
    pub post_deploy_enabled: bool,
    /// How long production is watched after `done`, in seconds.
    pub post_deploy_window_s: u64,
    /// How many checks are spread over the window.
    pub post_deploy_checks: u32,
    /// Time limit of one probe (HTTP request or command), in seconds.
    pub post_deploy_probe_timeout_s: u64,
    /// Failed checks that make a deploy degraded (and end the window early).
    pub post_deploy_max_failures: u32,

    /// Reconciler kill-switch.
    pub reconcile_enabled: bool,
    /// JSON object of per-stage reconcile grace overrides in seconds, e.g. `{"review": 600}`.
    pub reconcile_grace_overrides_json: String,
    /// Notify when the reconciler unblocks a task.
    pub reconcile_notify_unblock: bool,
    /// The reconciler skips escalated tasks and tasks in Blocked / Needs Input.
    pub reconcile_skip_blocked_enabled: bool,

    /// STOP status kill-switch (also gates the relaunch-hole close).
    pub stop_status_enabled: bool,
    /// Comma-separated repositories STOP applies to; empty = all.
    pub stop_status_repos: String,

    /// Tracker backend: `local` (the database) or `plane`.
    pub tracker: String,
    /// Forge backend: `local` (a bare git repository) or `gitea`.
    pub forge: String,
    /// Notifier backend: `log` or `telegram`.
    pub notifier: String,
    /// Plane base URL, e.g. `https://plane.example.com`.
    pub plane_url: String,
    /// Plane workspace slug.
    pub plane_workspace: String,
    /// Gitea base URL, e.g. `https://git.example.com`.
    pub gitea_url: String,
    /// Gitea owner (user or organisation) of the repositories.
    pub gitea_owner: String,
    /// Telegram chat that receives notifications.
    pub telegram_chat_id: String,
    /// Telegram Bot API base URL.
    pub telegram_api_url: String,
    /// Plane user id of orch's own API user: events it caused are ignored,
    /// and a Confirm Deploy it set is refused.
    pub plane_bot_user_id: String,
    /// Timeout of one HTTP request to Plane, Gitea or Telegram, in seconds.
    pub http_timeout_s: u64,

    /// Largest webhook body `orch ingest-webhook` accepts, in bytes; a larger one is refused unread (exit 65, HTTP 413).
    pub webhook_max_body_bytes: u64,
    /// `orch ingest-webhook --inetd`: the whole request must arrive within this many seconds (else HTTP 408).
    pub webhook_read_timeout_s: u64,

    /// Repositories orch works on, by name.
    pub repos: BTreeMap<String, RepoConfig>,
}

/// One repository declared in the config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoConfig {
    /// Where to clone from and push to (a path to a bare repository, or a URL).
    pub remote: String,
    /// The branch features merge into.
    pub default_branch: String,
    /// Command run in the worktree to test the repository (shell syntax, run with `sh -c`).
    pub test_command: String,
    /// Prefix of generated work-item ids, e.g. `ORCH` gives `ORCH-12`.
    pub work_item_prefix: String,
    /// Plane project id whose issues belong to this repository.
    pub plane_project: String,
    /// Post-deploy probe: a URL answered with 2xx when production is healthy;
    /// a path (`/health`) is resolved against `post_deploy_base_url`. Empty = none.
    pub health_url: String,
    /// Post-deploy probe: a command (`sh -c`, in the task's worktree) that
    /// exits 0 when production is healthy. Empty = none.
    pub health_check_cmd: String,
    /// Command run (`sh -c`, in the task's worktree) when a deploy of this
    /// repository degrades and `post_deploy_auto_rollback` is on; never for
    /// the self-hosting repository. Empty = alert only.
    pub rollback_cmd: String,
}

impl RepoConfig {
    /// Whether a post-deploy probe is configured (`health_url` or `health_check_cmd`).
    pub fn has_post_deploy_probe(&self) -> bool {
        !self.health_url.trim().is_empty() || !self.health_check_cmd.trim().is_empty()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db_path: String::new(),
            db_url: String::new(),
            repos_dir: String::new(),
            busy_timeout_ms: 10_000,
            max_concurrency: 1,
            max_attempts: 2,
            transient_backoff_base_s: 30,
            transient_backoff_max_s: 1800,
            max_transient_attempts: 5,
            serial_gate_enabled: true,
            task_deps_enabled: true,
            agent_cmd: DEFAULT_AGENT_CMD.to_owned(),
            agent_cmds: BTreeMap::new(),
            agent_protocol: "auto".to_owned(),
            agent_max_turns: 50,
            agent_max_budget_usd: "5".to_owned(),
            test_timeout_s: 900,
            task_budget_usd: 20.0,
            staging_image_check_cmd: String::new(),
            agent_timeout_s: 3600,
            agent_stall_timeout_s: 900,
            agent_kill_grace_seconds: 10,
            log_max_bytes: 64 * 1024 * 1024,
            sandbox: "auto".to_owned(),
            sandbox_network: "host".to_owned(),
            sandbox_expose: String::new(),
            sandbox_writable: String::new(),
            sandbox_home_seed: String::new(),
            subprocess_tree_kill_enabled: true,
            reaper_enabled: true,
            reaper_max_running_s: 5400,
            reaper_finalize_grace_s: 300,
            reaper_start_grace_s: 30,
            reaper_finalizer_liveness_enabled: true,
            impossible_queued_sanitize_enabled: true,
            lease_reclaim_enabled: true,
            merge_lock_timeout_s: 3600,
            merge_gate_enabled: true,
            merge_gate_repos: String::new(),
            merge_retest_timeout_s: 900,
            merge_retest_skip_when_current_enabled: true,
            merge_infra_retry_max: 3,
            self_hosting_repo: DEFAULT_SELF_HOSTING_REPO.to_owned(),
            deploy_require_manual_approve: true,
            deploy_hook_cmd: String::new(),
            post_deploy_auto_rollback: false,
            post_deploy_base_url: "http://localhost:8500".to_owned(),
            post_deploy_enabled: true,
            post_deploy_window_s: 900,
            post_deploy_checks: 30,
            post_deploy_probe_timeout_s: 10,
            post_deploy_max_failures: 3,
            reconcile_enabled: true,
            reconcile_grace_overrides_json: String::new(),
            reconcile_notify_unblock: true,
            reconcile_skip_blocked_enabled: true,
            stop_status_enabled: true,
            stop_status_repos: String::new(),
            tracker: "local".to_owned(),
            forge: "local".to_owned(),
            notifier: "log".to_owned(),
            plane_url: String::new(),
            plane_workspace: String::new(),
            gitea_url: String::new(),
            gitea_owner: String::new(),
            telegram_chat_id: String::new(),
            telegram_api_url: "https://api.telegram.org".to_owned(),
            plane_bot_user_id: String::new(),
            http_timeout_s: 30,
            webhook_max_body_bytes: 1024 * 1024,
            webhook_read_timeout_s: 10,
            repos: BTreeMap::new(),
        }
    }
}

/// Settings of earlier versions that no longer act, and why (docs/configuration.md,
/// "Removed settings"). A config file that still sets one loads, with one
/// warning line per key: an old file must not stop orch, and a key that is
/// silently accepted would look like it still does something.
pub const REMOVED_SETTINGS: &[(&str, &str)] = &[
    (
        "staging_infra_tolerance_enabled",
        "orch reads the staging verdict from the deploy-staging artifact; waiving sandbox-only checks is the job of the staging check that writes it",
    ),
    (
        "coverage_run_timeout_s",
        "orch runs no coverage measurement",
    ),
    (
        "staging",
        "nothing in orch behaves differently on a staging instance (it is its own state directory and config)",
    ),
    (
        "host_repos_dir",
        "the deploy hook gets the task and commit as ORCH_* variables; a host path belongs in deploy_hook_cmd",
    ),
    (
        "reaper_interval_s",
        "orch reap runs from a timer; its period is the timer's (orch-reap.timer, OnUnitActiveSec)",
    ),
];

/// Environment variables that look like settings but are not (they are read elsewhere).
const NON_SETTING_VARS: &[&str] = &["ORCH_STATE_DIR", "ORCH_CONFIG"];

impl Config {
    /// Load the config file (if any) and apply `ORCH_*` overrides from `env`.
    ///
    /// `file` is `Some` when the user named a file: then it must exist.
    /// Otherwise `fallback` is read if it exists.
    pub fn load(
        file: Option<&Path>,
        fallback: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        // It names the commands orch runs: only its user (or root) may write it.
        crate::private_state::check_config_file(file.unwrap_or(fallback))?;
        let (path, text) = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    OrchError::Config(format!("cannot read config file {}: {e}", p.display()))
                })?;
                (Some(p.to_path_buf()), text)
            }
            None => match std::fs::read_to_string(fallback) {
                Ok(text) => (Some(fallback.to_path_buf()), text),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    (None, String::new())
                }
                Err(e) => {
                    return Err(OrchError::Config(format!(
                        "cannot read config file {}: {e}",
                        fallback.display()
                    ))
                    .into());
                }
            },
        };
        let origin = path
            .as_deref()
            .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| OrchError::Config(format!("{origin}: {}", one_line(&e.to_string()))))?;
        for (key, why) in REMOVED_SETTINGS {
            if table.remove(*key).is_some() {
                log::warn!(
                    "{origin}: setting `{key}` was removed and is ignored: {why} (see docs/configuration.md, \"Removed settings\")"
                );
            }
        }
        apply_env_overrides(&mut table, env)?;
        // ORCH_AGENT_CMD is the one command for every stage (tests and CI use it).
        if env("ORCH_AGENT_CMD").is_some() {
            table.remove("agent_cmds");
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    OrchError::Config(format!("{origin}: {}", one_line(&e.to_string())))
                })?;
        config.validate()?;
        Ok(config)
    }

    /// With `db_url` (PostgreSQL: workers on several hosts) every host
    /// clones, pushes and merges through each repository's remote, so a
    /// remote that is a path on this host is refused: the others cannot
    /// reach it. A URL says where every host finds it (`ssh://`, `https://`,
    /// scp-like `host:path`, or `file://` on a mount every host shares).
    fn remote_on_one_host(&self) -> Option<String> {
        if self.db_url.trim().is_empty() {
            return None;
        }
        let (name, repo) = self.repos.iter().find(|(_, r)| is_host_path(&r.remote))?;
        Some(format!(
            "repository {name}: remote {:?} is a path on this host, but db_url shares the queue with workers on other hosts that cannot reach it; give a URL every host can use (ssh://, https://, host:path, or file:// on a shared mount)",
            repo.remote
        ))
    }

    /// Check values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), OrchError> {
        let bad = |msg: String| Err(OrchError::Config(msg));
        if self.max_concurrency == 0 {
            return bad("max_concurrency must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        if self.transient_backoff_base_s > self.transient_backoff_max_s {
            return bad(format!(
                "transient_backoff_base_s ({}) must not exceed transient_backoff_max_s ({})",
                self.transient_backoff_base_s, self.transient_backoff_max_s
            ));
        }
        // The budget invariant of the seeds (ORCH-113 TC-07): the backstop must
        // never fire while a legitimate finalization is still re-testing (orch
        // runs no coverage measurement, so the seeds' coverage term is gone).
        let budget = self.merge_retest_timeout_s + self.reaper_finalize_grace_s;
        if self.reaper_max_running_s <= budget {
            return bad(format!(
                "reaper_max_running_s ({}) must exceed merge_retest_timeout_s + reaper_finalize_grace_s ({budget})",
                self.reaper_max_running_s
            ));
        }
        if self.merge_lock_timeout_s <= self.merge_retest_timeout_s {
            return bad(format!(
                "merge_lock_timeout_s ({}) must exceed merge_retest_timeout_s ({}): the lease TTL must never expire under a running re-test",
                self.merge_lock_timeout_s, self.merge_retest_timeout_s
            ));
        }
        let agent_budget = self.agent_timeout_s + self.agent_kill_grace_seconds;
        if self.reaper_max_running_s <= agent_budget {
            return bad(format!(
                "reaper_max_running_s ({}) must exceed agent_timeout_s + agent_kill_grace_seconds ({agent_budget})",
                self.reaper_max_running_s
            ));
        }
        if self.webhook_max_body_bytes == 0 {
            return bad("webhook_max_body_bytes must be at least 1".into());
        }
        if self.webhook_read_timeout_s == 0 {
            return bad("webhook_read_timeout_s must be at least 1".into());
        }
        if self.run_budget_usd().is_none() {
            return bad(format!(
                "agent_max_budget_usd = {:?}: expected a positive number of USD",
                self.agent_max_budget_usd
            ));
        }
        if !self.task_budget_usd.is_finite() || self.task_budget_usd < 0.0 {
            return bad("task_budget_usd must be a non-negative number (0 = no cap)".into());
        }
        if self.agent_cmd.trim().is_empty() {
            return bad("agent_cmd must not be empty".into());
        }
        for stage in self.agent_cmds.keys() {
            match stage.parse::<crate::pipeline::Stage>() {
                Ok(s) if s.agent().is_some() => {}
                _ => {
                    return bad(format!(
                        "[agent_cmds]: {stage:?} is not a stage with an agent"
                    ));
                }
            }
        }
        for (key, value, allowed) in [
            (
                "agent_protocol",
                &self.agent_protocol,
                &["auto", "claude", "exit-code"][..],
            ),
            ("tracker", &self.tracker, &["local", "plane"][..]),
            ("sandbox", &self.sandbox, &["auto", "bwrap", "off"][..]),
            (
                "sandbox_network",
                &self.sandbox_network,
                &["host", "none"][..],
            ),
            ("forge", &self.forge, &["local", "gitea"][..]),
            ("notifier", &self.notifier, &["log", "telegram"][..]),
        ] {
            if !allowed.contains(&value.as_str()) {
                return bad(format!(
                    "{key} = {value:?}: expected one of {}",
                    allowed.join(", ")
                ));
            }
        }
        if !self.reconcile_grace_overrides_json.trim().is_empty() {
            serde_json::from_str::<BTreeMap<String, u64>>(&self.reconcile_grace_overrides_json)
                .map_err(|e| {
                    OrchError::Config(format!(
                        "reconcile_grace_overrides_json: expected a JSON object of stage to seconds: {e}"
                    ))
                })?;
        }
        for (key, value) in [
            ("sandbox_expose", &self.sandbox_expose),
            ("sandbox_writable", &self.sandbox_writable),
            ("sandbox_home_seed", &self.sandbox_home_seed),
        ] {
            if let Some(p) = std::env::split_paths(value.as_str())
                .find(|p| !p.as_os_str().is_empty() && !p.is_absolute())
            {
                return bad(format!("{key}: {} is not an absolute path", p.display()));
            }
        }
        if self.post_deploy_checks == 0 {
            return bad("post_deploy_checks must be at least 1".into());
        }
        if self.post_deploy_probe_timeout_s == 0 {
            return bad("post_deploy_probe_timeout_s must be at least 1".into());
        }
        if self.post_deploy_max_failures == 0 {
            return bad("post_deploy_max_failures must be at least 1".into());
        }
        let base = self.post_deploy_base_url.trim();
        if !base.is_empty() && !is_http_url(base) {
            return bad(format!(
                "post_deploy_base_url = {:?}: expected an http:// or https:// URL",
                self.post_deploy_base_url
            ));
        }
        self.validate_repos(base)
    }

    /// The `[repos.*]` tables: names, remotes (reachable from every host
    /// with `db_url`), Plane projects and health URLs (a path needs
    /// `post_deploy_base_url`, given as `base`).
    fn validate_repos(&self, base: &str) -> Result<(), OrchError> {
        let bad = |msg: String| Err(OrchError::Config(msg));
        if let Some(msg) = self.remote_on_one_host() {
            return bad(msg);
        }
        for (name, repo) in &self.repos {
            crate::names::validate_repo_name(name)
                .map_err(|e| OrchError::Config(format!("[repos.{name}]: {e}")))?;
            if repo.remote.trim().is_empty() {
                return bad(format!("[repos.{name}]: remote must be set"));
            }
            if !repo.plane_project.is_empty() {
                crate::names::validate_plane_id(&repo.plane_project).map_err(|e| {
                    OrchError::Config(format!("[repos.{name}]: plane_project: {e}"))
                })?;
            }
            let url = repo.health_url.trim();
            if !url.is_empty() && !url.starts_with('/') && !is_http_url(url) {
                return bad(format!(
                    "[repos.{name}]: health_url = {url:?}: expected an http(s):// URL or a path starting with /"
                ));
            }
            if url.starts_with('/') && base.is_empty() {
                return bad(format!(
                    "[repos.{name}]: health_url = {url:?} is a path, but post_deploy_base_url is empty"
                ));
            }
        }
        Ok(())
    }

    /// The declared repository `name`, or a usage error naming the known ones.
    pub fn repo(&self, name: &str) -> Result<&RepoConfig, OrchError> {
        self.repos.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.repos.keys().map(String::as_str).collect();
            OrchError::Usage(if known.is_empty() {
                format!("unknown repo {name:?}: no repositories are declared in the config")
            } else {
                format!("unknown repo {name:?} (declared: {})", known.join(", "))
            })
        })
    }

    /// The per-run cost cap in USD.
    pub fn run_budget_usd(&self) -> Option<f64> {
        self.agent_max_budget_usd
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
    }

    /// The agent command for `stage`, and how its outcome is read.
    pub fn agent_command(&self, stage: crate::pipeline::Stage) -> (&str, AgentProtocol) {
        let cmd = self
            .agent_cmds
            .get(stage.as_str())
            .map_or(self.agent_cmd.as_str(), String::as_str);
        let protocol = match self.agent_protocol.as_str() {
            "claude" => AgentProtocol::Claude,
            "exit-code" => AgentProtocol::ExitCode,
            _ => AgentProtocol::Auto,
        };
        (cmd, protocol)
    }

    /// Whether the merge gate applies to `repo` (`merge_gate_repos`, else the self-hosting repo).
    pub fn merge_gate_applies(&self, repo: &str) -> bool {
        self.merge_gate_enabled && self.merge_gate_scope().iter().any(|r| r == repo)
    }

    /// Repositories under the merge gate and proactive lease reclaim.
    pub fn merge_gate_scope(&self) -> Vec<String> {
        let listed = csv(&self.merge_gate_repos);
        if listed.is_empty() {
            vec![self.self_hosting_repo.clone()]
        } else {
            listed
        }
    }

    /// The URL the post-deploy monitor probes for `repo`: its `health_url`,
    /// resolved against `post_deploy_base_url` when it is a path; `None`
    /// when the repository has no `health_url`.
    pub fn post_deploy_url(&self, repo: &RepoConfig) -> Option<String> {
        let url = repo.health_url.trim();
        if url.is_empty() {
            None
        } else if url.starts_with('/') {
            Some(format!(
                "{}{url}",
                self.post_deploy_base_url.trim().trim_end_matches('/')
            ))
        } else {
            Some(url.to_owned())
        }
    }

    /// Whether STOP applies to `repo` (kill-switch and `stop_status_repos`, empty = all).
    pub fn stop_applies(&self, repo: &str) -> bool {
        let scope = csv(&self.stop_status_repos);
        self.stop_status_enabled && (scope.is_empty() || scope.iter().any(|r| r == repo))
    }
}

/// Split a comma-separated setting into trimmed, non-empty items.
pub fn csv(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_http_url(s: &str) -> bool {
    let s = s.trim();
    ["http://", "https://"]
        .iter()
        .any(|p| s.len() > p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a git remote is a path on this host rather than a URL: no
/// `scheme://` and no scp-like `host:path` (git reads a colon before the
/// first slash as a host).
fn is_host_path(remote: &str) -> bool {
    let remote = remote.trim();
    if remote.contains("://") {
        return false;
    }
    match remote.find(':') {
        Some(colon) => remote[..colon].contains('/'),
        None => true,
    }
}

/// Overlay `ORCH_<KEY>` variables on the top-level scalar settings of `table`.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let defaults = toml::Table::try_from(Config::default()).context("serialising defaults")?;
    for (key, default) in &defaults {
        let var = format!("ORCH_{}", key.to_ascii_uppercase());
        if NON_SETTING_VARS.contains(&var.as_str()) {
            continue;
        }
        let Some(raw) = env(&var) else { continue };
        let value = match default {
            toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                _ => {
                    return Err(OrchError::Config(format!(
                        "{var}={raw:?}: expected true or false"
                    ))
                    .into());
                }
            },
            toml::Value::Integer(_) => match raw.trim().parse::<i64>() {
                Ok(n) if n >= 0 => toml::Value::Integer(n),
                _ => {
                    return Err(OrchError::Config(format!(
                        "{var}={raw:?}: expected a non-negative integer"
                    ))
                    .into());
                }
            },
            toml::Value::Float(_) => match raw.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => toml::Value::Float(x),
                _ => {
                    return Err(OrchError::Config(format!(
                        "{var}={raw:?}: expected a non-negative number"
                    ))
                    .into());
                }
            },
            toml::Value::String(_) => toml::Value::String(raw),
            // Tables (repos) and other shapes are configured in the file only.
            _ => continue,
        };
        table.insert(key.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(text: &str, vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("orch.toml");
        std::fs::write(&path, text)?;
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Config::load(Some(&path), &path, &env)
    }

    #[test]
    fn on_postgresql_a_remote_must_be_reachable_from_every_host() {
        let repo = |remote: &str| format!("[repos.demo]\nremote = \"{remote}\"\n");
        let url = [("ORCH_DB_URL", "postgres://orch@db.example/orch")];
        let err = load_with(&repo("/srv/git/demo.git"), &url).expect_err("a host path");
        assert!(
            err.to_string()
                .contains("remote \"/srv/git/demo.git\" is a path on this host"),
            "{err:#}"
        );
        for remote in [
            "ssh://git@forge/demo.git",
            "https://forge.example/demo.git",
            "git@forge:demo.git",
            "file:///shared/git/demo.git",
        ] {
            load_with(&repo(remote), &url).unwrap_or_else(|e| panic!("{remote}: {e:#}"));
        }
        // On SQLite (one host) a path is what the embedded forge uses.
        load_with(&repo("/srv/git/demo.git"), &[]).expect("a path on one host");
        assert!(is_host_path("./demo.git") && is_host_path("../x:y/demo.git"));
    }

    #[test]
    fn defaults_hold_the_budget_invariant_of_the_seeds() {
        let c = Config::default();
        assert_eq!(c.reaper_finalize_grace_s, 300);
        assert_eq!(c.reaper_max_running_s, 5400);
        assert_eq!(c.merge_retest_timeout_s, 900);
        assert!(c.reaper_max_running_s > c.merge_retest_timeout_s + c.reaper_finalize_grace_s);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn env_overrides_file_and_is_typed() {
        let c = load_with(
            "max_concurrency = 3\nreaper_enabled = true\n",
            &[
                ("ORCH_MAX_CONCURRENCY", "7"),
                ("ORCH_REAPER_ENABLED", "false"),
            ],
        )
        .expect("valid");
        assert_eq!(c.max_concurrency, 7);
        assert!(!c.reaper_enabled);
    }

    #[test]
    fn invalid_env_value_names_the_variable() {
        let err = load_with("", &[("ORCH_MAX_CONCURRENCY", "many")]).expect_err("invalid");
        assert!(err.to_string().contains("ORCH_MAX_CONCURRENCY"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = load_with("max_concurency = 3\n", &[]).expect_err("typo");
        assert!(err.to_string().contains("max_concurency"), "{err}");
    }

    #[test]
    fn removed_settings_load_and_act_on_nothing() {
        let text: String = REMOVED_SETTINGS
            .iter()
            .map(|(k, _)| match *k {
                "staging" | "staging_infra_tolerance_enabled" => format!("{k} = true\n"),
                "host_repos_dir" => format!("{k} = \"/srv/repos\"\n"),
                _ => format!("{k} = 1\n"),
            })
            .collect();
        let c = load_with(&text, &[]).expect("an old config still loads");
        let defaults = toml::Table::try_from(Config::default()).expect("defaults");
        for (k, _) in REMOVED_SETTINGS {
            assert!(
                !defaults.contains_key(*k),
                "{k} is both removed and a setting"
            );
        }
        c.validate().expect("valid");
    }

    #[test]
    fn broken_budget_is_refused() {
        let err = load_with("reaper_max_running_s = 1000\n", &[]).expect_err("budget");
        assert!(err.to_string().contains("reaper_max_running_s"), "{err}");
    }

    #[test]
    fn merge_gate_scope_defaults_to_self_hosting_repo() {
        let mut c = Config::default();
        assert!(c.merge_gate_applies("orchestrator"));
        assert!(!c.merge_gate_applies("enduro-trails"));
        c.merge_gate_repos = " enduro-trails , x".into();
        assert!(c.merge_gate_applies("enduro-trails"));
        assert!(!c.merge_gate_applies("orchestrator"));
    }

    #[test]
    fn post_deploy_url_resolves_paths_against_the_base_url() {
        let mut c = Config::default();
        let mut r = RepoConfig::default();
        assert!(!r.has_post_deploy_probe());
        assert_eq!(c.post_deploy_url(&r), None);
        r.health_url = "/health".into();
        assert!(r.has_post_deploy_probe());
        assert_eq!(
            c.post_deploy_url(&r).as_deref(),
            Some("http://localhost:8500/health")
        );
        c.post_deploy_base_url = "https://prod.example.com/".into();
        assert_eq!(
            c.post_deploy_url(&r).as_deref(),
            Some("https://prod.example.com/health")
        );
        r.health_url = "http://10.0.0.1:9/ok".into();
        assert_eq!(
            c.post_deploy_url(&r).as_deref(),
            Some("http://10.0.0.1:9/ok")
        );
        r.health_url = String::new();
        r.health_check_cmd = "true".into();
        assert!(r.has_post_deploy_probe());
    }

    #[test]
    fn bad_post_deploy_settings_are_refused() {
        let err = load_with("post_deploy_checks = 0\n", &[]).expect_err("zero");
        assert!(err.to_string().contains("post_deploy_checks"), "{err}");
        let err = load_with(
            "[repos.x]\nremote = \"/r\"\nhealth_url = \"localhost/health\"\n",
            &[],
        )
        .expect_err("no scheme");
        assert!(err.to_string().contains("health_url"), "{err}");
    }

    #[test]
    fn stop_scope_empty_means_all() {
        let mut c = Config::default();
        assert!(c.stop_applies("anything"));
        c.stop_status_repos = "enduro-trails".into();
        assert!(c.stop_applies("enduro-trails"));
        assert!(!c.stop_applies("orchestrator"));
        c.stop_status_enabled = false;
        assert!(!c.stop_applies("enduro-trails"));
    }
}
