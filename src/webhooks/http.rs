//! Just enough HTTP/1.1 to take one webhook on stdin and answer on stdout,
//! the way systemd runs a socket unit with `Accept=yes` and
//! `StandardInput=socket` (inetd style): one request per process, then
//! `Connection: close`.
//!
//! The head is parsed with httparse and capped at [`MAX_HEAD_BYTES`]. Only
//! `POST` with a `Content-Length` body is accepted: a `Transfer-Encoding`
//! (chunked) request gets 411, a body over the limit gets 413 before a byte
//! of it is read. The whole request must arrive before a deadline; the read
//! runs on its own thread so a silent client cannot hold the process (no
//! unsafe socket options needed): past the deadline the caller answers 408
//! and exits, which ends the reader too.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most headers a request may have.
const MAX_HEADERS: usize = 64;

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

/// A request refused before it could be processed: the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code (400, 405, 408, 411, 413, 431, 503).
    pub status: u16,
    /// One line saying why.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// Read one request from stdin within `timeout`, on a reader thread.
///
/// `100 Continue` is written to stdout if the client asks for it. On timeout
/// the reader thread is left blocked: the caller answers and exits.
pub fn read_stdin_request(max_body: u64, timeout: Duration) -> Result<Request, Refusal> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("request-reader".into())
        .spawn(move || {
            let result = read_request(
                &mut std::io::stdin().lock(),
                &mut std::io::stdout(),
                max_body,
            );
            // The receiver is gone only if the deadline passed; nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|e| Refusal::new(503, format!("cannot start the request reader: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Refusal::new(
            408,
            format!(
                "the request did not arrive within {}s",
                timeout.as_secs_f64()
            ),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Refusal::new(400, "the request could not be read"))
        }
    }
}

/// Read one request from `input`; `interim` receives `100 Continue` if asked for.
pub fn read_request(
    input: &mut impl Read,
    interim: &mut impl Write,
    max_body: u64,
) -> Result<Request, Refusal> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, headers) = loop {
        let room = MAX_HEAD_BYTES.saturating_sub(buf.len());
        if room == 0 {
            return Err(Refusal::new(
                431,
                format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
            ));
        }
        let want = room.min(chunk.len());
        let n = match input.read(&mut chunk[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Refusal::new(400, format!("reading the request: {e}"))),
        };
        if n == 0 {
            return Err(Refusal::new(
                400,
                if buf.is_empty() {
                    "empty request".to_owned()
                } else {
                    "the connection closed inside the request head".to_owned()
                },
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
    };

    if method != "POST" {
        return Err(Refusal::new(
            405,
            format!("method {method} is not allowed; webhooks are POSTed"),
        ));
    }
    let find = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
    };
    if find("Transfer-Encoding").next().is_some() {
        return Err(Refusal::new(
            411,
            "Transfer-Encoding (chunked) is not supported; send a Content-Length",
        ));
    }
    let mut length: Option<u64> = None;
    for (_, v) in find("Content-Length") {
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
    let Some(length) = length else {
        return Err(Refusal::new(411, "a Content-Length is required"));
    };
    if length > max_body {
        return Err(Refusal::new(
            413,
            format!("the body ({length} bytes) is larger than webhook_max_body_bytes ({max_body})"),
        ));
    }
    let length = usize::try_from(length).map_err(|_| Refusal::new(413, "body too large"))?;

    let mut body = buf.get(head_len..).unwrap_or_default().to_vec();
    if body.len() < length {
        if find("Expect")
            .next()
            .is_some_and(|(_, v)| v.eq_ignore_ascii_case("100-continue"))
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
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

/// The parsed head once `buf` holds all of it: its length, method, path, headers.
type Head = (usize, String, String, Vec<(String, String)>);

fn parse_head(buf: &[u8]) -> Result<Option<Head>, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                format!("more than {MAX_HEADERS} request headers"),
            ));
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed request head: {e}"))),
    };
    let method = req.method.unwrap_or_default().to_owned();
    let path = req.path.unwrap_or_default().to_owned();
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Refusal::new(400, format!("header {} is not UTF-8", h.name)))?;
        headers.push((h.name.to_owned(), value.trim().to_owned()));
    }
    Ok(Some((len, method, path, headers)))
}

/// The reason phrase of the statuses orch answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Write a complete response with a one-line plain-text body, then flush.
///
/// Always `Content-Length`, `Content-Type: text/plain` and `Connection:
/// close`; a 405 also says `Allow: POST`. `message` is cut to one line.
pub fn respond(out: &mut impl Write, status: u16, message: &str) -> std::io::Result<()> {
    let line = message.lines().next().unwrap_or_default();
    let body = format!("{line}\n");
    let allow = if status == 405 { "Allow: POST\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
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
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nAllow: POST\r\nConnection: close\r\n\r\nno\n"
        );
    }
}
