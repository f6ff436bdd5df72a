//! The outside world behind small traits, each with an embedded
//! implementation that works offline and (from the integrations release) a
//! remote one: tracker (local | Plane), forge (local | Gitea), notifier
//! (log | Telegram). docs/architecture.md, decision 8.

pub mod forge;
pub mod http;
pub mod notifier;
pub mod tracker;
