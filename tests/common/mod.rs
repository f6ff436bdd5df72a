//! Shared set-up for integration tests: a hermetic state directory and a way
//! to run the real `orch` binary against it, on the storage backend
//! `ORCH_TEST_BACKEND` names: `sqlite` (the default: the file in the state
//! directory) or `postgres` (a fresh database per [`Env`] on the server
//! `ORCH_TEST_PG_URL` names, see [`pg`]; every orch the `Env` runs gets
//! `ORCH_DB_URL`).

#![allow(dead_code)]

pub mod fake;
pub mod messages_api;
pub mod pg;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tempfile::TempDir;

/// The storage backend the tests run orch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The SQLite file in the state directory (the default).
    Sqlite,
    /// A PostgreSQL database of its own per [`Env`].
    Postgres,
}

/// The backend `ORCH_TEST_BACKEND` names (unset or empty: SQLite).
pub fn backend() -> Backend {
    match std::env::var("ORCH_TEST_BACKEND").as_deref() {
        Err(_) | Ok("" | "sqlite") => Backend::Sqlite,
        Ok("postgres" | "postgresql") => Backend::Postgres,
        Ok(other) => panic!("ORCH_TEST_BACKEND={other:?}: expected sqlite or postgres"),
    }
}

/// Whether the tests run orch on PostgreSQL.
pub fn on_postgres() -> bool {
    backend() == Backend::Postgres
}

/// For a test that is inherently SQLite's (the file, its WAL, `PRAGMA`, the
/// lock files owners hold on one host): true, after saying loudly that it
/// skips and `why`, when the backend is PostgreSQL; the test then returns.
pub fn sqlite_only(why: &str) -> bool {
    if !on_postgres() {
        return false;
    }
    eprintln!(
        "!! SKIPPED on postgres: {}: {why}",
        std::thread::current().name().unwrap_or("this test")
    );
    true
}

/// The environment of an `orch reap` that stands for the first pass after
/// `reaper_start_grace_s`: empty on SQLite; on PostgreSQL the grace set to
/// 0. A dead owner whose claim started no agent waits out that grace there
/// before it is requeued: an advisory lock leaves no trace, so a killed
/// claimer looks like a clean `orch claim` hand-over (docs/scaling.md),
/// where a lock file left behind tells SQLite's reaper it was killed.
pub fn start_grace_over() -> &'static [(&'static str, &'static str)] {
    if on_postgres() {
        &[("ORCH_REAPER_START_GRACE_S", "0")]
    } else {
        &[]
    }
}

/// A remote for a repository in a config a test writes: the path itself on
/// SQLite; on PostgreSQL a `file://` URL, as every host must reach it (a
/// path on one host is refused with `db_url`, src/config.rs).
pub fn remote(path: impl AsRef<Path>) -> String {
    let path = path.as_ref().display().to_string();
    if on_postgres() {
        format!("file://{path}")
    } else {
        path
    }
}

/// A fresh state directory with a config that declares repo `demo`, and on
/// PostgreSQL a fresh database of its own.
pub struct Env {
    /// Keeps the directory alive for the test's duration.
    pub dir: TempDir,
    /// A session on the PostgreSQL database for [`Env::rows`] and
    /// [`Env::exec`], opened on first use (closed before the database goes).
    client: Mutex<Option<postgres::Client>>,
    /// On PostgreSQL: this installation's database, dropped with the `Env`.
    pub pg: Option<pg::Database>,
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
        let pg = on_postgres().then(|| {
            assert!(
                std::env::var("ORCH_TEST_PG_URL").is_ok_and(|u| !u.is_empty()),
                "ORCH_TEST_BACKEND=postgres needs ORCH_TEST_PG_URL (scripts/pg-test-server.sh start)"
            );
            let test = std::thread::current().name().unwrap_or("env").to_owned();
            pg::fresh(&test).expect("a PostgreSQL test database")
        });
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
            client: Mutex::new(None),
            pg,
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

    /// The database file (SQLite).
    pub fn db_path(&self) -> PathBuf {
        self.state().join("orch.db")
    }

