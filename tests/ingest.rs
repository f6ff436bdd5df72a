//! `orch ingest-webhook` through the real binary: signed Plane and Gitea
//! deliveries are stored once (dedup by delivery id and by content), bad
//! input is refused with the documented exit code and leaves no row, the
//! adnanh/webhook environment works, and `--inetd` speaks enough HTTP/1.1.

mod common;

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Env;
use hmac::{Hmac, KeyInit, Mac};
use predicates::prelude::*;
use sha2::Sha256;

const PLANE_SECRET: &str = "plane-secret-123";
const GITEA_SECRET: &str = "gitea-secret-456";
const PLANE_BODY: &str = r#"{"event":"issue","action":"updated","webhook_id":"w","workspace_id":"ws","data":{"id":"9f0c","state":{"id":"s1","name":"In Progress","group":"started"}},"activity":{"field":"state"}}"#;
const GITEA_BODY: &str =
    r#"{"action":"closed","number":7,"pull_request":{"merged":true,"head":{"ref":"ORCH-7"}}}"#;

/// Hex HMAC-SHA256, computed independently of orch.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `orch ingest-webhook` with both secrets configured.
fn ingest(env: &Env) -> assert_cmd::Command {
    let mut c = env.orch();
    c.env("ORCH_PLANE_WEBHOOK_SECRET", PLANE_SECRET)
        .env("ORCH_GITEA_WEBHOOK_SECRET", GITEA_SECRET)
        .arg("ingest-webhook");
    c
}

/// (source, event, delivery_id, body, status) of every stored row, by id.
type Row = (String, Option<String>, Option<String>, Vec<u8>, String);

fn rows(env: &Env) -> Vec<Row> {
    let db = env.sqlite();
    let mut stmt = db
        .prepare(
            "SELECT source, event, delivery_id, body, status FROM webhook_deliveries ORDER BY id",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

#[test]
fn signed_plane_and_gitea_deliveries_are_stored() {
    let env = Env::new();
    ingest(&env)
        .args(["--source", "plane", "--event", "issue", "--delivery", "p-1"])
        .args(["--signature", &sign(PLANE_SECRET, PLANE_BODY.as_bytes())])
        .write_stdin(PLANE_BODY)
        .assert()
        .success()
        .stdout("stored delivery 1\n");
    // Gitea's X-Hub-Signature-256 form, through the `ingest` alias.
    let mut c = env.orch();
    c.env("ORCH_GITEA_WEBHOOK_SECRET", GITEA_SECRET)
        .args(["ingest", "--source", "gitea", "--event", "pull_request"])
        .args(["--delivery", "g-1", "--json"])
        .arg(format!(
            "--signature=sha256={}",
            sign(GITEA_SECRET, GITEA_BODY.as_bytes())
        ))
        .write_stdin(GITEA_BODY);
    let out = c.assert().success().get_output().stdout.clone();
    let json: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"outcome": "stored", "delivery": 2})
    );

    // Each stored delivery started a detached router: wait for both to be routed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&env).iter().any(|r| r.4 == "pending") {
        assert!(Instant::now() < deadline, "never routed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = rows(&env);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        (
            "plane".into(),
            Some("issue".into()),
            Some("p-1".into()),
            PLANE_BODY.as_bytes().to_vec(),
            // Stored, then routed: no repo declares this Plane project.
            "ignored".into()
        )
    );
    assert_eq!(rows[1].0, "gitea");
    assert_eq!(rows[1].1.as_deref(), Some("pull_request"));
    assert_eq!(rows[1].2.as_deref(), Some("g-1"));
    assert_eq!(rows[1].3, GITEA_BODY.as_bytes());

    // Both were routed right after they were stored; nothing is left pending.
    let pending = orch::webhooks::pending(env.db().conn(), 10).expect("pending");
    assert!(pending.is_empty());
    assert_eq!(rows[1].4, "ignored");
}

