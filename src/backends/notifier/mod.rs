//! Notifications to people. The embedded notifier writes them to the log and
//! to `<state dir>/notifications.log`; [`telegram`] sends them through the
//! Telegram Bot API.

pub mod telegram;

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// Deliver one notification through the log notifier.
pub fn log_notify(state_dir: &Path, text: &str, now: i64) -> anyhow::Result<()> {
    log::info!("notification: {text}");
    let path = state_dir.join("notifications.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{now} {}", text.replace('\n', " "))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
