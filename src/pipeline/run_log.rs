//! Printing, and following, the log of one agent run for `orch logs`.
//!
//! An agent's log is untrusted and unbounded: it can hold terminal escape
//! sequences, invalid UTF-8 and gigabytes without a newline. So it is
//! streamed in fixed-size chunks (memory stays bounded whatever the size),
//! decoded leniently, and every control character but newline and tab is
//! escaped before it reaches the terminal ([`crate::output::safe_log`]).
//! Following survives the runner's rotation (`agent.log` moved to
//! `agent.log.1`, a new `agent.log` started): the old file is read to its end
//! before the new one is opened. It ends when the caller says the run is
//! over, after a last read, so every line written before the end is shown.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use crate::error::OrchError;
use crate::output;
use crate::pipeline::{runs, task};
use crate::queue::{self, Job};
use crate::storage::Executor;

/// Bytes read at a time.
const CHUNK: usize = 64 * 1024;

/// A writer that makes agent output safe for a terminal: lenient UTF-8
/// (invalid bytes become U+FFFD, a character split between two chunks is
/// kept whole) and escaped control characters.
pub struct SafeWriter<W: Write> {
    out: W,
    /// An incomplete UTF-8 sequence at the end of the last chunk (< 4 bytes).
    pending: Vec<u8>,
}

impl<W: Write> SafeWriter<W> {
    /// Write safely to `out`.
    pub fn new(out: W) -> SafeWriter<W> {
        SafeWriter {
            out,
            pending: Vec::with_capacity(4),
        }
    }

    /// Write a chunk of raw log bytes.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest: Vec<u8> = std::mem::take(&mut self.pending);
        rest.extend_from_slice(bytes);
        let mut at = 0;
        while at < rest.len() {
            let tail = rest.get(at..).unwrap_or_default();
            match std::str::from_utf8(tail) {
                Ok(text) => {
                    self.emit(text)?;
                    at = rest.len();
                }
                Err(e) => {
                    let valid = tail.get(..e.valid_up_to()).unwrap_or_default();
                    self.emit(std::str::from_utf8(valid).unwrap_or_default())?;
                    let Some(bad) = e.error_len() else {
                        // An incomplete character at the end: wait for the rest.
                        let start = at + e.valid_up_to();
                        self.pending = rest.get(start..).unwrap_or_default().to_vec();
                        return Ok(());
                    };
                    self.emit("\u{fffd}")?;
                    at += e.valid_up_to() + bad;
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(output::safe_log(text).as_bytes())
    }

    /// Write what is left of an incomplete character, and flush.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.pending.clear();
            self.emit("\u{fffd}")?;
        }
        self.out.flush()
    }

