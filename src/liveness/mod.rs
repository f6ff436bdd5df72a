//! Liveness is a held file lock, not a pid (DESIGN.md §2.2).
//!
//! A worker takes an exclusive `flock` on a fresh lock file named after a
//! random claim token *before* it claims a job, and writes that token into the
//! job row in the claiming UPDATE. The kernel releases the lock the moment the
//! process dies (SIGKILL, OOM, reboot), so anyone can tell a live owner from a
//! dead one with a non-blocking try-lock: exact, immediate, and immune to pid
//! reuse. Pids are kept only for diagnostics and signalling.
//!
//! fs2 is called fully qualified and only here, because Rust 1.89's inherent
//! `File::lock*` methods shadow fs2's trait methods of the same names.
//! std opens every file with `O_CLOEXEC`, so a lock fd is never inherited by a
//! spawned agent: the agent cannot keep a dead worker looking alive.

pub mod lock;

pub use lock::{Liveness, RepoLock, WorkerLock, lock_file_exists, pid_holds_lock, probe};

pub mod reaper;

/// The kernel's id of the current boot, for diagnostics ("owner was on another boot").
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// A uniformly random number in `0.0..1.0` (for backoff jitter).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if let Ok(hex) = random_hex(8) {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
