//! Liveness is a held file lock, not a pid (docs/architecture.md, decision 2).
//!
//! A worker takes an exclusive `flock` on a fresh lock file named after a
//! random claim token *before* it claims a job, and writes that token into the
//! job row in the claiming UPDATE. The kernel releases the lock the moment the
//! process dies (SIGKILL, OOM, reboot), so anyone can tell a live owner from a
//! dead one with a non-blocking try-lock: exact, immediate, and immune to pid
//! reuse. Pids are kept only for diagnostics and signalling.
//!
//! When workers on several hosts share one queue, the same proof is a
//! PostgreSQL session advisory lock, held by a connection the worker keeps
//! open for the run ([`advisory`]). Callers ask [`Locks`], which is either
//! kind, and never which one it is.
//!
//! fs2 is called fully qualified and only here, because Rust 1.89's inherent
//! `File::lock*` methods shadow fs2's trait methods of the same names.
//! std opens every file with `O_CLOEXEC`, so a lock fd is never inherited by a
//! spawned agent: the agent cannot keep a dead worker looking alive.

pub mod advisory;
pub mod census;
pub mod lock;
pub mod locks;

pub use lock::{
    Liveness, RepoLock, WorkerLock, lock_file_exists, pid_holds_lock, probe, remove_if_free,
};
pub use locks::{Census, Locks};

pub mod reaper;

/// The kernel's id of the current boot, for diagnostics ("owner was on another boot").
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `N` random bytes from the kernel.
fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read as _;
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// 16 random bytes from the kernel, as 32 lowercase hex digits (a claim token, a UUID's bits).
pub fn random_hex16() -> std::io::Result<String> {
    Ok(random_bytes::<16>()?
        .iter()
        .fold(String::with_capacity(32), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        }))
}

/// A uniformly random number in `0.0..1.0` (for backoff jitter); 0.5 if the
/// kernel's random source cannot be read.
pub fn random_unit() -> f64 {
    random_bytes::<8>().map_or(0.5, |b| {
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    })
}
