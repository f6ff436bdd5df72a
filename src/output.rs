//! How orch talks to people and scripts: logging to stderr, human tables and
//! stable JSON on stdout (docs/json.md documents the JSON shapes).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;

/// The log target of progress lines (agent started/ended, re-test, demo).
///
/// Progress is logged at info level under this target. When stderr is a
/// terminal it is shown by default (a person is watching); under journald or
/// in a pipe it needs `-v`, like any other info line, so timers stay quiet.
pub const PROGRESS: &str = "orch::progress";

/// Log to stderr at a level picked by `-v`/`-q`; `RUST_LOG` overrides.
///
/// Every line is `orch: <level>: message`: no timestamps (journald stamps
/// lines itself), no colours. Two guards keep secrets out whatever
/// `RUST_LOG` says (a directive such as `ureq_proto::util=trace` is more
/// specific than any cap given to env_logger, so caps there do not hold):
/// [`Guarded`] drops every record of the HTTP crates above warn, and every
/// line has the values of the secrets in the environment and the
/// credentials directory masked (`***`).
pub fn init_logging(verbose: u8, quiet: bool) {
    use std::io::IsTerminal as _;
    let terminal = std::io::stderr().is_terminal();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let default = default_filter(verbose, quiet, terminal && !journal);
    let hidden = crate::secrets::values_to_hide();
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
            .write_style(env_logger::WriteStyle::Never)
            .format(move |buf, record| {
                let level = record.level().as_str().to_ascii_lowercase();
                let message = mask(&record.args().to_string(), &hidden);
                writeln!(buf, "orch: {level}: {}", safe_lines(&message))
            })
            .build();
    log::set_max_level(inner.filter());
    // Fails only if a logger is already set (a second call): keep that one.
    let _ = log::set_boxed_logger(Box::new(Guarded(inner)));
}

/// The crates whose debug and trace output carries secrets: ureq logs full
/// URLs (the Telegram bot token is in the path) and raw request headers
/// (Plane's `X-API-Key`, Gitea's `Authorization`) once trace is enabled for
/// its `util` module, ureq_proto hexdumps whole requests at trace, and
/// rustls has no business in orch's log below warn.
const HTTP_CRATES: &[&str] = &["ureq", "ureq_proto", "rustls"];

/// env_logger behind a hard cap for [`HTTP_CRATES`]: their records above
/// warn are never enabled, so ureq's own `log_enabled!(Trace)` checks (which
/// decide whether it prints paths and headers unredacted) are false too.
struct Guarded(env_logger::Logger);

