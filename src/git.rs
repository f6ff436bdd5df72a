//! Running git: every invocation goes through [`Git`], which pins the
//! environment (no prompts, no user config, and none of the commands a
//! repository's config can name: [`crate::git_config_guard`]) and only ever
//! receives names that passed [`crate::names`] validation, with `--` before
//! paths so nothing can be read as an option.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// A git working directory (a clone or a worktree) to run commands in.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
}

impl Git {
    /// Run git in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Git {
        Git { dir: dir.into() }
    }

    /// The directory commands run in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pinned `git` command with `args`, for callers that spawn it
    /// themselves (e.g. to bound it with a timeout).
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let (sub, rest) = args
            .split_first()
            .map_or((None, &args[..]), |(s, r)| (Some(s), r));
        let mut c = Command::new("git");
        c.current_dir(&self.dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "orch")
            .env("GIT_AUTHOR_EMAIL", "orch@localhost")
            .env("GIT_COMMITTER_NAME", "orch")
            .env("GIT_COMMITTER_EMAIL", "orch@localhost")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .args(["--no-pager", "-c", "init.defaultBranch=main"])
            .args(sub)
            .args(sub.map_or(&[][..], |s| crate::git_config_guard::subcommand_options(s)))
            .args(rest)
            .stdin(std::process::Stdio::null());
        crate::git_config_guard::apply(&mut c);
        c
    }

    /// Run a git command; fail with its stderr if it exits non-zero.
    pub fn run<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        let out = self.output(args.clone())?;
        if !out.status.success() {
            bail!(
                "git {} failed in {}: {}",
                describe(args),
                self.dir.display(),
                one_line(&String::from_utf8_lossy(&out.stderr))
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Run a git command and return its raw output, whatever its exit status.
    pub fn output<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        self.command(args.clone())
            .output()
            .with_context(|| format!("running git {} (is git installed?)", describe(args)))
    }

    /// Whether a git command succeeds (exit 0), e.g. `merge-base --is-ancestor`.
    pub fn check<I, S>(&self, args: I) -> anyhow::Result<bool>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        Ok(self.output(args)?.status.success())
    }

    /// The commit a ref points to, if it exists.
    pub fn rev(&self, rev: &str) -> anyhow::Result<Option<String>> {
        let spec = format!("{rev}^{{commit}}");
        let out = self.output(["rev-parse", "--verify", "--quiet", &spec])?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }
}

fn describe<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// git's stderr in one line: all of it, whitespace folded. `doctor` and
/// logs show it whole, since the reason is often in the first line
/// ("fatal: '…' does not appear to be a git repository") and the advice
/// in the last.
pub fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "(no output)".to_owned()
    } else {
        joined
    }
}
