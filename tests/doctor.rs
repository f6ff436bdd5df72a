//! `orch doctor` through the binary: a healthy demo installation passes
//! offline; a broken config, a missing credential and unreachable APIs are
//! `fail` lines; a secret's value never appears in the output, whatever the
//! log level.

use std::path::Path;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;

const PLANE_TOKEN: &str = "Pk7QmZ2xWq4Lb9";
const GITEA_TOKEN: &str = "Gt4RvY8wHs2Jd6";
const TG_TOKEN: &str = "987654:Tg3QeR7uYxKm";
const PROJECT: &str = "11111111-1111-4111-8111-111111111111";

/// A demo installation (config, bare forge, database), set up by `orch demo --setup-only`.
fn demo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    orch(dir.path())
        .args(["demo", "--setup-only"])
        .assert()
        .success();
    dir
}

fn orch(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orch"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .arg("--state-dir")
        .arg(state.join("s"));
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run orch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line<'a>(stdout: &'a str, check: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(check))
        })
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{stdout}"))
}

#[test]
fn healthy_demo_installation_passes_offline() {
    let dir = demo();
    let (code, out, err) = run(orch(dir.path()).args(["doctor", "--offline"]));
    assert_eq!(code, 0, "{out}{err}");
    for check in [
        "config:",
        "state dir:",
        "database:",
        "database integrity:",
        "journal mode:",
        "locks:",
        "tool git:",
        "repo demo:",
        "agent:",
    ] {
        assert!(line(&out, check).starts_with("ok "), "{check}\n{out}");
    }
    let json: serde_json::Value = serde_json::from_slice(
        &orch(dir.path())
            .args(["doctor", "--offline", "--json"])
            .output()
            .expect("run")
            .stdout,
    )
    .expect("json");
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["failures"], 0);
}

#[test]
fn broken_config_is_a_fail_line_and_exit_1() {
    let dir = demo();
    let cfg = dir.path().join("s/orch.toml");
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(&cfg, format!("max_concurency = 3\n{text}")).expect("write");
    let (code, out, _) = run(orch(dir.path()).args(["doctor", "--offline"]));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "config:");
    assert!(l.starts_with("fail"), "{l}");
    assert!(l.contains("max_concurency"), "{l}");
    // The checks that need no config still ran.
    assert!(line(&out, "database:").starts_with("ok"), "{out}");
}

#[test]
fn world_writable_state_dir_fails() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = demo();
    let state = dir.path().join("s");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, out, _) = run(orch(dir.path()).args(["doctor", "--offline"]));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "state dir:");
    assert!(l.starts_with("fail") && l.contains("world-writable"), "{l}");
}

fn use_plane(dir: &Path, url: &str) {
    let cfg = dir.join("s/orch.toml");
    let text = std::fs::read_to_string(&cfg).expect("read");
    let text = text.replacen(
        "\n[repos.demo]\n",
        &format!(
            "tracker = \"plane\"\nplane_url = \"{url}\"\nplane_workspace = \"ws\"\n\
             forge = \"gitea\"\ngitea_url = \"{url}\"\ngitea_owner = \"o\"\n\
             notifier = \"telegram\"\ntelegram_api_url = \"{url}\"\ntelegram_chat_id = \"42\"\n\
             http_timeout_s = 5\n\n[repos.demo]\nplane_project = \"{PROJECT}\"\n"
        ),
        1,
    );
    std::fs::write(&cfg, text).expect("write");
}

#[test]
fn missing_plane_token_fails_without_printing_secrets() {
    let dir = demo();
    use_plane(dir.path(), "http://127.0.0.1:9");
    let (code, out, err) = run(orch(dir.path())
        .args(["doctor", "--offline"])
        .env("ORCH_GITEA_TOKEN", GITEA_TOKEN)
        .env("ORCH_TELEGRAM_BOT_TOKEN", TG_TOKEN));
    assert_eq!(code, 1, "{out}{err}");
    let l = line(&out, "credential plane_api_token:");
    assert!(l.starts_with("fail"), "{l}");
    assert!(
        l.contains("ORCH_PLANE_API_TOKEN"),
        "says where to set it: {l}"
    );
    let l = line(&out, "credential gitea_token:");
    assert!(
        l.starts_with("ok") && l.contains("environment ORCH_GITEA_TOKEN"),
        "{l}"
    );
    for secret in [GITEA_TOKEN, TG_TOKEN] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "secret printed:\n{out}{err}"
        );
    }
}

