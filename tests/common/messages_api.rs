//! A loopback stand-in for the Anthropic Messages API, for running the real
//! Claude Code CLI offline in tests.
//!
//! The CLI (`@anthropic-ai/claude-code`, pinned in `.ci/run`) talks to
//! `$ANTHROPIC_BASE_URL` and, with non-essential traffic disabled, to nothing
//! else: one `POST /v1/messages` per turn with `"stream": true`, answered
//! with server-sent events (`message_start`, `content_block_start`,
//! `content_block_delta`, `content_block_stop`, `message_delta`,
//! `message_stop`), the shapes of the public Messages API streaming
//! reference. A [`Model`] decides each answer from the request, the way a
//! real model would: from the prompt, the working directory named in the
//! system prompt and the tool results so far.
//!
//! The server is a plain HTTP/1.1 loop over `std::net` (one thread per
//! connection, `Connection: close`), so a test can also cut a stream in the
//! middle, which a higher-level server would not let it do.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

/// One request the CLI made.
#[derive(Debug, Clone)]
pub struct Request {
    /// `POST`, `HEAD`, …
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// The JSON body (`Null` when there is none).
    pub body: Value,
}

impl Request {
    /// Whether this is a Messages API call.
    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path.starts_with("/v1/messages")
    }

    /// Whether the request offers tools (the agent loop; side requests such
    /// as a session title come without).
    pub fn has_tools(&self) -> bool {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty())
    }

    /// The turn this request asks for: 1 + the assistant messages so far.
    pub fn turn(&self) -> usize {
        1 + self
            .messages()
            .iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
            .count()
    }

    fn messages(&self) -> Vec<Value> {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Every text of the request (system prompt and messages), joined.
    pub fn all_text(&self) -> String {
        let mut out = String::new();
        collect_text(&self.body, &mut out);
        out
    }

    /// The working directory the CLI tells the model about.
    pub fn working_dir(&self) -> Option<String> {
        let text = self.all_text();
        let at = text.find("Primary working directory:")?;
        let rest = &text[at + "Primary working directory:".len()..];
        let line = rest.lines().next()?.trim();
        Some(line.trim_matches('`').to_owned())
    }

    /// The tool results of the last user message: (tool_use_id, is_error, text).
    pub fn last_tool_results(&self) -> Vec<(String, bool, String)> {
        let Some(last) = self
            .messages()
            .into_iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        else {
            return Vec::new();
        };
        last.get("content")
            .and_then(Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                    .map(|b| {
                        let mut text = String::new();
                        collect_text(b.get("content").unwrap_or(&Value::Null), &mut text);
                        (
                            b.get("tool_use_id")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                            b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                            text,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                if matches!(k.as_str(), "text" | "content" | "system" | "messages") {
                    collect_text(v, out);
                }
            }
        }
        _ => {}
    }
}

/// A content block of an answer.
#[derive(Debug, Clone)]
pub enum Block {
    /// Plain text.
    Text(String),
    /// A tool call: tool name and input.
    Tool(&'static str, Value),
}

/// How the stand-in answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A streamed message; `stop_reason` is `tool_use` when it calls tools.
    Message(Vec<Block>),
    /// An HTTP error with an API error body
    /// (`{"type":"error","error":{"type":…,"message":…}}`).
    Error(u16, &'static str, String),
    /// Start a streamed message, then close the connection mid-stream.
    CutStream,
    /// An SSE `error` event in the middle of a stream.
    StreamError(&'static str, String),
    /// Start a streamed message, then say nothing more for this long (a
    /// model that hangs; the agent's stall timeout is what ends it).
    Stall(std::time::Duration),
}

/// What decides the answers.
pub trait Model: Send + Sync + 'static {
    /// The answer to `req` (only Messages API calls reach this).
    fn reply(&self, req: &Request) -> Reply;
}

impl<F: Fn(&Request) -> Reply + Send + Sync + 'static> Model for F {
    fn reply(&self, req: &Request) -> Reply {
        self(req)
    }
}

/// The running stand-in.
pub struct MessagesApi {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

/// Tokens every answer reports, so the CLI computes a real cost.
pub const INPUT_TOKENS: u64 = 1200;
/// Output tokens every answer reports.
pub const OUTPUT_TOKENS: u64 = 300;

impl MessagesApi {
    /// Serve `model` on a free loopback port of the current network namespace.
    pub fn start(model: impl Model) -> MessagesApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Messages API stand-in");
        Self::serve(listener, model)
    }

    /// Serve `model` on `listener`.
    pub fn serve(listener: TcpListener, model: impl Model) -> MessagesApi {
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let model: Arc<dyn Model> = Arc::new(model);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let model = Arc::clone(&model);
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let _ = handle(stream, model.as_ref(), &log);
                });
            }
        });
        MessagesApi { url, seen }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Messages API calls so far.
    pub fn messages_calls(&self) -> usize {
        self.requests().iter().filter(|r| r.is_messages()).count()
    }
}

