//! Keeping repository-controlled commands out of orch's own git.
//!
//! An agent runs arbitrary code as orch's user inside its task's worktree, so
//! it can write the clone's shared git directory (`<repo>/clone/.git`, the
//! common dir of every task's worktree): its `config`, `hooks/`,
//! `info/attributes`, per-worktree `config.worktree` files. Many git settings
//! name a command git runs on its own: `core.fsmonitor` (on every index
//! refresh), hooks and `core.hooksPath`, `filter.<x>.clean/smudge/process`,
//! `diff.external` and `diff.<x>.textconv/command`, `merge.<x>.driver`,
//! `core.sshCommand`, `core.editor`, `core.pager`, `core.askPass`,
//! `credential.helper`, `gpg.program`, `core.gitProxy`, remote helpers
//! (`remote.<x>.vcs`, `ext::` URLs), `remote.<x>.uploadpack` (run locally for a
//! path remote), and `include.path` / `includeIf` can pull any of them in from
//! a file of the agent's choosing. Without a guard, orch's later git calls —
//! fetch, worktree add, add, commit, rebase, push, in later unrelated tasks —
//! would run the agent's command outside any timeout.
//!
//! Two layers, because neither is enough alone:
//!
//! 1. [`apply`]: every git process orch starts gets `GIT_CONFIG_COUNT`
//!    overrides and environment variables that git ranks above any repository
//!    or worktree config, and transfers get `--upload-pack` / `--receive-pack`
//!    on the command line ([`subcommand_options`]: for those two the first
//!    config value wins, so an override would lose). They neutralise every
//!    setting with a fixed name, whatever the config says at the moment git
//!    reads it, so they hold even against an agent that rewrites the config
//!    while orch's git runs.
//! 2. [`sanitize`]: settings whose names the agent chooses (a filter, diff or
//!    merge driver called anything, URL-specific helpers, `url.*.insteadOf`,
//!    includes, `core.worktree`) cannot be overridden without knowing the
//!    name, so before orch's git work on a repository (under its lock) the
//!    clone's config is cut down to the keys orch itself writes (an
//!    allowlist, read without following includes), `config.worktree` files
//!    are deleted, `commondir` links are restored and unknown hooks removed.
//!
//! What remains: an agent still running (in another task) can re-plant a
//! driver-named setting between [`sanitize`] and the end of orch's git
//! command. Only the sandbox, which keeps agents out of the common dir's
//! config, closes that window (docs/security.md).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// Settings forced on every git process orch runs, above repository config.
pub const OVERRIDES: &[(&str, &str)] = &[
    ("core.fsmonitor", "false"),
    ("core.hooksPath", "/dev/null"),
    ("core.untrackedCache", "false"),
    ("core.sshCommand", "ssh"),
    ("core.editor", ":"),
    ("sequence.editor", ":"),
    ("core.pager", "cat"),
    // Empty: no askpass program (GIT_ASKPASS from the operator still wins).
    ("core.askPass", ""),
    // An empty helper clears every helper configured before it, URL-specific ones too.
    ("credential.helper", ""),
    ("core.alternateRefsCommand", "true"),
    ("gpg.program", "gpg"),
    ("gpg.ssh.program", "ssh-keygen"),
    ("gpg.x509.program", "gpgsm"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("push.gpgSign", "false"),
    ("merge.verifySignatures", "false"),
    ("log.showSignature", "false"),
    ("protocol.ext.allow", "never"),
    ("fetch.recurseSubmodules", "false"),
    ("submodule.recurse", "false"),
];

/// Options to insert right after the git subcommand `sub`. The program git
/// runs for a transfer (locally, for a path remote) comes from
/// `remote.<x>.uploadpack` / `receivepack`, where the *first* value wins, so a
/// config override cannot replace the repository's; the command-line option can.
pub fn subcommand_options(sub: &OsStr) -> &'static [&'static str] {
    match sub.to_str() {
        Some("fetch" | "clone" | "ls-remote") => &["--upload-pack=git-upload-pack"],
        Some("push") => &["--receive-pack=git-receive-pack"],
        _ => &[],
    }
}

/// Protocols orch's git may use unless the operator's environment says
/// otherwise: no `ext::`, no remote helpers named by the repository.
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";

