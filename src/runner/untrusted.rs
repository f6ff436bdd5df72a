//! Opening files an agent can tamper with.
//!
//! An agent knows where its log and its cost report live (`$ORCH_COST_FILE`
//! names the run directory) and can replace either with a FIFO, a device
//! such as `/dev/zero`, or a symlink to anything. Reading such a thing
//! naively hangs the worker (a FIFO nobody writes) or grows it without end (a
//! device that never reaches EOF). So these files are opened without
//! following a final symlink and without blocking, and used only if the
//! opened file is a regular file; reads of them are bounded by the caller.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::fcntl::OFlag;

/// Open `path` for reading if it is a regular file. `Ok(None)` when it is
/// missing, a symlink, a FIFO, a device or a directory.
pub fn open_regular(path: &Path) -> std::io::Result<Option<File>> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path);
    let file = match opened {
        Ok(f) => f,
        // ELOOP: the final component is a symlink (O_NOFOLLOW).
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ELOOP) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        log::warn!(
            "{}: not a regular file (replaced by the agent?); ignored",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let regular = dir.path().join("log");
        std::fs::write(&regular, "x").expect("write");
        assert!(open_regular(&regular).expect("open").is_some());
        assert!(
            open_regular(&dir.path().join("missing"))
                .expect("open")
                .is_none()
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        assert!(open_regular(&link).expect("open").is_none());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(
            open_regular(&fifo).expect("open").is_none(),
            "a FIFO must not hang"
        );
        assert!(
            open_regular(Path::new("/dev/zero"))
                .expect("open")
                .is_none()
        );
        assert!(open_regular(dir.path()).expect("open").is_none());
    }
}
