//! Webhooks are an inbox (docs/architecture.md, decision 5): `orch ingest-webhook` verifies a
//! delivery's HMAC signature over the raw body, stores it once — deduplicated
//! by delivery id and by content, because Plane makes a new delivery id on
//! each retry — and answers at once. Processing happens later, from
//! [`pending`], and re-reads the current state: a webhook is a hint, not a fact.
//!
//! One concept per file: [`signature`] (HMAC check), [`inbox`] (the
//! `webhook_deliveries` table), [`secret`] (where the shared secrets come
//! from) and [`http`] (one HTTP/1.1 request on stdin/stdout, inetd style).

pub mod http;
pub mod inbox;
pub mod route;
pub mod secret;
pub mod signature;

pub use inbox::{Delivery, DuplicateBy, Stored, content_hash, pending, store};
pub use secret::{Secret, webhook_secret};
pub use signature::verify_signature;

/// A system that sends webhooks to orch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Plane (the tracker).
    Plane,
    /// Gitea (the forge).
    Gitea,
}

impl Source {
    /// The name stored in `webhook_deliveries.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Plane => "plane",
            Source::Gitea => "gitea",
        }
    }

    /// The HTTP header carrying the event name.
    pub fn event_header(self) -> &'static str {
        match self {
            Source::Plane => "X-Plane-Event",
            Source::Gitea => "X-Gitea-Event",
        }
    }

    /// The HTTP header carrying the delivery id.
    pub fn delivery_header(self) -> &'static str {
        match self {
            Source::Plane => "X-Plane-Delivery",
            Source::Gitea => "X-Gitea-Delivery",
        }
    }

    /// The HTTP headers that may carry the signature, in order of preference.
    pub fn signature_headers(self) -> &'static [&'static str] {
        match self {
            Source::Plane => &["X-Plane-Signature"],
            Source::Gitea => &["X-Gitea-Signature", "X-Hub-Signature-256"],
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
