//! `orch ingest-webhook` (alias `orch ingest`): verify one webhook delivery,
//! store it in the inbox once, answer at once (docs/architecture.md, decision 5).
//! Routing (which may call Plane) never delays the answer: from stdin, a new
//! delivery is handed to a detached router process (this command again, with
//! the hidden `--route-pending`) and ingest exits; with `--inetd`, the HTTP
//! answer is written and flushed first. Whatever a router does not finish,
//! `orch reconcile` picks up from the pending rows.
//!
//! Two ways in. From a shim such as adnanh/webhook, the raw body comes as a
//! file (`ORCH_BODY_FILE`) or on stdin and the headers as `ORCH_EVENT`,
//! `ORCH_DELIVERY`, `ORCH_SIGNATURE`. With `--inetd`, orch itself reads one
//! HTTP/1.1 request on stdin and answers on stdout (systemd `Accept=yes`).
//! Either way the order is: secret, size, signature, JSON, store; the first
//! failure decides the exit code (65, 77, 75) and nothing is stored.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::GlobalOpts;
use crate::context::Ctx;
use crate::error::{OrchError, exit, exit_code_number};
use crate::output;
use crate::storage::{self, Db};
use crate::webhooks::{self, Secret, Source, Stored, http};

/// The longest event name or delivery id accepted.
const MAX_HEADER_VALUE: usize = 256;

/// Arguments of `orch ingest-webhook`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Who sent the webhook: its secret, its header names and the `source` of the stored row.
    #[arg(long, value_enum)]
    pub source: Source,

    /// File holding the raw request body (adnanh/webhook's `pass-file-to-command`
    /// with `raw-request-body`). Default: read the body from stdin.
    #[arg(long, env = "ORCH_BODY_FILE", value_name = "FILE")]
    pub body_file: Option<PathBuf>,

    /// The event header (X-Plane-Event, X-Gitea-Event), e.g. `issue` or `pull_request`.
    #[arg(long, env = "ORCH_EVENT", value_name = "EVENT")]
    pub event: Option<String>,

    /// The delivery-id header (X-Plane-Delivery, X-Gitea-Delivery); a repeated id is a duplicate.
    #[arg(long, env = "ORCH_DELIVERY", value_name = "ID")]
    pub delivery: Option<String>,

    /// The signature header (X-Plane-Signature, X-Gitea-Signature or X-Hub-Signature-256):
    /// hex HMAC-SHA256 of the raw body, with or without `sha256=`.
    #[arg(long, env = "ORCH_SIGNATURE", value_name = "HEX")]
    pub signature: Option<String>,

    /// Accept deliveries without checking a signature, but only when no secret is
    /// configured for the source. Without it, a missing secret is refused with exit 77.
    /// The secret comes from ORCH_PLANE_WEBHOOK_SECRET / ORCH_GITEA_WEBHOOK_SECRET, else
    /// the systemd credential plane-webhook-secret / gitea-webhook-secret.
    #[arg(long)]
    pub insecure_no_signature: bool,

    /// Serve exactly one HTTP/1.1 POST on stdin/stdout (systemd socket with `Accept=yes`,
    /// `StandardInput=socket`): the event, delivery id and signature come from the
    /// source's X-* headers, the body must have a Content-Length (no chunked encoding),
    /// and the whole request must arrive within `webhook_read_timeout_s`. Answers 202
    /// (stored or duplicate), 400 (malformed), 401 (signature), 405 (not POST), 408 (too
    /// slow), 411 (chunked), 413 (too large), 500 (configuration error, details in the
    /// log), 503 (retry later); the exit code is the same as without --inetd, or 74 when
    /// the answer to a stored delivery could not be written. The --body-file, --event, --delivery, --signature and
    /// --json options are ignored.
    #[arg(long)]
    pub inetd: bool,

    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,

    /// Internal: route the pending deliveries, one router at a time, and exit
    /// (the detached process a stored delivery starts).
    #[arg(long, hide = true)]
    pub route_pending: bool,
}