#[test]
fn duplicates_by_delivery_id_and_by_content_exit_0_with_one_row() {
    let env = Env::new();
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());
    let run = |delivery: &str| {
        ingest(&env)
            .args([
                "--source",
                "plane",
                "--event",
                "issue",
                "--delivery",
                delivery,
            ])
            .args(["--signature", &sig])
            .write_stdin(PLANE_BODY)
            .assert()
            .success()
    };
    run("d-1").stdout("stored delivery 1\n");
    run("d-1").stdout("duplicate of delivery 1 (same delivery id); ignored\n");
    // Plane's retry: a fresh delivery id, the same body.
    run("d-2").stdout("duplicate of delivery 1 (same content); ignored\n");
    let out = ingest(&env)
        .args(["--source", "plane", "--delivery", "d-3", "--json"])
        .args(["--signature", &sig])
        .write_stdin(PLANE_BODY)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let json: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"outcome": "duplicate", "delivery": 1, "same": "content"})
    );
    assert_eq!(rows(&env).len(), 1);

    // The same body from the other source is a different delivery.
    env.orch()
        .args(["ingest", "--source", "gitea", "--insecure-no-signature"])
        .write_stdin(PLANE_BODY)
        .assert()
        .success()
        .stdout("stored delivery 2\n");
}

