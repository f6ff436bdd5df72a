//! The outcome of an agent run, read from what it printed.
//!
//! Claude Code's exit code cannot be trusted on its own: earlier 2.1.x
//! versions ended some API errors with exit 0, a run whose every tool call was
//! refused ends exit 0 with `subtype: "success"`, and a crash or kill leaves no
//! verdict at all. The verdict is therefore read from the structured fields of
//! the final stream-json `result` event (`is_error`, `api_error_status`,
//! `permission_denials`, `subtype`), never from the wording of a message; and
//! whether a run speaks stream-json at all is read from its output, not from
//! how its command is spelled (see [`stream::StreamLog::is_claude_stream`]).
//! docs/claude-code.md has the table of verdicts.

pub mod permissions;
pub mod stream;
mod verdict;

use serde_json::Value;

pub use stream::StreamLog;
pub use verdict::{RunVerdict, classify, classify_exit};

/// What the final `result` event of a run says.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClaudeResult {
    /// `success`, `error_max_turns`, `error_max_budget_usd`,
    /// `error_during_execution`, … (empty if absent).
    pub subtype: String,
    /// Whether the run ended in error. A result event without the field
    /// counts as an error: success must be stated, not assumed.
    pub is_error: bool,
    /// The HTTP status of the API error that ended the run, if one did.
    pub api_error_status: Option<u16>,
    /// Tool calls the CLI refused for lack of permission.
    pub permission_denials: Vec<Denial>,
    /// Why the CLI stopped (`completed`, `max_turns`, …), when it says.
    pub terminal_reason: Option<String>,
    /// The final text (absent on the error subtypes).
    pub result: Option<String>,
    /// The session, for `--resume`.
    pub session_id: Option<String>,
    /// What the run cost.
    pub total_cost_usd: Option<f64>,
    /// Conversation turns used.
    pub num_turns: Option<u64>,
    /// Token counts.
    pub usage: Usage,
}

/// One refused tool call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Denial {
    /// `Write`, `Bash`, …
    pub tool: String,
    /// What it wanted: the file path or the command (shortened).
    pub target: String,
}

/// Token counts of a run (`usage` of the result event).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Input tokens not read from the cache.
    pub input_tokens: Option<u64>,
    /// Output tokens.
    pub output_tokens: Option<u64>,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: Option<u64>,
}

impl ClaudeResult {
    /// Read a `result` event; missing fields are tolerated.
    pub fn from_event(v: &Value) -> ClaudeResult {
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let usage = v.get("usage");
        let tokens = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
        ClaudeResult {
            subtype: text("subtype").unwrap_or_default(),
            is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(true),
            api_error_status: v
                .get("api_error_status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
            permission_denials: v
                .get("permission_denials")
                .and_then(Value::as_array)
                .map(|ds| ds.iter().map(denial).collect())
                .unwrap_or_default(),
            terminal_reason: text("terminal_reason"),
            result: text("result"),
            session_id: text("session_id"),
            total_cost_usd: v
                .get("total_cost_usd")
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0),
            num_turns: v.get("num_turns").and_then(Value::as_u64),
            usage: Usage {
                input_tokens: tokens("input_tokens"),
                output_tokens: tokens("output_tokens"),
                cache_read_input_tokens: tokens("cache_read_input_tokens"),
                cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
            },
        }
    }
}

fn denial(v: &Value) -> Denial {
    let input = v.get("tool_input");
    let field = |k: &str| input.and_then(|i| i.get(k)).and_then(Value::as_str);
    let target = field("file_path")
        .or_else(|| field("notebook_path"))
        .or_else(|| field("command"))
        .or_else(|| field("path"))
        .unwrap_or("");
    Denial {
        tool: v
            .get("tool_name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned(),
        target: excerpt(target, 120),
    }
}

/// `text` cut to `max_chars` characters, with an ellipsis when cut.
pub(crate) fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_result(log: &str) -> Option<ClaudeResult> {
        StreamLog::scan(log.as_bytes()).ok()?.result
    }

    /// A result event with every field the CLI 2.1.332 prints that orch reads
    /// (the shape was captured from the real CLI run offline).
    pub(super) fn result_line(subtype: &str, is_error: bool, status: Option<u16>) -> String {
        serde_json::json!({
            "type": "result", "subtype": subtype, "is_error": is_error,
            "api_error_status": status, "terminal_reason": "completed",
            "result": "done", "session_id": "s-1", "total_cost_usd": 0.1234,
            "duration_ms": 5000, "num_turns": 7, "permission_denials": [],
            "usage": {
                "input_tokens": 120, "output_tokens": 3400,
                "cache_read_input_tokens": 50000, "cache_creation_input_tokens": 800,
                "server_tool_use": {"web_search_requests": 0}
            }
        })
        .to_string()
    }

    #[test]
    fn every_field_is_read() {
        let r = parse_result(&result_line("success", false, None)).expect("result event");
        assert_eq!(r.subtype, "success");
        assert!(!r.is_error);
        assert_eq!(r.api_error_status, None);
        assert_eq!(r.terminal_reason.as_deref(), Some("completed"));
        assert_eq!(r.result.as_deref(), Some("done"));
        assert_eq!(r.session_id.as_deref(), Some("s-1"));
        assert_eq!(r.total_cost_usd, Some(0.1234));
        assert_eq!(r.num_turns, Some(7));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: Some(120),
                output_tokens: Some(3400),
                cache_read_input_tokens: Some(50000),
                cache_creation_input_tokens: Some(800),
            }
        );
    }

    #[test]
    fn denials_name_the_tool_and_its_target() {
        let line = r#"{"type":"result","subtype":"success","is_error":false,"permission_denials":[
            {"tool_name":"Write","tool_use_id":"t1","tool_input":{"file_path":"/etc/x","content":"x"}},
            {"tool_name":"Bash","tool_use_id":"t2","tool_input":{"command":"make test"}}]}"#
            .replace('\n', "");
        let r = parse_result(&line).expect("result event");
        assert_eq!(
            r.permission_denials,
            [
                Denial {
                    tool: "Write".into(),
                    target: "/etc/x".into()
                },
                Denial {
                    tool: "Bash".into(),
                    target: "make test".into()
                }
            ]
        );
    }

    #[test]
    fn missing_fields_are_tolerated_and_missing_is_error_is_an_error() {
        let r = parse_result(r#"{"type": "result", "subtype": "success"}"#).expect("result event");
        assert!(r.is_error);
        assert_eq!(r.result, None);
        assert_eq!(r.total_cost_usd, None);
        assert_eq!(r.usage, Usage::default());
        assert!(r.permission_denials.is_empty());
    }

    #[test]
    fn the_last_result_event_wins_and_noise_is_skipped() {
        let first = result_line("error_during_execution", true, None);
        let last = result_line("success", false, None).replace("\"done\"", "\"second\"");
        let log = format!("warn: x\n{first}\n{{broken\n{last}\n{}", &first[..40]);
        let r = parse_result(&log).expect("result event");
        assert_eq!(r.result.as_deref(), Some("second"));
        assert_eq!(parse_result(""), None);
        assert_eq!(parse_result("\n\n[1,2]\n\"result\"\n"), None);
    }

    #[test]
    fn a_negative_or_absurd_cost_is_not_a_cost() {
        let line = result_line("success", false, None).replace("0.1234", "-3");
        assert_eq!(parse_result(&line).and_then(|r| r.total_cost_usd), None);
    }
}
