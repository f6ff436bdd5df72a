//! The verdict on a run, for the queue: did it do its work, and if not,
//! should the job back off (transient), spend an attempt (failure) or stop
//! trying (permanent). The table is in docs/claude-code.md; each row has a
//! test here and, with the real CLI, in tests/claude_cli.rs.

use super::{ClaudeResult, StreamLog, excerpt};

/// How a run ended, for the queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum RunVerdict {
    /// The run did its work: the gates decide what happens next.
    Success,
    /// The API was rate limited, overloaded or failing on its side: back
    /// off without spending an attempt.
    Transient(String),
    /// The run did not do its work: retry while attempts remain.
    Failure(String),
    /// Retrying cannot help (the request itself was refused, or the agent
    /// command does not let the agent write): fail the job now.
    Permanent(String),
}

impl RunVerdict {
    /// Whether the run succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, RunVerdict::Success)
    }

    /// One line for logs and the run record: `success`, `transient: …`, ….
    pub fn describe(&self) -> String {
        match self {
            RunVerdict::Success => "success".to_owned(),
            RunVerdict::Transient(r) => format!("transient: {r}"),
            RunVerdict::Failure(r) => format!("failure: {r}"),
            RunVerdict::Permanent(r) => format!("permanent failure: {r}"),
        }
    }
}

/// The reason given when a run produced no result event.
pub const NO_RESULT: &str = "no result event: the agent ended without reporting";

/// HTTP statuses that say "not now" rather than "not this request": rate
/// limited (429), overloaded (529), timed out (408), or failing server-side.
fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 529) || (500..600).contains(&status)
}

/// Words older CLI versions print for a rate-limited or overloaded API when
/// no status is given (matched lowercase). Only consulted without a status.
const TRANSIENT_MARKERS: &[&str] = &[
    "overloaded",
    "rate limit",
    "rate_limit",
    "too many requests",
    "usage limit reached",
];

fn has_transient_words(text: &str) -> bool {
    let lower = text.to_lowercase();
    TRANSIENT_MARKERS.iter().any(|m| lower.contains(m))
}

/// The verdict on a plain command: its exit code.
pub fn classify_exit(exit_code: Option<i32>, signal: Option<i32>) -> RunVerdict {
    match (exit_code, signal) {
        (Some(0), _) => RunVerdict::Success,
        (Some(c), _) => RunVerdict::Failure(format!("agent exited with code {c}")),
        (None, s) => RunVerdict::Failure(format!("agent killed by signal {}", s.unwrap_or(0))),
    }
}

/// The verdict on a Claude Code run from its exit code (`None`: killed by
/// a signal) and its stream.
pub fn classify(exit_code: Option<i32>, log: &StreamLog) -> RunVerdict {
    match &log.result {
        Some(r) => from_result(exit_code, r, log.mutating_tool_calls),
        None => without_result(exit_code, log),
    }
}

fn from_result(exit_code: Option<i32>, r: &ClaudeResult, mutating_calls: u64) -> RunVerdict {
    let said = r
        .result
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| format!(": {}", excerpt(t, 300)))
        .unwrap_or_default();
    if let Some(status) = r.api_error_status {
        return if is_transient_status(status) {
            RunVerdict::Transient(format!("API error {status}{said}"))
        } else {
            RunVerdict::Permanent(format!("API refused the request ({status}){said}"))
        };
    }
    match r.subtype.as_str() {
        "success" if !r.is_error => {
            if !r.permission_denials.is_empty() {
                return refused(r, mutating_calls);
            }
            match exit_code {
                Some(0) => RunVerdict::Success,
                Some(c) => RunVerdict::Failure(format!("exit code {c} after a success result")),
                None => RunVerdict::Failure("killed by a signal after a success result".into()),
            }
        }
        "error_max_turns" => RunVerdict::Failure(format!(
            "the turn limit was reached after {} turns",
            r.num_turns.unwrap_or(0)
        )),
        "error_max_budget_usd" => RunVerdict::Failure(format!(
            "the run's budget was spent (${:.2})",
            r.total_cost_usd.unwrap_or(0.0)
        )),
        // An API call that failed without an HTTP status: the connection
        // was refused, reset or cut. The network, not the request.
        "success" => RunVerdict::Transient(format!("API unreachable (no HTTP status){said}")),
        subtype => RunVerdict::Failure(format!(
            "result {}{}{said}",
            if subtype.is_empty() { "?" } else { subtype },
            if r.is_error { " (is_error)" } else { "" }
        )),
    }
}