#[test]
fn bad_missing_or_unconfigured_signatures_exit_77_and_store_nothing() {
    let env = Env::new();
    let body = PLANE_BODY.as_bytes();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--signature".into(), sign("wrong", body)],
            "does not match",
        ),
        (
            vec!["--signature".into(), sign(GITEA_SECRET, body)],
            "does not match",
        ),
        (
            vec!["--signature".into(), "zz-not-hex".into()],
            "does not match",
        ),
        (vec![], "without a signature"),
        (
            vec!["--signature".into(), String::new()],
            "without a signature",
        ),
        // --insecure-no-signature does not bypass a configured secret.
        (
            vec!["--insecure-no-signature".into()],
            "without a signature",
        ),
    ];
    for (args, expect) in cases {
        let a = ingest(&env)
            .args(["--source", "plane"])
            .args(&args)
            .write_stdin(PLANE_BODY)
            .assert()
            .code(77);
        let err = stderr_of(&a);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains(PLANE_SECRET), "the secret leaked: {err}");
    }
    // The body signed for a different body.
    ingest(&env)
        .args(["--source", "plane", "--signature"])
        .arg(sign(PLANE_SECRET, b"{}"))
        .write_stdin(PLANE_BODY)
        .assert()
        .code(77);

    // No secret configured at all: refused, saying how to configure one.
    let a = env
        .orch()
        .args(["ingest-webhook", "--source", "gitea", "--signature"])
        .arg(sign(GITEA_SECRET, body))
        .write_stdin(PLANE_BODY)
        .assert()
        .code(77);
    let err = stderr_of(&a);
    assert!(
        err.contains("ORCH_GITEA_WEBHOOK_SECRET") && err.contains("--insecure-no-signature"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(rows(&env).is_empty());
}

#[test]
fn insecure_without_a_secret_stores_unsigned_deliveries() {
    let env = Env::new();
    env.orch()
        .args([
            "ingest-webhook",
            "--source",
            "plane",
            "--insecure-no-signature",
        ])
        .args(["--event", "issue"])
        .write_stdin(PLANE_BODY)
        .assert()
        .success()
        .stdout("stored delivery 1\n");
    assert_eq!(rows(&env).len(), 1);
}

#[test]
fn secret_from_systemd_credentials() {
    let env = Env::new();
    let creds = env.state().join("creds");
    std::fs::create_dir_all(&creds).expect("mkdir");
    std::fs::write(
        creds.join("plane-webhook-secret"),
        format!("{PLANE_SECRET}\n"),
    )
    .expect("write");
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());
    env.orch()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .args(["ingest-webhook", "--source", "plane", "--signature", &sig])
        .write_stdin(PLANE_BODY)
        .assert()
        .success()
        .stdout("stored delivery 1\n");
    env.orch()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .args(["ingest-webhook", "--source", "plane", "--signature"])
        .arg(sign("other", PLANE_BODY.as_bytes()))
        .write_stdin(r#"{"other":1}"#)
        .assert()
        .code(77);
}

#[test]
fn malformed_and_oversize_bodies_exit_65_and_store_nothing() {
    let env = Env::new();
    for body in [
        "",
        "not json",
        "{\"a\":",
        "[1,2]",
        "\"string\"",
        "{} trailing",
    ] {
        let a = ingest(&env)
            .args(["--source", "plane", "--signature"])
            .arg(sign(PLANE_SECRET, body.as_bytes()))
            .write_stdin(body)
            .assert()
            .code(65);
        let err = stderr_of(&a);
        assert!(err.contains("nothing stored"), "{body:?}: {err}");
    }
    // Over webhook_max_body_bytes, even if signed.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
    let a = ingest(&env)
        .env("ORCH_WEBHOOK_MAX_BODY_BYTES", "100")
        .args(["--source", "plane", "--signature"])
        .arg(sign(PLANE_SECRET, big.as_bytes()))
        .write_stdin(big.clone())
        .assert()
        .code(65);
    assert!(stderr_of(&a).contains("webhook_max_body_bytes"));
    // Exactly at the limit is fine.
    let exact = format!(r#"{{"pad":"{}"}}"#, "x".repeat(90));
    assert_eq!(exact.len(), 100);
    ingest(&env)
        .env("ORCH_WEBHOOK_MAX_BODY_BYTES", "100")
        .args(["--source", "plane", "--signature"])
        .arg(sign(PLANE_SECRET, exact.as_bytes()))
        .write_stdin(exact)
        .assert()
        .success();
    // A hostile delivery id.
    ingest(&env)
        .args(["--source", "plane", "--delivery", "a\nb", "--signature"])
        .arg(sign(PLANE_SECRET, b"{}"))
        .write_stdin("{}")
        .assert()
        .code(65);
    assert_eq!(rows(&env).len(), 1);
    // The settings are validated.
    env.orch()
        .env("ORCH_WEBHOOK_READ_TIMEOUT_S", "0")
        .args(["ingest", "--source", "plane", "--insecure-no-signature"])
        .write_stdin("{}")
        .assert()
        .code(78)
        .stderr(predicate::str::contains("webhook_read_timeout_s"));
}

#[test]
fn adnanh_webhook_environment() {
    // What adnanh/webhook passes: the raw body in a file, headers in variables.
    let env = Env::new();
    let body_file = env.state().join("body");
    std::fs::write(&body_file, PLANE_BODY).expect("write body");
    let run = |delivery: &str| {
        let mut c = env.orch();
        c.env("ORCH_PLANE_WEBHOOK_SECRET", PLANE_SECRET)
            .env("ORCH_BODY_FILE", &body_file)
            .env("ORCH_EVENT", "issue")
            .env("ORCH_DELIVERY", delivery)
            .env("ORCH_SIGNATURE", sign(PLANE_SECRET, PLANE_BODY.as_bytes()))
            .args(["ingest-webhook", "--source=plane"]);
        c
    };
    run("env-1")
        .assert()
        .success()
        .stdout("stored delivery 1\n");
    run("env-2")
        .assert()
        .success()
        .stdout(predicate::str::contains("same content"));
    let rows = rows(&env);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.as_deref(), Some("issue"));
    assert_eq!(rows[0].2.as_deref(), Some("env-1"));
    assert_eq!(rows[0].3, PLANE_BODY.as_bytes());

    // A signature that does not match the file.
    let mut c = run("env-3");
    c.env("ORCH_SIGNATURE", sign(PLANE_SECRET, b"{}"))
        .assert()
        .code(77);
}

// --- --inetd -------------------------------------------------------------------

/// A parsed HTTP response.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts
        .next()
        .expect("status")
        .parse()
        .expect("numeric status");
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let r = Response {
        status,
        headers,
        body: body.to_owned(),
    };
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str()),
        "Content-Length matches the body"
    );
    assert!(
        r.header("Content-Type")
            .is_some_and(|v| v.starts_with("text/plain"))
    );
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.body.lines().count(), 1, "one-line body: {:?}", r.body);
    r
}

