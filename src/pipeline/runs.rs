//! The agent runs (attempts) of a job or a task, as an operator reads them:
//! when each started and ended, how it ended, what it cost, and where its log
//! is. One job can run its agent several times (a failed gate retries it, a
//! crash gives the attempt back), and each run keeps its own directory
//! `<state>/runs/job-<id>-run<n>/`; `orch job show`, `orch logs` and the web
//! board read the `agent_runs` rows through this module so all name runs the
//! same way.
//!
//! Logs are written by agents, so they can be any size and hold anything: a
//! tail seeks to the end and reads at most the bytes asked for, only from a
//! regular file (a symlink, FIFO or device planted in its place is refused
//! without being opened or read), and only under the state directory's
//! `runs/`.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::storage;
use crate::storage::Executor;
use crate::storage::ledger::AgentRun;

/// One agent run of a job: a row of `agent_runs`, plus where its log is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// The run's id (`agent_runs.id`, `ORCH_RUN_ID`).
    pub run_id: i64,
    /// Which run of its job this is, from 1 (the `<n>` of `job-<id>-run<n>`).
    pub number: i64,
    /// The job.
    pub job_id: Option<i64>,
    /// The task.
    pub task_id: Option<i64>,
    /// The agent.
    pub agent: String,
    /// The stage it worked on.
    pub stage: Option<String>,
    /// The agent's process group, once started.
    pub pid: Option<i64>,
    /// Start (epoch seconds).
    pub started_at: i64,
    /// End (epoch seconds); `null` while it runs, or if its worker died.
    pub finished_at: Option<i64>,
    /// `finished_at - started_at`.
    pub duration_s: Option<i64>,
    /// How the run was judged (`success`, `failure: …`, `transient: …`).
    pub outcome: Option<String>,
    /// The agent's exit code.
    pub exit_code: Option<i64>,
    /// The signal that killed it.
    pub signal: Option<i64>,
    /// `wall` or `stall` when stopped for time.
    pub timed_out: Option<String>,
    /// Cost reported by the agent, in USD.
    pub cost_usd: Option<f64>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// The run's log (`.../agent.log`).
    pub log_path: Option<String>,
    /// The log's older half (`agent.log.1`), when the log was rotated.
    pub rotated_log_path: Option<String>,
}

impl Attempt {
    /// The attempt a stored run is: its duration, and its rotated log if
    /// there is one on disk.
    fn from_run(run: AgentRun) -> Attempt {
        let rotated_log_path = run
            .output_path
            .as_deref()
            .map(|p| rotated(Path::new(p)))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string());
        Attempt {
            run_id: run.id,
            number: run.number,
            job_id: run.job_id,
            task_id: run.task_id,
            agent: run.agent,
            stage: run.stage,
            pid: run.pid,
            started_at: run.started_at,
            finished_at: run.finished_at,
            duration_s: run.finished_at.map(|f| (f - run.started_at).max(0)),
            outcome: run.outcome,
            exit_code: run.exit_code,
            signal: run.signal,
            timed_out: run.timed_out,
            cost_usd: run.cost_usd,
            input_tokens: run.input_tokens,
            output_tokens: run.output_tokens,
            log_path: run.output_path,
            rotated_log_path,
        }
    }

    /// How the process ended, in a few words: `exit 0`, `signal 9`,
    /// `wall timeout (signal 15)`, or `running`.
    pub fn ending(&self) -> String {
        let how = match (self.exit_code, self.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) if self.finished_at.is_none() => return "running".to_owned(),
            (None, None) => "no exit status".to_owned(),
        };
        match &self.timed_out {
            Some(t) => format!("{t} timeout ({how})"),
            None => how,
        }
    }
}

fn attempts(runs: Vec<AgentRun>) -> Vec<Attempt> {
    runs.into_iter().map(Attempt::from_run).collect()
}

/// Every run of job `job_id`, oldest first.
pub fn for_job(conn: &dyn Executor, job_id: i64) -> storage::Result<Vec<Attempt>> {
    Ok(attempts(conn.ledger_runs_of_job(job_id)?))
}

/// Every run of task `task_id`, oldest first.
pub fn for_task(conn: &dyn Executor, task_id: i64) -> storage::Result<Vec<Attempt>> {
    Ok(attempts(conn.ledger_runs_of_task(task_id)?))
}

/// Run `run_id`, if it exists.
pub fn get(conn: &dyn Executor, run_id: i64) -> storage::Result<Option<Attempt>> {
    Ok(conn.ledger_run(run_id)?.map(Attempt::from_run))
}

/// Whether run `run_id` of job `job_id` may still write to its log: the run
/// is not finished, and the job is running this very run.
pub fn is_live(conn: &dyn Executor, job_id: i64, run_id: i64) -> storage::Result<bool> {
    conn.ledger_run_is_live(job_id, run_id)
}

/// Where a full log is moved when it is rotated: `<log>.1`.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// A task's latest run: the current attempt while one runs.
pub fn latest_for_task(conn: &dyn Executor, task_id: i64) -> storage::Result<Option<Attempt>> {
    Ok(for_task(conn, task_id)?.pop())
}

