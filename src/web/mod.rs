//! `orch web`: a read-only web board, served without a daemon the same way
//! webhooks are — one `orch web --inetd` process per connection from a
//! systemd socket (`orch-web.socket`, `Accept=yes`), or `orch web --listen`
//! for a quick look from a terminal (docs/web.md).
//!
//! It shows what `orch status` and `orch task show` show, for people who
//! would rather look at a page: the tasks by stage, what needs a human with
//! the command that resolves it ([`crate::pipeline::attention`]), and for
//! each task its timeline, attempts, cost and the live tail of its agent's
//! log. It changes nothing: only `GET` and `HEAD` are answered, and the
//! database is opened read-only for each request. It has no authentication
//! of its own: it binds to loopback, and a reverse proxy adds auth.
//!
//! One concept per file: [`http`] (serving, inetd or listening),
//! [`routes`] (what each URL answers, from the domain modules' queries),
//! [`pages`] (HTML rendering) and [`escape`] (untrusted text made inert).

pub mod escape;
pub mod http;
pub mod pages;
pub mod routes;
