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

/// Point `env` at the loopback Plane `plane` for repo `demo`.
fn use_plane(env: &Env, plane: &common::fake::Fake) {
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
}

#[test]
fn rust_log_trace_never_prints_a_plane_token() {
    let env = Env::new();
    // A Plane installation (the loopback fake): the reconciler's poll asks
    // Plane with the token in a header, and ureq would log raw headers at trace.
    let plane = common::fake::Fake::start();
    use_plane(&env, &plane);
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

const PLANE_TOKEN: &str = "Pk7QmZ2xWq4Lb9";
const GITEA_TOKEN: &str = "Gt4RvY8wHs2Jd6";
const TG_TOKEN: &str = "987654:Tg3QeR7uYxKm";
const WEBHOOK_SECRET: &str = "Wh5KpLx3Vc8N";

/// The `RUST_LOG` values that once printed tokens: a directive naming a
/// module of ureq or ureq_proto is more specific than any crate-wide cap.
const NOISY: &[&str] = &[
    "trace",
    "ureq_proto::util=trace,debug",
    "ureq::util=trace,ureq::run=trace,ureq_proto=trace,rustls=trace,trace",
    "debug",
];

/// One loopback server standing in for Plane, Gitea and Telegram: it
/// answers 200 `{}` to everything and records whether each request carried
/// the credential of the API it was meant for.
fn any_api() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let has = |name: &'static str, value: &str| {
                req.headers()
                    .iter()
                    .any(|h| h.field.equiv(name) && h.value.as_str() == value)
            };
            let who = if has("X-API-Key", PLANE_TOKEN) {
                "plane"
            } else if has("Authorization", &format!("token {GITEA_TOKEN}")) {
                "gitea"
            } else if req.url().contains(&format!("/bot{TG_TOKEN}/")) {
                "telegram"
            } else {
                "anonymous"
            };
            log.lock().expect("lock").push(who.to_owned());
            let _ = req.respond(tiny_http::Response::from_string("{}"));
        }
    });
    (url, seen)
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PLANE_TOKEN, GITEA_TOKEN, TG_TOKEN, WEBHOOK_SECRET] {
        assert!(!leaks(text, secret), "a secret in {what}:\n{text}");
    }
}

#[test]
fn no_rust_log_value_prints_a_token_of_plane_gitea_or_telegram() {
    let env = Env::new();
    let (url, seen) = any_api();
    std::fs::write(
        env.state().join("orch.toml"),
        format!(
            "tracker = \"plane\"\nplane_url = \"{url}\"\nplane_workspace = \"ws\"\n\
             forge = \"gitea\"\ngitea_url = \"{url}\"\ngitea_owner = \"o\"\n\
             notifier = \"telegram\"\ntelegram_api_url = \"{url}\"\ntelegram_chat_id = \"42\"\n\
             http_timeout_s = 5\n\n[repos.demo]\nremote = \"/nonexistent/demo.git\"\nplane_project = \"{}\"\n",
            common::fake::PROJECT
        ),
    )
    .expect("write config");
    for rust_log in NOISY {
        seen.lock().expect("lock").clear();
        let out = env
            .orch()
            .env("RUST_LOG", rust_log)
            .env("ORCH_PLANE_API_TOKEN", PLANE_TOKEN)
            .env("ORCH_GITEA_TOKEN", GITEA_TOKEN)
            .env("ORCH_TELEGRAM_BOT_TOKEN", TG_TOKEN)
            .env("ORCH_PLANE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .args(["doctor"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut apis = seen.lock().expect("lock").clone();
        apis.sort();
        apis.dedup();
        assert_eq!(apis, ["gitea", "plane", "telegram"], "{rust_log}: {stderr}");
        assert_no_secret(rust_log, &stderr);
        assert_no_secret(rust_log, &String::from_utf8_lossy(&out.stdout));
        // Logging still works: orch's own debug lines are there.
        assert!(stderr.contains("orch: debug:"), "{rust_log}: {stderr}");
    }
}

#[test]
fn the_webhook_router_log_file_holds_no_token_either() {
    let env = Env::new();
    let plane = common::fake::Fake::start();
    use_plane(&env, &plane);
    let item = plane.add_item("x", 7, "Backlog");
    let body = plane.webhook(&item, "state", "alice");
    let out = env
        .orch()
        .env("RUST_LOG", "ureq_proto::util=trace,trace")
        .env("ORCH_PLANE_API_TOKEN", PLANE_TOKEN)
        .env("ORCH_PLANE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .args(["ingest-webhook", "--source", "plane", "--event", "issue"])
        .args(["--signature", &common::fake::sign(WEBHOOK_SECRET, &body)])
        .write_stdin(body)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_secret("ingest's stderr", &String::from_utf8_lossy(&out.stderr));
    // The detached router asks Plane about the issue, logging to a file.
    let log = env.state().join("logs/webhook-router.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("webhook delivery 1 (plane)") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "router log:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        plane.world().requests.iter().any(|r| r.contains(&item)),
        "the router never asked Plane"
    );
    assert_no_secret("the router log", &text);
}
