//! orch behind the real adnanh/webhook program (Debian package `webhook`,
//! which `.ci/run` installs): the example wiring of examples/webhook passes the
//! raw body in a file and the headers as `ORCH_*` variables, and orch stores
//! the delivery. Skipped, saying so, where the program is not installed.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::fake::sign;

const SECRET: &str = "shim-secret";

struct Shim(Child);

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn post(port: u16, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

#[test]
fn orch_behind_adnanh_webhook_stores_signed_deliveries_only() {
    if Command::new("webhook").arg("-version").output().is_err() {
        eprintln!("skipped: the `webhook` program (Debian package webhook) is not installed");
        return;
    }
    let env = Env::new();
    let hooks = env.state().join("hooks.yaml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/webhook/hooks.yaml"
    ))
    .expect("example hooks.yaml");
    // The example as shipped, pointed at this build and a literal secret.
    let yaml = example
        .replace("/usr/bin/orch", env!("CARGO_BIN_EXE_orch"))
        .replace(
            "'{{ credential \"orch-plane-webhook-secret\" | js }}'",
            &format!("'{SECRET}'"),
        )
        .replace(
            "'{{ credential \"orch-gitea-webhook-secret\" | js }}'",
            &format!("'{SECRET}'"),
        );
    std::fs::write(&hooks, yaml).expect("hooks");
    let port = free_port();
    let _shim = Shim(
        Command::new("webhook")
            .args([
                "-hooks",
                &hooks.to_string_lossy(),
                "-ip",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .env("ORCH_STATE_DIR", env.state())
            .env("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start webhook"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "webhook never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = r#"{"event":"issue","action":"updated","data":{"id":"x","project":"unknown"}}"#;
    let (status, resp) = post(
        port,
        "/hooks/plane",
        &[
            ("X-Plane-Event", "issue".into()),
            ("X-Plane-Delivery", "shim-1".into()),
            ("X-Plane-Signature", sign(SECRET, body)),
        ],
        body,
    );
    assert_eq!(status, 202, "{resp}");
    assert!(resp.contains("stored delivery"), "{resp}");
    let stored: i64 = env
        .db()
        .conn()
        .query_row(
            "SELECT count(*) FROM webhook_deliveries WHERE delivery_id = 'shim-1'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(stored, 1);
    // A wrong signature never reaches orch's inbox.
    let (_, resp) = post(
        port,
        "/hooks/plane",
        &[
            ("X-Plane-Event", "issue".into()),
            ("X-Plane-Delivery", "shim-2".into()),
            ("X-Plane-Signature", sign("wrong", body)),
        ],
        body,
    );
    let total: i64 = env
        .db()
        .conn()
        .query_row("SELECT count(*) FROM webhook_deliveries", [], |r| r.get(0))
        .expect("count");
    assert_eq!(total, 1, "a badly signed delivery was stored: {resp}");
}