/// Refused tool calls: the run did not do its work. When every call that
/// would write or run something was refused, the agent command itself lacks
/// the permissions, and every retry would be refused the same way.
fn refused(r: &ClaudeResult, mutating_calls: u64) -> RunVerdict {
    let n = r.permission_denials.len();
    let list: Vec<String> = r
        .permission_denials
        .iter()
        .take(5)
        .map(|d| format!("{} {}", d.tool, d.target))
        .collect();
    let more = if n > 5 {
        format!(", and {} more", n - 5)
    } else {
        String::new()
    };
    let what = format!("{n} tool call(s) refused: {}{more}", list.join(", "));
    if mutating_calls > 0 && n as u64 >= mutating_calls {
        RunVerdict::Permanent(format!(
            "{what}; every call that writes or runs was refused: the agent command does not \
             give the agent write permission (see `orch doctor` and docs/claude-code.md)"
        ))
    } else {
        RunVerdict::Failure(what)
    }
}

fn without_result(exit_code: Option<i32>, log: &StreamLog) -> RunVerdict {
    let how = match exit_code {
        Some(0) => String::new(),
        Some(c) => format!(" (exit code {c})"),
        None => " (killed by a signal)".to_owned(),
    };
    let last_words = log
        .tail
        .back()
        .map(|l| format!(": {}", excerpt(l, 300)))
        .unwrap_or_default();
    if let Some((Some(status), kind)) = &log.last_api_retry
        && is_transient_status(*status)
    {
        return RunVerdict::Transient(format!(
            "{NO_RESULT}{how}; the API was answering {status} {kind}"
        ));
    }
    if let Some(line) = log.tail.iter().rev().find(|l| has_transient_words(l)) {
        return RunVerdict::Transient(format!("{NO_RESULT}{how}: {}", excerpt(line, 300)));
    }
    RunVerdict::Failure(format!("{NO_RESULT}{how}{last_words}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(result: &serde_json::Value) -> StreamLog {
        StreamLog {
            init_seen: true,
            result: Some(ClaudeResult::from_event(result)),
            ..StreamLog::default()
        }
    }

    fn result(subtype: &str, is_error: bool, status: Option<u16>, text: &str) -> StreamLog {
        log_with(&serde_json::json!({
            "type": "result", "subtype": subtype, "is_error": is_error,
            "api_error_status": status, "result": text, "num_turns": 3,
            "total_cost_usd": 0.42, "permission_denials": []
        }))
    }

    #[test]
    fn success_needs_exit_zero_subtype_success_no_error_and_no_denial() {
        let ok = result("success", false, None, "done");
        assert_eq!(classify(Some(0), &ok), RunVerdict::Success);
        assert!(matches!(classify(Some(1), &ok), RunVerdict::Failure(_)));
        assert!(matches!(classify(None, &ok), RunVerdict::Failure(_)));
    }

    #[test]
    fn api_status_decides_whatever_the_message_says() {
        for status in [429, 529, 500, 502, 503, 408] {
            let v = classify(Some(1), &result("success", true, Some(status), "Something"));
            assert!(
                matches!(&v, RunVerdict::Transient(r) if r.contains(&status.to_string())),
                "{status}: {v:?}"
            );
        }
        for status in [400, 401, 403, 404, 413] {
            let v = classify(
                Some(1),
                &result("success", true, Some(status), "rate limit"),
            );
            assert!(matches!(v, RunVerdict::Permanent(_)), "{status}: {v:?}");
        }
        // Exit 0 with an API error (earlier 2.1.x) is still the error.
        assert!(matches!(
            classify(Some(0), &result("success", true, Some(429), "x")),
            RunVerdict::Transient(_)
        ));
    }

    #[test]
    fn limits_spend_an_attempt() {
        let v = classify(Some(1), &result("error_max_turns", true, None, ""));
        assert!(
            matches!(&v, RunVerdict::Failure(r) if r.contains("turn limit")),
            "{v:?}"
        );
        let v = classify(Some(1), &result("error_max_budget_usd", true, None, ""));
        assert!(
            matches!(&v, RunVerdict::Failure(r) if r.contains("$0.42")),
            "{v:?}"
        );
    }

    #[test]
    fn refusals_fail_and_all_refused_is_permanent() {
        let mut log = log_with(&serde_json::json!({
            "type": "result", "subtype": "success", "is_error": false,
            "permission_denials": [{"tool_name": "Write", "tool_input": {"file_path": "/w/a.md"}}]
        }));
        log.mutating_tool_calls = 1;
        let v = classify(Some(0), &log);
        assert!(
            matches!(&v, RunVerdict::Permanent(r) if r.contains("Write /w/a.md")),
            "{v:?}"
        );
        log.mutating_tool_calls = 4;
        let v = classify(Some(0), &log);
        assert!(
            matches!(&v, RunVerdict::Failure(r) if r.contains("1 tool call(s) refused")),
            "{v:?}"
        );
    }

    #[test]
    fn without_a_status_only_busy_words_are_transient() {
        let v = classify(
            Some(1),
            &result("success", true, None, "API Error: Overloaded"),
        );
        assert!(matches!(v, RunVerdict::Transient(_)), "{v:?}");
        let v = classify(
            Some(1),
            &result("error_during_execution", true, None, "tests: 529 passed"),
        );
        assert!(matches!(v, RunVerdict::Failure(_)), "{v:?}");
        // A successful run that talks about rate limits is a success.
        let v = classify(
            Some(0),
            &result("success", false, None, "Added a rate limit"),
        );
        assert_eq!(v, RunVerdict::Success);
    }

    #[test]
    fn no_result_is_a_failure_unless_the_api_was_busy() {
        let mut log = StreamLog {
            init_seen: true,
            ..StreamLog::default()
        };
        assert!(matches!(classify(Some(0), &log), RunVerdict::Failure(r) if r == NO_RESULT));
        assert!(matches!(classify(None, &log), RunVerdict::Failure(r) if r.contains("signal")));
        log.last_api_retry = Some((Some(529), "overloaded".into()));
        assert!(matches!(classify(Some(1), &log), RunVerdict::Transient(_)));
        log.last_api_retry = Some((Some(400), "invalid_request".into()));
        assert!(matches!(classify(Some(1), &log), RunVerdict::Failure(_)));
        log.tail
            .push_back("Error: API overloaded, please retry".into());
        assert!(matches!(classify(Some(1), &log), RunVerdict::Transient(_)));
    }

    #[test]
    fn plain_commands_are_judged_by_exit_code() {
        assert_eq!(classify_exit(Some(0), None), RunVerdict::Success);
        assert!(
            matches!(classify_exit(Some(2), None), RunVerdict::Failure(r) if r.contains("code 2"))
        );
        assert!(
            matches!(classify_exit(None, Some(9)), RunVerdict::Failure(r) if r.contains("signal 9"))
        );
    }

    #[test]
    fn verdict_serializes_with_a_tag() {
        let v = serde_json::to_value(RunVerdict::Permanent("x".into())).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"verdict": "permanent", "reason": "x"})
        );
        let v = serde_json::to_value(RunVerdict::Success).expect("json");
        assert_eq!(v, serde_json::json!({"verdict": "success"}));
    }
}