/// One delivery as received, before any check.
struct Incoming<'a> {
    event: Option<&'a str>,
    delivery_id: Option<&'a str>,
    signature: Option<&'a str>,
    body: &'a [u8],
}

/// Run `orch ingest-webhook`.
pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    if args.route_pending {
        return route_pending(ctx);
    }
    if args.inetd {
        return run_inetd(ctx, args);
    }
    let secret = secret_or_refuse(args.source, args.insecure_no_signature)?;
    let body = read_body(args.body_file.as_deref(), ctx.config.webhook_max_body_bytes)?;
    let (stored, db) = ingest(
        ctx,
        args.source,
        secret.as_ref(),
        &Incoming {
            event: args.event.as_deref(),
            delivery_id: args.delivery.as_deref(),
            signature: args.signature.as_deref(),
            body: &body,
        },
    )?;
    drop(db);
    if args.json {
        output::print_json(&outcome_json(stored))?;
    } else {
        crate::say!("{}", describe(stored));
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    if matches!(stored, Stored::New(_)) {
        spawn_router(ctx);
    }
    Ok(ExitCode::SUCCESS)
}

/// The lock that lets one router at a time process the inbox.
const ROUTER_LOCK: &str = "webhook-router.lock";
/// Where detached routers write their log lines.
const ROUTER_LOG: &str = "webhook-router.log";

/// Start a detached router for what is pending and return at once.
///
/// The child is this command line again plus `--route-pending` (so global
/// options such as `--state-dir` and `--config` carry over), in its own
/// process group, with stdin and stdout on /dev/null and stderr appended to
/// `<state>/logs/webhook-router.log`: a shim that waits for the end of its
/// command's output (adnanh/webhook does) is not held by the router. If it
/// cannot start, the delivery stays pending for `orch reconcile`.
fn spawn_router(ctx: &Ctx) {
    use std::os::unix::process::CommandExt as _;
    let started = (|| -> anyhow::Result<u32> {
        let exe = std::env::current_exe()?;
        std::fs::create_dir_all(ctx.logs_dir())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctx.logs_dir().join(ROUTER_LOG))?;
        let child = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .arg("--route-pending")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()?;
        Ok(child.id())
    })();
    match started {
        Ok(pid) => log::debug!("webhook router started (pid {pid})"),
        Err(e) => log::warn!(
            "could not start the webhook router (the delivery stays pending for orch reconcile): {e:#}"
        ),
    }
}

