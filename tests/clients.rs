//! The remote backends (Plane, Gitea, Telegram) against real loopback HTTP
//! servers: a tiny_http stub that records every request (method, path,
//! headers, body) and answers with scripted replies. Tests named `tcNN_…`
//! port the seed's ORCH-059 tests.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orch::backends::forge::gitea::{CiState, GiteaForge};
use orch::backends::forge::{Forge as _, MergeRefused, Merged};
use orch::backends::http::{HttpError, is_retryable};
use orch::backends::notifier::telegram::Telegram;
use orch::backends::tracker::key_for_name;
use orch::backends::tracker::plane::{PlaneClient, States};
use orch::html::escape as html_escape;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The stub server

/// One request the stub received.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query, as sent.
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Recorded {
    fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
}

#[derive(Debug, Clone)]
struct Scripted {
    status: u16,
    body: String,
    headers: Vec<(String, String)>,
}

#[derive(Debug)]
struct Route {
    method: String,
    /// Matched against the path, or against path and query when it has a `?`.
    pattern: String,
    replies: VecDeque<Scripted>,
}

#[derive(Debug, Default)]
struct State {
    routes: Vec<Route>,
    log: Vec<Recorded>,
}

/// A loopback HTTP server with scripted replies. Replies of a route are used
/// in order; the last one repeats. Unrouted requests get 418.
struct Stub {
    url: String,
    state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Stub {
    fn start() -> Stub {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind stub"));
        let addr = server.server_addr().to_ip().expect("ip address");
        let state = Arc::new(Mutex::new(State::default()));
        let thread = {
            let server = Arc::clone(&server);
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let mut body = String::new();
                    request
                        .as_reader()
                        .read_to_string(&mut body)
                        .expect("read request body");
                    let recorded = Recorded {
                        method: request.method().as_str().to_owned(),
                        url: request.url().to_owned(),
                        headers: request
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_owned(),
                                    h.value.as_str().to_owned(),
                                )
                            })
                            .collect(),
                        body,
                    };
                    let reply = {
                        let mut st = state.lock().expect("stub state");
                        let reply = st
                            .routes
                            .iter_mut()
                            .find(|r| {
                                r.method == recorded.method
                                    && if r.pattern.contains('?') {
                                        r.pattern == recorded.url
                                    } else {
                                        r.pattern == recorded.path()
                                    }
                            })
                            .map(|r| {
                                if r.replies.len() > 1 {
                                    r.replies.pop_front().expect("a reply")
                                } else {
                                    r.replies[0].clone()
                                }
                            });
                        st.log.push(recorded);
                        reply.unwrap_or(Scripted {
                            status: 418,
                            body: r#"{"message":"no stub route"}"#.to_owned(),
                            headers: Vec::new(),
                        })
                    };
                    let mut response =
                        tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
                    response.add_header(
                        tiny_http::Header::from_bytes("Content-Type", "application/json")
                            .expect("header"),
                    );
                    for (n, v) in &reply.headers {
                        response.add_header(
                            tiny_http::Header::from_bytes(n.as_bytes(), v.as_bytes())
                                .expect("header"),
                        );
                    }
                    let _ = request.respond(response);
                }
            })
        };
        Stub {
            url: format!("http://{addr}"),
            state,
            server,
            thread: Some(thread),
        }
    }

    /// Add a reply to the route `method pattern`.
    fn on_with(
        &self,
        method: &str,
        pattern: &str,
        status: u16,
        body: &str,
        headers: &[(&str, &str)],
    ) {
        let reply = Scripted {
            status,
            body: body.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut st = self.state.lock().expect("stub state");
        if let Some(r) = st
            .routes
            .iter_mut()
            .find(|r| r.method == method && r.pattern == pattern)
        {
            r.replies.push_back(reply);
        } else {
            st.routes.push(Route {
                method: method.to_owned(),
                pattern: pattern.to_owned(),
                replies: VecDeque::from([reply]),
            });
        }
    }

    fn on(&self, method: &str, pattern: &str, status: u16, body: &Value) {
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.on_with(method, pattern, status, &text, &[]);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("stub state").log.clone()
    }

    fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path() == path)
            .count()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server that accepts connections and never answers.
fn silent_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    format!("http://{addr}")
}

/// A loopback address nobody listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

fn http_error(err: &anyhow::Error) -> &HttpError {
    err.downcast_ref::<HttpError>()
        .unwrap_or_else(|| panic!("not an HttpError: {err:#}"))
}

const SECOND: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Plane

const PLANE_TOKEN: &str = "plane_api_SeCrEt_123";
const WS: &str = "/api/v1/workspaces/acme";
const STATES: &str = "/api/v1/workspaces/acme/projects/p1/states/";
const ITEM: &str = "/api/v1/workspaces/acme/projects/p1/work-items/i1/";
const COMMENTS: &str = "/api/v1/workspaces/acme/projects/p1/work-items/i1/comments/";

fn plane(stub: &Stub) -> PlaneClient {
    PlaneClient::new(&format!("{}/", stub.url), "acme", PLANE_TOKEN, TIMEOUT).expect("plane client")
}

