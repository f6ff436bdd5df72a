//! One bounded pass over an agent's log, keeping only what the verdict needs.
//!
//! An agent's log is whatever it printed, and an agent can print without end:
//! gigabytes, or one line with no newline. The log is therefore read once, in
//! fixed-size chunks, and never held whole; a line is kept only up to
//! [`MAX_LINE`] bytes (longer ones are skipped, and only a `result` event is
//! worth parsing anyway), and of the lines that are not stream-json only the
//! last few are kept, for the CLI's own error messages.

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::ClaudeResult;

/// The longest line that is parsed. A Claude Code event carrying a whole
/// final answer fits comfortably; an agent dumping a file on one line does not
/// need to.
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// How many of the last non-JSON lines are kept, and how much of each.
const TAIL_LINES: usize = 20;
const TAIL_LINE_CHARS: usize = 1000;

/// What one pass over a log found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamLog {
    /// Claude Code's `system`/`init` event was seen: the output is a
    /// stream-json stream, whatever the command looked like.
    pub init_seen: bool,
    /// The last `result` event.
    pub result: Option<ClaudeResult>,
    /// The last `system`/`api_retry` event: (HTTP status, error kind).
    pub last_api_retry: Option<(Option<u16>, String)>,
    /// Tool calls the agent made that change files or run commands
    /// (Write, Edit, MultiEdit, NotebookEdit, Bash).
    pub mutating_tool_calls: u64,
    /// The last lines that were not JSON objects (stderr of the CLI, a line
    /// cut short by a kill), trimmed.
    pub tail: VecDeque<String>,
    /// Lines longer than [`MAX_LINE`], skipped unread.
    pub overlong_lines: u64,
}

impl StreamLog {
    /// Whether the output is Claude Code's stream-json: an `init` event or a
    /// `result` event was printed. This, not the spelling of the command,
    /// decides `agent_protocol = "auto"`.
    pub fn is_claude_stream(&self) -> bool {
        self.init_seen || self.result.is_some()
    }

    /// Read `path` once. A missing log is an empty one, and so is one the
    /// agent replaced by something that is not a regular file.
    pub fn read(path: &Path) -> std::io::Result<StreamLog> {
        match crate::runner::untrusted::open_regular(path)? {
            Some(file) => StreamLog::scan(file),
            None => Ok(StreamLog::default()),
        }
    }

    /// Scan a log from a reader, in bounded memory.
    pub fn scan(mut input: impl Read) -> std::io::Result<StreamLog> {
        let mut log = StreamLog::default();
        let mut line: Vec<u8> = Vec::new();
        let mut skipping = false;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut rest = &chunk[..n];
            loop {
                let newline = rest.iter().position(|&b| b == b'\n');
                let piece = &rest[..newline.unwrap_or(rest.len())];
                if !skipping {
                    if line.len() + piece.len() > MAX_LINE {
                        log.overlong_lines += 1;
                        line.clear();
                        skipping = true;
                    } else {
                        line.extend_from_slice(piece);
                    }
                }
                let Some(at) = newline else { break };
                if !skipping {
                    log.line(&line);
                }
                line.clear();
                skipping = false;
                rest = &rest[at + 1..];
            }
        }
        if !skipping && !line.is_empty() {
            log.line(&line);
        }
        Ok(log)
    }

    /// Take in one whole line.
    fn line(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if !text.starts_with('{') {
            self.keep_tail(text);
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            self.keep_tail(text);
            return;
        };
        let str_of = |key: &str| event.get(key).and_then(Value::as_str);
        match (str_of("type"), str_of("subtype")) {
            (Some("system"), Some("init")) => self.init_seen = true,
            (Some("system"), Some("api_retry")) => {
                let status = event
                    .get("error_status")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok());
                let kind = str_of("error").unwrap_or("").to_owned();
                self.last_api_retry = Some((status, kind));
            }
            (Some("result"), _) => self.result = Some(ClaudeResult::from_event(&event)),
            (Some("assistant"), _) => self.mutating_tool_calls += count_mutating_calls(&event),
            _ => {}
        }
    }

    fn keep_tail(&mut self, text: &str) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(super::excerpt(text, TAIL_LINE_CHARS));
    }
}

/// The tools whose calls change the worktree or run something.
const MUTATING_TOOLS: &[&str] = &["Write", "Edit", "MultiEdit", "NotebookEdit", "Bash"];

fn count_mutating_calls(event: &Value) -> u64 {
    event
        .pointer("/message/content")
        .and_then(Value::as_array)
        .map_or(0, |blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
                .filter(|b| {
                    b.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| MUTATING_TOOLS.contains(&n))
                })
                .count() as u64
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> StreamLog {
        StreamLog::scan(text.as_bytes()).expect("scan")
    }

    #[test]
    fn init_result_retries_and_tool_calls_are_found() {
        let log = scan(concat!(
            r#"{"type":"system","subtype":"init","session_id":"s"}"#,
            "\n",
            r#"{"type":"system","subtype":"api_retry","attempt":1,"error_status":429,"error":"rate_limit"}"#,
            "\n",
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Write","input":{}},{"type":"tool_use","name":"Read","input":{}}]}}"#,
            "\n",
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{}}]}}"#,
            "\n",
            "stderr: something\n",
            r#"{"subtype":"success","is_error":false,"type":"result","total_cost_usd":0.5}"#,
        ));
        assert!(log.init_seen && log.is_claude_stream());
        assert_eq!(log.last_api_retry, Some((Some(429), "rate_limit".into())));
        assert_eq!(log.mutating_tool_calls, 2);
        assert_eq!(log.tail, ["stderr: something"]);
        let r = log.result.expect("result");
        assert_eq!(r.total_cost_usd, Some(0.5));
    }

    #[test]
    fn plain_output_is_not_a_claude_stream() {
        let log = scan("building\n{\"not\": \"an event\"}\nall tests passed\n");
        assert!(!log.is_claude_stream());
        assert_eq!(log.tail.len(), 2);
    }

    #[test]
    fn an_overlong_line_is_skipped_without_being_held() {
        let mut text = String::from("{\"type\":\"system\",\"subtype\":\"init\"}\n");
        text.push_str(&"x".repeat(MAX_LINE + 10));
        text.push('\n');
        text.push_str(r#"{"type":"result","subtype":"success","is_error":false}"#);
        let log = scan(&text);
        assert_eq!(log.overlong_lines, 1);
        assert!(log.result.is_some());
        assert!(log.tail.is_empty());
    }

    #[test]
    fn only_the_last_lines_of_noise_are_kept() {
        let text: String = (0..100)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let log = scan(&text);
        assert_eq!(log.tail.len(), TAIL_LINES);
        assert_eq!(log.tail.back().map(String::as_str), Some("line 99"));
    }
}