/// Whether a record of `target` at `level` must never be logged.
fn capped(target: &str, level: log::Level) -> bool {
    level > log::Level::Warn
        && HTTP_CRATES.iter().any(|c| {
            target
                .strip_prefix(c)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

impl log::Log for Guarded {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        !capped(metadata.target(), metadata.level()) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// `text` with every value of `hidden` replaced by `***`.
fn mask(text: &str, hidden: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in hidden {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// The filter used when `RUST_LOG` is not set.
fn default_filter(verbose: u8, quiet: bool, show_progress: bool) -> String {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let progress = if show_progress && !quiet && verbose == 0 {
        format!(",{PROGRESS}=info")
    } else {
        String::new()
    };
    format!("{level},rustls=warn{progress}")
}

/// Whether `c` must not reach a terminal as it is: the C0 controls, DEL
/// and the C1 controls (U+009B is a one-character CSI, so an escape sequence
/// needs no ESC byte), and the bidi embeddings, overrides and isolates that
/// make text read in another order than it is (U+202A–U+202E, U+2066–U+2069).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [unsafe](is_unsafe) character but those `keep` allows
/// written as an escape: `\x1b` below U+0080, `\u{9b}` and `\u{202e}` above.
fn escape_unsafe(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !is_unsafe(c) || keep(c) {
            out.push(c);
        } else if u32::from(c) < 0x80 {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// Untrusted text (a Plane title, an agent's reason, an error from the
/// network) made safe for one line of human output: no escape sequence can
/// rewrite the operator's terminal, and no newline can start a fake line.
/// JSON output never goes through this: serde's escaping keeps it exact.
pub fn safe(text: &str) -> Cow<'_, str> {
    escape_unsafe(text, |_| false)
}

/// [`safe`] for text orch lays out in lines itself: newlines stay.
pub fn safe_lines(text: &str) -> Cow<'_, str> {
    escape_unsafe(text, |c| c == '\n')
}

/// [`safe`] for a log streamed as it is (an agent's output): newlines and
/// tabs stay, every other control character is escaped.
pub fn safe_log(text: &str) -> Cow<'_, str> {
    escape_unsafe(text, |c| c == '\n' || c == '\t')
}

/// Print one line of human output on stdout, made [safe](safe_lines): the
/// one way commands print text, so a value from outside cannot slip past.
pub fn say(line: &str) {
    println!("{}", safe_lines(line));
}

/// `println!` for human output: formats, then prints through [`say`].
#[macro_export]
macro_rules! say {
    () => {
        $crate::output::say("")
    };
    ($($arg:tt)*) => {
        $crate::output::say(&::std::format!($($arg)*))
    };
}

/// Log one progress line (see [`PROGRESS`]).
pub fn progress(message: &str) {
    log::info!(target: PROGRESS, "{message}");
}

/// Print `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Print `value` as one line of compact JSON on stdout, flushed: one
/// document per line (NDJSON), for `--watch --json`.
pub fn print_json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Run `tick` every `every` until the process is interrupted (Ctrl-C), like
/// `watch(1)`. On a terminal, and unless `json`, the screen is cleared before
/// each tick so the view redraws in place; in a pipe or a file each tick is
/// appended. A tick that fails is logged and the next one tries again (a
/// busy database must not end the watch). Nothing is kept between ticks.
pub fn watch(
    every: std::time::Duration,
    json: bool,
    mut tick: impl FnMut() -> anyhow::Result<()>,
) -> ! {
    use std::io::IsTerminal as _;
    let clear = !json && std::io::stdout().is_terminal();
    loop {
        if clear {
            // Cursor home, then erase the display.
            print!("\x1b[H\x1b[2J");
        }
        if let Err(e) = tick() {
            log::warn!("{e:#}");
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

/// A plain text table: a header row and left-aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; each cell is made [safe](safe), since cells hold titles,
    /// reasons and errors from outside.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| safe(&c).into_owned()).collect());
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Render with two spaces between columns, trailing spaces trimmed.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                let _ = write!(line, "{cell:<w$}  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A short human duration: `42s`, `5m`, `3h`, `2d`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Epoch seconds as an RFC 3339 UTC time, `2026-12-05T20:48:26Z`.
pub fn utc(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `Some(t)` as its [UTC time](utc) and age, `2026-12-05T20:48:26Z (5m ago)`,
/// `None` as "-".
pub fn when(t: Option<i64>, now: i64) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| format!("{} ({})", utc(t), ago(Some(t), now)),
    )
}

/// `Some(t)` as "<duration> ago" relative to `now`, `None` as "-".
pub fn ago(t: Option<i64>, now: i64) -> String {
    t.map_or_else(|| "-".to_owned(), |t| format!("{} ago", duration(now - t)))
}

/// An optional value, or "-".
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["1".into(), "queued".into()]);
        t.row(vec!["100".into(), "done".into()]);
        assert_eq!(t.render(), "ID   STATUS\n1    queued\n100  done\n");
    }

    #[test]
    fn unsafe_text_is_escaped() {
        let hostile = "a\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{202e}b\u{2066}\u{7f}\r\n";
        assert_eq!(
            safe(hostile),
            "a\\x1b]0;pwned\\x07\\x1b[2J\\u{9b}31m\\u{202e}b\\u{2066}\\x7f\\x0d\\x0a"
        );
        assert_eq!(safe_lines("x\ny\u{1b}"), "x\ny\\x1b");
        assert!(matches!(safe("Ünïcode — fine"), Cow::Borrowed(_)));
        let mut t = Table::new(&["T"]);
        t.row(vec!["\u{1b}[2J".into()]);
        assert_eq!(t.render(), "T\n\\x1b[2J\n");
    }

    #[test]
    fn progress_is_shown_on_a_terminal_only() {
        assert_eq!(default_filter(0, false, false), "warn,rustls=warn");
        assert_eq!(
            default_filter(0, false, true),
            "warn,rustls=warn,orch::progress=info"
        );
        assert_eq!(default_filter(0, true, true), "error,rustls=warn");
        assert_eq!(default_filter(1, false, true), "info,rustls=warn");
    }

    #[test]
    fn http_crates_are_capped_at_warn() {
        use log::Level;
        for target in ["ureq", "ureq::util", "ureq_proto::util", "rustls::client"] {
            assert!(capped(target, Level::Debug), "{target}");
            assert!(capped(target, Level::Trace), "{target}");
            assert!(!capped(target, Level::Warn), "{target}");
        }
        assert!(!capped("orch::progress", Level::Trace));
        assert!(!capped("ureqx", Level::Trace));
    }

    #[test]
    fn secrets_are_masked() {
        let hidden = vec!["s3cr3t-t0ken".to_owned()];
        assert_eq!(
            mask("GET /bots3cr3t-t0ken/getMe s3cr3t-t0ken", &hidden),
            "GET /bot***/getMe ***"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_503_706), "2026-12-05T20:48:26Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(when(Some(100), 400), "1970-01-01T00:01:40Z (5m ago)");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(600), "10m");
        assert_eq!(duration(7200), "2h");
        assert_eq!(duration(-3), "0s");
    }
}
