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
