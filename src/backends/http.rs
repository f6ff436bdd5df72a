//! The one HTTP wrapper the remote backends (Plane, Gitea, Telegram) share, so
//! that they classify failures the same way and never leak a token.
//!
//! It wraps a ureq 3 [`ureq::Agent`] built with `http_status_as_error(false)`
//! (so a 4xx/5xx reply is an ordinary reply whose JSON error body can be read)
//! and a global timeout. A failed request becomes an [`HttpError`] whose kind
//! tells the caller what to do: [`HttpError::Permanent`] (a 4xx other than
//! 408/429: retrying will not help) or [`HttpError::Retryable`] (408, 429, 5xx,
//! timeouts and connection errors: the outbox or `orch reconcile` tries again
//! later). Redirects are not followed: a redirect would carry the API key to
//! wherever it points.
//!
//! Token hygiene: every header value given to [`HttpClient::with_secret_header`]
//! and every string given to [`HttpClient::with_secret`] (the Telegram bot
//! token sits in the URL path) is replaced by `***` in every message this
//! module produces, including the text the server sent back.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// The timeout used when the caller has no better idea.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a response body that is read (larger bodies are an error).
const BODY_LIMIT: u64 = 8 * 1024 * 1024;

/// How much of a non-JSON error body goes into a message.
const EXCERPT_CHARS: usize = 300;

/// A failed request, classified by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The server refused the request for good (a 4xx other than 408/429, a
    /// redirect, or a reply that cannot be understood): do not retry.
    #[error("{message}")]
    Permanent {
        /// The HTTP status of the reply.
        status: u16,
        /// What went wrong (never contains a secret).
        message: String,
    },
    /// A temporary failure (408, 429, 5xx, timeout, connection error): retry
    /// later, after `retry_after` if the server said so.
    #[error("{message}")]
    Retryable {
        /// The HTTP status, if a reply arrived at all.
        status: Option<u16>,
        /// How long the server asked us to wait.
        retry_after: Option<Duration>,
        /// What went wrong (never contains a secret).
        message: String,
    },
}

impl HttpError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, HttpError::Retryable { .. })
    }

    /// The HTTP status of the reply, if one arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Permanent { status, .. } => Some(*status),
            HttpError::Retryable { status, .. } => *status,
        }
    }

    /// How long the server asked us to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Permanent { .. } => None,
            HttpError::Retryable { retry_after, .. } => *retry_after,
        }
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            HttpError::Permanent { message, .. } | HttpError::Retryable { message, .. } => message,
        }
    }
}

/// Whether an error chain holds a retryable [`HttpError`]. Errors without an
/// `HttpError` in them (bad input, a refused branch) are not retryable.
pub fn is_retryable(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|c| c.downcast_ref::<HttpError>())
        .any(HttpError::is_retryable)
}

/// Whether a status means "try again later": 408, 429 and 5xx.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || status >= 500
}

/// A reply of any status, its body parsed as JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body as JSON; `Null` when it was empty or not JSON.
    pub json: Value,
    /// The `Retry-After` header, in seconds, if present.
    pub retry_after: Option<Duration>,
    /// `METHOD url` with secrets redacted, for messages.
    request: String,
    /// The server's explanation (redacted), for messages.
    detail: String,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The redacted `METHOD url` this reply answers.
    pub fn request(&self) -> &str {
        &self.request
    }

    /// The server's own explanation, secrets redacted: the `message`,
    /// `description`, `detail` or `error` field of a JSON body, else the
    /// start of the body.
    pub fn api_message(&self) -> &str {
        &self.detail
    }

    /// The error this reply stands for, classified by its status (call it only
    /// for a reply the caller does not accept).
    pub fn error(&self) -> HttpError {
        let detail = self.api_message();
        let message = if detail.is_empty() {
            format!("{}: HTTP {}", self.request, self.status)
        } else {
            format!("{}: HTTP {}: {detail}", self.request, self.status)
        };
        if is_retryable_status(self.status) {
            HttpError::Retryable {
                status: Some(self.status),
                retry_after: self.retry_after,
                message,
            }
        } else {
            HttpError::Permanent {
                status: self.status,
                message,
            }
        }
    }

    /// The reply itself when it is 2xx, else its [`error`](Reply::error).
    pub fn success(self) -> Result<Reply, HttpError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.error())
        }
    }

    /// The body decoded as `T`; a body of the wrong shape is a permanent error.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        T::deserialize(&self.json).map_err(|e| HttpError::Permanent {
            status: self.status,
            message: format!("{}: unexpected response: {e}", self.request),
        })
    }
}

/// A small HTTP client: one ureq agent, fixed headers, secrets to redact.
#[derive(Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
    headers: Vec<(String, String)>,
    secrets: Vec<String>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpClient")
            .field("headers", &names)
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

