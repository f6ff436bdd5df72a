//! Keeping orch's state private to the user that runs it.
//!
//! The state directory holds what decides what orch runs (`orch.toml`: agent,
//! test and deploy commands) and what it knows (the database, agent logs,
//! clones). A directory another local user created first — `/tmp/orch-demo`
//! made before the victim's demo, say — or one anyone can write to would let
//! that user choose the commands orch runs as the victim, or replace files
//! with symlinks orch then follows; a umask of 022 would leave the database
//! and logs readable by everyone. So orch tightens its own umask to 077
//! before touching state, creates the state directory 0700, and refuses
//! (exit 78, configuration error) a state directory or config file that
//! belongs to another user or that others can write to. root's files are
//! trusted like one's own: root can change them anyway.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::Path;

use anyhow::Context as _;

use crate::error::OrchError;

/// Make every file and directory this process (and what it starts) creates
/// private to its user, whatever umask it was started with.
pub fn tighten_umask() {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o077));
}

/// Create `dir` (and missing parents) with mode 0700; an existing directory
/// is left as it is (its mode is [`check_state_dir`]'s and doctor's business).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

/// Whether a file owned by `uid` may steer this process: it is ours, or root's.
fn trusted_owner(uid: u32) -> bool {
    uid == nix::unistd::geteuid().as_raw() || uid == 0
}

/// Why the file or directory at `path` must not be trusted, if it must not:
/// it (or the symlink naming it) belongs to another user, or group or others
/// can write to it. `None` for a trustworthy or missing path.
pub fn untrusted_reason(path: &Path) -> Option<String> {
    let link = std::fs::symlink_metadata(path).ok()?;
    if link.file_type().is_symlink() && !trusted_owner(link.uid()) {
        return Some(format!(
            "is a symlink owned by uid {} (this user is uid {})",
            link.uid(),
            nix::unistd::geteuid()
        ));
    }
    let meta = std::fs::metadata(path).ok()?;
    if !trusted_owner(meta.uid()) {
        return Some(format!(
            "is owned by uid {}, not by this user (uid {})",
            meta.uid(),
            nix::unistd::geteuid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 { "world" } else { "group" };
        return Some(format!("is {who}-writable (mode {mode:04o})"));
    }
    None
}

/// Refuse a state directory another user owns or can write to (see the module doc).
pub fn check_state_dir(dir: &Path) -> Result<(), OrchError> {
    match untrusted_reason(dir) {
        None => Ok(()),
        Some(why) => Err(OrchError::Config(format!(
            "state directory {} {why}: refusing to use it, another user could choose the commands orch runs; use a directory only you can write to (docs/security.md)",
            dir.display()
        ))),
    }
}

/// Refuse a config file another user owns or can write to: it names the
/// commands orch runs.
pub fn check_config_file(path: &Path) -> Result<(), OrchError> {
    match untrusted_reason(path) {
        None => Ok(()),
        Some(why) => Err(OrchError::Config(format!(
            "config file {} {why}: refusing to run the commands it names; chown it to this user and chmod go-w it",
            path.display()
        ))),
    }
}
