//! Shared set-up for integration tests: a hermetic state directory and a way
//! to run the real `orch` binary against it.

#![allow(dead_code)]

pub mod fake;
pub mod messages_api;
pub mod pg;

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

    /// A state directory with nothing in it but [`Env::shared`].
    pub fn bare() -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(env.shared()).expect("shared dir");
        env
    }

    /// Where agents and test commands leave what a test checks: the state
    /// directory (and the private `/tmp`) are hidden inside the sandbox, this
    /// one is writable there (`sandbox_writable`, set by [`Env::orch`]).
    pub fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
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
            .env("ORCH_SANDBOX_WRITABLE", self.shared())
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
            .env("ORCH_SANDBOX_WRITABLE", self.shared())
            .env("RUST_LOG", "warn");
        c
    }

    /// Open the database through the library.
    /// The one integer `sql` selects (a count, an id), read directly.
    pub fn sql_i64(&self, sql: &str) -> i64 {
        self.sqlite().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// The SQLite file itself, for tests that read or write rows directly.
    pub fn sqlite(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.db_path()).expect("open the SQLite file");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    pub fn db(&self) -> orch::storage::Db {
        orch::storage::Db::open(
            &self.db_path(),
            std::time::Duration::from_secs(10),
            orch::storage::Missing::Refuse,
        )
        .expect("open db")
    }

    /// Every row of `sql`, each column as JSON (NULL and blobs are `null`).
    pub fn rows(&self, sql: &str) -> Vec<Vec<serde_json::Value>> {
        use rusqlite::types::ValueRef;
        let db = self.sqlite();
        let mut stmt = db.prepare(sql).expect("prepare");
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Integer(v) => serde_json::json!(v),
                        ValueRef::Real(v) => serde_json::json!(v),
                        ValueRef::Text(t) => serde_json::json!(String::from_utf8_lossy(t)),
                        ValueRef::Null | ValueRef::Blob(_) => serde_json::Value::Null,
                    })
                })
                .collect()
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
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

/// A demo installation where `demo` is the self-hosting repo. The hook counts
/// its runs in `hook.count` and exits with the code in `hook.exit` (default 0).
pub fn self_hosting() -> Env {
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let hook = format!(
        "echo run >> {d}/hook.count; echo deploying $ORCH_DEPLOY_SHA; exit $(cat {d}/hook.exit 2>/dev/null || echo 0)",
        d = env.state().display()
    );
    std::fs::write(
        &path,
        format!(
            "self_hosting_repo = \"demo\"\nmerge_gate_repos = \"demo\"\ndeploy_hook_cmd = {}\n{config}",
            serde_json::to_string(&hook).expect("quote")
        ),
    )
    .expect("config");
    env
}

/// Create task 1 and run it to phase A (parked on deploy).
pub fn to_phase_a(env: &Env) {
    env.orch()
        .args(["task", "create", "--repo", "demo", "--title", "self"])
        .assert()
        .success();
    for _ in 0..20 {
        if env.json(&["task", "show", "1"])["task"]["stage"] == "deploy" {
            return;
        }
        let o = env
            .orch_std()
            .args(["run-agent", "--next"])
            .output()
            .expect("run");
        if o.status.code() == Some(3) {
            env.orch()
                .args(["advance", "--task", "1", "--approve"])
                .assert()
                .success();
        }
    }
    panic!(
        "never reached deploy: {}",
        env.json(&["task", "show", "1"])["task"]["stage"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    );
}

/// Push a commit that writes `path` (relative to the repository) to `main` of
/// the demo forge, as another developer would; `label` names the scratch clone.
pub fn push_to_main(env: &Env, label: &str, path: &str, content: &str) {
    let work = env.state().join(format!("pusher-{label}"));
    let forge = env.state().join("forge/demo.git");
    let git = |dir: &Path, args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(
        env.state(),
        &[
            "clone",
            "--quiet",
            &forge.to_string_lossy(),
            &work.to_string_lossy(),
        ],
    );
    let file = work.join(path);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&file, content).expect("write");
    git(&work, &["add", "."]);
    git(
        &work,
        &["commit", "--quiet", "-m", &format!("{label} on main")],
    );
    git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
}

/// Host pids of the live processes whose argv is exactly `argv` — how a test
/// finds an agent's processes from outside: in the sandbox the pids an agent
/// sees are those of its own PID namespace. Give each test its own argv
/// (`sleep 300.4611`): tests run in parallel. Zombies count as dead.
pub fn host_pids_of(argv: &[&str]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            !zombie
                && args.len() == argv.len()
                && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes())
        })
        .collect()
}

/// Run `orch run-agent --next` with `agent` under a python3 parent and
/// return orch's peak RSS in KiB (`getrusage(RUSAGE_CHILDREN)`: only orch
/// and what it started count), or `None` without python3. Panics unless the
/// worker exits with `exit` (docs/exit-codes.md).
pub fn run_agent_peak_rss_kib(env: &Env, agent: &str, exit: i32) -> Option<u64> {
    std::process::Command::new("python3")
        .arg("-V")
        .output()
        .ok()?;
    let measure = "import resource, subprocess, sys\n\
                   r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n\
                   print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            measure,
            env!("CARGO_BIN_EXE_orch"),
            "run-agent",
            "--next",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.state())
        .env("ORCH_STATE_DIR", env.state())
        .env("ORCH_AGENT_CMD", agent)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let code = exit.to_string();
    assert_eq!(
        fields.next(),
        Some(code.as_str()),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fields.next().and_then(|v| v.parse().ok())
}