/// The HTTP methods the backends use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

impl HttpClient {
    /// A client whose every request (connect, send, wait, read) must finish within `timeout`.
    pub fn new(timeout: Duration) -> HttpClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpClient {
            agent,
            headers: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// Send `name: value` with every request; `value` is redacted from messages.
    #[must_use]
    pub fn with_secret_header(mut self, name: &str, value: &str) -> HttpClient {
        self.headers.push((name.to_owned(), value.to_owned()));
        self = self.with_secret(value);
        self
    }

    /// Send `name: value` with every request (a value that is not secret).
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> HttpClient {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Redact `secret` (e.g. a token embedded in URLs) from every message.
    #[must_use]
    pub fn with_secret(mut self, secret: &str) -> HttpClient {
        let secret = secret.trim();
        if !secret.is_empty() {
            self.secrets.push(secret.to_owned());
        }
        self
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    /// `GET url`.
    pub fn get(&self, url: &str) -> Result<Reply, HttpError> {
        self.request(Method::Get, url, None)
    }

    /// `POST url` with a JSON body.
    pub fn post_json(&self, url: &str, body: &Value) -> Result<Reply, HttpError> {
        self.request(Method::Post, url, Some(body))
    }

    /// `PATCH url` with a JSON body.
    pub fn patch_json(&self, url: &str, body: &Value) -> Result<Reply, HttpError> {
        self.request(Method::Patch, url, Some(body))
    }

    /// `DELETE url`.
    pub fn delete(&self, url: &str) -> Result<Reply, HttpError> {
        self.request(Method::Delete, url, None)
    }

    /// Send one request and return the reply whatever its status. Only a
    /// failure to get a reply at all (timeout, connection refused, DNS, TLS, a
    /// body that cannot be read) is an error, and it is always retryable.
    pub fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply, HttpError> {
        let request = self.redact(&format!("{} {url}", method.as_str()));
        let result = match method {
            Method::Get => self.with_headers_no_body(self.agent.get(url)).call(),
            Method::Delete => self.with_headers_no_body(self.agent.delete(url)).call(),
            Method::Post => self.send_with_body(self.agent.post(url), body),
            Method::Patch => self.send_with_body(self.agent.patch(url), body),
        };
        let mut response = result.map_err(|e| self.transport_error(&request, &e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .map_err(|e| self.transport_error(&request, &e))?;
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        let detail = self.redact(&explanation(&json, &text));
        log::debug!("{request}: HTTP {status}");
        Ok(Reply {
            status,
            json,
            retry_after,
            request,
            detail,
        })
    }

    fn with_headers_no_body(
        &self,
        mut builder: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        builder = builder.header("Accept", "application/json");
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder
    }

    fn send_with_body(
        &self,
        mut builder: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: Option<&Value>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        builder = builder.header("Accept", "application/json");
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        match body {
            Some(body) => builder.send_json(body),
            None => builder.send_empty(),
        }
    }

    fn transport_error(&self, request: &str, e: &ureq::Error) -> HttpError {
        let what = match e {
            ureq::Error::Timeout(_) => "timed out".to_owned(),
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::ConnectionFailed => "connection failed".to_owned(),
            other => self.redact(&other.to_string()),
        };
        HttpError::Retryable {
            status: None,
            retry_after: None,
            message: format!("{request}: {what}"),
        }
    }
}

/// The `message`, `description`, `detail` or `error` field of a JSON body,
/// else the start of the body.
fn explanation(json: &Value, text: &str) -> String {
    for key in ["message", "description", "detail", "error"] {
        match json.get(key) {
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(v @ (Value::Object(_) | Value::Array(_))) => return v.to_string(),
            _ => {}
        }
    }
    if json.is_null() {
        text.trim().chars().take(EXCERPT_CHARS).collect()
    } else {
        String::new()
    }
}

/// Percent-encode one URL path segment (or query value): everything but
/// `A-Z a-z 0-9 - . _ ~` is encoded, `/` included, so a branch such as
/// `feature/x` stays one segment (`feature%2Fx`).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// A base URL without trailing slashes.
pub fn trim_base(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_segments() {
        assert_eq!(encode_segment("feature/x-1.2_~"), "feature%2Fx-1.2_~");
        assert_eq!(encode_segment("a b&c"), "a%20b%26c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn classifies_statuses() {
        for s in [408, 429, 500, 502, 503] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 405, 409, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn redacts_every_secret() {
        let c = HttpClient::new(DEFAULT_TIMEOUT)
            .with_secret_header("X-API-Key", "k3y")
            .with_secret("123:ABC")
            .with_secret("  ");
        assert_eq!(c.redact("bot123:ABC/send k3y k3y"), "bot***/send *** ***");
        assert!(!format!("{c:?}").contains("k3y"));
    }
}