fn page(results: &Value, next: Option<&str>) -> Value {
    json!({
        "results": results,
        "next_cursor": next.unwrap_or("100:1:0"),
        "next_page_results": next.is_some(),
        "prev_cursor": "",
        "total_results": results.as_array().map_or(0, Vec::len),
    })
}

fn full_board() -> Value {
    json!([
        {"id": "s-analyse", "name": "To Analyse", "group": "unstarted"},
        {"id": "s-progress", "name": "In Progress", "group": "started"},
        {"id": "s-approved", "name": "Approved", "group": "started"},
        {"id": "s-rejected", "name": "Rejected", "group": "cancelled"},
        {"id": "s-input", "name": "Needs Input", "group": "started"},
        {"id": "s-review", "name": "In Review", "group": "started"},
        {"id": "s-blocked", "name": "Blocked", "group": "started"},
        {"id": "s-confirm", "name": "Confirm Deploy", "group": "started"},
        {"id": "s-stop", "name": "STOP", "group": "cancelled"},
        {"id": "s-done", "name": "Done", "group": "completed"},
        {"id": "s-cancelled", "name": "Cancelled", "group": "cancelled"},
        {"id": "s-backlog", "name": "Backlog", "group": "backlog"},
    ])
}

#[test]
fn orch059_tc01_confirm_deploy_name_to_key_mapping() {
    assert_eq!(key_for_name("Confirm Deploy"), Some("confirm_deploy"));
    assert_eq!(
        key_for_name("confirm deploy"),
        None,
        "exact, case-sensitive"
    );
    assert_eq!(key_for_name("To Analyse"), Some("to_analyse"));
    assert_eq!(key_for_name("STOP"), Some("stop"));
}

#[test]
fn orch059_tc01_confirm_deploy_not_in_default_states() {
    // There are no default states at all: nothing resolves without the board.
    let states = States::default();
    assert_eq!(states.get("confirm_deploy"), None);
    assert!(!states.is("confirm_deploy", "s-confirm"));
}

#[test]
fn orch059_tc03_fail_closed_when_api_unreachable() {
    let client = PlaneClient::new(&closed_port(), "acme", PLANE_TOKEN, SECOND).expect("client");
    let err = client
        .project_states("p1")
        .expect_err("an unreachable API is an error, never default UUIDs");
    assert!(is_retryable(&err), "{err:#}");
}

#[test]
fn orch059_tc02_get_project_states_resolves_confirm_deploy() {
    let stub = Stub::start();
    stub.on("GET", STATES, 200, &page(&full_board(), None));
    let states = plane(&stub).project_states("p1").expect("states");
    assert_eq!(states.get("confirm_deploy"), Some("s-confirm"));
    assert_ne!(states.get("confirm_deploy"), states.get("approved"));
    for (key, id) in [
        ("to_analyse", "s-analyse"),
        ("in_progress", "s-progress"),
        ("approved", "s-approved"),
        ("rejected", "s-rejected"),
        ("needs_input", "s-input"),
        ("in_review", "s-review"),
        ("blocked", "s-blocked"),
        ("stop", "s-stop"),
        ("done", "s-done"),
        ("cancelled", "s-cancelled"),
    ] {
        assert_eq!(states.get(key), Some(id), "{key}");
    }
    assert_eq!(states.len(), 11, "Backlog is not a key");
    assert!(states.is("confirm_deploy", "s-confirm"));
    assert_eq!(states.key_of("s-confirm"), Some("confirm_deploy"));

    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path(), STATES);
    assert_eq!(reqs[0].header("X-API-Key"), Some(PLANE_TOKEN));
    assert!(reqs[0].url.contains("per_page=100"), "{}", reqs[0].url);
}

#[test]
fn orch059_tc03_fail_closed_when_status_not_on_board() {
    let stub = Stub::start();
    let board = json!([
        {"id": "s-progress", "name": "In Progress"},
        {"id": "s-approved", "name": "Approved"},
        {"id": "x", "name": "confirm deploy"},
        {"id": "y", "name": "Confirm  Deploy"},
    ]);
    stub.on("GET", STATES, 200, &page(&board, None));
    let states = plane(&stub).project_states("p1").expect("states");
    assert_eq!(states.get("confirm_deploy"), None, "names are exact");
    assert!(!states.is("confirm_deploy", "x"));
    assert!(!states.is("confirm_deploy", ""));
    assert_eq!(states.get("approved"), Some("s-approved"));
}

#[test]
fn orch059_tc03_fail_closed_when_api_errors() {
    let stub = Stub::start();
    stub.on("GET", STATES, 500, &json!({"error": "boom"}));
    stub.on("GET", STATES, 200, &page(&full_board(), None));
    let client = plane(&stub);
    let err = client
        .project_states("p1")
        .expect_err("a 500 is an error, not defaults");
    assert!(http_error(&err).is_retryable());
    assert_eq!(http_error(&err).status(), Some(500));
    // The error was not cached: the next call asks again and succeeds.
    let states = client.project_states("p1").expect("states");
    assert_eq!(states.get("confirm_deploy"), Some("s-confirm"));
    assert_eq!(stub.count("GET", STATES), 2);
}

