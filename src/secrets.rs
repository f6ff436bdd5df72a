//! Secrets (API tokens) come from the environment or from systemd
//! credentials, never from the config file, so that the config can be shared
//! and logged while the tokens stay out of it (docs/architecture.md, decision 10).
//!
//! A secret named `plane_api_token` is read from `ORCH_PLANE_API_TOKEN`, else
//! from the file `$CREDENTIALS_DIRECTORY/plane-api-token` (what systemd's
//! `LoadCredential=plane-api-token:…` provides), else from
//! `$CREDENTIALS_DIRECTORY/orch-plane-api-token` (what the shipped units'
//! ID-only `LoadCredential=orch-plane-api-token` provides from
//! `/etc/credstore/`). Values are trimmed; an empty value counts as absent.
//! Nothing here logs a value or puts it in an error.

use std::path::Path;

/// Make this process non-dumpable, so that another process of the same user
/// — an agent, which runs as orch's user — cannot read its environment
/// (`/proc/<pid>/environ`, where the tokens are) or its memory, nor attach a
/// debugger. Programs orch starts get the flag reset by `execve`, which is
/// fine: they are started without the tokens. Called first thing by `main`.
pub fn protect_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        log::warn!("could not make orch non-dumpable: {e}; an agent may read its environment");
    }
}

/// The secret `name` (lowercase, `_`-separated, e.g. `gitea_token`), or `None`
/// when it is set nowhere or empty.
pub fn secret(name: &str) -> Option<String> {
    let env = std::env::var(env_name(name)).ok();
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
    lookup(name, env.as_deref(), dir.as_deref().map(Path::new))
}

/// Where secret `name` comes from, without reading it into anything that
/// could be printed: `Some("environment ORCH_…")`, `Some("credential file
/// …")`, or `None` when it is set nowhere (for `orch doctor`).
pub fn origin(name: &str) -> Option<String> {
    let var = env_name(name);
    if std::env::var(&var).is_ok_and(|v| !v.trim().is_empty()) {
        return Some(format!("environment {var}"));
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    credential_file_names(name)
        .into_iter()
        .map(|file| Path::new(&dir).join(file))
        .find(|path| read_credential(path).is_some())
        .map(|path| format!("credential file {}", path.display()))
}

/// The environment variable that holds secret `name`: `ORCH_<NAME_UPPER>`.
pub fn env_name(name: &str) -> String {
    format!("ORCH_{}", name.to_ascii_uppercase())
}

/// The systemd credential file name of secret `name`: `_` becomes `-`.
pub fn credential_name(name: &str) -> String {
    name.replace('_', "-")
}

/// Resolve secret `name` from an already-read environment value and an
/// optional credentials directory (the pure part of [`secret`], for tests).
pub fn lookup(
    name: &str,
    env_value: Option<&str>,
    credentials_dir: Option<&Path>,
) -> Option<String> {
    if let Some(v) = env_value.map(str::trim)
        && !v.is_empty()
    {
        return Some(v.to_owned());
    }
    let dir = credentials_dir?;
    if dir.as_os_str().is_empty() {
        return None;
    }
    credential_file_names(name)
        .into_iter()
        .find_map(|file| read_credential(&dir.join(file)))
}

/// The credential file names tried for secret `name`, in order:
/// `plane-api-token`, then `orch-plane-api-token`.
pub fn credential_file_names(name: &str) -> [String; 2] {
    let base = credential_name(name);
    [base.clone(), format!("orch-{base}")]
}

/// Values shorter than this are not hidden from the log: masking every
/// occurrence of a few characters would garble it, and such a "secret"
/// protects nothing anyway.
pub const MIN_HIDDEN_LEN: usize = 6;

/// Every secret value this process may hold, for the logger to mask
/// whatever a library decides to print: each `ORCH_*_TOKEN`,
/// `ORCH_*_SECRET` or `*PASSWORD*` variable (the same rule that keeps them
/// from agents) and each file of `$CREDENTIALS_DIRECTORY`, trimmed; the
/// longest first, so a secret that contains another is masked whole.
pub fn values_to_hide() -> Vec<String> {
    let mut values: Vec<String> = std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| k != "CREDENTIALS_DIRECTORY" && crate::runner::is_secret_var(k))
        })
        .filter_map(|(_, v)| v.into_string().ok())
        .map(|v| v.trim().to_owned())
        .collect();
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        values.extend(entries.flatten().take(64).filter_map(|e| {
            let mut text = String::new();
            let file = std::fs::File::open(e.path()).ok()?;
            std::io::Read::read_to_string(&mut std::io::Read::take(file, 64 * 1024), &mut text)
                .ok()?;
            Some(text.trim().to_owned())
        }));
    }
    values.retain(|v| v.len() >= MIN_HIDDEN_LEN);
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

fn read_credential(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let v = text.trim();
            (!v.is_empty()).then(|| v.to_owned())
        }
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                // The path names the credential, never its value.
                log::warn!("cannot read credential {}: {e}", path.display());
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(env_name("plane_api_token"), "ORCH_PLANE_API_TOKEN");
        assert_eq!(credential_name("plane_api_token"), "plane-api-token");
    }

    #[test]
    fn environment_wins_and_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("gitea-token"), "from-file\n").expect("write");
        assert_eq!(
            lookup("gitea_token", Some("  from-env \n"), Some(dir.path())),
            Some("from-env".into())
        );
    }

    #[test]
    fn credentials_directory_is_the_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("gitea-token"), "from-file\n").expect("write");
        assert_eq!(
            lookup("gitea_token", None, Some(dir.path())),
            Some("from-file".into())
        );
        assert_eq!(
            lookup("gitea_token", Some("   "), Some(dir.path())),
            Some("from-file".into())
        );
    }

    #[test]
    fn the_shipped_units_orch_prefixed_name_is_accepted() {
        // systemd/orch-worker@.service: LoadCredential=orch-plane-api-token
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("orch-plane-api-token"), "tok\n").expect("write");
        assert_eq!(
            lookup("plane_api_token", None, Some(dir.path())),
            Some("tok".into())
        );
    }

    #[test]
    fn empty_or_missing_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("plane-api-token"), " \n").expect("write");
        assert_eq!(lookup("plane_api_token", None, Some(dir.path())), None);
        assert_eq!(lookup("telegram_bot_token", None, Some(dir.path())), None);
        assert_eq!(lookup("telegram_bot_token", Some(""), None), None);
    }
}