/// Run `orch ingest-webhook --inetd --source <source>` on a whole request.
fn inetd(env: &Env, source: &str, request: &[u8]) -> (Response, Option<i32>) {
    let out = ingest(env)
        .args(["--inetd", "--source", source])
        .write_stdin(request.to_vec())
        .output()
        .expect("run");
    (parse_response(&out.stdout), out.status.code())
}

fn http_request(method: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} /webhook HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n");
    for (n, v) in headers {
        let _ = write!(r, "{n}: {v}\r\n");
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

fn plane_request(body: &str, signature: &str, delivery: &str) -> Vec<u8> {
    http_request(
        "POST",
        &[
            ("Content-Type", "application/json".into()),
            ("User-Agent", "Autopilot".into()),
            ("X-Plane-Delivery", delivery.into()),
            ("X-Plane-Event", "issue".into()),
            ("X-Plane-Signature", signature.into()),
            ("Content-Length", body.len().to_string()),
        ],
        body.as_bytes(),
    )
}

#[test]
fn inetd_happy_path_duplicate_and_gitea() {
    let env = Env::new();
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());
    let (r, code) = inetd(&env, "plane", &plane_request(PLANE_BODY, &sig, "u-1"));
    assert_eq!((r.status, code), (202, Some(0)));
    assert_eq!(r.body, "stored delivery 1\n");
    let (r, code) = inetd(&env, "plane", &plane_request(PLANE_BODY, &sig, "u-2"));
    assert_eq!((r.status, code), (202, Some(0)));
    assert_eq!(r.body, "duplicate of delivery 1 (same content); ignored\n");

    // Gitea, signed in X-Hub-Signature-256 only.
    let gitea = http_request(
        "POST",
        &[
            ("X-Gitea-Event", "pull_request".into()),
            ("X-Gitea-Delivery", "g-9".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", sign(GITEA_SECRET, GITEA_BODY.as_bytes())),
            ),
            ("Content-Length", GITEA_BODY.len().to_string()),
        ],
        GITEA_BODY.as_bytes(),
    );
    let (r, code) = inetd(&env, "gitea", &gitea);
    assert_eq!((r.status, code), (202, Some(0)));

    let rows = rows(&env);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].1.as_deref(), rows[0].2.as_deref()),
        (Some("issue"), Some("u-1"))
    );
    assert_eq!(rows[0].3, PLANE_BODY.as_bytes());
    assert_eq!(
        (
            rows[1].0.as_str(),
            rows[1].1.as_deref(),
            rows[1].2.as_deref()
        ),
        ("gitea", Some("pull_request"), Some("g-9"))
    );
}

#[test]
fn inetd_refusals_store_nothing() {
    let env = Env::new();
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());

    // Bad signature: 401, exit 77.
    let (r, code) = inetd(
        &env,
        "plane",
        &plane_request(PLANE_BODY, &sign("wrong", PLANE_BODY.as_bytes()), "x-1"),
    );
    assert_eq!((r.status, code), (401, Some(77)));
    // A Plane signature sent to the Gitea endpoint is not looked at.
    let (r, code) = inetd(&env, "gitea", &plane_request(PLANE_BODY, &sig, "x-2"));
    assert_eq!((r.status, code), (401, Some(77)));

    // Not POST: 405 with Allow, exit 65.
    let (r, code) = inetd(&env, "plane", &http_request("GET", &[], b""));
    assert_eq!((r.status, code), (405, Some(65)));
    assert_eq!(r.header("Allow"), Some("POST"));

    // Chunked: refused.
    let chunked = http_request(
        "POST",
        &[
            ("X-Plane-Signature", sig.clone()),
            ("Transfer-Encoding", "chunked".into()),
        ],
        format!("{:x}\r\n{PLANE_BODY}\r\n0\r\n\r\n", PLANE_BODY.len()).as_bytes(),
    );
    let (r, code) = inetd(&env, "plane", &chunked);
    assert_eq!((r.status, code), (411, Some(65)));

    // Malformed JSON (validly signed): 400, exit 65.
    let (r, code) = inetd(
        &env,
        "plane",
        &plane_request("{oops", &sign(PLANE_SECRET, b"{oops"), "x-3"),
    );
    assert_eq!((r.status, code), (400, Some(65)));

    // Garbage instead of HTTP.
    let (r, code) = inetd(&env, "plane", b"\x16\x03\x01 hello\r\n\r\n");
    assert_eq!((r.status, code), (400, Some(65)));

    assert!(rows(&env).is_empty());
}