#[test]
fn plane_states_follow_cursor_pagination() {
    let stub = Stub::start();
    let first = json!([{"id": "s-progress", "name": "In Progress"}]);
    let second = json!([{"id": "s-confirm", "name": "Confirm Deploy"}]);
    stub.on(
        "GET",
        &format!("{STATES}?per_page=100"),
        200,
        &page(&first, Some("100:1:0")),
    );
    stub.on(
        "GET",
        &format!("{STATES}?per_page=100&cursor=100%3A1%3A0"),
        200,
        &page(&second, None),
    );
    let states = plane(&stub).project_states("p1").expect("states");
    assert_eq!(states.get("in_progress"), Some("s-progress"));
    assert_eq!(states.get("confirm_deploy"), Some("s-confirm"));
    assert_eq!(stub.count("GET", STATES), 2);
}

#[test]
fn plane_states_are_cached_per_project_until_reload() {
    let stub = Stub::start();
    stub.on(
        "GET",
        STATES,
        200,
        &page(&json!([{"id": "a", "name": "Approved"}]), None),
    );
    stub.on("GET", STATES, 200, &page(&full_board(), None));
    let p2 = "/api/v1/workspaces/acme/projects/p2/states/";
    stub.on(
        "GET",
        p2,
        200,
        &page(&json!([{"id": "b", "name": "Approved"}]), None),
    );
    let client = plane(&stub);
    assert_eq!(
        client.project_states("p1").expect("p1").get("approved"),
        Some("a")
    );
    assert_eq!(
        client.project_states("p1").expect("p1").get("approved"),
        Some("a")
    );
    assert_eq!(
        client.project_states("p2").expect("p2").get("approved"),
        Some("b")
    );
    assert_eq!(stub.count("GET", STATES), 1, "cached");
    client.reload(Some("p1"));
    assert_eq!(
        client.project_states("p1").expect("p1").get("approved"),
        Some("s-approved")
    );
    assert_eq!(stub.count("GET", STATES), 2);
    client.reload(None);
    client.project_states("p2").expect("p2");
    assert_eq!(stub.count("GET", p2), 2);
}

#[test]
fn plane_get_issue_accepts_state_as_uuid_or_object() {
    let stub = Stub::start();
    stub.on(
        "GET",
        ITEM,
        200,
        &json!({"id": "i1", "name": "Add X", "state": "s-review", "sequence_id": 59, "project": "p1"}),
    );
    let item2 = "/api/v1/workspaces/acme/projects/p1/work-items/i2/";
    stub.on(
        "GET",
        item2,
        200,
        &json!({"id": "i2", "name": "Y", "state": {"id": "s-confirm", "name": "Confirm Deploy"},
                "sequence_id": 60, "project": {"id": "p1"}}),
    );
    let client = plane(&stub);
    let a = client.get_issue("p1", "i1").expect("i1");
    assert_eq!(
        (
            a.id.as_str(),
            a.name.as_str(),
            a.state_id.as_str(),
            a.sequence_id,
            a.project_id.as_str()
        ),
        ("i1", "Add X", "s-review", Some(59), "p1")
    );
    let b = client.get_issue("p1", "i2").expect("i2");
    assert_eq!(b.state_id, "s-confirm");
    assert_eq!(b.project_id, "p1");
    assert_eq!(stub.requests()[0].header("x-api-key"), Some(PLANE_TOKEN));
}

#[test]
fn plane_set_state_patches_the_state_uuid() {
    let stub = Stub::start();
    stub.on("PATCH", ITEM, 200, &json!({"id": "i1", "state": "s-done"}));
    plane(&stub)
        .set_state("p1", "i1", "s-done")
        .expect("set state");
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "PATCH");
    assert_eq!(reqs[0].json(), json!({"state": "s-done"}));
    assert_eq!(reqs[0].header("X-API-Key"), Some(PLANE_TOKEN));
    assert!(
        reqs[0]
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
}

#[test]
fn plane_comment_is_idempotent_by_external_id() {
    let stub = Stub::start();
    let posted = json!({"id": "c1", "comment_html": "<p>hi</p>", "external_id": "orch:1:review",
                        "external_source": "orch"});
    stub.on("GET", COMMENTS, 200, &page(&json!([]), None));
    stub.on("GET", COMMENTS, 200, &page(&json!([posted]), None));
    stub.on("POST", COMMENTS, 201, &posted);
    let client = plane(&stub);
    assert!(
        client
            .comment("p1", "i1", "<p>hi</p>", "orch:1:review")
            .expect("first")
    );
    assert!(
        !client
            .comment("p1", "i1", "<p>hi</p>", "orch:1:review")
            .expect("second")
    );
    assert_eq!(
        stub.count("POST", COMMENTS),
        1,
        "the second call posts nothing"
    );
    let post = stub
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("a POST");
    assert_eq!(
        post.json(),
        json!({"comment_html": "<p>hi</p>", "external_id": "orch:1:review",
               "external_source": "orch", "access": "INTERNAL"})
    );
    assert_eq!(post.header("X-API-Key"), Some(PLANE_TOKEN));
}