/// Pin `cmd` (a git command) against repository-controlled commands: the
/// [`OVERRIDES`], and the environment variables git prefers to config.
pub fn apply(cmd: &mut Command) {
    cmd.env("GIT_CONFIG_COUNT", OVERRIDES.len().to_string());
    for (i, (key, value)) in OVERRIDES.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), key)
            .env(format!("GIT_CONFIG_VALUE_{i}"), value);
    }
    cmd.env("GIT_EDITOR", ":")
        .env("GIT_SEQUENCE_EDITOR", ":")
        .env("GIT_PAGER", "cat")
        .env("GIT_ATTR_NOSYSTEM", "1")
        .env_remove("GIT_EXTERNAL_DIFF")
        .env_remove("GIT_COMMON_DIR")
        .env_remove("GIT_CONFIG_PARAMETERS");
    // Set (even empty), it replaces every core.gitProxy; the operator's own value stays.
    if std::env::var_os("GIT_PROXY_COMMAND").is_none() {
        cmd.env("GIT_PROXY_COMMAND", "");
    }
    if std::env::var_os("GIT_ALLOW_PROTOCOL").is_none() {
        cmd.env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS);
    }
}

/// Whether orch keeps the config entry `key` (as `git config --list` prints
/// it: section and name lowercase, subsection as written): the keys `git
/// clone`, `git worktree add -B` and orch itself write, none of which names a
/// command.
pub fn allowed(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
        "remote.origin.url",
        "remote.origin.fetch",
        "extensions.objectformat",
        "user.name",
        "user.email",
    ];
    if EXACT.contains(&key) {
        return true;
    }
    // branch.<name>.remote / branch.<name>.merge: the upstream of a task branch.
    key.strip_prefix("branch.").is_some_and(|rest| {
        rest.rsplit_once('.')
            .is_some_and(|(name, var)| !name.is_empty() && (var == "remote" || var == "merge"))
    })
}

/// Make the clone at `clone_dir` safe for orch's git: sanitise its config to
/// the [`allowed`] keys, delete `config.worktree` files, restore worktrees'
/// `commondir` links and remove hooks. Returns what it removed or repaired
/// (empty when the clone was clean). Call with the repository's lock held.
pub fn sanitize(clone_dir: &Path) -> anyhow::Result<Vec<String>> {
    let git_dir = clone_dir.join(".git");
    let meta = match std::fs::symlink_metadata(&git_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", git_dir.display())),
    };
    if !meta.is_dir() {
        bail!(
            "{} is not a directory (it was replaced, possibly by an agent): refusing to run git there; remove {} to re-clone",
            git_dir.display(),
            clone_dir.display()
        );
    }
    let mut changed = sanitize_config(&git_dir)?;
    changed.extend(clean_worktree_dirs(&git_dir)?);
    changed.extend(remove_hooks(&git_dir.join("hooks"))?);
    if !changed.is_empty() {
        log::warn!(
            "{}: removed settings orch does not write (an agent may have planted them): {}",
            clone_dir.display(),
            changed.join(", ")
        );
    }
    Ok(changed)
}

/// One `key[=value]` entry of `git config --list --null` output.
type Entry = (String, Option<String>);

/// The entries of the config file at `path`, read by git without following includes.
fn read_entries(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let out = bare_git(&[
        OsStr::new("config"),
        OsStr::new("--file"),
        path.as_os_str(),
        OsStr::new("--no-includes"),
        OsStr::new("--null"),
        OsStr::new("--list"),
    ])
    .output()
    .context("running git config (is git installed?)")?;
    if !out.status.success() {
        bail!(
            "cannot read {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split('\0')
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once('\n') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (e.to_owned(), None),
        })
        .collect())
}

/// git outside any repository (at `/`), pinned like orch's other git, for
/// reading and writing config files by path: nothing of the clone is read.
fn bare_git(args: &[&OsStr]) -> Command {
    let mut c = Command::new("git");
    c.current_dir("/")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CEILING_DIRECTORIES", "/")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .args(args)
        .stdin(std::process::Stdio::null());
    apply(&mut c);
    c
}

