//! The units in `systemd/` pass `systemd-analyze verify` offline (through
//! `scripts/verify-units.sh`, which fails on any warning). Skipped, with a
//! note, on machines without systemd-analyze.

use std::path::Path;
use std::process::Command;

#[test]
fn systemd_units_verify_offline() {
    let has_analyze = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_analyze {
        eprintln!("systemd-analyze not found: skipping the offline unit check");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify-units.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_orch"))
        .output()
        .expect("run scripts/verify-units.sh");
    assert!(
        out.status.success(),
        "systemd units do not verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