#[test]
fn plane_comment_dedup_looks_at_every_page_and_the_source() {
    let stub = Stub::start();
    let other_source = json!({"id": "c0", "external_id": "k", "external_source": "github"});
    let ours = json!({"id": "c1", "external_id": "k", "external_source": "orch"});
    stub.on(
        "GET",
        &format!("{COMMENTS}?per_page=100"),
        200,
        &page(&json!([other_source]), Some("100:1:0")),
    );
    stub.on(
        "GET",
        &format!("{COMMENTS}?per_page=100&cursor=100%3A1%3A0"),
        200,
        &page(&json!([ours]), None),
    );
    assert!(
        !plane(&stub)
            .comment("p1", "i1", "<p>x</p>", "k")
            .expect("comment")
    );
    assert_eq!(stub.count("POST", COMMENTS), 0);

    // Same external_id from another source does not count.
    let stub = Stub::start();
    stub.on("GET", COMMENTS, 200, &page(&json!([other_source]), None));
    stub.on("POST", COMMENTS, 201, &json!({"id": "c2"}));
    assert!(
        plane(&stub)
            .comment("p1", "i1", "<p>x</p>", "k")
            .expect("comment")
    );
    assert_eq!(stub.count("POST", COMMENTS), 1);
}

#[test]
fn plane_comment_text_is_escaped() {
    assert_eq!(
        html_escape(r#"<script>alert("x & 'y'")</script>"#),
        "&lt;script&gt;alert(&quot;x &amp; &#39;y&#39;&quot;)&lt;/script&gt;"
    );
}

#[test]
fn plane_4xx_is_permanent_and_429_is_retryable_with_retry_after() {
    let stub = Stub::start();
    stub.on("GET", ITEM, 404, &json!({"error": "Work item not found"}));
    let item2 = "/api/v1/workspaces/acme/projects/p1/work-items/i2/";
    stub.on_with(
        "GET",
        item2,
        429,
        r#"{"detail":"slow down"}"#,
        &[("Retry-After", "42")],
    );
    let client = plane(&stub);
    let err = client.get_issue("p1", "i1").expect_err("404");
    let e = http_error(&err);
    assert!(
        matches!(e, HttpError::Permanent { status: 404, .. }),
        "{e:?}"
    );
    assert!(!is_retryable(&err));
    assert!(e.to_string().contains("Work item not found"), "{e}");

    let err = client.get_issue("p1", "i2").expect_err("429");
    let e = http_error(&err);
    assert!(is_retryable(&err));
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(42)));
}

#[test]
fn plane_token_never_appears_in_errors() {
    let stub = Stub::start();
    stub.on(
        "GET",
        STATES,
        401,
        &json!({"detail": format!("Given token not valid: {PLANE_TOKEN}")}),
    );
    let err = plane(&stub).project_states("p1").expect_err("401");
    let shown = format!("{err:#} {err:?}");
    assert!(!shown.contains(PLANE_TOKEN), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    assert!(matches!(
        http_error(&err),
        HttpError::Permanent { status: 401, .. }
    ));
}

#[test]
fn plane_timeout_is_retryable() {
    let base = silent_server();
    let client = PlaneClient::new(&base, "acme", PLANE_TOKEN, SECOND).expect("client");
    let started = Instant::now();
    let err = client.project_states("p1").expect_err("timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let e = http_error(&err);
    assert!(
        matches!(e, HttpError::Retryable { status: None, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(!e.to_string().contains(PLANE_TOKEN));
}

#[test]
fn plane_connection_refused_is_retryable() {
    let client = PlaneClient::new(&closed_port(), "acme", PLANE_TOKEN, SECOND).expect("client");
    let err = client.get_issue("p1", "i1").expect_err("refused");
    assert!(is_retryable(&err), "{err:#}");
}

#[test]
fn plane_refuses_ids_that_are_not_plane_ids_without_a_request() {
    let stub = Stub::start();
    for (project, item) in [
        ("p/1", "i1"),
        ("p1", "i?1"),
        ("p1", ".."),
        ("..", "i1"),
        ("p1", "%2e%2e"),
        ("", "i1"),
    ] {
        let err = plane(&stub).get_issue(project, item).expect_err("refused");
        assert!(format!("{err:#}").contains("Plane id"), "{err:#}");
    }
    assert!(stub.requests().is_empty());
    let path = format!("{WS}/projects/p-1/work-items/i-1/");
    stub.on(
        "GET",
        &path,
        200,
        &json!({"id": "i-1", "name": "n", "state": "s"}),
    );
    let issue = plane(&stub).get_issue("p-1", "i-1").expect("issue");
    assert_eq!(issue.project_id, "p-1");
}

// ---------------------------------------------------------------------------
// Gitea

const GITEA_TOKEN: &str = "gitea_pat_SeCrEt_456";
const REPO: &str = "/api/v1/repos/acme/app";
const SHA: &str = "1111111111111111111111111111111111111111";
const OTHER: &str = "2222222222222222222222222222222222222222";
const MERGE_SHA: &str = "3333333333333333333333333333333333333333";

fn gitea(stub: &Stub) -> GiteaForge {
    gitea_with_default(stub, "main")
}

fn gitea_with_default(stub: &Stub, default_branch: &str) -> GiteaForge {
    GiteaForge::new(
        &stub.url,
        "acme",
        "app",
        default_branch,
        GITEA_TOKEN,
        TIMEOUT,
    )
    .expect("gitea")
}

fn pr_json(number: u64, merged: bool, head_sha: &str) -> Value {
    json!({
        "number": number,
        "state": if merged { "closed" } else { "open" },
        "merged": merged,
        "merge_commit_sha": if merged { json!(MERGE_SHA) } else { Value::Null },
        "mergeable": true,
        "head": {"ref": "feature/x", "sha": head_sha, "label": "feature/x"},
        "base": {"ref": "main", "sha": OTHER},
    })
}

fn find_path(branch_encoded: &str) -> String {
    format!("{REPO}/pulls/main/{branch_encoded}")
}

#[test]
fn gitea_find_pr_by_base_and_head_with_token_header() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, SHA),
    );
    let pr = gitea(&stub)
        .find_pr("feature/x")
        .expect("find")
        .expect("a PR");
    assert_eq!(pr.number, 7);
    assert_eq!(pr.head_sha, SHA);
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path(), find_path("feature%2Fx"));
    assert_eq!(
        reqs[0].header("Authorization"),
        Some(format!("token {GITEA_TOKEN}").as_str())
    );
    assert!(
        !reqs[0].url.contains("head="),
        "no list query with a head filter"
    );
}

#[test]
fn orch065_tc16_find_pr_404_is_none() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        404,
        &json!({"message": "not found"}),
    );
    assert_eq!(gitea(&stub).find_pr("feature/x").expect("find"), None);
}

