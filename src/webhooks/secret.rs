//! Where a source's webhook secret comes from: the environment variable
//! `ORCH_<SOURCE>_WEBHOOK_SECRET`, else the systemd credential
//! `$CREDENTIALS_DIRECTORY/<source>-webhook-secret` (`LoadCredential=`; the
//! name `orch-<source>-webhook-secret` used by the shipped unit is accepted
//! too). Never from the config file, and never logged: [`Secret`]'s `Debug`
//! hides it.

use std::path::Path;

use crate::error::OrchError;
use crate::webhooks::Source;

/// A shared HMAC secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret's bytes, for the HMAC key.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The environment variable holding `source`'s secret.
pub fn env_var(source: Source) -> &'static str {
    match source {
        Source::Plane => "ORCH_PLANE_WEBHOOK_SECRET",
        Source::Gitea => "ORCH_GITEA_WEBHOOK_SECRET",
    }
}

/// The credential names tried in `$CREDENTIALS_DIRECTORY`, in order.
pub fn credential_names(source: Source) -> [String; 2] {
    let name = format!("{}-webhook-secret", source.as_str());
    [name.clone(), format!("orch-{name}")]
}

/// `source`'s secret, or `None` when none is configured.
///
/// `env` reads the environment (a parameter, for tests). An empty value or
/// file counts as not configured; one trailing newline of a file is dropped
/// (`echo secret > file`). A credential file that exists but cannot be read
/// is a configuration error.
pub fn webhook_secret(
    source: Source,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, OrchError> {
    if let Some(v) = env(env_var(source)).filter(|v| !v.is_empty()) {
        return Ok(Some(Secret(v.into_bytes())));
    }
    let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    for name in credential_names(source) {
        let path = Path::new(&dir).join(&name);
        match std::fs::read(&path) {
            Ok(mut bytes) => {
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                if !bytes.is_empty() {
                    return Ok(Some(Secret(bytes)));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(OrchError::Config(format!(
                    "cannot read credential {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(None)
}

/// Where `source`'s secret comes from (the variable or the credential file),
/// never its value; `None` when none is configured (for `orch doctor`).
pub fn webhook_secret_origin(
    source: Source,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, OrchError> {
    if webhook_secret(source, env)?.is_none() {
        return Ok(None);
    }
    if env(env_var(source)).is_some_and(|v| !v.is_empty()) {
        return Ok(Some(format!("environment {}", env_var(source))));
    }
    let dir = env("CREDENTIALS_DIRECTORY").unwrap_or_default();
    let path = credential_names(source)
        .into_iter()
        .map(|name| Path::new(&dir).join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .unwrap_or_else(|| Path::new(&dir).to_path_buf());
    Ok(Some(format!("credential file {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn env_first_then_credentials_then_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().to_string_lossy().into_owned();
        std::fs::write(dir.path().join("plane-webhook-secret"), "from-file\n").expect("write");
        std::fs::write(dir.path().join("orch-gitea-webhook-secret"), "g").expect("write");

        let both = env_of(vec![
            ("ORCH_PLANE_WEBHOOK_SECRET", "from-env".into()),
            ("CREDENTIALS_DIRECTORY", creds.clone()),
        ]);
        let s = webhook_secret(Source::Plane, &both)
            .expect("ok")
            .expect("some");
        assert_eq!(s.expose(), b"from-env");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");

        let files = env_of(vec![("CREDENTIALS_DIRECTORY", creds)]);
        let s = webhook_secret(Source::Plane, &files)
            .expect("ok")
            .expect("some");
        assert_eq!(s.expose(), b"from-file");
        let s = webhook_secret(Source::Gitea, &files)
            .expect("ok")
            .expect("some");
        assert_eq!(s.expose(), b"g");

        let empty = env_of(vec![("ORCH_GITEA_WEBHOOK_SECRET", String::new())]);
        assert_eq!(webhook_secret(Source::Gitea, &empty).expect("ok"), None);
        assert_eq!(
            webhook_secret(Source::Plane, &env_of(vec![])).expect("ok"),
            None
        );
    }
}