/// Spawn `orch ingest-webhook --inetd`, write `head` and keep stdin open.
/// Returns the response, the exit code and how long the answer took.
fn inetd_held_open(
    env: &Env,
    extra_env: &[(&str, &str)],
    head: &[u8],
) -> (Response, i32, Duration) {
    let mut cmd = env.orch_std();
    cmd.env("ORCH_PLANE_WEBHOOK_SECRET", PLANE_SECRET)
        .args(["ingest-webhook", "--inetd", "--source", "plane"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(head).expect("write head");
    stdin.flush().expect("flush");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("orch did not answer within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    drop(stdin);
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    (
        parse_response(&out),
        status.code().expect("exit code"),
        elapsed,
    )
}

#[test]
fn inetd_oversize_is_refused_before_the_body_is_read() {
    let env = Env::new();
    // The client announces 2 MiB and sends none of it, keeping the connection
    // open: the answer comes from the head alone, long before the read deadline.
    let head = http_request(
        "POST",
        &[
            ("X-Plane-Signature", "00".into()),
            ("Content-Length", (2 * 1024 * 1024).to_string()),
        ],
        b"",
    );
    let (r, code, elapsed) = inetd_held_open(&env, &[], &head);
    assert_eq!((r.status, code), (413, 65));
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(rows(&env).is_empty());
}

#[test]
fn inetd_slow_client_gets_408_and_nothing_is_stored() {
    let env = Env::new();
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());
    // The head (with a valid signature) and no body: the deadline fires.
    let full = plane_request(PLANE_BODY, &sig, "slow-1");
    let head = &full[..full.len() - PLANE_BODY.len()];
    let (r, code, elapsed) = inetd_held_open(&env, &[("ORCH_WEBHOOK_READ_TIMEOUT_S", "1")], head);
    assert_eq!((r.status, code), (408, 65));
    assert!(elapsed >= Duration::from_secs(1), "took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // Half a head is the same.
    let (r, _, _) = inetd_held_open(
        &env,
        &[("ORCH_WEBHOOK_READ_TIMEOUT_S", "1")],
        b"POST /webhook HTTP/1.1\r\nContent-Le",
    );
    assert_eq!(r.status, 408);
    assert!(rows(&env).is_empty());
}

#[test]
fn a_busy_database_exits_75_or_answers_503_and_stores_nothing() {
    let env = Env::new();
    // Another process holds the write lock past the busy timeout.
    let holder = rusqlite::Connection::open(env.db_path()).expect("open");
    holder.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());
    let a = ingest(&env)
        .env("ORCH_BUSY_TIMEOUT_MS", "100")
        .args(["--source", "plane", "--signature", &sig])
        .write_stdin(PLANE_BODY)
        .assert()
        .code(75);
    assert!(stderr_of(&a).contains("retry later"), "{}", stderr_of(&a));
    let out = ingest(&env)
        .env("ORCH_BUSY_TIMEOUT_MS", "100")
        .args(["--inetd", "--source", "plane"])
        .write_stdin(plane_request(PLANE_BODY, &sig, "busy-1"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(parse_response(&out.stdout).status, 503);
    holder.execute_batch("ROLLBACK").expect("unlock");
    assert!(rows(&env).is_empty());
}

/// `orch ingest-webhook --inetd --source plane` with stdin and stdout on
/// `socket` (as systemd's `Accept=yes` passes the connection) and stderr captured.
fn inetd_on_socket(env: &Env, socket: std::os::fd::OwnedFd) -> std::process::Child {
    let stdout = socket.try_clone().expect("dup");
    env.orch_std()
        .env("ORCH_PLANE_WEBHOOK_SECRET", PLANE_SECRET)
        .env("RUST_LOG", "info")
        .args(["ingest-webhook", "--inetd", "--source", "plane"])
        .stdin(Stdio::from(socket))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

#[test]
fn inetd_a_client_gone_before_the_answer_is_a_logged_exit_74_not_sigpipe() {
    use std::os::unix::process::ExitStatusExt as _;
    let env = Env::new();
    let (mut client, server) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());
    client
        .write_all(&plane_request(PLANE_BODY, &sig, "gone-1"))
        .expect("write");
    // The whole request is queued; the client is gone before orch answers.
    drop(client);
    let out = inetd_on_socket(&env, server.into())
        .wait_with_output()
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains("orch: error: could not answer HTTP 202 to the webhook client"),
        "{stderr}"
    );
    // Stored all the same: the sender's retry is a duplicate.
    assert_eq!(rows(&env).len(), 1);
}

#[test]
fn inetd_a_client_that_resets_the_connection_mid_request_is_logged_not_sigpipe() {
    use std::os::unix::process::ExitStatusExt as _;
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let mut child = inetd_on_socket(&env, server.into());
    // A head that asks for `100 Continue`, then no body: orch answers 100.
    let body = PLANE_BODY.as_bytes();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nExpect: 100-continue\r\nX-Plane-Event: issue\r\n\
         X-Plane-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        sign(PLANE_SECRET, body),
        body.len()
    );
    client.write_all(head.as_bytes()).expect("write");
    // Wait for the interim answer without reading it: closing a socket with
    // unread data resets the connection (RST), as SO_LINGER 0 would.
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut peek = [0u8; 8];
    assert!(client.peek(&mut peek).expect("peek") > 0);
    drop(client);
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert_eq!(status.signal(), None, "killed by a signal: {stderr}");
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("could not answer HTTP 400 to the webhook client"),
        "{stderr}"
    );
    assert!(rows(&env).is_empty());
}

#[test]
fn inetd_with_a_broken_config_answers_500_with_a_reason_and_exits_78() {
    let env = Env::new();
    std::fs::write(env.state().join("orch.toml"), "this is = not [toml").expect("config");
    let sig = sign(PLANE_SECRET, PLANE_BODY.as_bytes());
    let out = ingest(&env)
        .args(["--inetd", "--source", "plane"])
        .write_stdin(plane_request(PLANE_BODY, &sig, "cfg-1"))
        .output()
        .expect("run");
    let r = parse_response(&out.stdout);
    assert_eq!(r.status, 500);
    assert_eq!(
        r.body,
        "orch cannot load its configuration; the reason is in its log\n"
    );
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("orch: error: ") && stderr.contains("orch.toml"),
        "{stderr}"
    );
}

#[test]
fn inetd_with_an_unreadable_secret_answers_500_with_a_reason_and_exits_78() {
    let env = Env::new();
    let creds = env.state().join("creds");
    // A directory where the credential file should be: it exists, unreadable as a file.
    std::fs::create_dir_all(creds.join("plane-webhook-secret")).expect("mkdir");
    let out = env
        .orch()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .args(["ingest-webhook", "--inetd", "--source", "plane"])
        .write_stdin(plane_request(PLANE_BODY, "00", "cred-1"))
        .output()
        .expect("run");
    let r = parse_response(&out.stdout);
    assert_eq!(r.status, 500);
    assert_eq!(
        r.body,
        "orch cannot load its configuration; the reason is in its log\n"
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plane-webhook-secret"),
        "the log names the credential"
    );
}