#[test]
fn gitea_ensure_pr_returns_the_existing_pr_without_creating() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, SHA),
    );
    assert_eq!(
        gitea(&stub)
            .ensure_pr("feature/x", "Add X")
            .expect("ensure"),
        "7"
    );
    assert_eq!(stub.count("POST", &format!("{REPO}/pulls")), 0);
}

#[test]
fn gitea_ensure_pr_creates_when_missing() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        404,
        &json!({"message": "not found"}),
    );
    stub.on(
        "POST",
        &format!("{REPO}/pulls"),
        201,
        &pr_json(8, false, SHA),
    );
    assert_eq!(
        gitea(&stub)
            .ensure_pr("feature/x", "Add X")
            .expect("ensure"),
        "8"
    );
    let post = stub
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("POST");
    let body = post.json();
    assert_eq!(body["head"], "feature/x");
    assert_eq!(body["base"], "main");
    assert_eq!(body["title"], "Add X");
    assert!(body["body"].is_string());
    assert_eq!(
        post.header("Authorization"),
        Some(format!("token {GITEA_TOKEN}").as_str())
    );
}

#[test]
fn gitea_ensure_pr_409_means_it_exists() {
    let stub = Stub::start();
    // Not found, then (created by a crashed earlier run) found.
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        404,
        &json!({"message": "not found"}),
    );
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(9, false, SHA),
    );
    stub.on(
        "POST",
        &format!("{REPO}/pulls"),
        409,
        &json!({"message": "pull request already exists for these targets"}),
    );
    assert_eq!(
        gitea(&stub)
            .ensure_pr("feature/x", "Add X")
            .expect("ensure"),
        "9"
    );
    assert_eq!(stub.count("POST", &format!("{REPO}/pulls")), 1);
    assert_eq!(stub.count("GET", &find_path("feature%2Fx")), 2);
}

#[test]
fn orch065_tc16_tc17_merge_checks_already_merged_first() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, true, SHA),
    );
    let merged = gitea(&stub).merge("feature/x", SHA).expect("merge");
    assert_eq!(merged, Merged::AlreadyMerged);
    assert_eq!(
        stub.count("POST", &format!("{REPO}/pulls/7/merge")),
        0,
        "no merge POST"
    );
    assert!(stub.requests().iter().all(|r| r.method == "GET"));
}

#[test]
fn gitea_merge_is_pinned_to_the_tested_commit() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, SHA),
    );
    stub.on("POST", &format!("{REPO}/pulls/7/merge"), 200, &Value::Null);
    stub.on(
        "GET",
        &format!("{REPO}/pulls/7"),
        200,
        &pr_json(7, true, SHA),
    );
    let merged = gitea(&stub).merge("feature/x", SHA).expect("merge");
    assert_eq!(
        merged,
        Merged::Merged {
            head: MERGE_SHA.to_owned()
        }
    );
    let post = stub
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("merge POST");
    assert_eq!(post.path(), format!("{REPO}/pulls/7/merge"));
    assert_eq!(post.json(), json!({"Do": "merge", "head_commit_id": SHA}));
}

