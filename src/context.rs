//! Everything a subcommand needs before it starts: the state directory, the
//! configuration, and a way to open the database.
//!
//! The state directory is `--state-dir` / `ORCH_STATE_DIR` (clap reads both),
//! then systemd's `$STATE_DIRECTORY`, then the XDG state dir (docs/architecture.md, decision 10).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::GlobalOpts;
use crate::config::Config;
use crate::error::OrchError;
use crate::liveness::Locks;
use crate::private_state;
use crate::storage::{Db, Missing};

/// Resolved paths and configuration.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The configuration in force.
    pub config: Config,
}

impl Ctx {
    /// Resolve the state directory and load the configuration.
    pub fn resolve(global: &GlobalOpts) -> anyhow::Result<Ctx> {
        let state_dir = resolve_state_dir(global.state_dir.as_deref(), &|k| std::env::var(k).ok())?;
        private_state::check_state_dir(&state_dir)?;
        if state_dir.exists() && !state_dir.is_dir() {
            return Err(OrchError::Usage(format!(
                "state directory {} exists but is not a directory",
                state_dir.display()
            ))
            .into());
        }
        let config = Config::load(
            global.config.as_deref(),
            &state_dir.join("orch.toml"),
            &|k| std::env::var(k).ok(),
        )?;
        Ok(Ctx { state_dir, config })
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        if self.config.db_path.is_empty() {
            self.state_dir.join("orch.db")
        } else {
            PathBuf::from(&self.config.db_path)
        }
    }

    /// Where worker lock files live.
    pub fn locks_dir(&self) -> PathBuf {
        self.state_dir.join("locks")
    }

    /// Where owners keep the proof of their life: lock files in
    /// [`Ctx::locks_dir`] when every worker is on this host (SQLite), or
    /// session advisory locks in the PostgreSQL database (`db_url`) that
    /// workers on every host share.
    pub fn locks(&self) -> anyhow::Result<Locks> {
        Locks::configured(self.locks_dir(), self.db_url())
    }

    /// Root of clones and worktrees.
    pub fn repos_dir(&self) -> PathBuf {
        if self.config.repos_dir.is_empty() {
            self.state_dir.join("repos")
        } else {
            PathBuf::from(&self.config.repos_dir)
        }
    }

    /// Per-run agent logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// The configured busy timeout.
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.config.busy_timeout_ms)
    }

    /// Open the existing database (refusing to create one: that is `orch init`'s job).
    pub fn open_db(&self) -> anyhow::Result<Db> {
        self.open_db_as(Missing::Refuse)
    }

    /// Open the database, creating it (SQLite) or its schema (PostgreSQL)
    /// when `missing` says so.
    pub fn open_db_as(&self, missing: Missing) -> anyhow::Result<Db> {
        match self.db_url() {
            Some(url) => Db::open_postgres(url, &self.state_dir, missing),
            None => Db::open(&self.db_path(), self.busy_timeout(), missing),
        }
    }

    /// Open the existing database for reading only.
    pub fn open_db_read_only(&self) -> anyhow::Result<Db> {
        match self.db_url() {
            Some(url) => Db::open_postgres_read_only(url, &self.state_dir),
            None => Db::open_read_only(&self.db_path(), self.busy_timeout()),
        }
    }

    /// The PostgreSQL database configured (`db_url`, `ORCH_DB_URL`), if any;
    /// none means the SQLite file [`Ctx::db_path`].
    pub fn db_url(&self) -> Option<&str> {
        Some(self.config.db_url.as_str()).filter(|u| !u.is_empty())
    }
}

/// Pick the state directory from the flag/env value or the systemd/XDG defaults.
pub fn resolve_state_dir(
    flag: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    // systemd passes a colon-separated list when a unit names several.
    if let Some(first) = env("STATE_DIRECTORY")
        .as_deref()
        .and_then(|v| v.split(':').find(|s| !s.is_empty()))
    {
        return Ok(PathBuf::from(first));
    }
    if let Some(xdg) = env("XDG_STATE_HOME").filter(|v| v.starts_with('/')) {
        return Ok(Path::new(&xdg).join("orch"));
    }
    if let Some(home) = env("HOME").filter(|v| !v.is_empty()) {
        return Ok(Path::new(&home).join(".local/state/orch"));
    }
    Err(OrchError::Usage(
        "no state directory: pass --state-dir or set ORCH_STATE_DIR (HOME is not set)".into(),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn state_dir_order_is_flag_systemd_xdg_home() {
        let all = env_of(&[
            ("STATE_DIRECTORY", "/var/lib/orch:/var/lib/other"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(
            resolve_state_dir(Some(Path::new("/flag")), &all).expect("ok"),
            PathBuf::from("/flag")
        );
        assert_eq!(
            resolve_state_dir(None, &all).expect("ok"),
            PathBuf::from("/var/lib/orch")
        );
        let xdg = env_of(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(
            resolve_state_dir(None, &xdg).expect("ok"),
            PathBuf::from("/x/orch")
        );
        let home = env_of(&[("XDG_STATE_HOME", "relative"), ("HOME", "/h")]);
        assert_eq!(
            resolve_state_dir(None, &home).expect("ok"),
            PathBuf::from("/h/.local/state/orch")
        );
        assert!(resolve_state_dir(None, &env_of(&[])).is_err());
    }
}
