//! Log lines are plain `orch: <level>: message` on stderr, with no colours and
//! no timestamps, under journald (`JOURNAL_STREAM`) and in a pipe alike; a
//! token in the environment never reaches them, even at `RUST_LOG=trace`.

mod common;

use common::Env;

const TOKEN: &str = "Zq9XwV7kPtRy3M";

fn assert_plain(stderr: &str) {
    assert!(!stderr.is_empty(), "expected some log lines");
    assert!(!stderr.contains('\u{1b}'), "colour escape in:\n{stderr}");
    for line in stderr.lines() {
        let rest = line
            .strip_prefix("orch: ")
            .unwrap_or_else(|| panic!("{line:?}"));
        let (level, _) = rest.split_once(": ").unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&level),
            "{line:?}"
        );
    }
}

#[test]
fn log_lines_are_plain_under_journald_and_in_pipes() {
    let env = Env::new();
    for journal in [false, true] {
        let mut c = env.orch();
        // Nothing is queued: run-agent logs why, and exits 3.
        c.env_remove("RUST_LOG")
            .args(["-vvv", "run-agent", "--next"]);
        if journal {
            c.env("JOURNAL_STREAM", "8:12345");
        }
        let out = c.output().expect("run");
        assert_eq!(out.status.code(), Some(3));
        assert_plain(&String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn rust_log_trace_never_prints_a_plane_token() {
    let env = Env::new();
    // A Plane installation (the loopback fake): the reconciler's poll asks
    // Plane with the token in a header, and ureq would log raw headers at trace.
    let plane = common::fake::Fake::start();
    std::fs::write(
        env.state().join("orch.toml"),
        format!(
            "tracker = \"plane\"\nplane_url = \"{}\"\nplane_workspace = \"ws\"\nhttp_timeout_s = 5\n\n\
             [repos.demo]\nremote = \"/nonexistent/demo.git\"\nplane_project = \"{}\"\n",
            plane.url,
            common::fake::PROJECT
        ),
    )
    .expect("write config");
    let out = env
        .orch()
        .env("RUST_LOG", "trace")
        .env("ORCH_PLANE_API_TOKEN", TOKEN)
        .args(["reconcile"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("orch: trace:") || stderr.contains("orch: debug:"),
        "{stderr}"
    );
    assert!(!leaks(&stderr, TOKEN), "token in the log:\n{stderr}");
    assert!(!leaks(&stdout, TOKEN), "token on stdout:\n{stdout}");
    assert_plain(&stderr);
}

/// Whether any 6-character piece of `secret` appears in `text`: ureq's trace
/// log prints raw requests as 16-byte hexdump rows, which split a token.
fn leaks(text: &str, secret: &str) -> bool {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(6)
        .any(|w| text.contains(&w.iter().collect::<String>()))
}