fn handle(stream: TcpStream, model: &dyn Model, log: &Mutex<Vec<Request>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let raw = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut buf = vec![0; length];
        reader.read_exact(&mut buf)?;
        buf
    };
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let req = Request { method, path, body };
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(req.clone());
    let mut out = stream;
    if !req.is_messages() {
        return out.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        );
    }
    let model_name = req
        .body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-sonnet-4-5")
        .to_owned();
    let streaming = req.body.get("stream").and_then(Value::as_bool) == Some(true);
    match model.reply(&req) {
        Reply::Error(status, kind, message) => write_error(&mut out, status, kind, &message),
        Reply::Message(blocks) if streaming => {
            out.write_all(SSE_HEAD)?;
            out.write_all(sse_message(&model_name, &blocks).as_bytes())?;
            out.flush()
        }
        Reply::Message(blocks) => {
            let body = whole_message(&model_name, &blocks).to_string();
            write!(
                out,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Reply::CutStream => {
            // Streaming or not, the connection drops before the answer is whole.
            let full = if streaming {
                out.write_all(SSE_HEAD)?;
                sse_message(&model_name, &[Block::Text("I will start by".into())])
            } else {
                let body = whole_message(&model_name, &[Block::Text("I will".into())]).to_string();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )?;
                body
            };
            let cut = full.find("content_block_stop").unwrap_or(full.len() / 2);
            out.write_all(&full.as_bytes()[..cut])?;
            out.flush()
        }
        Reply::Stall(pause) => {
            out.write_all(SSE_HEAD)?;
            let full = sse_message(&model_name, &[Block::Text("Thinking".into())]);
            let cut = full.find("event: content_block_start").unwrap_or(0);
            out.write_all(&full.as_bytes()[..cut])?;
            out.flush()?;
            std::thread::sleep(pause);
            Ok(())
        }
        // The CLI falls back to a non-streaming request after a stream
        // error; a busy API answers that one with its error status.
        Reply::StreamError(kind, message) if !streaming => {
            write_error(&mut out, 529, kind, &message)
        }
        Reply::StreamError(kind, message) => {
            out.write_all(SSE_HEAD)?;
            let full = sse_message(&model_name, &[Block::Text("Working".into())]);
            let cut = full.find("event: content_block_stop").unwrap_or(0);
            out.write_all(&full.as_bytes()[..cut])?;
            let err = json!({"type": "error", "error": {"type": kind, "message": message}});
            write!(out, "event: error\ndata: {err}\n\n")?;
            out.flush()
        }
    }
}

fn write_error(out: &mut TcpStream, status: u16, kind: &str, message: &str) -> std::io::Result<()> {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}}).to_string();
    let reason = match status {
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        529 => "Overloaded",
        401 => "Unauthorized",
        _ => "Bad Request",
    };
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nrequest-id: req_test\r\nretry-after: 0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A whole (non-streaming) message with `blocks`.
fn whole_message(model: &str, blocks: &[Block]) -> Value {
    let mut calls_tool = false;
    let content: Vec<Value> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| match b {
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::Tool(name, input) => {
                calls_tool = true;
                json!({"type": "tool_use", "id": format!("toolu_whole_{i}"), "name": name, "input": input})
            }
        })
        .collect();
    json!({"id": "msg_whole", "type": "message", "role": "assistant", "model": model,
           "content": content,
           "stop_reason": if calls_tool { "tool_use" } else { "end_turn" }, "stop_sequence": null,
           "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS,
                     "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nrequest-id: req_test\r\nconnection: close\r\n\r\n";

fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

fn event(out: &mut String, name: &str, data: &Value) {
    use std::fmt::Write as _;
    let _ = write!(out, "event: {name}\ndata: {data}\n\n");
}

/// The server-sent events of one streamed message with `blocks`.
fn sse_message(model: &str, blocks: &[Block]) -> String {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = String::new();
    event(
        &mut out,
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_test{id:06}"), "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
    );
    let mut calls_tool = false;
    for (index, block) in blocks.iter().enumerate() {
        match block {
            Block::Text(text) => {
                event(
                    &mut out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "text", "text": ""}}),
                );
                event(
                    &mut out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": text}}),
                );
            }
            Block::Tool(name, input) => {
                calls_tool = true;
                event(
                    &mut out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use",
                                "id": format!("toolu_test{id:06}_{index}"),
                                "name": name, "input": {}}}),
                );
                event(
                    &mut out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta",
                                      "partial_json": input.to_string()}}),
                );
            }
        }
        event(
            &mut out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    event(
        &mut out,
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": if calls_tool { "tool_use" } else { "end_turn" },
                          "stop_sequence": null},
                "usage": {"output_tokens": OUTPUT_TOKENS}}),
    );
    event(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out
}

/// Where the pinned real Claude Code CLI is, if it is installed: `$ORCH_TEST_CLAUDE`
/// (set by `.ci/run`), else `None`. When `$ORCH_TEST_CLAUDE_REQUIRED` is set a
/// missing CLI fails the test instead of skipping it.
pub fn real_claude() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("ORCH_TEST_CLAUDE").map(std::path::PathBuf::from);
    match path {
        Some(p) if p.is_file() => Some(p),
        _ => {
            assert!(
                std::env::var_os("ORCH_TEST_CLAUDE_REQUIRED").is_none(),
                "ORCH_TEST_CLAUDE_REQUIRED is set but ORCH_TEST_CLAUDE ({:?}) is not the claude binary",
                std::env::var_os("ORCH_TEST_CLAUDE")
            );
            eprintln!(
                "\n*** SKIPPED: the real Claude Code CLI is not installed (set ORCH_TEST_CLAUDE; \
                 .ci/run installs it with npm) ***\n"
            );
            None
        }
    }
}

/// The environment that keeps the real CLI offline and on this stand-in.
pub fn offline_env(api: &MessagesApi, home: &std::path::Path) -> Vec<(String, String)> {
    [
        ("ANTHROPIC_BASE_URL", api.url.clone()),
        ("ANTHROPIC_API_KEY", "sk-ant-test-offline".to_owned()),
        ("ANTHROPIC_MODEL", "claude-sonnet-4-5".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_owned()),
        ("HOME", home.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
