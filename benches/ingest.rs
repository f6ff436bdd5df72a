//! Webhook intake benchmark: what one `orch ingest-webhook` process costs for
//! a signed Plane delivery, against spawning a no-op binary the same way.
//!
//! Run it with `cargo bench --bench ingest`. It prints, in one run, the median
//! wall time per ingest of `BENCH_DELIVERIES` (300) distinct signed deliveries
//! made one after another (so deliveries/s from sequential invocations), the
//! median `/bin/true` spawn (each spawn right after an ingest, so both see
//! the same machine), and their ratio (goal ≤ 5×). Every delivery is checked
//! to be stored exactly once. Each new delivery also starts its detached
//! router, which runs on while the next delivery comes in, as behind a shim.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");
const SECRET: &str = "bench-secret";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sign(body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn main() {
    let n: usize = std::env::var("BENCH_DELIVERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    let orch = || {
        let mut c = Command::new(ORCH);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ORCH_") {
                c.env_remove(k);
            }
        }
        c.env("ORCH_STATE_DIR", state)
            .env("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
            .env_remove("RUST_LOG");
        c
    };
    assert!(
        orch()
            .arg("init")
            .stdout(Stdio::null())
            .status()
            .expect("init")
            .success()
    );
    // Each ingest alternates with a `/bin/true` spawn, so that both see the
    // same machine (a shared VM's speed drifts by tens of percent).
    let mut ingests = Vec::with_capacity(n);
    let mut spawns = Vec::with_capacity(n);
    let mut ingesting = Duration::ZERO;
    for i in 0..n {
        let body = format!(
            r#"{{"event":"issue","action":"updated","data":{{"id":"issue-{i}","project":"p","state":{{"id":"s","name":"To Analyse"}},"updated_at":"{i}"}},"activity":{{"field":"state","actor":{{"id":"alice"}}}}}}"#
        );
        let t0 = Instant::now();
        let mut child = orch()
            .args([
                "ingest-webhook",
                "--source",
                "plane",
                "--event",
                "issue",
                "--delivery",
                &format!("d-{i}"),
                "--signature",
                &sign(&body),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ingest");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("write");
        assert!(child.wait().expect("wait").success(), "ingest {i} failed");
        ingests.push(t0.elapsed());
        ingesting += t0.elapsed();
        let t0 = Instant::now();
        let mut child = Command::new("/bin/true")
            .stdin(Stdio::piped())
            .spawn()
            .expect("true");
        drop(child.stdin.take());
        child.wait().expect("wait");
        spawns.push(t0.elapsed());
    }
    let total = ingesting;
    let stored: i64 = rusqlite::Connection::open(state.join("orch.db"))
        .expect("open")
        .query_row("SELECT count(*) FROM webhook_deliveries", [], |r| r.get(0))
        .expect("count");
    assert_eq!(stored, n as i64, "every delivery stored exactly once");
    let (ingest, spawn) = (median(ingests), median(spawns));
    let ratio = ingest.as_secs_f64() / spawn.as_secs_f64().max(1e-9);
    println!("orch ingest bench: {n} signed Plane deliveries, one process each, binary {ORCH}");
    println!(
        "  ingest-webhook {:.2} ms per delivery (median), {:.0} deliveries/s sequential",
        ingest.as_secs_f64() * 1000.0,
        n as f64 / total.as_secs_f64()
    );
    println!(
        "  /bin/true      {:.2} ms per spawn (median)",
        spawn.as_secs_f64() * 1000.0
    );
    println!(
        "  ratio {ratio:.1}x (goal <= 5x) {}; stored exactly once: {stored}/{n}",
        if ratio <= 5.0 { "PASS" } else { "MISS" }
    );
}
