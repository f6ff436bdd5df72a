//! Copy a child's stdout and stderr into one log file, and remember when the
//! last byte arrived (the stall timeout's clock).
//!
//! One thread per pipe, because a child that fills one pipe while we block
//! reading the other would deadlock. Both append to the same file opened with
//! `O_APPEND`, so each chunk lands whole at the end, in arrival order.

use std::fs::File;
use std::io::{ErrorKind, Read, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The copying threads of one run.
pub struct Pump {
    start: Instant,
    /// Milliseconds after `start` at which the last byte was read.
    last_output_ms: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Pump {
    /// Start copying each of `sources` into `log` on a thread of its own.
    pub fn start(log: File, sources: Vec<Box<dyn Read + Send>>) -> Pump {
        let start = Instant::now();
        let last_output_ms = Arc::new(AtomicU64::new(0));
        let log = Arc::new(log);
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

fn copy(mut source: Box<dyn Read + Send>, log: &File, start: Instant, last: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut warned = false;
    loop {
        match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                // On error keep draining: a child blocked on a full pipe
                // would stall and be killed for a disk problem of ours.
                if let Err(e) = (&*log).write_all(&buf[..n])
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