#[test]
fn gitea_merge_405_already_merged_is_already_merged() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, SHA),
    );
    stub.on(
        "POST",
        &format!("{REPO}/pulls/7/merge"),
        405,
        &json!({"message": ""}),
    );
    stub.on(
        "GET",
        &format!("{REPO}/pulls/7"),
        200,
        &pr_json(7, true, SHA),
    );
    assert_eq!(
        gitea(&stub).merge("feature/x", SHA).expect("merge"),
        Merged::AlreadyMerged
    );
}

#[test]
fn gitea_merge_405_try_again_later_is_retryable() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, SHA),
    );
    stub.on(
        "POST",
        &format!("{REPO}/pulls/7/merge"),
        405,
        &json!({"message": "Please try again later"}),
    );
    stub.on(
        "GET",
        &format!("{REPO}/pulls/7"),
        200,
        &pr_json(7, false, SHA),
    );
    let err = gitea(&stub).merge("feature/x", SHA).expect_err("405");
    assert!(is_retryable(&err), "{err:#}");
    assert_eq!(http_error(&err).status(), Some(405));
}

#[test]
fn gitea_merge_409_head_out_of_date_is_moved() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, SHA),
    );
    stub.on(
        "POST",
        &format!("{REPO}/pulls/7/merge"),
        409,
        &json!({"message": "head out of date"}),
    );
    stub.on(
        "GET",
        &format!("{REPO}/pulls/7"),
        200,
        &pr_json(7, false, OTHER),
    );
    let err = gitea(&stub).merge("feature/x", SHA).expect_err("409");
    match err.downcast_ref::<MergeRefused>() {
        Some(MergeRefused::Moved { tested, now, .. }) => {
            assert_eq!(tested, SHA);
            assert_eq!(now, OTHER);
        }
        other => panic!("expected Moved, got {other:?} / {err:#}"),
    }
}

#[test]
fn gitea_merge_409_conflict_is_behind() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, SHA),
    );
    stub.on(
        "POST",
        &format!("{REPO}/pulls/7/merge"),
        409,
        &json!({"message": "merge conflicts in README.md"}),
    );
    let err = gitea(&stub).merge("feature/x", SHA).expect_err("409");
    assert!(
        matches!(err.downcast_ref::<MergeRefused>(), Some(MergeRefused::Behind { base, .. }) if base == "main"),
        "{err:#}"
    );
}

#[test]
fn gitea_merge_refuses_a_moved_head_without_posting() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, false, OTHER),
    );
    let err = gitea(&stub).merge("feature/x", SHA).expect_err("moved");
    assert!(matches!(
        err.downcast_ref::<MergeRefused>(),
        Some(MergeRefused::Moved { .. })
    ));
    assert_eq!(stub.count("POST", &format!("{REPO}/pulls/7/merge")), 0);
}

#[test]
fn gitea_merge_without_pr_is_an_error() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        404,
        &json!({"message": "not found"}),
    );
    assert!(gitea(&stub).merge("feature/x", SHA).is_err());
    assert_eq!(stub.requests().len(), 1);
}

#[test]
fn gitea_delete_refuses_main_master_and_default_without_any_request() {
    let stub = Stub::start();
    let forge = gitea_with_default(&stub, "trunk");
    for branch in ["main", "master", "trunk"] {
        let err = forge.delete_branch(branch).expect_err(branch);
        assert!(err.to_string().contains("protected"), "{err:#}");
    }
    assert!(
        forge.delete_branch("../x").is_err(),
        "invalid names are refused too"
    );
    assert!(forge.delete_branch("-x").is_err());
    assert!(stub.requests().is_empty(), "no request at all");
}

#[test]
fn gitea_delete_branch_204_deleted_404_already_gone() {
    let stub = Stub::start();
    stub.on(
        "DELETE",
        &format!("{REPO}/branches/feature%2Fx"),
        204,
        &Value::Null,
    );
    stub.on(
        "DELETE",
        &format!("{REPO}/branches/feature%2Fgone"),
        404,
        &json!({"message": "not found"}),
    );
    stub.on(
        "DELETE",
        &format!("{REPO}/branches/feature%2Flocked"),
        403,
        &json!({"message": "protected"}),
    );
    let forge = gitea(&stub);
    assert!(forge.delete_branch("feature/x").expect("delete"));
    assert!(!forge.delete_branch("feature/gone").expect("already gone"));
    let err = forge.delete_branch("feature/locked").expect_err("403");
    assert!(matches!(
        http_error(&err),
        HttpError::Permanent { status: 403, .. }
    ));
    assert_eq!(
        stub.requests()[0].header("Authorization"),
        Some(format!("token {GITEA_TOKEN}").as_str())
    );
}

#[test]
fn orch065_tc16_pr_merged_204_or_404() {
    let stub = Stub::start();
    stub.on("GET", &format!("{REPO}/pulls/7/merge"), 204, &Value::Null);
    stub.on("GET", &format!("{REPO}/pulls/8/merge"), 404, &Value::Null);
    let forge = gitea(&stub);
    assert!(forge.pr_merged(7).expect("7"));
    assert!(!forge.pr_merged(8).expect("8"));
}

