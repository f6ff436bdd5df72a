//! The outcome of a Claude Code run, read from its `stream-json` log.
//!
//! Claude Code's exit code cannot be trusted on its own: an API error can end
//! with exit 0 and `is_error: true`, and a crash or kill leaves no verdict at
//! all (research/pipeline-anchors.md §1.1). The verdict is the final `result`
//! event: a run succeeded only if the process exited 0 *and* reported
//! `subtype: "success"` with `is_error: false`. Failures caused by the API
//! being overloaded or rate limited are told apart as transient, so the
//! queue backs off instead of spending an attempt.

use std::path::Path;

use serde_json::Value;

/// What the final `result` event of a run says.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClaudeResult {
    /// `success`, `error_max_turns`, `error_during_execution`, … (empty if absent).
    pub subtype: String,
    /// Whether the run ended in error. A result event without the field
    /// counts as an error: success must be stated, not assumed.
    pub is_error: bool,
    /// The final text (may be missing on error).
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

/// How a run ended, for the queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum RunVerdict {
    /// Exit 0 and a successful result event.
    Success,
    /// The API was overloaded or rate limited: retry later without
    /// spending an attempt.
    Transient(String),
    /// Anything else.
    Failure(String),
}

impl RunVerdict {
    /// Whether the run succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, RunVerdict::Success)
    }
}

/// The reason given when a run produced no result event.
pub const NO_RESULT: &str = "no result event: the agent ended without reporting";

/// Text that marks an overloaded or rate-limited API (matched lowercase).
const TRANSIENT_MARKERS: &[&str] = &[
    "overloaded",
    "rate limit",
    "rate_limit",
    "rate-limit",
    "ratelimit",
    "too many requests",
    "usage limit reached",
    "http 529",
    "status 529",
    "error: 529",
    "error 529",
    "code 529",
    "\"status\":529",
];

/// How much of the end of a log is searched for transient markers when the
/// run left no result event.
const TAIL_BYTES: usize = 64 * 1024;

