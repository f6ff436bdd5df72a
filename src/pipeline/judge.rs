//! How a finished agent run is judged, and what it cost.
//!
//! The runner says how the process ended; this module reads what the agent
//! printed (once, in bounded memory) and decides whether the run did its
//! work, and for the queue whether to back off, retry or give up. Whether the
//! output is read the Claude Code way is decided by the output itself when
//! `agent_protocol = "auto"`, so `/opt/claude/bin/claude …`, `env X=1 claude
//! …` or a wrapper script are judged like `claude …`.

use std::path::Path;

use crate::config::{AgentProtocol, Config};
use crate::runner::claude::{self, ClaudeResult, RunVerdict, StreamLog};
use crate::runner::{Outcome, Timeout};

/// The judgement of one run.
#[derive(Debug)]
pub struct Judged {
    /// What the queue should do.
    pub verdict: RunVerdict,
    /// The final `result` event, if there was one.
    pub result: Option<ClaudeResult>,
    /// Cost in USD; `None` is unknown (never silently zero).
    pub cost_usd: Option<f64>,
    /// Input tokens, when known.
    pub input_tokens: Option<i64>,
    /// Output tokens, when known.
    pub output_tokens: Option<i64>,
}

/// Judge the run that ended with `outcome`, whose output is in `log_path`
/// and whose self-reported cost (non-Claude agents) is in `cost_file`.
pub fn judge(
    config: &Config,
    protocol: AgentProtocol,
    outcome: &Outcome,
    log_path: &Path,
    cost_file: &Path,
) -> Judged {
    let log = StreamLog::read(log_path).unwrap_or_else(|e| {
        log::warn!("reading the agent log {}: {e}", log_path.display());
        StreamLog::default()
    });
    if log.overlong_lines > 0 {
        log::info!(
            "{}: {} line(s) over {} bytes were not parsed",
            log_path.display(),
            log.overlong_lines,
            claude::stream::MAX_LINE
        );
    }
    let claude = match protocol {
        AgentProtocol::Claude => true,
        AgentProtocol::ExitCode => false,
        AgentProtocol::Auto => log.is_claude_stream(),
    };
    let verdict = match outcome.timed_out {
        Some(kind) => {
            let (name, limit) = match kind {
                Timeout::Wall => ("wall", config.agent_timeout_s),
                Timeout::Stall => ("stall", config.agent_stall_timeout_s),
            };
            RunVerdict::Failure(format!("agent stopped: {name} timeout after {limit}s"))
        }
        None if claude => claude::classify(outcome.exit_code, &log),
        None => claude::classify_exit(outcome.exit_code, outcome.signal),
    };
    let cost = run_cost(&log, cost_file, claude);
    Judged {
        verdict,
        result: log.result,
        cost_usd: cost.cost_usd,
        input_tokens: cost.input_tokens,
        output_tokens: cost.output_tokens,
    }
}

/// What a run cost, and where that was read.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCost {
    /// USD; `None` is unknown.
    pub cost_usd: Option<f64>,
    /// Input tokens, when reported.
    pub input_tokens: Option<i64>,
    /// Output tokens, when reported.
    pub output_tokens: Option<i64>,
    /// Where the figure came from, in words.
    pub source: &'static str,
}

/// The one cost rule, for a finished run and for a run whose worker died
/// (the reaper): Claude's `result` event; else what the agent reported in
/// `$ORCH_COST_FILE`; else zero for a plain command. A Claude run without a
/// result event costs "unknown", never zero.
pub fn run_cost(log: &StreamLog, cost_file: &Path, claude: bool) -> RunCost {
    let tokens = |v: Option<u64>| v.and_then(|t| i64::try_from(t).ok());
    match (&log.result, read_cost_file(cost_file)) {
        (Some(r), _) => RunCost {
            cost_usd: r.total_cost_usd,
            input_tokens: tokens(r.usage.input_tokens),
            output_tokens: tokens(r.usage.output_tokens),
            source: "the log's result event",
        },
        (None, Some(c)) => RunCost {
            cost_usd: c.cost_usd,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            source: "$ORCH_COST_FILE",
        },
        (None, None) if claude => RunCost {
            cost_usd: None,
            input_tokens: None,
            output_tokens: None,
            source: "a Claude stream without a result event: cost unknown",
        },
        (None, None) => RunCost {
            cost_usd: Some(0.0),
            input_tokens: None,
            output_tokens: None,
            source: "no Claude stream: a plain command, cost 0",
        },
    }
}

/// What a non-Claude agent reported about its cost in `$ORCH_COST_FILE`:
/// `{"cost_usd": 0.12, "input_tokens": 1000, "output_tokens": 200}`.
#[derive(Debug, serde::Deserialize)]
struct ReportedCost {
    cost_usd: Option<f64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
}

/// The largest cost file read; anything bigger is not a cost report.
const MAX_COST_FILE: u64 = 64 * 1024;

fn read_cost_file(path: &Path) -> Option<ReportedCost> {
    let unknown = ReportedCost {
        cost_usd: None,
        input_tokens: None,
        output_tokens: None,
    };
    // Missing: no report. Not a regular file (a FIFO, /dev/zero, a symlink
    // planted by the agent): no report either, and nothing is read.
    let file = crate::runner::untrusted::open_regular(path).ok()??;
    let mut text = String::new();
    let read =
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_COST_FILE + 1), &mut text);
    if read.is_err() || text.len() as u64 > MAX_COST_FILE {
        log::warn!(
            "{}: not a cost report (unreadable or over {MAX_COST_FILE} bytes); the run's cost is unknown",
            path.display()
        );
        return Some(unknown);
    }
    match serde_json::from_str::<ReportedCost>(&text) {
        Ok(c) => Some(ReportedCost {
            cost_usd: c.cost_usd.filter(|x| x.is_finite() && *x >= 0.0),
            ..c
        }),
        Err(e) => {
            log::warn!(
                "{}: not a cost report ({e}); the run's cost is unknown",
                path.display()
            );
            Some(unknown)
        }
    }
}
