//! Whether a Claude Code command line will be allowed to do a stage's work.
//!
//! In `-p` mode nobody can answer a permission prompt, so a Write, Edit or
//! Bash call that would prompt is refused, and the run still ends with
//! `subtype: "success"`. What grants the permission is one of: a permission
//! mode (`--permission-mode acceptEdits|bypassPermissions|auto|dontAsk`,
//! `--dangerously-skip-permissions`), an allow-list (`--allowedTools`), or
//! settings (`--settings`, `~/.claude/settings.json`, the project's
//! `.claude/settings.json`: `permissions.defaultMode` or `permissions.allow`).
//! As root, bypassing permissions makes the CLI refuse to start unless
//! `IS_SANDBOX=1` says it runs in a sandbox. `orch doctor` reports what this
//! module finds; the facts were observed on the CLI 2.1.332.

use std::path::Path;

/// The Claude Code version orch's tests run (`.ci/run` installs it).
pub const TESTED_VERSION: &str = "2.1.332";

/// The oldest version whose `result` event carries `api_error_status` and
/// `permission_denials`, which the verdict reads.
pub const MIN_VERSION: (u32, u32, u32) = (2, 1, 0);

/// What the command line grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The agent may edit files in its worktree and run commands.
    Works(String),
    /// It may edit files but not run commands (no tests): it can still work.
    EditsOnly(String),
    /// Every Write/Edit/Bash call will be refused.
    Refused(String),
    /// The CLI will refuse to start.
    WontStart(String),
}

/// What the flags and the user's settings grant to a `claude` command made
/// of `words`, run with `home` as `$HOME` by a process whose effective uid is
/// `euid`, with `is_sandbox` when `IS_SANDBOX` is set.
pub fn grant(words: &[String], home: Option<&Path>, euid: u32, is_sandbox: bool) -> Grant {
    let flag_value = |names: &[&str]| -> Option<String> {
        words.iter().enumerate().find_map(|(i, w)| {
            names.iter().find_map(|n| {
                if w == n {
                    words.get(i + 1).cloned()
                } else {
                    w.strip_prefix(&format!("{n}=")).map(str::to_owned)
                }
            })
        })
    };
    let has = |name: &str| words.iter().any(|w| w == name);
    let mode = flag_value(&["--permission-mode"])
        .or_else(|| has("--dangerously-skip-permissions").then(|| "bypassPermissions".to_owned()))
        .or_else(|| home.and_then(settings_mode));
    let allowed: Vec<String> = allowed_tools(words);
    let bypass = mode.as_deref() == Some("bypassPermissions");
    if bypass && euid == 0 && !is_sandbox {
        return Grant::WontStart(
            "bypassPermissions as root: Claude Code refuses to start unless IS_SANDBOX=1".into(),
        );
    }
    let bash = allowed
        .iter()
        .any(|t| t == "Bash" || t.starts_with("Bash("));
    match mode.as_deref() {
        Some("bypassPermissions") => Grant::Works("permissions bypassed".into()),
        Some("acceptEdits") if bash => {
            Grant::Works("acceptEdits (files inside the worktree) and Bash allowed".into())
        }
        Some("acceptEdits") => Grant::EditsOnly(
            "acceptEdits without Bash: the agent can edit files but cannot run the tests".into(),
        ),
        _ if allowed.iter().any(|t| t == "Write" || t == "Edit") => {
            Grant::Works(format!("allowed tools: {}", allowed.join(", ")))
        }
        _ if has("--settings") => Grant::Works("permissions from --settings (not checked)".into()),
        _ if home.is_some_and(settings_allow) => {
            Grant::Works("permissions.allow in ~/.claude/settings.json".into())
        }
        Some(other) => Grant::Refused(format!(
            "permission mode {other:?} does not let a headless agent write"
        )),
        None => Grant::Refused(
            "no permission mode, allow-list or settings: in -p mode every Write, Edit and Bash \
             call will be refused"
                .into(),
        ),
    }
}