#[test]
fn orch065_tc16_is_merged_finds_head_or_merge_commit_in_closed_prs() {
    let stub = Stub::start();
    let unmerged_closed = json!({"number": 3, "state": "closed", "merged": false,
                                 "head": {"ref": "b", "sha": OTHER}, "base": {"ref": "main"}});
    stub.on(
        "GET",
        &format!("{REPO}/pulls"),
        200,
        &json!([unmerged_closed, pr_json(7, true, SHA)]),
    );
    let forge = gitea(&stub);
    assert!(forge.is_merged(SHA).expect("head sha"));
    assert!(forge.is_merged(MERGE_SHA).expect("merge sha"));
    assert!(!forge.is_merged(OTHER).expect("closed but not merged"));
    assert!(forge.is_merged("not-a-sha").is_err());
    let list = &stub.requests()[0];
    assert!(list.url.contains("state=closed"), "{}", list.url);
    // The branch-aware variant asks about exactly the branch's PR.
    stub.on(
        "GET",
        &find_path("feature%2Fx"),
        200,
        &pr_json(7, true, SHA),
    );
    assert!(forge.is_branch_merged("feature/x", SHA).expect("branch"));
    assert!(!forge.is_branch_merged("feature/x", OTHER).expect("branch"));
}

#[test]
fn gitea_commit_status_combined_state() {
    let stub = Stub::start();
    let status = |sha: &str| format!("{REPO}/commits/{sha}/status");
    stub.on(
        "GET",
        &status(SHA),
        200,
        &json!({"state": "success", "total_count": 2, "statuses": [{}, {}]}),
    );
    stub.on(
        "GET",
        &status(OTHER),
        200,
        &json!({"state": "pending", "total_count": 1, "statuses": [{}]}),
    );
    stub.on(
        "GET",
        &status(MERGE_SHA),
        200,
        &json!({"state": "", "total_count": 0, "statuses": []}),
    );
    stub.on(
        "GET",
        &status("4444"),
        200,
        &json!({"state": "failure", "total_count": 1, "statuses": [{}]}),
    );
    stub.on(
        "GET",
        &status("5555"),
        200,
        &json!({"state": "error", "total_count": 1, "statuses": [{}]}),
    );
    let forge = gitea(&stub);
    assert_eq!(forge.commit_status(SHA).expect("s"), Some(CiState::Success));
    assert_eq!(
        forge.commit_status(OTHER).expect("p"),
        Some(CiState::Pending)
    );
    assert_eq!(forge.commit_status(MERGE_SHA).expect("none"), None);
    assert_eq!(
        forge.commit_status("4444").expect("f"),
        Some(CiState::Failure)
    );
    assert_eq!(
        forge.commit_status("5555").expect("e"),
        Some(CiState::Error)
    );
}

#[test]
fn orch065_tc16_gitea_4xx_permanent_5xx_retryable_token_hidden() {
    let stub = Stub::start();
    stub.on(
        "GET",
        &find_path("feature%2Fa"),
        401,
        &json!({"message": format!("token {GITEA_TOKEN} is invalid")}),
    );
    stub.on("GET", &find_path("feature%2Fb"), 502, &Value::Null);
    let forge = gitea(&stub);
    let err = forge.find_pr("feature/a").expect_err("401");
    assert!(matches!(
        http_error(&err),
        HttpError::Permanent { status: 401, .. }
    ));
    let shown = format!("{err:#} {err:?}");
    assert!(!shown.contains(GITEA_TOKEN), "{shown}");
    let err = forge.find_pr("feature/b").expect_err("502");
    assert!(matches!(
        http_error(&err),
        HttpError::Retryable {
            status: Some(502),
            ..
        }
    ));
}