/// `--route-pending`: wait for the router lock, then process every pending
/// delivery once. Whatever was stored before the lock was taken is seen
/// here; a delivery stored later has started its own router, which waits.
fn route_pending(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let _lock = crate::liveness::RepoLock::acquire(&ctx.state_dir.join(ROUTER_LOCK))?;
    let mut db = ctx.open_db()?;
    let processed = webhooks::route::process_pending(ctx, &mut db)?;
    for note in &processed.notes {
        log::info!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Process what is pending once the delivery is safely stored and answered.
/// A failure here is not the sender's problem: the delivery stays pending
/// for `orch reconcile`, and the exit code still says "stored".
fn process_after_store(ctx: &Ctx, stored: Stored, db: &mut Db) {
    if !matches!(stored, Stored::New(_)) {
        return;
    }
    if let Err(e) = webhooks::route::process_pending(ctx, db) {
        log::warn!("processing webhook deliveries (left for orch reconcile): {e:#}");
    }
}

/// The answer to a configuration error (an unreadable config or credential
/// file): the details name paths and values, so they go to the log only.
const CONFIG_REASON: &str = "orch cannot load its configuration; the reason is in its log";

/// `--inetd` before anything is loaded: a configuration that cannot be
/// loaded still gets the client an answer, `500` with a fixed reason line
/// (the details, which name paths and values, go to the log only), after the
/// request is read with the default limits so that closing the connection
/// does not reset it before the client has read the answer.
pub fn run_inetd_resolving(global: &GlobalOpts, args: &Args) -> anyhow::Result<ExitCode> {
    let err = match Ctx::resolve(global) {
        Ok(ctx) => return run(&ctx, args),
        Err(err) => err,
    };
    let defaults = crate::config::Config::default();
    let _ = http::read_stdin_request(
        defaults.webhook_max_body_bytes,
        Duration::from_secs(defaults.webhook_read_timeout_s),
    );
    let reason = if exit_code_number(&err) == exit::CONFIG {
        CONFIG_REASON
    } else {
        "orch cannot start; the reason is in its log"
    };
    answer_or_log(500, reason);
    Err(err)
}

/// `--inetd`: one request in, one response out; errors still reach `main`
/// (one line on stderr, the exit code) after the response is written.
fn run_inetd(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(ctx.config.webhook_read_timeout_s);
    let request = match http::read_stdin_request(ctx.config.webhook_max_body_bytes, timeout) {
        Ok(r) => r,
        Err(refusal) => {
            answer_or_log(refusal.status, &refusal.message);
            let err = if refusal.status == 503 {
                OrchError::Temporary(refusal.message)
            } else {
                OrchError::Malformed(format!("HTTP {}: {}", refusal.status, refusal.message))
            };
            return Err(err.into());
        }
    };
    let source = args.source;
    let signature = source
        .signature_headers()
        .iter()
        .find_map(|h| request.header(h));
    let result = secret_or_refuse(source, args.insecure_no_signature).and_then(|secret| {
        ingest(
            ctx,
            source,
            secret.as_ref(),
            &Incoming {
                event: request.header(source.event_header()),
                delivery_id: request.header(source.delivery_header()),
                signature,
                body: &request.body,
            },
        )
    });
    match result {
        Ok((stored, mut db)) => {
            let line = describe(stored);
            log::info!("{line}");
            let answered = answer(202, &line);
            // Stored is stored: route it now even if the client went away.
            process_after_store(ctx, stored, &mut db);
            answered?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let (status, message) = match exit_code_number(&err) {
                exit::MALFORMED => (400, format!("{err:#}")),
                exit::SIGNATURE => (401, format!("{err:#}")),
                exit::TEMPORARY => (503, "temporarily unavailable; retry later".to_owned()),
                exit::CONFIG => (500, CONFIG_REASON.to_owned()),
                _ => (500, "internal error; see the log".to_owned()),
            };
            answer_or_log(status, &message);
            Err(err)
        }
    }
}

/// Write the HTTP answer on stdout; a client that closed or reset the
/// connection is an [`OrchError::AnswerLost`] (exit 74), never a signal.
fn answer(status: u16, message: &str) -> anyhow::Result<()> {
    http::respond(&mut std::io::stdout(), status, message).map_err(|e| {
        OrchError::AnswerLost(format!(
            "could not answer HTTP {status} to the webhook client (it closed or reset the connection): {e}"
        ))
        .into()
    })
}

/// [`answer`] when the outcome already failed: that failure keeps the exit
/// code, and a lost answer is one more log line.
fn answer_or_log(status: u16, message: &str) {
    if let Err(e) = answer(status, message) {
        log::error!("{e:#}");
    }
}

/// The source's secret; without one, `None` if `insecure` allows it, else exit 77.
fn secret_or_refuse(source: Source, insecure: bool) -> anyhow::Result<Option<Secret>> {
    match webhooks::webhook_secret(source, &|k| std::env::var(k).ok())? {
        Some(secret) => Ok(Some(secret)),
        None if insecure => {
            log::warn!(
                "no {source} webhook secret configured: accepting the delivery without a signature check (--insecure-no-signature)"
            );
            Ok(None)
        }
        None => Err(OrchError::Signature(format!(
            "no {source} webhook secret configured: set {} or the systemd credential {} (LoadCredential=), or pass --insecure-no-signature to accept unsigned deliveries",
            webhooks::secret::env_var(source),
            webhooks::secret::credential_names(source)[0],
        ))
        .into()),
    }
}

/// The raw body from `file` or stdin, refused past `max` bytes without reading further.
fn read_body(file: Option<&std::path::Path>, max: u64) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let read = match file {
        Some(path) => std::fs::File::open(path)
            .and_then(|f| f.take(max + 1).read_to_end(&mut body))
            .map_err(|e| {
                OrchError::Usage(format!("cannot read body file {}: {e}", path.display()))
            })?,
        None => std::io::stdin()
            .lock()
            .take(max + 1)
            .read_to_end(&mut body)
            .map_err(|e| OrchError::Malformed(format!("reading the body from stdin: {e}")))?,
    };
    if read as u64 > max {
        return Err(OrchError::Malformed(format!(
            "the body is larger than webhook_max_body_bytes ({max} bytes); nothing stored"
        ))
        .into());
    }
    Ok(body)
}

/// Check a delivery and store it: header values, signature, JSON, then one write.
fn ingest(
    ctx: &Ctx,
    source: Source,
    secret: Option<&Secret>,
    d: &Incoming<'_>,
) -> anyhow::Result<(Stored, Db)> {
    let event = header_value("event", d.event)?;
    let delivery = header_value("delivery id", d.delivery_id)?;
    if let Some(secret) = secret {
        let Some(signature) = d.signature.filter(|s| !s.trim().is_empty()) else {
            return Err(OrchError::Signature(format!(
                "{source} delivery without a signature ({}); nothing stored",
                source.signature_headers().join(" or ")
            ))
            .into());
        };
        if !webhooks::verify_signature(secret.expose(), d.body, signature) {
            return Err(OrchError::Signature(format!(
                "{source} delivery signature does not match the body and the configured secret; nothing stored"
            ))
            .into());
        }
    }
    match serde_json::from_slice::<serde_json::Value>(d.body) {
        Ok(v) if v.is_object() => {}
        Ok(_) => {
            return Err(OrchError::Malformed(
                "the body is JSON but not an object; nothing stored".into(),
            )
            .into());
        }
        Err(e) => {
            return Err(OrchError::Malformed(format!(
                "the body is not JSON ({e}); nothing stored"
            ))
            .into());
        }
    }
    let mut db = ctx.open_db()?;
    let now = storage::now();
    let stored = db.write(|tx| {
        Ok(webhooks::store(
            tx,
            source.as_str(),
            event,
            delivery,
            d.body,
            now,
        )?)
    })?;
    Ok((stored, db))
}

/// A header value: absent or empty is `None`; too long or with control characters is malformed.
fn header_value<'a>(what: &str, value: Option<&'a str>) -> anyhow::Result<Option<&'a str>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v.len() > MAX_HEADER_VALUE || v.chars().any(char::is_control) {
        return Err(OrchError::Malformed(format!(
            "the {what} is longer than {MAX_HEADER_VALUE} bytes or has control characters; nothing stored"
        ))
        .into());
    }
    Ok(Some(v))
}

/// The one-line outcome.
fn describe(stored: Stored) -> String {
    match stored {
        Stored::New(id) => format!("stored delivery {id}"),
        Stored::Duplicate { id, by } => format!("duplicate of delivery {id} (same {by}); ignored"),
    }
}

/// The `--json` outcome (docs/json.md).
fn outcome_json(stored: Stored) -> serde_json::Value {
    match stored {
        Stored::New(id) => serde_json::json!({ "outcome": "stored", "delivery": id }),
        Stored::Duplicate { id, by } => serde_json::json!({
            "outcome": "duplicate",
            "delivery": id,
            "same": match by {
                webhooks::DuplicateBy::DeliveryId => "delivery_id",
                webhooks::DuplicateBy::Content => "content",
            },
        }),
    }
}
