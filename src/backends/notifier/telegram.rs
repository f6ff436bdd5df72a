//! The Telegram notifier: `sendMessage` through the Bot API, for people who
//! want pipeline events on their phone (pipeline-anchors §4.3).
//!
//! Messages go out with `parse_mode = HTML` and link previews off. Plain text
//! is escaped (`& < >`); texts longer than Telegram's 4096-character limit
//! are split into several messages, at line breaks where possible. A 429
//! carries `parameters.retry_after`: a short wait is taken at once, a longer
//! one is returned as a retryable error so the outbox retries later instead
//! of blocking a worker.
//!
//! The bot token is part of the URL path (`/bot<TOKEN>/sendMessage`), so the
//! HTTP client redacts it from every message; it never reaches a log line or
//! an error.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::backends::http::{HttpClient, HttpError, trim_base};
use crate::config::Config;

/// The name of the secret holding the bot token (`ORCH_TELEGRAM_BOT_TOKEN`).
pub const TOKEN_SECRET: &str = "telegram_bot_token";

/// The Bot API's base URL.
pub const API_BASE: &str = "https://api.telegram.org";

/// The longest text one message may carry, in characters.
pub const MAX_CHARS: usize = 4096;

/// The longest `retry_after` waited for in place by default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(3);

/// A Telegram bot that writes to one chat.
pub struct Telegram {
    http: HttpClient,
    send_url: String,
    chat_id: Value,
    max_wait: Duration,
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The send URL holds the token: show it redacted.
        f.debug_struct("Telegram")
            .field("send_url", &self.http.redact(&self.send_url))
            .field("chat_id", &self.chat_id)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl Telegram {
    /// A bot with token `token` writing to `chat_id` (a number, or
    /// `@channelname`), through the Bot API at `api_base` ([`API_BASE`]
    /// outside tests).
    pub fn new(
        api_base: &str,
        token: &str,
        chat_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Telegram> {
        let base = trim_base(api_base);
        if base.is_empty() {
            bail!("the Telegram API base URL is empty");
        }
        let token = token.trim();
        if token.is_empty()
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
        {
            // Never echo the token itself.
            bail!("the Telegram bot token is empty or malformed");
        }
        let chat = chat_id.trim();
        let chat_id = if let Ok(n) = chat.parse::<i64>() {
            json!(n)
        } else if chat.starts_with('@') && chat.len() > 1 {
            json!(chat)
        } else {
            bail!("telegram_chat_id must be a number or @channelname, not {chat:?}");
        };
        Ok(Telegram {
            http: HttpClient::new(timeout).with_secret(token),
            send_url: format!("{base}/bot{token}/sendMessage"),
            chat_id,
            max_wait: DEFAULT_MAX_WAIT,
        })
    }

    /// The bot of the config (`telegram_chat_id`) and the secret
    /// `telegram_bot_token`, talking to the real Bot API.
    pub fn from_config(config: &Config, timeout: Duration) -> anyhow::Result<Telegram> {
        let Some(token) = crate::secrets::secret(TOKEN_SECRET) else {
            bail!(
                "no Telegram bot token: set {} or the systemd credential {}",
                crate::secrets::env_name(TOKEN_SECRET),
                crate::secrets::credential_name(TOKEN_SECRET)
            );
        };
        let base = if config.telegram_api_url.is_empty() {
            API_BASE
        } else {
            config.telegram_api_url.as_str()
        };
        Telegram::new(base, &token, &config.telegram_chat_id, timeout)
    }

    /// Wait in place for a 429's `retry_after` only up to `max_wait` (and
    /// then retry once); longer waits are returned as errors.
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Duration) -> Telegram {
        self.max_wait = max_wait;
        self
    }

    /// Send plain `text` (escaped here), split into as many messages as it
    /// needs. Returns how many messages were sent (0 for blank text).
    pub fn send(&self, text: &str) -> Result<usize, HttpError> {
        let parts: Vec<String> = split_text(text, MAX_CHARS)
            .iter()
            .map(|p| escape_html(p))
            .collect();
        self.send_parts(&parts)
    }

    /// Send text that is already Telegram HTML (`<b>`, `<a href>`, escaped
    /// entities). Long texts are split at line breaks where possible and never
    /// inside an entity or a tag; keep each element on one line so that a split
    /// cannot separate an opening tag from its closing tag.
    pub fn send_html(&self, html: &str) -> Result<usize, HttpError> {
        self.send_parts(&split_html(html, MAX_CHARS))
    }

    fn send_parts(&self, parts: &[String]) -> Result<usize, HttpError> {
        let total = parts.len();
        for (i, part) in parts.iter().enumerate() {
            self.send_one(part).map_err(|e| {
                if total == 1 {
                    e
                } else {
                    with_message(e, &format!("Telegram message part {}/{total}", i + 1))
                }
            })?;
        }
        Ok(total)
    }

    /// The bot's username, from `getMe`: proves the token is valid and the
    /// Bot API reachable, without sending anything.
    pub fn get_me(&self) -> Result<String, HttpError> {
        let url = self
            .send_url
            .strip_suffix("/sendMessage")
            .map_or_else(|| self.send_url.clone(), |base| format!("{base}/getMe"));
        let reply = self.http.get(&url)?.success()?;
        if reply.json.get("ok").and_then(Value::as_bool) != Some(true) {
            return Err(HttpError::Permanent {
                status: reply.status,
                message: format!("{}: {}", reply.request(), reply.api_message()),
            });
        }
        Ok(reply
            .json
            .pointer("/result/username")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned())
    }

    fn send_one(&self, html: &str) -> Result<(), HttpError> {
        let body = json!({
            "chat_id": self.chat_id,
            "text": html,
            "parse_mode": "HTML",
            "link_preview_options": { "is_disabled": true },
        });
        let mut waited = false;
        loop {
            let reply = self.http.post_json(&self.send_url, &body)?;
            if reply.is_success() {
                if reply.json.get("ok").and_then(Value::as_bool) == Some(false) {
                    return Err(HttpError::Permanent {
                        status: reply.status,
                        message: format!("{}: {}", reply.request(), reply.api_message()),
                    });
                }
                return Ok(());
            }
            let retry_after = reply
                .json
                .pointer("/parameters/retry_after")
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .or(reply.retry_after);
            if reply.status == 429 {
                if let Some(wait) = retry_after
                    && !waited
                    && wait <= self.max_wait
                {
                    std::thread::sleep(wait);
                    waited = true;
                    continue;
                }
                return Err(HttpError::Retryable {
                    status: Some(429),
                    retry_after,
                    message: format!("{}: HTTP 429: {}", reply.request(), reply.api_message()),
                });
            }
            return Err(reply.error());
        }
    }
}

/// The same error kind with `prefix: ` before its message.
fn with_message(e: HttpError, prefix: &str) -> HttpError {
    match e {
        HttpError::Permanent { status, message } => HttpError::Permanent {
            status,
            message: format!("{prefix}: {message}"),
        },
        HttpError::Retryable {
            status,
            retry_after,
            message,
        } => HttpError::Retryable {
            status,
            retry_after,
            message: format!("{prefix}: {message}"),
        },
    }
}

/// Escape plain text for `parse_mode = HTML`: `&`, `<` and `>`.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Split `text` into parts of at most `max_chars` characters, cutting after
/// the last line break of a part when there is one in its second half, else
/// after its last space there, else anywhere. The line break at a cut is
/// dropped; blank parts are dropped.
pub fn split_text(text: &str, max_chars: usize) -> Vec<String> {
    split_with(text, max_chars, |_, cut| cut)
}

/// [`split_text`] for HTML: a hard cut never falls inside `&…;` or `<…>`.
fn split_html(html: &str, max_chars: usize) -> Vec<String> {
    split_with(html, max_chars, |window, cut| {
        // The last '&' or '<' before the cut that is not closed before it.
        let open = window[..cut]
            .iter()
            .rposition(|&c| matches!(c, '&' | '<' | ';' | '>'))
            .filter(|&i| matches!(window[i], '&' | '<'));
        match open {
            Some(i) if i > 0 => i,
            _ => cut,
        }
    })
}

fn split_with(
    text: &str,
    max_chars: usize,
    adjust_hard_cut: impl Fn(&[char], usize) -> usize,
) -> Vec<String> {
    let max = max_chars.max(1);
    let chars: Vec<char> = text.chars().collect();
    let mut parts = Vec::new();
    let mut push = |part: &[char]| {
        let s: String = part.iter().collect();
        if !s.trim().is_empty() {
            parts.push(s);
        }
    };
    let mut rest: &[char] = &chars;
    while rest.len() > max {
        let window = &rest[..=max];
        // A separator at index `max` still lets the part be `max` long.
        let soft = |sep: char| {
            window
                .iter()
                .rposition(|&c| c == sep)
                .filter(|&i| i >= max / 2 && i > 0)
        };
        if let Some(i) = soft('\n').or_else(|| soft(' ')) {
            push(&rest[..i]);
            rest = &rest[i + 1..];
        } else {
            let cut = adjust_hard_cut(&rest[..max], max).clamp(1, max);
            push(&rest[..cut]);
            rest = &rest[cut..];
        }
    }
    push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_characters() {
        let text = "é".repeat(9000);
        let parts = split_text(&text, MAX_CHARS);
        let lens: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
        assert_eq!(lens, vec![4096, 4096, 808]);
    }

    #[test]
    fn prefers_line_breaks() {
        let line = format!("{}\n", "x".repeat(99));
        let text = line.repeat(100); // 10000 chars in lines of 100
        let parts = split_text(&text, MAX_CHARS);
        assert_eq!(parts.len(), 3);
        for p in &parts {
            assert!(p.chars().count() <= MAX_CHARS);
            assert!(
                p.starts_with('x') && p.trim_end().ends_with('x'),
                "cut inside a line"
            );
        }
        assert_eq!(parts[0].lines().count(), 40);
    }

    #[test]
    fn short_and_blank_texts() {
        assert_eq!(split_text("hi", 10), vec!["hi".to_owned()]);
        assert!(split_text("  \n ", 10).is_empty());
        assert_eq!(split_text("abcdefghij", 10).len(), 1);
    }

    #[test]
    fn html_hard_cuts_avoid_entities() {
        let parts = split_html("abcdefg&amp;xyz", 9);
        assert_eq!(parts, vec!["abcdefg".to_owned(), "&amp;xyz".to_owned()]);
        let parts = split_html("abcde<b>x</b>", 7);
        assert_eq!(parts[0], "abcde");
    }

    #[test]
    fn escapes() {
        assert_eq!(escape_html("a<b> & \"c\""), "a&lt;b&gt; &amp; \"c\"");
    }
}