#[test]
fn credentials_from_a_credentials_directory_name_the_file() {
    let dir = demo();
    use_plane(dir.path(), "http://127.0.0.1:9");
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(creds.join("plane-api-token"), format!("{PLANE_TOKEN}\n")).expect("write");
    let (_, out, err) = run(orch(dir.path())
        .args(["doctor", "--offline"])
        .env("CREDENTIALS_DIRECTORY", &creds));
    let l = line(&out, "credential plane_api_token:");
    assert!(l.starts_with("ok") && l.contains("credential file"), "{l}");
    assert!(!out.contains(PLANE_TOKEN) && !err.contains(PLANE_TOKEN));
}

/// The board every state of the contract is on (plus one orch ignores).
const FULL_BOARD: &[&str] = &[
    "Backlog",
    "To Analyse",
    "In Progress",
    "In Review",
    "Approved",
    "Rejected",
    "Needs Input",
    "Blocked",
    "Confirm Deploy",
    "STOP",
    "Done",
];

/// A loopback stand-in for Plane, Gitea and Telegram, recording the
/// requests' paths and whether they carried the right credentials.
fn stub(healthy: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    stub_with_board(healthy, FULL_BOARD)
}

/// [`stub`] whose Plane project has the states named `board`.
fn stub_with_board(healthy: bool, board: &[&str]) -> (String, Arc<Mutex<Vec<String>>>) {
    let states = serde_json::Value::Array(
        board
            .iter()
            .enumerate()
            .map(|(i, name)| serde_json::json!({"id": format!("s{i}"), "name": name}))
            .collect(),
    )
    .to_string();
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let path = req.url().split('?').next().unwrap_or("").to_owned();
            let header = |name: &'static str| {
                req.headers()
                    .iter()
                    .find(|h| h.field.equiv(name))
                    .map(|h| h.value.as_str().to_owned())
                    .unwrap_or_default()
            };
            let authorised = header("X-API-Key") == PLANE_TOKEN
                || header("Authorization") == format!("token {GITEA_TOKEN}")
                || path.contains(&format!("/bot{TG_TOKEN}/"));
            log.lock()
                .expect("lock")
                .push(format!("{path} auth={authorised}"));
            let (status, body) = if !healthy || !authorised {
                (401, r#"{"detail": "Invalid token."}"#.to_owned())
            } else if path.ends_with("/states/") {
                (200, states.clone())
            } else if path.ends_with("/getMe") {
                (
                    200,
                    r#"{"ok": true, "result": {"username": "orch_bot"}}"#.to_owned(),
                )
            } else if path == "/api/v1/repos/o/demo" {
                (
                    200,
                    r#"{"full_name": "o/demo", "permissions": {"push": true}}"#.to_owned(),
                )
            } else {
                (404, r#"{"message": "not found"}"#.to_owned())
            };
            let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(status));
        }
    });
    (url, seen)
}