#[test]
fn gitea_timeout_is_retryable() {
    let forge = GiteaForge::new(&silent_server(), "acme", "app", "main", GITEA_TOKEN, SECOND)
        .expect("forge");
    let started = Instant::now();
    let err = forge.ensure_pr("feature/x", "t").expect_err("timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(is_retryable(&err), "{err:#}");
}

#[test]
fn gitea_invalid_branch_makes_no_request() {
    let stub = Stub::start();
    let forge = gitea(&stub);
    assert!(forge.ensure_pr("feature/../x", "t").is_err());
    assert!(forge.merge("--upload-pack=x", SHA).is_err());
    assert!(forge.find_pr("a b").is_err());
    assert!(stub.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Telegram

const BOT_TOKEN: &str = "123456:AAbbCC_dd-SeCrEt";
const SEND: &str = "/bot123456:AAbbCC_dd-SeCrEt/sendMessage";

fn telegram(stub: &Stub) -> Telegram {
    Telegram::new(&stub.url, BOT_TOKEN, "-100123", TIMEOUT).expect("telegram")
}

fn ok_reply() -> Value {
    json!({"ok": true, "result": {"message_id": 1}})
}

#[test]
fn telegram_sends_escaped_html_without_link_previews() {
    let stub = Stub::start();
    stub.on("POST", SEND, 200, &ok_reply());
    let sent = telegram(&stub)
        .send("ORCH-59 <merged> & deployed")
        .expect("send");
    assert_eq!(sent, 1);
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path(), SEND);
    assert_eq!(
        reqs[0].json(),
        json!({
            "chat_id": -100_123,
            "text": "ORCH-59 &lt;merged&gt; &amp; deployed",
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": true},
        })
    );
}

#[test]
fn telegram_send_html_is_not_escaped_again() {
    let stub = Stub::start();
    stub.on("POST", SEND, 200, &ok_reply());
    let bot = Telegram::new(&stub.url, BOT_TOKEN, "@orch_channel", TIMEOUT).expect("bot");
    bot.send_html("<b>ORCH-59</b> &amp; done").expect("send");
    let body = stub.requests()[0].json();
    assert_eq!(body["text"], "<b>ORCH-59</b> &amp; done");
    assert_eq!(body["chat_id"], "@orch_channel");
}

#[test]
fn telegram_splits_9000_characters_into_3_messages() {
    let stub = Stub::start();
    stub.on("POST", SEND, 200, &ok_reply());
    let text: String = (0..9000)
        .map(|i| if i % 7 == 0 { 'ж' } else { 'a' })
        .collect();
    assert_eq!(telegram(&stub).send(&text).expect("send"), 3);
    let texts: Vec<String> = stub
        .requests()
        .iter()
        .map(|r| r.json()["text"].as_str().expect("text").to_owned())
        .collect();
    assert_eq!(texts.len(), 3);
    assert!(texts.iter().all(|t| t.chars().count() <= 4096));
    assert_eq!(texts.concat(), text, "nothing lost, in order");
}

#[test]
fn telegram_split_prefers_line_breaks() {
    let stub = Stub::start();
    stub.on("POST", SEND, 200, &ok_reply());
    let mut text = String::new();
    for i in 0..300 {
        writeln!(text, "line {i:03} {}", "x".repeat(20)).expect("write");
    }
    assert_eq!(text.chars().count(), 9000);
    let sent = telegram(&stub).send(&text).expect("send");
    assert_eq!(sent, 3);
    for r in stub.requests() {
        let t = r.json()["text"].as_str().expect("text").to_owned();
        assert!(
            t.starts_with("line "),
            "a part starts at a line: {:?}",
            &t[..10]
        );
        assert!(t.trim_end().ends_with('x'));
    }
}

#[test]
fn telegram_429_returns_retry_after_without_waiting() {
    let stub = Stub::start();
    stub.on(
        "POST",
        SEND,
        429,
        &json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 30",
                "parameters": {"retry_after": 30}}),
    );
    let started = Instant::now();
    let err = telegram(&stub).send("hello").expect_err("429");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not sleep 30 s"
    );
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(err.status(), Some(429));
    assert!(!err.to_string().contains(BOT_TOKEN), "{err}");
    assert!(!err.to_string().contains("SeCrEt"), "{err}");
    assert_eq!(stub.requests().len(), 1);
}

#[test]
fn telegram_429_short_wait_is_taken_once() {
    let stub = Stub::start();
    stub.on(
        "POST",
        SEND,
        429,
        &json!({"ok": false, "error_code": 429, "parameters": {"retry_after": 1}}),
    );
    stub.on("POST", SEND, 200, &ok_reply());
    let bot = telegram(&stub).with_max_wait(Duration::from_secs(2));
    let started = Instant::now();
    assert_eq!(bot.send("hello").expect("send after waiting"), 1);
    assert!(started.elapsed() >= SECOND);
    assert_eq!(stub.requests().len(), 2);
}

#[test]
fn telegram_errors_never_show_the_token() {
    let stub = Stub::start();
    stub.on(
        "POST",
        SEND,
        400,
        &json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
    );
    let err = telegram(&stub).send("hello").expect_err("400");
    assert!(matches!(err, HttpError::Permanent { status: 400, .. }));
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("chat not found"), "{shown}");
    assert!(!shown.contains("SeCrEt"), "{shown}");

    // Transport errors too: the URL with the token is redacted.
    let bot = Telegram::new(&silent_server(), BOT_TOKEN, "1", SECOND).expect("bot");
    let err = bot.send("hello").expect_err("timeout");
    assert!(err.is_retryable());
    let shown = format!("{err} {err:?} {bot:?}");
    assert!(!shown.contains("SeCrEt"), "{shown}");
    assert!(shown.contains("/bot***/sendMessage"), "{shown}");
}

#[test]
fn telegram_rejects_bad_configuration() {
    assert!(Telegram::new("http://127.0.0.1:1", "", "1", SECOND).is_err());
    assert!(Telegram::new("http://127.0.0.1:1", "12/../x", "1", SECOND).is_err());
    assert!(Telegram::new("http://127.0.0.1:1", BOT_TOKEN, "chat", SECOND).is_err());
    let err = Telegram::new("http://127.0.0.1:1", "bad token!", "1", SECOND).expect_err("bad");
    assert!(!err.to_string().contains("bad token!"));
}
