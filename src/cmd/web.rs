//! `orch web`: the read-only web board (docs/web.md), served per connection
//! from a systemd socket (`--inetd`) or by a small accept loop (`--listen`).

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::GlobalOpts;
use crate::context::Ctx;
use crate::web;

/// Arguments of `orch web`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Args {
    /// Answer one HTTP request on stdin and stdout, then exit (a systemd
    /// socket with Accept=yes: orch-web.socket and orch-web@.service).
    #[arg(long)]
    pub inetd: bool,

    /// Listen on ADDR (e.g. 127.0.0.1:8789; port 0 picks a free one), print
    /// the board's URL and serve until interrupted. The board has no
    /// authentication: keep it on loopback, or behind a proxy that adds it.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Run `orch web`. With `--inetd`, a configuration that cannot be loaded
/// still gets the client an answer (500) before the error is returned.
pub fn run(global: &GlobalOpts, args: &Args) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::resolve(global);
    if args.inetd {
        if let Err(e) = web::http::serve_inetd(ctx.as_ref()) {
            log::debug!("web: the client went away before its answer: {e}");
        }
        return ctx.map(|_| ExitCode::SUCCESS);
    }
    let ctx = ctx?;
    let Some(addr) = args.listen else {
        return Ok(ExitCode::SUCCESS);
    };
    if !addr.ip().is_loopback() {
        log::warn!(
            "the board has no authentication: anyone who can reach {addr} can read it (docs/web.md)"
        );
    }
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    crate::say!("orch web: listening on http://{bound}/ (Ctrl-C stops it)");
    web::http::serve_listener(&ctx, &listener)
}