    /// The PostgreSQL database orch runs on (`ORCH_DB_URL`), if it does.
    pub fn db_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|pg| pg.url.as_str())
    }

    /// Where owners prove their life for this installation: lock files in
    /// `<state>/locks`, or advisory locks in the PostgreSQL database.
    pub fn locks(&self) -> orch::liveness::Locks {
        orch::liveness::Locks::configured(self.state().join("locks"), self.db_url()).expect("locks")
    }

    /// Write `orch.toml` with repo `demo` plus `extra` settings.
    pub fn write_config(&self, extra: &str) {
        std::fs::create_dir_all(self.state()).expect("mkdir");
        std::fs::write(
            self.state().join("orch.toml"),
            format!(
                "{extra}\n[repos.demo]\nremote = {:?}\n",
                remote("/nonexistent/demo.git")
            ),
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
        if let Some(url) = self.db_url() {
            c.env("ORCH_DB_URL", url);
        }
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
        if let Some(url) = self.db_url() {
            c.env("ORCH_DB_URL", url);
        }
        c
    }

    /// The one integer `sql` selects (a count, an id), read directly.
    pub fn sql_i64(&self, sql: &str) -> i64 {
        if self.pg.is_some() {
            let rows = self.rows(sql);
            let value = rows.first().and_then(|r| r.first()).expect(sql);
            return value
                .as_i64()
                .unwrap_or_else(|| panic!("{sql}: {value} is no integer"));
        }
        self.sqlite().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// The one text `sql` selects (a sha, a branch), `None` for no row or NULL.
    pub fn sql_text(&self, sql: &str) -> Option<String> {
        let rows = self.rows(sql);
        rows.first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// Run `sql` (one statement or several separated by `;`) on the
    /// database, for tests that set rows up by hand. Write SQL both
    /// backends take (no `INSERT OR REPLACE`, no `?` parameters).
    pub fn exec(&self, sql: &str) {
        if self.pg.is_some() {
            self.with_client(|c| c.batch_execute(sql)).expect(sql);
        } else {
            self.sqlite().execute_batch(sql).expect(sql);
        }
    }

    /// [`Env::exec`], the database's refusal as text instead of a panic.
    pub fn try_exec(&self, sql: &str) -> Result<(), String> {
        if self.pg.is_some() {
            self.with_client(|c| c.batch_execute(sql)).map_err(|e| {
                format!(
                    "{e} ({:?})",
                    e.as_db_error().map(postgres::error::DbError::message)
                )
            })
        } else {
            self.sqlite().execute_batch(sql).map_err(|e| e.to_string())
        }
    }

    /// The SQLite file itself, for what only SQLite has (`PRAGMA`, the
    /// file); everything else goes through [`Env::exec`] and [`Env::rows`].
    pub fn sqlite(&self) -> rusqlite::Connection {
        assert!(
            self.pg.is_none(),
            "Env::sqlite() on PostgreSQL: use Env::exec/rows/sql_i64, or skip with common::sqlite_only"
        );
        let conn = rusqlite::Connection::open(self.db_path()).expect("open the SQLite file");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    /// Open the database through the library, on the configured backend.
    pub fn db(&self) -> orch::storage::Db {
        if let Some(url) = self.db_url() {
            return orch::storage::Db::open_postgres(
                url,
                self.state(),
                orch::storage::Missing::Refuse,
            )
            .expect("open db");
        }
        orch::storage::Db::open(
            &self.db_path(),
            std::time::Duration::from_secs(10),
            orch::storage::Missing::Refuse,
        )
        .expect("open db")
    }

    /// `f` on this Env's PostgreSQL session (opened on first use).
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let pg = self.pg.as_ref().expect("a PostgreSQL database");
        let mut slot = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let client = slot.get_or_insert_with(|| pg.client());
        f(client)
    }

    /// Every row of `sql`, each column as JSON (NULL and blobs are `null`),
    /// on either backend: the same values for the same rows.
    pub fn rows(&self, sql: &str) -> Vec<Vec<serde_json::Value>> {
        use rusqlite::types::ValueRef;
        if self.pg.is_some() {
            let rows = self.with_client(|c| c.query(sql, &[])).expect(sql);
            return rows.iter().map(pg::json_row).collect();
        }
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
        .envs(env.db_url().map(|url| ("ORCH_DB_URL", url)))
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
