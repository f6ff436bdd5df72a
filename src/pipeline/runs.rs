//! Agent runs (attempts) as recorded in `agent_runs`, and the tail of a
//! run's log read with bounded memory.
//!
//! A run's log is `<state>/runs/job-<id>-run<n>/agent.log`, rotated to
//! `agent.log.1` once it holds `log_max_bytes` (runner::pump). Logs are
//! written by agents, so they can be any size and hold anything: a tail
//! seeks to the end and reads at most the bytes asked for, only from a
//! regular file (a symlink, FIFO or device planted in its place is refused
//! without being opened or read), and only under the state directory's
//! `runs/`.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Component, Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, Row};
use serde::Serialize;

/// One agent run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Run id.
    pub id: i64,
    /// The job it was an attempt of.
    pub job_id: Option<i64>,
    /// The task.
    pub task_id: Option<i64>,
    /// The agent (`analyst`, `developer`, …).
    pub agent: String,
    /// The stage it ran on.
    pub stage: Option<String>,
    /// Start (epoch seconds).
    pub started_at: i64,
    /// End (epoch seconds); `None` while it runs.
    pub finished_at: Option<i64>,
    /// Exit code, if it exited.
    pub exit_code: Option<i64>,
    /// The signal that ended it, if one did.
    pub signal: Option<i64>,
    /// `wall` or `stall` if a timeout stopped it.
    pub timed_out: Option<String>,
    /// The verdict (`success`, `failed: …`, `orch-died: …`).
    pub outcome: Option<String>,
    /// Cost in USD; `None` = unknown (or still running).
    pub cost_usd: Option<f64>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// The log file.
    pub output_path: Option<String>,
}

const RUN_COLUMNS: &str = "id, job_id, task_id, agent, stage, started_at, finished_at, exit_code, \
     signal, timed_out, outcome, cost_usd, input_tokens, output_tokens, output_path";

impl Run {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Run> {
        Ok(Run {
            id: r.get(0)?,
            job_id: r.get(1)?,
            task_id: r.get(2)?,
            agent: r.get(3)?,
            stage: r.get(4)?,
            started_at: r.get(5)?,
            finished_at: r.get(6)?,
            exit_code: r.get(7)?,
            signal: r.get(8)?,
            timed_out: r.get(9)?,
            outcome: r.get(10)?,
            cost_usd: r.get(11)?,
            input_tokens: r.get(12)?,
            output_tokens: r.get(13)?,
            output_path: r.get(14)?,
        })
    }

    /// Seconds it ran (until `now` while it still runs).
    pub fn duration_s(&self, now: i64) -> i64 {
        (self.finished_at.unwrap_or(now) - self.started_at).max(0)
    }
}

/// A task's runs, oldest first.
pub fn for_task(conn: &Connection, task_id: i64) -> rusqlite::Result<Vec<Run>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM agent_runs WHERE task_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([task_id], Run::from_row)?;
    rows.collect()
}

/// One run by id.
pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Run>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM agent_runs WHERE id = ?1"),
        [id],
        Run::from_row,
    )
    .optional()
}

/// A task's latest run: the current attempt while one runs.
pub fn latest_for_task(conn: &Connection, task_id: i64) -> rusqlite::Result<Option<Run>> {
    conn.query_row(
        &format!(
            "SELECT {RUN_COLUMNS} FROM agent_runs WHERE task_id = ?1 ORDER BY id DESC LIMIT 1"
        ),
        [task_id],
        Run::from_row,
    )
    .optional()
}

/// The run's log, if it is recorded and lies under `<state_dir>/runs/`
/// (no `..`): a path from the database is never followed elsewhere.
pub fn log_path(state_dir: &Path, run: &Run) -> Option<PathBuf> {
    let path = PathBuf::from(run.output_path.as_deref()?);
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
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    let mut out = tail_of(Path::new(&rotated), room)?.bytes;
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
        let run = |p: &str| Run {
            output_path: Some(p.to_owned()),
            ..sample()
        };
        let state = Path::new("/var/lib/orch");
        assert!(log_path(state, &run("/var/lib/orch/runs/job-1-run1/agent.log")).is_some());
        assert!(log_path(state, &run("/var/lib/orch/runs/../orch.db")).is_none());
        assert!(log_path(state, &run("/etc/shadow")).is_none());
    }

    fn sample() -> Run {
        Run {
            id: 1,
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
            output_path: None,
        }
    }
}
