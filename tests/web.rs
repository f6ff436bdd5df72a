//! `orch web`, the read-only board, through the real binary: raw requests
//! piped into `orch web --inetd`, a `--listen` server over TCP, and the
//! board rendered by a real headless Chromium (screenshots kept under
//! `target/test-artifacts/`). Chromium is skipped loudly when absent, unless
//! `ORCH_TEST_BROWSER_REQUIRED=1` (as `.ci/run` sets) makes that a failure.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;

/// A title with everything HTML must escape.
const HOSTILE: &str = "<script>alert(1)</script> \"q\" 'a' & b";
/// The same, as it must appear in the page source.
const HOSTILE_ESCAPED: &str =
    "&lt;script&gt;alert(1)&lt;/script&gt; &quot;q&quot; &#39;a&#39; &amp; b";

/// Task 1 done (the demo), task 2 (hostile title) with its analysis done and
/// awaiting approval, task 3 queued on analysis.
fn installation() -> Env {
    let env = Env::bare();
    env.orch().arg("demo").assert().success();
    let create = |title: &str| {
        env.orch()
            .args(["task", "create", "--repo", "demo", "--title", title])
            .assert()
            .success();
    };
    create(HOSTILE);
    env.orch().args(["run-agent", "--next"]).assert().success();
    create("Second one");
    env
}

/// An answer split into status line, head and body.
struct Answer {
    status: String,
    head: String,
    body: String,
}