/// The values of `--allowedTools` / `--allowed-tools` (variadic: every word
/// up to the next flag; each may be a comma- or space-separated list).
fn allowed_tools(words: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut taking = false;
    for w in words {
        if w.starts_with('-') {
            taking = w == "--allowedTools" || w == "--allowed-tools";
            if let Some(v) = w
                .strip_prefix("--allowedTools=")
                .or_else(|| w.strip_prefix("--allowed-tools="))
            {
                out.extend(split_tools(v));
            }
            continue;
        }
        if taking {
            out.extend(split_tools(w));
        }
    }
    out
}

fn split_tools(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn user_settings(home: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(home.join(".claude/settings.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn settings_mode(home: &Path) -> Option<String> {
    user_settings(home)?
        .pointer("/permissions/defaultMode")?
        .as_str()
        .map(str::to_owned)
}

fn settings_allow(home: &Path) -> bool {
    user_settings(home)
        .and_then(|s| s.pointer("/permissions/allow").cloned())
        .and_then(|a| a.as_array().cloned())
        .is_some_and(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .any(|t| t.starts_with("Write") || t.starts_with("Edit"))
        })
}

/// The version `claude --version` printed (`2.1.332 (Claude Code)`).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_default_command_works_as_root_without_a_sandbox() {
        let cmd = crate::config::DEFAULT_AGENT_CMD.replace('\\', "");
        assert!(matches!(
            grant(&words(&cmd), None, 0, false),
            Grant::Works(_)
        ));
    }

    #[test]
    fn no_permission_at_all_is_refused() {
        let g = grant(
            &words("claude -p --output-format stream-json"),
            None,
            1000,
            false,
        );
        assert!(matches!(g, Grant::Refused(_)), "{g:?}");
        let g = grant(
            &words("claude -p --permission-mode plan"),
            None,
            1000,
            false,
        );
        assert!(matches!(g, Grant::Refused(_)), "{g:?}");
    }

    #[test]
    fn bypass_as_root_needs_is_sandbox() {
        for cmd in [
            "claude -p --dangerously-skip-permissions",
            "claude -p --permission-mode bypassPermissions",
        ] {
            assert!(matches!(
                grant(&words(cmd), None, 0, false),
                Grant::WontStart(_)
            ));
            assert!(matches!(grant(&words(cmd), None, 0, true), Grant::Works(_)));
            assert!(matches!(
                grant(&words(cmd), None, 1000, false),
                Grant::Works(_)
            ));
        }
    }

    #[test]
    fn allow_lists_and_user_settings_count() {
        let g = grant(
            &words("claude -p --permission-mode acceptEdits"),
            None,
            0,
            false,
        );
        assert!(matches!(g, Grant::EditsOnly(_)), "{g:?}");
        let g = grant(
            &words("claude -p --allowedTools Bash,Edit,Write --max-turns 3"),
            None,
            0,
            false,
        );
        assert!(matches!(g, Grant::Works(_)), "{g:?}");
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".claude")).expect("mkdir");
        std::fs::write(
            home.path().join(".claude/settings.json"),
            r#"{"permissions": {"allow": ["Edit", "Write", "Bash(make test)"]}}"#,
        )
        .expect("write");
        let g = grant(&words("claude -p"), Some(home.path()), 0, false);
        assert!(matches!(g, Grant::Works(_)), "{g:?}");
        std::fs::write(
            home.path().join(".claude/settings.json"),
            r#"{"permissions": {"defaultMode": "bypassPermissions"}}"#,
        )
        .expect("write");
        let g = grant(&words("claude -p"), Some(home.path()), 0, false);
        assert!(matches!(g, Grant::WontStart(_)), "{g:?}");
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2.1.332 (Claude Code)\n"), Some((2, 1, 332)));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version(""), None);
    }
}
