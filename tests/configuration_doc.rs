//! docs/configuration.md names every setting (as `` `key` `` in its tables),
//! including the keys of `[repos.<name>]`, so the reference page cannot fall
//! behind `Config` as settings are added.

use std::path::Path;

fn doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"))
        .expect("docs/configuration.md")
}

#[test]
fn configuration_doc_names_every_setting() {
    let text = doc();
    let defaults = toml::Table::try_from(orch::config::Config::default()).expect("defaults");
    let missing: Vec<&String> = defaults
        .keys()
        .filter(|k| !text.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:?}"
    );
}

#[test]
fn configuration_doc_names_every_repo_setting() {
    let text = doc();
    let repo = toml::Table::try_from(orch::config::RepoConfig::default()).expect("repo");
    let missing: Vec<&String> = repo
        .keys()
        .filter(|k| !text.contains(&format!("{k} =")) && !text.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks repo keys {missing:?}"
    );
}

/// The settings tables list only settings that act: a removed setting is
/// named only in the "Removed settings" section, which explains each one.
#[test]
fn configuration_doc_lists_only_settings_that_act() {
    let text = doc();
    let (settings, removed) = text
        .split_once("## Removed settings")
        .expect("a \"Removed settings\" section");
    let removed = removed.split("\n## ").next().unwrap_or("");
    for (key, _) in orch::config::REMOVED_SETTINGS {
        let named = format!("`{key}`");
        assert!(
            !settings.contains(&format!("| {named} |")),
            "docs/configuration.md still lists the removed {named} as a setting"
        );
        assert!(
            removed.contains(&format!("| {named} |")),
            "docs/configuration.md does not say why {named} was removed"
        );
    }
}
