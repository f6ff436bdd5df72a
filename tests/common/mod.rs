//! Shared set-up for integration tests: a hermetic state directory and a way
//! to run the real `orch` binary against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A fresh state directory with a config that declares repo `demo`.
pub struct Env {
    /// Keeps the directory alive for the test's duration.
    pub dir: TempDir,
}

impl Env {
    /// An initialised installation.
    pub fn new() -> Env {
        let env = Env::bare();
        env.write_config("");
        env.orch().arg("init").assert().success();
        env
    }

    /// A state directory with nothing in it.
    pub fn bare() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The state directory.
    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.state().join("orch.db")
    }

    /// Write `orch.toml` with repo `demo` plus `extra` settings.
    pub fn write_config(&self, extra: &str) {
        std::fs::create_dir_all(self.state()).expect("mkdir");
        std::fs::write(
            self.state().join("orch.toml"),
            format!("{extra}\n[repos.demo]\nremote = \"/nonexistent/demo.git\"\n"),
        )
        .expect("write config");
    }

    /// `orch` with a clean environment pointed at this state directory.
    pub fn orch(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_orch"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.state())
            .env("ORCH_STATE_DIR", self.state())
            .env("RUST_LOG", "warn");
        c
    }

    /// A `std::process::Command` for `orch` (for spawning and killing).
    pub fn orch_std(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_orch"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.state())
            .env("ORCH_STATE_DIR", self.state())
            .env("RUST_LOG", "warn");
        c
    }

    /// Open the database through the library.
    pub fn db(&self) -> orch::storage::Db {
        orch::storage::Db::open(
            &self.db_path(),
            std::time::Duration::from_secs(10),
            orch::storage::Missing::Refuse,
        )
        .expect("open db")
    }

    /// Run `orch <args> --json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.orch().args(args).arg("--json").output().expect("run");
        assert!(
            out.status.success(),
            "orch {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Enqueue `n` plain jobs on repo `demo` through the library, in one transaction.
    pub fn enqueue_many(&self, n: usize) -> Vec<i64> {
        let mut db = self.db();
        let now = orch::storage::now();
        db.write(|tx| {
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(orch::queue::enqueue(
                    tx,
                    &orch::queue::NewJob {
                        agent: "developer",
                        repo: "demo",
                        task_id: None,
                        stage: None,
                        task_content: "",
                        max_attempts: 2,
                    },
                    now,
                )?);
            }
            Ok(ids)
        })
        .expect("enqueue")
    }
}