/// The last `result` event of a `stream-json` (NDJSON) log.
///
/// Lines that are not JSON objects (stderr, a line cut short by a kill) are
/// skipped; the log is read from the end, and only lines that can be a result
/// event are parsed, so huge assistant messages cost little.
pub fn parse_result(log: &str) -> Option<ClaudeResult> {
    log.lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{') && l.contains("\"result\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("type").and_then(Value::as_str) == Some("result"))
        .map(|v| from_event(&v))
}

/// [`parse_result`] on a log file (invalid UTF-8 is replaced, not fatal).
pub fn parse_result_file(path: &Path) -> std::io::Result<Option<ClaudeResult>> {
    let bytes = std::fs::read(path)?;
    Ok(parse_result(&String::from_utf8_lossy(&bytes)))
}

fn from_event(v: &Value) -> ClaudeResult {
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let usage = v.get("usage");
    let tokens = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
    ClaudeResult {
        subtype: text("subtype").unwrap_or_default(),
        is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(true),
        result: text("result"),
        session_id: text("session_id"),
        total_cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
        num_turns: v.get("num_turns").and_then(Value::as_u64),
        usage: Usage {
            input_tokens: tokens("input_tokens"),
            output_tokens: tokens("output_tokens"),
            cache_read_input_tokens: tokens("cache_read_input_tokens"),
            cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
        },
    }
}

/// The verdict on a run from its exit code (`None`: killed by a signal) and
/// its result event.
pub fn classify(exit_code: Option<i32>, result: Option<&ClaudeResult>) -> RunVerdict {
    let Some(r) = result else {
        return RunVerdict::Failure(match exit_code {
            Some(0) => NO_RESULT.to_owned(),
            Some(c) => format!("{NO_RESULT} (exit code {c})"),
            None => format!("{NO_RESULT} (killed by a signal)"),
        });
    };
    if exit_code == Some(0) && r.subtype == "success" && !r.is_error {
        return RunVerdict::Success;
    }
    let text = r.result.as_deref().unwrap_or("");
    let mut reason = match exit_code {
        Some(c) => format!("exit code {c}, result {}", r.subtype),
        None => format!("killed by a signal, result {}", r.subtype),
    };
    if r.is_error {
        reason.push_str(" (is_error)");
    }
    if !text.is_empty() {
        reason.push_str(": ");
        reason.push_str(&excerpt(text, 300));
    }
    if is_transient_text(text) || is_transient_text(&r.subtype) {
        RunVerdict::Transient(reason)
    } else {
        RunVerdict::Failure(reason)
    }
}

/// [`parse_result`] then [`classify`]; when there is no result event, the
/// non-JSON lines at the end of the log (the CLI's own error messages) are
/// searched for signs of an overloaded or rate-limited API.
pub fn classify_log(exit_code: Option<i32>, log: &str) -> (Option<ClaudeResult>, RunVerdict) {
    let result = parse_result(log);
    let verdict = classify(exit_code, result.as_ref());
    if result.is_none()
        && let RunVerdict::Failure(reason) = &verdict
    {
        let mut start = log.len().saturating_sub(TAIL_BYTES);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        if let Some(line) = log[start..]
            .lines()
            .filter(|l| !l.trim_start().starts_with('{'))
            .find(|l| is_transient_text(l))
        {
            let reason = format!("{reason}: {}", excerpt(line.trim(), 300));
            return (result, RunVerdict::Transient(reason));
        }
    }
    (result, verdict)
}

/// Whether `text` says the API was overloaded or rate limited.
pub fn is_transient_text(text: &str) -> bool {
    let lower = text.to_lowercase();
    TRANSIENT_MARKERS.iter().any(|m| lower.contains(m))
}

fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str =
        r#"{"type":"system","subtype":"init","session_id":"s-1","model":"claude","tools":[]}"#;
    const ASSISTANT: &str = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"the \"result\" is near"}],"usage":{"input_tokens":1}},"session_id":"s-1"}"#;

    fn result_line(subtype: &str, is_error: bool, text: &str) -> String {
        serde_json::json!({
            "type": "result", "subtype": subtype, "is_error": is_error,
            "result": text, "session_id": "s-1", "total_cost_usd": 0.1234,
            "duration_ms": 5000, "num_turns": 7,
            "usage": {
                "input_tokens": 120, "output_tokens": 3400,
                "cache_read_input_tokens": 50000, "cache_creation_input_tokens": 800,
                "server_tool_use": {"web_search_requests": 0}
            }
        })
        .to_string()
    }

    fn log_of(lines: &[&str]) -> String {
        let mut log = lines.join("\n");
        log.push('\n');
        log
    }

    #[test]
    fn success_needs_exit_zero_subtype_success_and_no_error() {
        let line = result_line("success", false, "done");
        let log = log_of(&[INIT, ASSISTANT, &line]);
        let r = parse_result(&log).expect("result event");
        assert_eq!(classify(Some(0), Some(&r)), RunVerdict::Success);
        assert!(!classify(Some(1), Some(&r)).is_success());
        assert!(!classify(None, Some(&r)).is_success());
    }

    #[test]
    fn is_error_true_with_exit_zero_is_failure() {
        let line = result_line("success", true, "Something went wrong");
        let r = parse_result(&log_of(&[INIT, &line])).expect("result event");
        let v = classify(Some(0), Some(&r));
        assert!(
            matches!(&v, RunVerdict::Failure(reason) if reason.contains("is_error")),
            "{v:?}"
        );
    }

    #[test]
    fn error_subtype_is_failure() {
        let line = result_line("error_max_turns", false, "");
        let r = parse_result(&log_of(&[INIT, &line])).expect("result event");
        let v = classify(Some(0), Some(&r));
        assert!(matches!(&v, RunVerdict::Failure(reason) if reason.contains("error_max_turns")));
    }

    #[test]
    fn exit_zero_without_result_event_is_failure() {
        let log = log_of(&[INIT, ASSISTANT]);
        assert_eq!(parse_result(&log), None);
        assert_eq!(
            classify(Some(0), None),
            RunVerdict::Failure(NO_RESULT.to_owned())
        );
        assert!(
            matches!(classify(Some(1), None), RunVerdict::Failure(r) if r.contains("exit code 1"))
        );
        assert!(matches!(classify(None, None), RunVerdict::Failure(r) if r.contains("signal")));
    }

    #[test]
    fn cost_and_usage_are_extracted() {
        let line = result_line("success", false, "all good");
        let r = parse_result(&log_of(&[INIT, ASSISTANT, &line])).expect("result event");
        assert_eq!(r.subtype, "success");
        assert!(!r.is_error);
        assert_eq!(r.result.as_deref(), Some("all good"));
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
    fn the_last_result_event_wins() {
        let first = result_line("error_during_execution", true, "first");
        let last = result_line("success", false, "second");
        let r = parse_result(&log_of(&[INIT, &first, ASSISTANT, &last])).expect("result event");
        assert_eq!(r.result.as_deref(), Some("second"));
    }

    #[test]
    fn tolerates_noise_partial_last_line_and_huge_lines() {
        let good = result_line("success", false, "ok");
        let huge = format!(
            r#"{{"type":"assistant","message":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
            "x".repeat(4 * 1024 * 1024)
        );
        let partial = &result_line("error_during_execution", true, "cut")[..40];
        let log = format!(
            "orch: warn: something on stderr\nnot json \"result\"\n{INIT}\n{huge}\n{good}\n{{broken\n{partial}"
        );
        let r = parse_result(&log).expect("result event");
        assert_eq!(r.result.as_deref(), Some("ok"));
        assert_eq!(parse_result(""), None);
        assert_eq!(parse_result("\n\n[1,2]\n\"result\"\n"), None);
    }

    #[test]
    fn missing_fields_are_tolerated_and_missing_is_error_is_an_error() {
        let r = parse_result(r#"{"type": "result", "subtype": "success"}"#).expect("result event");
        assert!(r.is_error);
        assert_eq!(r.result, None);
        assert_eq!(r.total_cost_usd, None);
        assert_eq!(r.usage, Usage::default());
        assert!(!classify(Some(0), Some(&r)).is_success());
    }

    #[test]
    fn api_overload_and_rate_limit_are_transient() {
        for text in [
            r#"API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            "API Error: Rate limit reached",
            "HTTP 529 from upstream",
            "Claude AI usage limit reached|1760000000",
        ] {
            let line = result_line("success", true, text);
            let r = parse_result(&line).expect("result event");
            assert!(
                matches!(classify(Some(0), Some(&r)), RunVerdict::Transient(_)),
                "{text}"
            );
            assert!(matches!(
                classify(Some(1), Some(&r)),
                RunVerdict::Transient(_)
            ));
        }
    }

    #[test]
    fn success_wins_over_transient_words() {
        let line = result_line("success", false, "Implemented the rate limit middleware");
        let r = parse_result(&line).expect("result event");
        assert_eq!(classify(Some(0), Some(&r)), RunVerdict::Success);
    }

    #[test]
    fn ordinary_failures_are_not_transient() {
        let line = result_line(
            "error_during_execution",
            true,
            "tests failed: 529 passed, 3 failed",
        );
        let r = parse_result(&line).expect("result event");
        assert!(matches!(
            classify(Some(1), Some(&r)),
            RunVerdict::Failure(_)
        ));
    }

    #[test]
    fn log_without_result_is_transient_when_stderr_says_overloaded() {
        let log = log_of(&[INIT, ASSISTANT, "Error: API overloaded, please retry"]);
        let (r, v) = classify_log(Some(1), &log);
        assert_eq!(r, None);
        assert!(
            matches!(&v, RunVerdict::Transient(reason) if reason.contains(NO_RESULT)),
            "{v:?}"
        );
        // Assistant text about rate limits is not the CLI's error.
        let log = log_of(&[INIT, r#"{"type":"assistant","text":"add a rate limit"}"#]);
        assert!(matches!(
            classify_log(Some(1), &log).1,
            RunVerdict::Failure(_)
        ));
    }

    #[test]
    fn verdict_serializes_with_a_tag() {
        let v = serde_json::to_value(RunVerdict::Failure("x".into())).expect("json");
        assert_eq!(v, serde_json::json!({"verdict": "failure", "reason": "x"}));
        let v = serde_json::to_value(RunVerdict::Success).expect("json");
        assert_eq!(v, serde_json::json!({"verdict": "success"}));
    }
}
