//! The server side of just enough HTTP/1.1 for orch's inetd-style listeners:
//! the webhook sockets ([`crate::webhooks::http`]) and the read-only web
//! board ([`crate::web`]). One request per connection, then `Connection:
//! close`; no keep-alive, no pipelining, no chunked bodies.
//!
//! What is shared is the part that must be bounded the same way everywhere:
//! the request head is parsed with httparse and capped at
//! [`MAX_HEAD_BYTES`] and 64 headers, and the whole read runs against a
//! deadline ([`with_deadline`]) so that a silent client cannot hold a
//! process. What a listener does with the method and the body is its own
//! business. Responses always carry `Content-Length` and `Connection: close`.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most headers a request may have.
const MAX_HEADERS: usize = 64;

/// A request head read whole, and whatever arrived after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target, e.g. `/task/3?x=1`.
    pub path: String,
    /// Headers in arrival order, values as sent (trimmed).
    pub headers: Vec<(String, String)>,
    /// Bytes read past the head: the start of a body, if any.
    pub rest: Vec<u8>,
}

impl Head {
    /// Every value of the headers called `name` (case-insensitive), in order.
    pub fn all<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

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
    /// A refusal with `status` and a one-line `message`.
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// Run `read` on a thread of its own and wait at most `timeout` for it.
///
/// Past the deadline the answer is 408 and the thread is left blocked: the
/// caller answers and exits (inetd style), which ends the thread too. No
/// unsafe socket options are needed, so this works on a plain stdin.
pub fn with_deadline<T: Send + 'static>(
    timeout: Duration,
    read: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("request-reader".into())
        .spawn(move || {
            // The receiver is gone only if the deadline passed; nothing to do then.
            let _ = tx.send(read());
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

/// Read one request head from `input`, at most [`MAX_HEAD_BYTES`] of it.
pub fn read_head(input: &mut impl Read) -> Result<Head, Refusal> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
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
            Err(e) if is_timeout(&e) => {
                return Err(Refusal::new(408, format!("reading the request: {e}")));
            }
            Err(e) => return Err(Refusal::new(400, format!("reading the request: {e}"))),
        };
        if n == 0 {
            return Err(Refusal::new(
                400,
                if buf.is_empty() {
                    "empty request"
                } else {
                    "the connection closed inside the request head"
                },
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            return Ok(head);
        }
    }
}

/// Whether a read failed because a socket timeout passed.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The parsed head once `buf` holds all of it.
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
    Ok(Some(Head {
        method,
        path,
        headers,
        rest: buf.get(len..).unwrap_or_default().to_vec(),
    }))
}

/// The reason phrase of the statuses orch answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Write a complete response, then flush: the status line, `headers` (each
/// `Name: value`), `Content-Length` of `body` and `Connection: close`. With
/// `send_body` false (a `HEAD` request) the body is left out and the length
/// still says how long it would be.
pub fn write_response(
    out: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    send_body: bool,
) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    if send_body {
        out.write_all(body)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_head_and_keeps_what_follows() {
        let raw = b"GET /task/1?x HTTP/1.1\r\nHost: x\r\nA: 1\r\na: 2\r\n\r\nbody";
        let head = read_head(&mut &raw[..]).expect("ok");
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/task/1?x");
        assert_eq!(head.header("host"), Some("x"));
        assert_eq!(head.all("a").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(head.rest, b"body");
    }

    #[test]
    fn bad_heads_are_refused() {
        let status = |raw: &[u8]| read_head(&mut &raw[..]).expect_err("refused").status;
        assert_eq!(status(b""), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost"), 400);
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n"), 400);
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(status(huge.as_bytes()), 431);
        let many = "H: v\r\n".repeat(MAX_HEADERS + 1);
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
    }

    #[test]
    fn a_reader_past_its_deadline_is_a_408() {
        let r: Result<(), Refusal> = with_deadline(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(5));
            Ok(())
        });
        assert_eq!(r.expect_err("timed out").status, 408);
        assert_eq!(with_deadline(Duration::from_secs(5), || Ok(7)), Ok(7));
    }

    #[test]
    fn head_responses_keep_the_length_and_drop_the_body() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            200,
            &[("Content-Type", "text/plain")],
            b"ok\n",
            false,
        )
        .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }
}