    /// Flush what was written so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// An open log file and the identity of the file it is (device, inode).
struct Open {
    file: File,
    id: (u64, u64),
}

fn open(path: &Path) -> io::Result<Option<Open>> {
    match File::open(path) {
        Ok(file) => {
            let meta = file.metadata()?;
            Ok(Some(Open {
                file,
                id: (meta.dev(), meta.ino()),
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The identity of the file at `path` now, if there is one.
fn identity(path: &Path) -> io::Result<Option<(u64, u64)>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.dev(), meta.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copy `file` from where it is to its current end.
fn drain<W: Write>(file: &mut File, out: &mut SafeWriter<W>) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_bytes(buf.get(..n).unwrap_or_default())?;
    }
}

/// Print the log at `log` (its rotated older half first), then, while
/// `live()` says the run goes on, keep printing what is appended every
/// `poll`, across rotations. Returns whether any log file was found.
pub fn stream<W: Write>(
    log: &Path,
    out: &mut SafeWriter<W>,
    mut live: impl FnMut() -> anyhow::Result<bool>,
    poll: Duration,
) -> anyhow::Result<bool> {
    let mut current = open(log)?;
    let older = runs::rotated(log);
    let mut found = current.is_some();
    // When a rotation happened since `current` was opened, `older` is
    // `current` itself: it is printed through `current`, once.
    if let Some(mut old) = open(&older)?
        && current.as_ref().is_none_or(|c| c.id != old.id)
    {
        found = true;
        drain(&mut old.file, out)?;
    }
    loop {
        // Asked before the last read: what was written before the end is shown.
        let still = live()?;
        if let Some(c) = current.as_mut() {
            drain(&mut c.file, out)?;
        }
        let now = identity(log)?;
        if now.is_some() && now != current.as_ref().map(|c| c.id) {
            // Rotated (or created): the old file gets no more writes once
            // renamed; finish it, then start on the new one.
            if let Some(c) = current.as_mut() {
                drain(&mut c.file, out)?;
            }
            current = open(log)?;
            found |= current.is_some();
            continue;
        }
        out.flush()?;
        if !still {
            out.finish()?;
            return Ok(found);
        }
        std::thread::sleep(poll);
    }
}

/// Which run's log to show: a job's, a task's, or one run by id.
#[derive(Debug, Clone, Copy, Default)]
pub struct Which {
    /// A job: its current run, else its latest.
    pub job: Option<i64>,
    /// A task: its running job, else the job of its latest run.
    pub task: Option<i64>,
    /// One run by id (`agent_runs.id`).
    pub run: Option<i64>,
}

/// The job whose log is shown, and the run, if it has one yet.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The job.
    pub job: Job,
    /// The run: the one asked for, else the job's current or latest one.
    pub run: Option<runs::Attempt>,
}

/// Find the job and run `which` names. A job, task or run that does not
/// exist is [`OrchError::NotFound`]; a run of another job or task is
/// [`OrchError::Usage`]; a task without any job is [`OrchError::NothingToDo`].
pub fn resolve(conn: &dyn Executor, which: Which) -> anyhow::Result<Resolved> {
    let missing = |what: &str, id: i64| OrchError::NotFound(format!("{what} {id} not found"));
    if let Some(run_id) = which.run {
        let run = runs::get(conn, run_id)?.ok_or_else(|| missing("run", run_id))?;
        for (given, actual, what) in [
            (which.job, run.job_id, "job"),
            (which.task, run.task_id, "task"),
        ] {
            if let Some(id) = given
                && actual != Some(id)
            {
                let owner = actual.map_or_else(|| "none".to_owned(), |a| format!("{what} {a}"));
                return Err(OrchError::Usage(format!(
                    "run {run_id} is not a run of {what} {id} (it belongs to {owner})"
                ))
                .into());
            }
        }
        let job_id = run.job_id.ok_or_else(|| missing("job of run", run_id))?;
        let job = queue::get(conn, job_id)?.ok_or_else(|| missing("job", job_id))?;
        return Ok(Resolved {
            job,
            run: Some(run),
        });
    }
    let job_id = match (which.job, which.task) {
        (Some(job), _) => job,
        (None, Some(task)) => task_job(conn, task)?,
        (None, None) => return Err(OrchError::Usage("name a job, --task or --run".into()).into()),
    };
    let job = queue::get(conn, job_id)?.ok_or_else(|| missing("job", job_id))?;
    if let (Some(task), Some(owner)) = (which.task, job.task_id)
        && task != owner
    {
        return Err(
            OrchError::Usage(format!("job {job_id} belongs to task {owner}, not {task}")).into(),
        );
    }
    let run = current_run(conn, &job)?;
    Ok(Resolved { job, run })
}

/// The job of a task whose log `orch logs --task` shows: the running one,
/// else the one of the task's latest run, else its latest job.
fn task_job(conn: &dyn Executor, task_id: i64) -> anyhow::Result<i64> {
    task::require(conn, task_id)?;
    let job = conn.ledger_job_to_show(task_id)?;
    job.ok_or_else(|| OrchError::NothingToDo(format!("task {task_id} has no job yet")).into())
}

/// The run a job is running now, else its latest.
pub fn current_run(conn: &dyn Executor, job: &Job) -> anyhow::Result<Option<runs::Attempt>> {
    if job.status == "running"
        && let Some(run_id) = job.run_id
    {
        return Ok(runs::get(conn, run_id)?);
    }
    Ok(runs::for_job(conn, job.id)?.pop())
}

/// For `--follow` of a running job whose agent has not started yet (the
/// worktree is being prepared): wait until its run is recorded, or the job
/// ends. Then the run to show, if any.
pub fn wait_for_run(
    conn: &dyn Executor,
    job_id: i64,
    poll: Duration,
) -> anyhow::Result<Option<runs::Attempt>> {
    loop {
        let Some(job) = queue::get(conn, job_id)? else {
            return Ok(None);
        };
        if job.status != "running" || job.run_id.is_some() {
            return current_run(conn, &job);
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(chunks: &[&[u8]]) -> String {
        let mut w = SafeWriter::new(Vec::new());
        for c in chunks {
            w.write_bytes(c).expect("write");
        }
        w.finish().expect("finish");
        String::from_utf8(w.out).expect("utf-8")
    }

    #[test]
    fn escapes_controls_but_keeps_newlines_and_tabs() {
        assert_eq!(written(&[b"a\tb\n\x1b[2Jc\r\n"]), "a\tb\n\\x1b[2Jc\\x0d\n");
    }

    #[test]
    fn split_characters_stay_whole_and_bad_bytes_are_replaced() {
        let e_acute = "é".as_bytes();
        assert_eq!(written(&[b"x", &e_acute[..1], &e_acute[1..], b"y"]), "xéy");
        assert_eq!(written(&[b"a\xffb"]), "a\u{fffd}b");
        assert_eq!(written(&[b"a", &e_acute[..1]]), "a\u{fffd}");
        // A one-character CSI split across chunks is still escaped.
        let csi = "\u{9b}".as_bytes();
        assert_eq!(written(&[&csi[..1], &csi[1..]]), "\\u{9b}");
    }

    #[test]
    fn prints_the_rotated_half_first_and_follows_a_rotation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("agent.log");
        std::fs::write(runs::rotated(&log), "one\n").expect("write");
        std::fs::write(&log, "two\n").expect("write");
        let mut out = SafeWriter::new(Vec::new());
        let mut polls = 0;
        let found = stream(
            &log,
            &mut out,
            || {
                polls += 1;
                match polls {
                    1 => {
                        let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
                        f.write_all(b"three\n")?;
                        std::fs::rename(&log, runs::rotated(&log))?;
                        std::fs::write(&log, "four\n")?;
                        Ok(true)
                    }
                    _ => Ok(polls < 3),
                }
            },
            Duration::from_millis(1),
        )
        .expect("stream");
        assert!(found);
        assert_eq!(
            String::from_utf8(out.out).expect("utf-8"),
            "one\ntwo\nthree\nfour\n"
        );
    }
}
