//! Validation of every name that reaches git or the file system: repository
//! names, work-item ids and branch names.
//!
//! Names come from webhooks, the tracker and the command line, so they are
//! hostile until proven otherwise. We accept a conservative subset of what git
//! allows (`git check-ref-format` rules plus "no leading `-`", so a name can
//! never be read as an option) rather than escaping anything.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    kind: &'static str,
    name: String,
    why: &'static str,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.kind, self.name, self.why)
    }
}

impl std::error::Error for InvalidName {}

const MAX_COMPONENT: usize = 64;

fn check_component(kind: &'static str, full: &str, part: &str) -> Result<(), InvalidName> {
    let refuse = |why| {
        Err(InvalidName {
            kind,
            name: full.to_owned(),
            why,
        })
    };
    if part.is_empty() {
        return refuse("empty name or path component");
    }
    if part.len() > MAX_COMPONENT {
        return refuse("longer than 64 characters");
    }
    if part.starts_with('-') {
        return refuse("starts with '-'");
    }
    if part.starts_with('.') {
        return refuse("starts with '.'");
    }
    if part.contains("..") {
        return refuse("contains '..'");
    }
    if part.to_ascii_lowercase().ends_with(".lock") || part.ends_with('.') {
        return refuse("ends with '.lock' or '.'");
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return refuse("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A repository name as used in the config, paths and forge URLs.
pub fn validate_repo_name(name: &str) -> Result<(), InvalidName> {
    check_component("repo name", name, name)
}

/// A work-item id such as `ORCH-059`; it names `docs/work-items/<id>/`.
pub fn validate_work_item_id(id: &str) -> Result<(), InvalidName> {
    check_component("work-item id", id, id)
}

/// A Plane object id (project, work item, state): Plane's ids are UUIDs, so
/// 1 to 64 ASCII letters, digits and `-`. They come from signed webhooks and
/// API answers and go into URL paths and cache file names, where `..`, `/`
/// or `%` would change what is asked for.
pub fn validate_plane_id(id: &str) -> Result<(), InvalidName> {
    let refuse = |why| {
        Err(InvalidName {
            kind: "Plane id",
            name: id.to_owned(),
            why,
        })
    };
    if id.is_empty() || id.len() > MAX_COMPONENT {
        return refuse("expected 1 to 64 characters (a UUID)");
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return refuse("only ASCII letters, digits and '-' are allowed (a UUID)");
    }
    Ok(())
}

/// A branch name: slash-separated components, each a safe name.
pub fn validate_branch(branch: &str) -> Result<(), InvalidName> {
    if branch.len() > 200 {
        return Err(InvalidName {
            kind: "branch",
            name: branch.to_owned(),
            why: "longer than 200 characters",
        });
    }
    for part in branch.split('/') {
        check_component("branch", branch, part)?;
    }
    Ok(())
}

/// A short lowercase slug of a title for branch names: `Add X!` → `add-x`.
pub fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "task".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The feature branch of a work item: `feature/<work-item>-<slug>`, always
/// within the component limit.
///
/// The work-item id is what makes the branch unique, so it is kept whole and
/// the slug (only a reminder of the title) gives way: cut to the room left,
/// or dropped when there is none (`feature/<work-item>`). A long repo name
/// (the default id prefix) plus a long title used to exceed 64 characters,
/// and such a task could never start.
pub fn feature_branch(work_item_id: &str, title: &str) -> Result<String, InvalidName> {
    validate_work_item_id(work_item_id)?;
    let room = MAX_COMPONENT.saturating_sub(work_item_id.len() + 1);
    let full = slug(title);
    let mut slug = truncate(&full, room);
    // A cut word reads worse than a dropped one.
    if slug.len() < full.len() && !full[slug.len()..].starts_with('-') {
        slug = slug.rsplit_once('-').map_or(slug, |(whole, _)| whole);
    }
    let slug = slug.trim_end_matches('-');
    let branch = if slug.is_empty() {
        format!("feature/{work_item_id}")
    } else {
        format!("feature/{work_item_id}-{slug}")
    };
    validate_branch(&branch)?;
    Ok(branch)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    let end = s
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= max)
        .last()
        .unwrap_or(0);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "..",
            "a..b",
            "-rf",
            "--upload-pack=x",
            "a b",
            "a\nb",
            "a\x07b",
            ".hidden",
            "x.lock",
            "ü",
            "a/b",
        ] {
            assert!(validate_work_item_id(bad).is_err(), "{bad:?} accepted");
            assert!(validate_repo_name(bad).is_err(), "{bad:?} accepted");
        }
        for bad in [
            "feature/../main",
            "feature//x",
            "/x",
            "x/",
            "feature/-x",
            "a b",
            "feature/x.lock",
        ] {
            assert!(validate_branch(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn plane_ids_are_uuid_like() {
        validate_plane_id("11111111-1111-4111-8111-111111111111").expect("ok");
        for bad in [
            "",
            "..",
            ".",
            "../../users/me",
            "a/b",
            "%2e%2e",
            "a b",
            "a\u{1b}",
        ] {
            assert!(validate_plane_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ordinary_names_pass() {
        validate_work_item_id("ORCH-059").expect("ok");
        validate_repo_name("enduro-trails").expect("ok");
        validate_branch("feature/ORCH-059-confirm-deploy").expect("ok");
    }

    #[test]
    fn feature_branch_slugs_the_title() {
        assert_eq!(
            feature_branch("DEMO-1", "  Add a  /health endpoint!! ").expect("ok"),
            "feature/DEMO-1-add-a-health-endpoint"
        );
        assert_eq!(
            feature_branch("DEMO-2", "???").expect("ok"),
            "feature/DEMO-2-task"
        );
        assert!(feature_branch("../x", "t").is_err());
    }

    #[test]
    fn feature_branch_fits_whatever_the_lengths() {
        let wi = "ABCDEFGHIJKLMNOPQRSTUVW-1";
        let b = feature_branch(wi, "Add a health endpoint to the server now").expect("ok");
        assert_eq!(
            b,
            "feature/ABCDEFGHIJKLMNOPQRSTUVW-1-add-a-health-endpoint-to-the-server"
        );
        let b = feature_branch(wi, "Ärger über Straße und Übermaß, lange Zeilen").expect("ok");
        assert!(b.len() <= 8 + MAX_COMPONENT, "{b}");
        let long = "W".repeat(MAX_COMPONENT);
        assert_eq!(
            feature_branch(&long, "title").expect("ok"),
            format!("feature/{long}")
        );
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("aé", 3), "aé");
    }
}