#[test]
fn remote_apis_are_probed_and_secrets_never_printed_even_at_trace() {
    let dir = demo();
    let (url, seen) = stub(true);
    use_plane(dir.path(), &url);
    let (code, out, err) = run(orch(dir.path())
        .arg("doctor")
        .env("RUST_LOG", "trace")
        .env("ORCH_PLANE_API_TOKEN", PLANE_TOKEN)
        .env("ORCH_GITEA_TOKEN", GITEA_TOKEN)
        .env("ORCH_TELEGRAM_BOT_TOKEN", TG_TOKEN)
        .env("ORCH_PLANE_WEBHOOK_SECRET", "Wh5KpLx3Vc8N"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(line(&out, "api plane demo:").starts_with("ok"), "{out}");
    assert!(
        line(&out, "api plane demo:").contains("every state of the board contract"),
        "{out}"
    );
    assert!(line(&out, "api gitea demo:").starts_with("ok"), "{out}");
    assert!(line(&out, "api telegram:").contains("@orch_bot"), "{out}");
    assert!(
        line(&out, "webhook secret plane:").starts_with("ok"),
        "{out}"
    );
    assert!(
        line(&out, "webhook secret gitea:").starts_with("warn"),
        "{out}"
    );
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.iter().all(|r| r.ends_with("auth=true")), "{seen:?}");
    assert!(seen.len() >= 3, "{seen:?}");
    for secret in [PLANE_TOKEN, GITEA_TOKEN, TG_TOKEN, "Wh5KpLx3Vc8N"] {
        assert!(!leaks(&out, secret), "secret on stdout:\n{out}");
        assert!(!leaks(&err, secret), "secret in the trace log:\n{err}");
    }
    // The trace log did run (so the assertion above means something).
    assert!(
        err.contains("orch: trace:") || err.contains("orch: debug:"),
        "{err}"
    );
}

#[test]
fn unreachable_or_refusing_apis_fail() {
    let dir = demo();
    let (url, _) = stub(false);
    use_plane(dir.path(), &url);
    let (code, out, err) = run(orch(dir.path())
        .arg("doctor")
        .env("ORCH_PLANE_API_TOKEN", PLANE_TOKEN)
        .env("ORCH_GITEA_TOKEN", GITEA_TOKEN)
        .env("ORCH_TELEGRAM_BOT_TOKEN", TG_TOKEN));
    assert_eq!(code, 1, "{out}{err}");
    for check in ["api plane demo:", "api gitea demo:", "api telegram:"] {
        let l = line(&out, check);
        assert!(l.starts_with("fail") && l.contains("401"), "{l}");
    }
    for secret in [PLANE_TOKEN, GITEA_TOKEN, TG_TOKEN] {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }
}

#[test]
fn unreachable_remote_fails_and_offline_skips_urls() {
    let dir = demo();
    let cfg = dir.path().join("s/orch.toml");
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        format!("{text}\n[repos.gone]\nremote = \"/nonexistent/gone.git\"\n\n[repos.far]\nremote = \"https://127.0.0.1:9/x.git\"\n"),
    )
    .expect("write");
    let (code, out, _) = run(orch(dir.path()).args(["doctor", "--offline"]));
    assert_eq!(code, 1, "{out}");
    let gone = line(&out, "repo gone:");
    assert!(gone.starts_with("fail"), "{out}");
    // git's reason is its first line, not the advice after it.
    assert!(
        gone.contains("'/nonexistent/gone.git' does not appear to be a git repository"),
        "{gone}"
    );
    let far = line(&out, "repo far:");
    assert!(far.starts_with("ok") && far.contains("--offline"), "{far}");
}

/// Whether any 6-character piece of `secret` appears in `text`: ureq's trace
/// log prints raw requests as 16-byte hexdump rows, which split a token.
fn leaks(text: &str, secret: &str) -> bool {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(6)
        .any(|w| text.contains(&w.iter().collect::<String>()))
}

/// The board contract (docs/integrations.md): a board without a state orch
/// sets fails doctor — those state changes would be dead-lettered — and one
/// without a state a person uses to ask orch for something warns.
#[test]
fn doctor_checks_each_plane_board_against_the_board_contract() {
    let doctor = |board: &[&str]| {
        let dir = demo();
        let (url, _) = stub_with_board(true, board);
        use_plane(dir.path(), &url);
        run(orch(dir.path())
            .arg("doctor")
            .env("ORCH_PLANE_API_TOKEN", PLANE_TOKEN)
            .env("ORCH_GITEA_TOKEN", GITEA_TOKEN)
            .env("ORCH_TELEGRAM_BOT_TOKEN", TG_TOKEN)
            .env("ORCH_PLANE_WEBHOOK_SECRET", "Wh5KpLx3Vc8N"))
    };
    let without =
        |name: &str| -> Vec<&str> { FULL_BOARD.iter().copied().filter(|s| *s != name).collect() };
    let (code, out, _) = doctor(&without("In Review"));
    let plane = line(&out, "api plane demo:");
    assert!(plane.starts_with("fail"), "{out}");
    assert!(plane.contains("lacks In Review, which orch sets"), "{out}");
    assert_ne!(code, 0);
    let (code, out, _) = doctor(&without("Confirm Deploy"));
    let plane = line(&out, "api plane demo:");
    assert!(plane.starts_with("warn"), "{out}");
    assert!(plane.contains("Confirm Deploy (to confirm"), "{out}");
    assert_eq!(code, 0, "{out}");
}
