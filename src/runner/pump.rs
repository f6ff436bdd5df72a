//! Copy a child's stdout and stderr into one log file, and remember when the
//! last byte arrived (the stall timeout's clock).
//!
//! One thread per pipe, because a child that fills one pipe while we block
//! reading the other would deadlock. Both append to the same file, one chunk
//! at a time under a lock, so each chunk lands whole, in arrival order.
//!
//! The disk a command can fill is bounded: once the log holds `max_bytes`,
//! it is moved to `<log>.1` (replacing an older one) and a fresh log starts
//! with a marker line. The end of the output — where Claude Code's `result`
//! event is — always stays in the log itself; at most about twice
//! `max_bytes` are kept.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The copying threads of one run.
pub struct Pump {
    start: Instant,
    /// Milliseconds after `start` at which the last byte was read.
    last_output_ms: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// The log being written, and how much of it there is.
struct Sink {
    file: File,
    path: PathBuf,
    written: u64,
    /// Whether what was written so far ends with a newline.
    at_line_end: bool,
    /// 0: no cap.
    max_bytes: u64,
}

impl Sink {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        // Rotate at a line end when possible, so an event is not split
        // between the two files; a line that never ends is cut at twice the cap.
        let full = self.max_bytes > 0 && self.written >= self.max_bytes;
        if full && (self.at_line_end || self.written >= 2 * self.max_bytes) {
            self.rotate()?;
        }
        self.file.write_all(chunk)?;
        self.written += chunk.len() as u64;
        if let Some(last) = chunk.last() {
            self.at_line_end = *last == b'\n';
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let older = rotated_path(&self.path);
        std::fs::rename(&self.path, &older)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let marker = format!(
            "orch: the output before this line ({} bytes) was moved to {}\n",
            self.written,
            older.display()
        );
        self.file.write_all(marker.as_bytes())?;
        self.written = 0;
        Ok(())
    }
}

/// Where a full log is moved: `<log>.1`.
fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl Pump {
    /// Start copying each of `sources` into the log `file` (at `path`, at
    /// most about `2 · max_bytes` kept; 0 = no cap) on a thread of its own.
    pub fn start(
        file: File,
        path: &Path,
        max_bytes: u64,
        sources: Vec<Box<dyn Read + Send>>,
    ) -> Pump {
        let start = Instant::now();
        let last_output_ms = Arc::new(AtomicU64::new(0));
        let written = file.metadata().map_or(0, |m| m.len());
        let log = Arc::new(Mutex::new(Sink {
            file,
            path: path.to_path_buf(),
            written,
            at_line_end: true,
            max_bytes,
        }));
        let threads = sources
            .into_iter()
            .map(|source| {
                let log = Arc::clone(&log);
                let last = Arc::clone(&last_output_ms);
                std::thread::spawn(move || copy(source, &log, start, &last))
            })
            .collect();
        Pump {
            start,
            last_output_ms,
            threads,
        }
    }

    /// How long ago the last byte of output arrived (or the pump started).
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_output_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Wait up to `timeout` for every writer to close its end of the pipes,
    /// so the log is complete. Returns false if some pipe is still open (a
    /// process that escaped the group holds it); its thread is then left to
    /// finish on its own.
    pub fn finish(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let done = super::group::wait_until(deadline, || {
            self.threads.iter().all(JoinHandle::is_finished)
        });
        if done {
            for t in self.threads {
                let _ = t.join();
            }
        }
        done
    }
}

fn copy(mut source: Box<dyn Read + Send>, log: &Mutex<Sink>, start: Instant, last: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut warned = false;
    loop {
        match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                // On error keep draining: a child blocked on a full pipe
                // would stall and be killed for a disk problem of ours.
                let written = log
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(&buf[..n]);
                if let Err(e) = written
                    && !warned
                {
                    warned = true;
                    log::warn!("writing agent output to the log: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("reading agent output: {e}");
                return;
            }
        }
    }
}
