//! Serving the board over HTTP/1.1 without a daemon, two ways.
//!
//! `--inetd`: one request on stdin, one answer on stdout, then exit — the
//! way systemd runs `orch-web@.service` for each connection its socket
//! accepts (`Accept=yes`), exactly like the webhook units. The read runs
//! against a deadline on a thread of its own ([`http1::with_deadline`]).
//!
//! `--listen`: a plain accept loop for a quick look, one thread per
//! connection and at most [`MAX_CONNECTIONS`] at once (more are answered
//! 503 at once); each connection reads against a deadline too (the socket's
//! read timeout is shrunk to what is left before each read) and has a write
//! timeout. It runs until interrupted; it holds no state, so Ctrl-C is fine.
//!
//! Either way: one request per connection, the head capped by
//! [`http1::read_head`], a small body read and dropped (so closing does not
//! reset the connection before the client reads the answer), and every
//! answer carries a Content-Security-Policy that allows nothing but the
//! page itself and its inline style, `nosniff`, no caching and no framing
//! by other sites.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::context::Ctx;
use crate::http1::{self, Head, Refusal};

use super::routes::{self, Response};

/// How long a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write to a client may block (`--listen`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once by `--listen`.
pub const MAX_CONNECTIONS: usize = 16;

/// The most body bytes read (and dropped) so that closing does not reset.
const MAX_DRAINED_BODY: u64 = 64 * 1024;

/// Nothing but the page itself, its inline style and the log iframe.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; \
     frame-ancestors 'self'; base-uri 'none'; form-action 'none'";

/// One request from stdin, the answer on stdout. `ctx` is `Err` when the
/// configuration could not be loaded: the client still gets a 500.
pub fn serve_inetd(ctx: Result<&Ctx, &anyhow::Error>) -> std::io::Result<()> {
    let request = http1::with_deadline(READ_TIMEOUT, || read_request(&mut std::io::stdin().lock()));
    let (head_only, response) = respond_to(ctx, request);
    write(&mut std::io::stdout().lock(), &response, head_only)
}

/// The answer to a request read (or refused), and whether it was a `HEAD`.
fn respond_to(
    ctx: Result<&Ctx, &anyhow::Error>,
    request: Result<Head, Refusal>,
) -> (bool, Response) {
    let head = match request {
        Ok(head) => head,
        Err(refusal) => {
            log::info!("web: refused: {} {}", refusal.status, refusal.message);
            return (false, Response::text(refusal.status, &refusal.message));
        }
    };
    let head_only = head.method == "HEAD";
    let response = match ctx {
        Ok(ctx) => routes::handle(ctx, &head.method, &head.path),
        Err(e) => {
            log::error!("web: {e:#}");
            Response::text(
                500,
                "orch cannot load its configuration; the reason is in its log",
            )
        }
    };
    log::info!("web: {} {} {}", head.method, head.path, response.status);
    (head_only, response)
}

/// Read one request head, and drop a small body if one was sent.
fn read_request(input: &mut impl Read) -> Result<Head, Refusal> {
    let head = http1::read_head(input)?;
    let length = head
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let missing = length.saturating_sub(head.rest.len() as u64);
    if missing > 0 && length <= MAX_DRAINED_BODY {
        // Best effort: the answer does not depend on it.
        let _ = std::io::copy(&mut input.take(missing), &mut std::io::sink());
    }
    Ok(head)
}

/// Write `response` with the board's headers; without the body for `HEAD`.
fn write(out: &mut impl Write, response: &Response, head_only: bool) -> std::io::Result<()> {
    let mut headers = vec![
        ("Content-Type", response.content_type),
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "SAMEORIGIN"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    ];
    if response.status == 405 {
        headers.push(("Allow", "GET, HEAD"));
    }
    http1::write_response(out, response.status, &headers, &response.body, !head_only)
}

/// Serve connections from `listener` until the process is stopped.
pub fn serve_listener(ctx: &Ctx, listener: &TcpListener) -> ! {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                log::warn!("web: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let busy = Response::text(503, "too many connections; retry");
            let _ = write(&mut &stream, &busy, false);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("web-connection".into())
            .spawn(move || {
                let _slot = slot;
                serve_stream(&ctx, &stream);
            });
        if let Err(e) = spawned {
            log::warn!("web: cannot start a connection thread: {e}");
        }
    }
}

/// A connection counted in `active` until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request on `stream`, one answer, then close.
fn serve_stream(ctx: &Ctx, stream: &TcpStream) {
    let mut reader = DeadlineReader {
        stream,
        deadline: Instant::now() + READ_TIMEOUT,
    };
    let (head_only, response) = respond_to(Ok(ctx), read_request(&mut reader));
    if let Err(e) = write(&mut &*stream, &response, head_only) {
        log::debug!("web: the client went away before its answer: {e}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Reads from a socket that fail once `deadline` has passed, however slowly
/// the client trickles bytes in.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_carries_the_security_headers() {
        let mut out = Vec::new();
        write(&mut out, &Response::text(405, "no"), false).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        for h in [
            "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline';",
            "X-Content-Type-Options: nosniff\r\n",
            "Allow: GET, HEAD\r\n",
            "Connection: close\r\n",
        ] {
            assert!(text.contains(h), "{h} missing from {text}");
        }
        assert!(text.ends_with("\r\n\r\nno\n"));
    }

    #[test]
    fn a_small_body_is_read_and_dropped() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloNEXT";
        let mut input = &raw[..];
        let head = read_request(&mut input).expect("head");
        assert_eq!(head.method, "POST");
    }
}