/// Rewrite `<git_dir>/config` with only its allowed entries, if it has others
/// or is not a regular file (a symlink is replaced, not followed).
fn sanitize_config(git_dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = git_dir.join("config");
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(Vec::new());
    };
    let entries = if meta.is_file() {
        read_entries(&path)?
    } else {
        Vec::new()
    };
    // One fetch URL only: a second `remote.origin.url` would also be pushed to.
    let mut urls = 0;
    let (keep, drop): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|(k, _)| {
        urls += usize::from(k == "remote.origin.url");
        allowed(k) && !(k == "remote.origin.url" && urls > 1)
    });
    let mut removed: Vec<String> = drop.into_iter().map(|(k, _)| k).collect();
    if !meta.is_file() {
        removed.push(format!("{} (not a regular file)", path.display()));
    }
    if removed.is_empty() {
        return Ok(removed);
    }
    let tmp = git_dir.join("config.orch-sanitized");
    let _ = std::fs::remove_file(&tmp);
    for (key, value) in &keep {
        let value = value.as_deref().unwrap_or("true");
        let out = bare_git(&[
            OsStr::new("config"),
            OsStr::new("--file"),
            tmp.as_os_str(),
            OsStr::new("--add"),
            OsStr::new(key),
            OsStr::new(value),
        ])
        .output()
        .context("running git config (is git installed?)")?;
        if !out.status.success() {
            bail!(
                "writing {key} to {}: {}",
                tmp.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    if keep.is_empty() {
        std::fs::write(&tmp, "").with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(removed)
}

/// Delete `config.worktree` files (the common dir's and each worktree's) and
/// point every worktree's `commondir` back at the clone.
fn clean_worktree_dirs(git_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    let mut dirs = vec![git_dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(git_dir.join("worktrees")) {
        dirs.extend(entries.filter_map(Result::ok).map(|e| e.path()));
    }
    for (i, dir) in dirs.iter().enumerate() {
        let wt_config = dir.join("config.worktree");
        if std::fs::symlink_metadata(&wt_config).is_ok() {
            remove_any(&wt_config)?;
            changed.push(wt_config.display().to_string());
        }
        // Every worktree's commondir is "../..", as `git worktree add` writes it.
        let commondir = dir.join("commondir");
        if i > 0 && std::fs::read_to_string(&commondir).map_or(true, |s| s.trim() != "../..") {
            let _ = std::fs::remove_file(&commondir);
            std::fs::write(&commondir, "../..\n")
                .with_context(|| format!("restoring {}", commondir.display()))?;
            changed.push(commondir.display().to_string());
        }
    }
    Ok(changed)
}

/// Remove everything in `hooks` but git's `*.sample` files (core.hooksPath is
/// overridden anyway; this leaves no loaded hook behind for a later mistake).
fn remove_hooks(hooks: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    match std::fs::symlink_metadata(hooks) {
        Ok(m) if !m.is_dir() => {
            remove_any(hooks)?;
            return Ok(vec![hooks.display().to_string()]);
        }
        Ok(_) => {}
        Err(_) => return Ok(removed),
    }
    for entry in std::fs::read_dir(hooks)?.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension() == Some(OsStr::new("sample")) && path.is_file() {
            continue;
        }
        remove_any(&path)?;
        removed.push(path.display().to_string());
    }
    Ok(removed)
}

/// Remove a file, symlink or directory tree at `path` (never following a symlink).
fn remove_any(path: &Path) -> anyhow::Result<()> {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let result = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.with_context(|| format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_keeps_what_clone_and_worktree_add_write_and_nothing_that_runs() {
        for key in [
            "core.bare",
            "remote.origin.url",
            "remote.origin.fetch",
            "branch.main.remote",
            "branch.feature/DEMO-1.merge",
            "extensions.objectformat",
        ] {
            assert!(allowed(key), "{key}");
        }
        for key in [
            "core.fsmonitor",
            "core.hookspath",
            "core.worktree",
            "core.sshcommand",
            "filter.x.clean",
            "diff.external",
            "diff.x.textconv",
            "merge.x.driver",
            "include.path",
            "includeif.gitdir:/.path",
            "extensions.worktreeconfig",
            "remote.origin.uploadpack",
            "remote.origin.vcs",
            "remote.origin.pushurl",
            "url./evil.insteadof",
            "credential.https://h.helper",
            "branch..merge",
            "branch.main.pushremote",
        ] {
            assert!(!allowed(key), "{key}");
        }
    }
}