impl Answer {
    fn parse(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
        let status = head.lines().next().unwrap_or_default().to_owned();
        Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Pipe `raw` into `orch web --inetd`.
fn inetd(env: &Env, raw: &str) -> Answer {
    let out = env
        .orch()
        .args(["web", "--inetd"])
        .write_stdin(raw.as_bytes().to_vec())
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run orch web --inetd");
    Answer::parse(&out.stdout)
}

fn get(env: &Env, path: &str) -> Answer {
    inetd(env, &format!("GET {path} HTTP/1.1\r\nHost: board\r\n\r\n"))
}

/// Every row of every table, and the schema version: equal before and
/// after means nothing was written.
fn snapshot(env: &Env) -> Vec<(String, Vec<Vec<serde_json::Value>>)> {
    let tables: Vec<String> = env
        .rows("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .into_iter()
        .filter_map(|r| r[0].as_str().map(str::to_owned))
        .collect();
    let mut all: Vec<_> = tables
        .into_iter()
        .map(|t| {
            let rows = env.rows(&format!("SELECT * FROM \"{t}\""));
            (t, rows)
        })
        .collect();
    all.push(("user_version".into(), env.rows("PRAGMA user_version")));
    all
}

#[test]
fn inetd_serves_the_board_escaped_and_changes_nothing() {
    let env = installation();
    let before = snapshot(&env);

    let board = get(&env, "/");
    assert_eq!(board.status, "HTTP/1.1 200 OK");
    assert_eq!(
        board.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let csp = board.header("Content-Security-Policy").expect("CSP");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'unsafe-inline'"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "no script may run: {csp}");
    assert_eq!(board.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(board.header("Connection"), Some("close"));
    assert_eq!(
        board.header("Content-Length"),
        Some(board.body.len().to_string().as_str())
    );
    assert!(board.body.contains(HOSTILE_ESCAPED), "{}", board.body);
    assert!(!board.body.contains("<script"), "{}", board.body);
    assert!(
        board
            .body
            .contains("<code>orch advance --task 2 --approve</code>")
    );
    let analysis = column(&board.body, "analysis");
    assert!(analysis.contains("id=\"task-2\"") && analysis.contains("id=\"task-3\""));
    assert!(board.body.contains("done <b id=\"count-done\">1</b>"));

    let task = get(&env, "/task/2");
    assert_eq!(task.status, "HTTP/1.1 200 OK");
    assert!(task.body.contains(HOSTILE_ESCAPED) && !task.body.contains("<script"));
    assert!(task.body.contains("id=\"timeline\"") && task.body.contains("id=\"attempts\""));
    assert!(
        task.body
            .contains("<iframe id=\"log\" src=\"/task/2/tail\"")
    );
    let done = get(&env, "/task/1");
    assert_eq!(
        done.body.matches("<a href=\"/run/").count(),
        7,
        "{}",
        done.body
    );
    assert!(
        done.body.contains("Z</td>"),
        "absolute UTC times (RFC 3339)"
    );

    assert_eq!(before, snapshot(&env), "a GET changed the database");
}

/// The HTML of stage `stage`'s column on the board.
fn column<'a>(html: &'a str, stage: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"stage-{stage}\""))
        .unwrap_or_else(|| panic!("no column {stage}"));
    let rest = &html[start..];
    let end = rest[1..].find("id=\"stage-").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn inetd_refuses_what_is_not_a_read() {
    let env = installation();
    let before = snapshot(&env);

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let a = inetd(
            &env,
            &format!("{method} /task/2 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}"),
        );
        assert_eq!(a.status, "HTTP/1.1 405 Method Not Allowed", "{method}");
        assert_eq!(a.header("Allow"), Some("GET, HEAD"));
    }
    for path in [
        "/task/99",
        "/nope",
        "/task/2x",
        "/task/-1",
        "/run/999/log",
        "/task/2/x",
    ] {
        let a = get(&env, path);
        assert_eq!(a.status, "HTTP/1.1 404 Not Found", "{path}");
        assert!(a.header("Content-Security-Policy").is_some());
    }
    assert_eq!(
        inetd(&env, "\x01\x02 nonsense\r\n\r\n").status,
        "HTTP/1.1 400 Bad Request"
    );
    let health = get(&env, "/healthz");
    assert_eq!(
        (health.status.as_str(), health.body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    let full = get(&env, "/task/2");
    let head = inetd(&env, "HEAD /task/2 HTTP/1.1\r\n\r\n");
    assert_eq!(head.status, "HTTP/1.1 200 OK");
    assert!(head.body.is_empty(), "HEAD has no body");
    assert_eq!(head.header("Content-Length"), full.header("Content-Length"));

    assert_eq!(before, snapshot(&env), "a request changed the database");
    // Not by accident: the handle the board reads through cannot write.
    let mut ro = orch::storage::Db::open_read_only(&env.db_path(), Duration::from_secs(5))
        .expect("open read-only");
    let write = ro.write(|tx| Ok(orch::storage::counters::bump(tx, "probe", 1, None, 0)?));
    assert!(write.is_err(), "a read-only handle wrote");
    assert_eq!(before, snapshot(&env));
}

/// The log of task 2's (only) run.
fn run_log(env: &Env) -> PathBuf {
    let rows = env.rows("SELECT output_path FROM agent_runs WHERE task_id = 2 ORDER BY id DESC");
    PathBuf::from(rows[0][0].as_str().expect("output_path"))
}

#[test]
fn the_log_tail_is_bounded_and_escaped() {
    let env = installation();
    let log = run_log(&env);
    let mut f = std::fs::File::create(&log).expect("log");
    let line = "x".repeat(99) + "\n";
    for _ in 0..20_000 {
        f.write_all(line.as_bytes()).expect("write");
    }
    f.write_all(b"<script>alert('log')</script>\x1b[2J the end\n")
        .expect("write");
    drop(f);

    // While the run goes on, its log refreshes itself.
    env.sqlite()
        .execute(
            "UPDATE agent_runs SET finished_at = NULL WHERE task_id = 2",
            [],
        )
        .expect("mark running");
    let live = get(&env, "/task/2/tail");
    assert!(
        live.body
            .contains("<meta http-equiv=\"refresh\" content=\"2\">")
    );
    assert!(get(&env, "/task/2").body.contains("<td>running</td>"));
    env.sqlite()
        .execute(
            "UPDATE agent_runs SET finished_at = started_at WHERE task_id = 2",
            [],
        )
        .expect("mark ended");

    let plain = get(&env, "/task/2/log");
    assert_eq!(
        plain.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(plain.body.len() <= 64 * 1024, "{} bytes", plain.body.len());
    assert!(plain.body.len() > 60 * 1024, "{} bytes", plain.body.len());
    assert!(plain.body.starts_with("xxx"), "starts at a whole line");
    assert!(
        plain.body.ends_with("\\x1b[2J the end\n"),
        "controls escaped"
    );

    let tail = get(&env, "/task/2/tail");
    assert!(
        tail.body
            .contains("&lt;script&gt;alert(&#39;log&#39;)&lt;/script&gt;")
    );
    assert!(!tail.body.contains("<script"));
    assert!(
        !tail.body.contains("http-equiv=\"refresh\""),
        "an ended run does not refresh"
    );

    // A symlink planted for the log is not followed.
    std::fs::remove_file(&log).expect("rm");
    std::os::unix::fs::symlink("/etc/passwd", &log).expect("symlink");
    let planted = get(&env, "/task/2/log");
    assert_eq!(planted.status, "HTTP/1.1 200 OK");
    assert!(!planted.body.contains("root:"), "{}", planted.body);
}

#[test]
fn inetd_answers_a_broken_configuration_with_500() {
    let env = installation();
    std::fs::write(env.state().join("orch.toml"), "not = [valid").expect("config");
    let out = env
        .orch()
        .args(["web", "--inetd"])
        .write_stdin("GET / HTTP/1.1\r\n\r\n")
        .output()
        .expect("run");
    let a = Answer::parse(&out.stdout);
    assert_eq!(a.status, "HTTP/1.1 500 Internal Server Error");
    assert_eq!(out.status.code(), Some(78), "a configuration error");
}

#[test]
fn inetd_gives_a_silent_client_408_and_exits() {
    let env = Env::new();
    let mut child = env
        .orch_std()
        .args(["web", "--inetd"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"GET / HT").expect("half a request");
    let started = Instant::now();
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    let status = child.wait().expect("wait");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status}");
    assert_eq!(Answer::parse(&out).status, "HTTP/1.1 408 Request Timeout");
    drop(stdin);
}

/// `orch web --listen 127.0.0.1:0`, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(env: &Env) -> Server {
        let mut child = env
            .orch_std()
            .args(["web", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start orch web --listen");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("first line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Server { child, url }
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw request over TCP.
fn tcp(server: &Server, raw: &str) -> Answer {
    let mut s = std::net::TcpStream::connect(server.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(raw.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    Answer::parse(&out)
}

#[test]
fn listen_serves_each_connection_until_stopped() {
    let env = installation();
    let before = snapshot(&env);
    let server = Server::start(&env);
    let board = tcp(&server, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(board.status, "HTTP/1.1 200 OK");
    assert!(board.body.contains(HOSTILE_ESCAPED));
    let post = tcp(&server, "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd");
    assert_eq!(post.status, "HTTP/1.1 405 Method Not Allowed");
    // Clients that hang up before their answer do not stop the server.
    for _ in 0..5 {
        let mut s = std::net::TcpStream::connect(server.addr()).expect("connect");
        s.write_all(b"GET /task/1 HTTP/1.1\r\n\r\n").expect("send");
        drop(s);
    }
    let mut silent = std::net::TcpStream::connect(server.addr()).expect("connect");
    silent.write_all(b"GET / HTT").expect("half a request");
    // Several at once, each answered, while one client stays silent.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let addr = server.addr().to_owned();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").expect("send");
                let mut out = String::new();
                s.read_to_string(&mut out).expect("read");
                out
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().expect("thread").ends_with("\r\n\r\nok\n"));
    }
    drop(silent);
    assert_eq!(before, snapshot(&env));
}

/// Chromium, if installed (`ORCH_TEST_CHROMIUM` names another binary).
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORCH_TEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
}

/// Run headless Chromium on `url` with `extra` flags; its stdout. Killed
/// after 60 s: a headless browser can hang.
fn browse(browser: &Path, profile: &Path, extra: &[&str], url: &str) -> String {
    let out_path = profile.join("stdout");
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(["--disable-dev-shm-usage", "--window-size=1280,900"])
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(extra)
        .arg(url)
        .env("HOME", profile)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait().expect("wait") {
            Some(status) => {
                assert!(status.success(), "chromium {extra:?} {url}: {status}");
                break;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {extra:?} {url} hung for 60 s; killed");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    std::fs::read_to_string(&out_path).expect("chromium output")
}

/// Where screenshots are kept: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_orch"));
    let target = bin.parent().and_then(Path::parent).expect("target dir");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn screenshot(browser: &Path, profile: &Path, url: &str, name: &str) {
    let path = artifacts().join(name);
    let _ = std::fs::remove_file(&path);
    browse(
        browser,
        profile,
        &[&format!("--screenshot={}", path.display())],
        url,
    );
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
    assert!(
        png.len() > 10_000,
        "{name} is nearly empty ({} bytes)",
        png.len()
    );
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn a_real_browser_renders_the_board() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("ORCH_TEST_BROWSER_REQUIRED").as_deref() != Ok("1"),
            "ORCH_TEST_BROWSER_REQUIRED=1 but no chromium on PATH (apt-get install chromium)"
        );
        eprintln!("SKIPPED: no chromium on PATH; the board was not rendered in a browser");
        return;
    };
    let env = installation();
    let server = Server::start(&env);
    let profile = tempfile::tempdir().expect("profile");

    let dom = browse(
        &browser,
        profile.path(),
        &["--dump-dom"],
        &format!("{}/", server.url),
    );
    let analysis = column(&dom, "analysis");
    assert!(analysis.contains("id=\"task-2\""), "{dom}");
    assert!(analysis.contains("id=\"task-3\""), "{dom}");
    assert!(
        analysis.contains("awaiting-approval"),
        "the card is flagged: {analysis}"
    );
    let attention = &dom[dom.find("id=\"attention\"").expect("attention list")..];
    assert!(attention.contains("orch advance --task 2 --approve"));
    // The hostile title is text in the DOM, not an element.
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.to_ascii_lowercase().contains("<script"), "{dom}");

    let task = browse(
        &browser,
        profile.path(),
        &["--dump-dom"],
        &format!("{}/task/1", server.url),
    );
    assert!(task.contains("id=\"timeline\"") && task.contains("id=\"attempts\""));
    assert!(task.contains("<b id=\"stage\">done</b>"), "{task}");

    screenshot(
        &browser,
        profile.path(),
        &format!("{}/", server.url),
        "board.png",
    );
    screenshot(
        &browser,
        profile.path(),
        &format!("{}/task/1", server.url),
        "task.png",
    );
}
