//! orch behind the real adnanh/webhook program (Debian package `webhook`,
//! 2.8.0, which `.ci/run` installs), run the way the shipped unit runs it:
//! the `ExecStart=` of examples/webhook/orch-webhook-shim.service with
//! systemd's `%d` (the credentials directory) and `$$` expanded, and the
//! shipped examples/webhook/hooks.yaml as is. Only deployment paths change:
//! the hooks file's location and the port. Each answer a sender can get is
//! checked on the wire. Skipped, saying so, where the program is not installed.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::fake::{Fake, PROJECT, sign};

const PLANE_SECRET: &str = "plane 'shim' \"secret\" \\ {{ }}";
const GITEA_SECRET: &str = "gitea-shim-secret";
const WEBHOOK: &str = "/usr/bin/webhook";
/// The command line the unit and the hooks file document.
const DOCUMENTED: &str =
    "webhook -hooks /etc/orch/hooks.yaml -template -verbose -ip 127.0.0.1 -port 9000";

struct Shim {
    child: Child,
    port: u16,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/webhook")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shell script of the unit's `ExecStart=/bin/sh -ec '…'`, as systemd
/// hands it to sh: `$$` → `$`, `%d` → the credentials directory.
fn exec_start_script(creds: &Path) -> String {
    let unit = example("orch-webhook-shim.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart= in the unit");
    let script = line
        .strip_prefix("/bin/sh -ec '")
        .and_then(|s| s.strip_suffix('\''))
        .expect("ExecStart=/bin/sh -ec '…'");
    assert!(
        script.contains(&format!("exec /usr/bin/{DOCUMENTED}")),
        "the unit does not run the documented command line: {script}"
    );
    script
        .replace("$$", "$")
        .replace("%d", &creds.to_string_lossy())
}

/// `webhook` started as the shipped unit starts it, with orch on PATH.
fn start(env: &Env) -> Option<Shim> {
    start_with(env, &[])
}

/// [`start`], with more variables in the unit's environment.
fn start_with(env: &Env, extra: &[(&str, &str)]) -> Option<Shim> {
    if !Path::new(WEBHOOK).exists() {
        eprintln!("skipped: {WEBHOOK} (Debian package webhook) is not installed");
        return None;
    }
    let creds = env.state().join("credentials");
    std::fs::create_dir_all(&creds).expect("mkdir");
    std::fs::write(
        creds.join("orch-plane-webhook-secret"),
        format!("{PLANE_SECRET}\n"),
    )
    .expect("credential");
    std::fs::write(creds.join("orch-gitea-webhook-secret"), GITEA_SECRET).expect("credential");
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webhook/hooks.yaml");
    let port = free_port();
    let script = exec_start_script(&creds)
        .replace("/etc/orch/hooks.yaml", &hooks.to_string_lossy())
        .replace("-port 9000", &format!("-port {port}"));
    let orch_dir = Path::new(env!("CARGO_BIN_EXE_orch")).parent().expect("dir");
    let path = std::env::join_paths(std::iter::once(orch_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let child = Command::new("/bin/sh")
        .args(["-ec", &script])
        .env_clear()
        .env("PATH", path)
        .env("HOME", env.state())
        .env("ORCH_STATE_DIR", env.state())
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start webhook");
    let shim = Shim { child, port };
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "webhook never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(shim)
}

fn post(shim: &Shim, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", shim.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

fn plane(shim: &Shim, delivery: &str, signature: Option<String>, body: &[u8]) -> (u16, String) {
    let mut headers = vec![
        ("X-Plane-Event", "issue".to_owned()),
        ("X-Plane-Delivery", delivery.to_owned()),
    ];
    if let Some(sig) = signature {
        headers.push(("X-Plane-Signature", sig));
    }
    post(shim, "/hooks/plane", &headers, body)
}

fn stored(env: &Env) -> i64 {
    env.sqlite()
        .query_row("SELECT count(*) FROM webhook_deliveries", [], |r| r.get(0))
        .expect("count")
}

const BODY: &str = r#"{"event":"issue","action":"updated","data":{"id":"x","project":"unknown"}}"#;

#[test]
fn the_documented_command_line_is_the_one_the_hooks_file_and_docs_give() {
    assert!(example("hooks.yaml").contains(DOCUMENTED));
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/integrations.md"))
            .expect("docs");
    assert!(docs.contains(DOCUMENTED), "docs/integrations.md");
    let script = exec_start_script(Path::new("/run/credentials/x"));
    assert!(
        !script.contains(PLANE_SECRET) && script.contains("/run/credentials/x/"),
        "{script}"
    );
}

/// Issue #15 (2, 3): the shipped file loads on webhook 2.8.0, and a stored or
/// duplicate delivery is answered 202.
#[test]
fn signed_deliveries_are_stored_and_answered_202() {
    let env = Env::new();
    let Some(shim) = start(&env) else { return };
    let (status, resp) = plane(
        &shim,
        "shim-1",
        Some(sign(PLANE_SECRET, BODY)),
        BODY.as_bytes(),
    );
    assert_eq!(status, 202, "{resp}");
    assert!(resp.contains("stored delivery"), "{resp}");
    let again = plane(
        &shim,
        "shim-2",
        Some(format!("sha256={}", sign(PLANE_SECRET, BODY))),
        BODY.as_bytes(),
    );
    assert_eq!(again.0, 202, "{}", again.1);
    assert!(again.1.contains("duplicate"), "{}", again.1);
    let gitea = r#"{"action":"opened","repository":{"name":"demo"}}"#;
    let (status, resp) = post(
        &shim,
        "/hooks/gitea",
        &[
            ("X-Gitea-Event", "pull_request".into()),
            ("X-Gitea-Delivery", "g-1".into()),
            ("X-Gitea-Signature", sign(GITEA_SECRET, gitea)),
        ],
        gitea.as_bytes(),
    );
    assert_eq!(status, 202, "{resp}");
    let rows = env.rows("SELECT source, delivery_id FROM webhook_deliveries ORDER BY id");
    assert_eq!(
        rows,
        vec![
            vec![serde_json::json!("plane"), serde_json::json!("shim-1")],
            vec![serde_json::json!("gitea"), serde_json::json!("g-1")],
        ]
    );
}

/// Issue #15 (3): what can never be accepted is answered 401, not `200 Hook
/// rules were not satisfied.` (which a sender takes as delivered) nor 500
/// (which it retries), and nothing is stored.
#[test]
fn unsigned_badly_signed_and_non_object_deliveries_are_answered_401() {
    let env = Env::new();
    let Some(shim) = start(&env) else { return };
    let body = BODY.as_bytes();
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("no signature", None, body.to_vec()),
        ("empty signature", Some(String::new()), body.to_vec()),
        ("wrong secret", Some(sign("wrong", BODY)), body.to_vec()),
        (
            "wrong secret, sha256=",
            Some(format!("sha256={}", sign("wrong", BODY))),
            body.to_vec(),
        ),
        ("not hex", Some("zz".into()), body.to_vec()),
        (
            "array",
            Some(sign(PLANE_SECRET, "[1,2]")),
            b"[1,2]".to_vec(),
        ),
        (
            "string",
            Some(sign(PLANE_SECRET, "\"s\"")),
            b"\"s\"".to_vec(),
        ),
        ("null", Some(sign(PLANE_SECRET, "null")), b"null".to_vec()),
        (
            "truncated",
            Some(sign(PLANE_SECRET, "{\"a\":")),
            b"{\"a\":".to_vec(),
        ),
        ("empty", Some(sign(PLANE_SECRET, "")), Vec::new()),
        (
            "trailing bytes",
            Some(sign(PLANE_SECRET, "{\"a\":1} x")),
            b"{\"a\":1} x".to_vec(),
        ),
    ];
    for (i, (what, signature, body)) in cases.into_iter().enumerate() {
        let (status, resp) = plane(&shim, &format!("bad-{i}"), signature, &body);
        assert_eq!(status, 401, "{what}: {resp}");
    }
    assert_eq!(stored(&env), 0, "a refused delivery was stored");
}

/// A body the rules let through but orch refuses (exit 65) is answered 500
/// with orch's one-line reason (webhook 2.8.0 answers any failed command
/// with 500), and nothing is stored.
#[test]
fn a_body_orch_refuses_after_the_rules_is_answered_500_with_the_reason() {
    let env = Env::new();
    let Some(shim) = start(&env) else { return };
    let body = br#"{"a":"\ud800"}"#;
    let (status, resp) = plane(&shim, "lone", Some(sign(PLANE_SECRET, body)), body);
    assert_eq!(status, 500, "{resp}");
    assert!(resp.contains("nothing stored"), "{resp}");
    assert_eq!(stored(&env), 0);
}

/// Issue #15 (4), through the shim: with a Plane answering in 3 s, webhook
/// answers 202 at once (the router orch starts does not hold webhook, which
/// waits for its command's output), and the pipeline starts afterwards.
#[test]
fn a_slow_plane_does_not_delay_the_answer() {
    let fake = Fake::start();
    let env = Env::bare();
    env.orch().args(["demo", "--setup-only"]).assert().success();
    let path = env.state().join("orch.toml");
    let config = std::fs::read_to_string(&path).expect("config").replace(
        "[repos.demo]",
        &format!("[repos.demo]\nplane_project = \"{PROJECT}\""),
    );
    std::fs::write(
        &path,
        format!(
            "tracker = \"plane\"\nplane_url = \"{}\"\nplane_workspace = \"ws\"\n{config}",
            fake.url
        ),
    )
    .expect("config");
    let Some(shim) = start_with(&env, &[("ORCH_PLANE_API_TOKEN", "plane-token")]) else {
        return;
    };
    let item = fake.add_item("Slow", 21, "To Analyse");
    let body = fake.webhook(&item, "state", "alice");
    fake.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let (status, resp) = plane(
        &shim,
        "slow-1",
        Some(sign(PLANE_SECRET, &body)),
        body.as_bytes(),
    );
    let took = started.elapsed();
    assert_eq!(status, 202, "{resp}");
    eprintln!("webhook answered in {took:?} with a 3 s Plane");
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env
        .rows("SELECT id FROM webhook_deliveries WHERE status = 'pending'")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the pipeline never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "pipeline started {:?} after the delivery",
        started.elapsed()
    );
}