/// The run's log, if it is recorded and lies under `<state_dir>/runs/`
/// (no `..`): a path from the database is never followed elsewhere.
pub fn log_path(state_dir: &Path, run: &Attempt) -> Option<PathBuf> {
    let path = PathBuf::from(run.log_path.as_deref()?);
    let inside = path.starts_with(state_dir.join("runs"))
        && !path.components().any(|c| matches!(c, Component::ParentDir));
    inside.then_some(path)
}

/// The last `max` bytes of the log at `path`, with the end of the rotated
/// `<path>.1` in front when the log itself is shorter; a tail that starts
/// inside the output starts at a line. Memory stays within `max` whatever
/// the files' sizes. A log not written yet is empty.
pub fn tail_log(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let current = tail_of(path, max)?;
    let room = max.saturating_sub(current.bytes.len() as u64);
    if current.cut || room == 0 {
        return Ok(current.bytes);
    }
    let mut out = tail_of(&rotated(path), room)?.bytes;
    out.extend_from_slice(&current.bytes);
    Ok(out)
}

/// The end of one file, and whether it is only the end.
struct Tail {
    bytes: Vec<u8>,
    cut: bool,
}

/// The last `max` bytes of the regular file at `path` (empty if it is
/// absent), from the first line that starts within them when cut.
fn tail_of(path: &Path, max: u64) -> std::io::Result<Tail> {
    let Some(mut file) = open_regular(path)? else {
        return Ok(Tail {
            bytes: Vec::new(),
            cut: false,
        });
    };
    let len = file.metadata()?.len();
    let cut = len > max;
    // One byte more before the cut tells whether it falls on a line start.
    let from = if cut { len - max - 1 } else { 0 };
    file.seek(SeekFrom::Start(from))?;
    let want = len - from;
    let mut bytes = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    // The file may grow meanwhile: never read more than asked.
    file.take(want).read_to_end(&mut bytes)?;
    if cut {
        // From the first whole line; the end of one long line if that is all there is.
        let start = match bytes.iter().position(|b| *b == b'\n') {
            Some(p) if p == 0 || p + 1 < bytes.len() => p + 1,
            _ => 1.min(bytes.len()),
        };
        bytes.drain(..start);
    }
    Ok(Tail { bytes, cut })
}

/// Open `path` for reading if it is a regular file: no symlink is followed,
/// and a FIFO cannot block the open (O_NONBLOCK) and is refused after it.
fn open_regular(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_log_is_dot_one() {
        assert_eq!(
            rotated(Path::new("/s/runs/job-1-run2/agent.log")),
            PathBuf::from("/s/runs/job-1-run2/agent.log.1")
        );
    }

    #[test]
    fn the_tail_is_bounded_and_reaches_into_the_rotated_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("agent.log");
        assert!(tail_log(&log, 10).expect("absent").is_empty());
        std::fs::write(&log, b"old line\nnew\n").expect("write");
        assert_eq!(tail_log(&log, 100).expect("tail"), b"old line\nnew\n");
        assert_eq!(tail_log(&log, 6).expect("tail"), b"new\n");
        assert_eq!(tail_log(&log, 12).expect("tail"), b"new\n");
        assert_eq!(tail_log(&log, 13).expect("tail"), b"old line\nnew\n");
        assert_eq!(tail_log(&log, 3).expect("tail"), b"ew\n");
        std::fs::write(dir.path().join("agent.log.1"), b"first\nsecond\n").expect("write");
        std::fs::write(&log, b"third\n").expect("write");
        assert_eq!(tail_log(&log, 12).expect("tail"), b"econd\nthird\n");
        assert_eq!(tail_log(&log, 13).expect("tail"), b"second\nthird\n");
        assert_eq!(
            tail_log(&log, 100).expect("tail"),
            b"first\nsecond\nthird\n"
        );
    }

    #[test]
    fn only_regular_files_under_runs_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("agent.log");
        std::os::unix::fs::symlink("/etc/passwd", &log).expect("symlink");
        assert!(tail_log(&log, 100).is_err());
        std::fs::remove_file(&log).expect("rm");
        nix::unistd::mkfifo(&log, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        assert!(tail_log(&log, 100).is_err());
        let run = |p: &str| Attempt {
            log_path: Some(p.to_owned()),
            ..sample()
        };
        let state = Path::new("/var/lib/orch");
        assert!(log_path(state, &run("/var/lib/orch/runs/job-1-run1/agent.log")).is_some());
        assert!(log_path(state, &run("/var/lib/orch/runs/../orch.db")).is_none());
        assert!(log_path(state, &run("/etc/shadow")).is_none());
    }

    fn sample() -> Attempt {
        Attempt {
            run_id: 1,
            number: 1,
            pid: None,
            duration_s: None,
            rotated_log_path: None,
            job_id: None,
            task_id: None,
            agent: "developer".into(),
            stage: None,
            started_at: 0,
            finished_at: None,
            exit_code: None,
            signal: None,
            timed_out: None,
            outcome: None,
            cost_usd: None,
            input_tokens: None,
            output_tokens: None,
            log_path: None,
        }
    }
}
