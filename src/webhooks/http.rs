//! Just enough HTTP/1.1 to take one webhook on stdin and answer on stdout,
//! the way systemd runs a socket unit with `Accept=yes` and
//! `StandardInput=socket` (inetd style): one request per process, then
//! `Connection: close`.
//!
//! The head is read by [`crate::http1`] (capped at [`MAX_HEAD_BYTES`]). Only
//! `POST` with a `Content-Length` body is accepted: a `Transfer-Encoding`
//! (chunked) request gets 411, a body over the limit gets 413 before a byte
//! of it is read. The whole request must arrive before a deadline; the read
//! runs on its own thread so a silent client cannot hold the process (no
//! unsafe socket options needed): past the deadline the caller answers 408
//! and exits, which ends the reader too.

use std::io::{Read, Write};
use std::time::Duration;

use crate::http1::{self, Head};
pub use crate::http1::{MAX_HEAD_BYTES, Refusal, reason};

/// A request read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The request target, e.g. `/webhook/plane`.
    pub path: String,
    /// Headers in arrival order, values as sent (trimmed).
    pub headers: Vec<(String, String)>,
    /// The body, exactly `Content-Length` bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one request from stdin within `timeout`, on a reader thread.
///
/// `100 Continue` is written to stdout if the client asks for it. On timeout
/// the reader thread is left blocked: the caller answers and exits.
pub fn read_stdin_request(max_body: u64, timeout: Duration) -> Result<Request, Refusal> {
    http1::with_deadline(timeout, move || {
        read_request(
            &mut std::io::stdin().lock(),
            &mut std::io::stdout(),
            max_body,
        )
    })
}

/// Read one request from `input`; `interim` receives `100 Continue` if asked for.
pub fn read_request(
    input: &mut impl Read,
    interim: &mut impl Write,
    max_body: u64,
) -> Result<Request, Refusal> {
    let head = http1::read_head(input)?;
    if head.method != "POST" {
        return Err(Refusal::new(
            405,
            format!("method {} is not allowed; webhooks are POSTed", head.method),
        ));
    }
    if head.header("Transfer-Encoding").is_some() {
        return Err(Refusal::new(
            411,
            "Transfer-Encoding (chunked) is not supported; send a Content-Length",
        ));
    }
    let length = content_length(&head)?;
    if length > max_body {
        return Err(Refusal::new(
            413,
            format!("the body ({length} bytes) is larger than webhook_max_body_bytes ({max_body})"),
        ));
    }
    let length = usize::try_from(length).map_err(|_| Refusal::new(413, "body too large"))?;
    let body = read_body(input, interim, &head, length)?;
    Ok(Request {
        method: head.method,
        path: head.path,
        headers: head.headers,
        body,
    })
}

/// The one `Content-Length` of the request (repeats must agree).
fn content_length(head: &Head) -> Result<u64, Refusal> {
    let mut length: Option<u64> = None;
    for v in head.all("Content-Length") {
        let parsed = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            v.parse::<u64>().ok()
        } else {
            None
        };
        match (parsed, length) {
            (None, _) => return Err(Refusal::new(400, format!("bad Content-Length {v:?}"))),
            (Some(a), Some(b)) if a != b => {
                return Err(Refusal::new(400, "conflicting Content-Length headers"));
            }
            (Some(a), _) => length = Some(a),
        }
    }
    length.ok_or_else(|| Refusal::new(411, "a Content-Length is required"))
}

/// The body: what came with the head, then the rest from `input`.
fn read_body(
    input: &mut impl Read,
    interim: &mut impl Write,
    head: &Head,
    length: usize,
) -> Result<Vec<u8>, Refusal> {
    let mut body = head.rest.clone();
    if body.len() < length {
        if head
            .header("Expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            // Best effort: a client that cannot hear it still sends the body.
            let _ = interim
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|()| interim.flush());
        }
        let missing = (length - body.len()) as u64;
        if let Err(e) = input.take(missing).read_to_end(&mut body) {
            return Err(Refusal::new(400, format!("reading the body: {e}")));
        }
        if body.len() < length {
            return Err(Refusal::new(
                400,
                format!(
                    "the connection closed after {} of {length} body bytes",
                    body.len()
                ),
            ));
        }
    }
    // Anything after the body (pipelining) is ignored: the connection closes.
    body.truncate(length);
    Ok(body)
}

/// Write a complete response with a one-line plain-text body, then flush.
///
/// Always `Content-Length`, `Content-Type: text/plain` and `Connection:
/// close`; a 405 also says `Allow: POST`. `message` is cut to one line.
pub fn respond(out: &mut impl Write, status: u16, message: &str) -> std::io::Result<()> {
    let line = message.lines().next().unwrap_or_default();
    let body = format!("{line}\n");
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8")];
    if status == 405 {
        headers.push(("Allow", "POST"));
    }
    http1::write_response(out, status, &headers, body.as_bytes(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8], max: u64) -> (Result<Request, Refusal>, Vec<u8>) {
        let mut interim = Vec::new();
        let r = read_request(&mut &raw[..], &mut interim, max);
        (r, interim)
    }

    #[test]
    fn reads_a_post_with_content_length() {
        let raw = b"POST /hook HTTP/1.1\r\nHost: x\r\nX-Plane-Event: issue\r\nContent-Length: 7\r\n\r\n{\"a\":1}trailing";
        let (r, interim) = read(raw, 100);
        let r = r.expect("ok");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("x-plane-event"), Some("issue"));
        assert_eq!(r.body, b"{\"a\":1}");
        assert!(interim.is_empty());
    }

    #[test]
    fn refusals() {
        let status = |raw: &[u8], max| read(raw, max).0.expect_err("refused").status;
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n", 10), 405);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 10),
            411
        );
        assert_eq!(status(b"POST / HTTP/1.1\r\n\r\n", 10), 411);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10),
            413
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 10),
            400
        );
        assert_eq!(
            status(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                10
            ),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 10),
            400
        );
        assert_eq!(status(b"", 10), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nHost", 10), 400);
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n", 10), 400);
        let huge = format!(
            "POST / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(status(huge.as_bytes(), 10), 431);
    }

    #[test]
    fn expect_continue_gets_an_interim_response() {
        let head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        // The first read returns the head only, as a client waiting for 100 sends it.
        let mut input = (&head[..]).chain(&b"{}"[..]);
        let mut interim = Vec::new();
        let r = read_request(&mut input, &mut interim, 10).expect("ok");
        assert_eq!(r.body, b"{}");
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn responses_are_complete() {
        let mut out = Vec::new();
        respond(&mut out, 405, "no\nsecond line").expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nAllow: POST\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n"
        );
    }
}
