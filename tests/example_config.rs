//! `examples/orch.toml` loads without error and names every setting, so it
//! stays a complete, valid reference as settings are added; the full
//! deployment example `examples/plane-gitea-telegram.toml` loads too.

use std::path::Path;

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/orch.toml")
}

#[test]
fn example_config_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(example())
        .arg("init")
        .output()
        .expect("run orch init");
    assert!(
        out.status.success(),
        "examples/orch.toml is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn full_deployment_example_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plane-gitea-telegram.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(&example)
        .arg("init")
        .env_remove("ORCH_AGENT_CMD")
        .output()
        .expect("run orch init");
    assert!(
        out.status.success(),
        "examples/plane-gitea-telegram.toml is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_config_names_every_setting() {
    let text = std::fs::read_to_string(example()).expect("examples/orch.toml");
    let example: toml::Table = toml::from_str(&text).expect("example is TOML");
    let defaults = toml::Table::try_from(orch::config::Config::default()).expect("defaults");
    let missing: Vec<&String> = defaults
        .keys()
        .filter(|k| !example.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "examples/orch.toml lacks {missing:?}");
}

/// Every Claude command in the examples lets the agent write in its worktree
/// and run the tests, as root too (docs/claude-code.md): a copied example
/// must not be one whose every tool call is refused.
#[test]
fn every_example_claude_command_may_write() {
    use orch::runner::claude::permissions::{Grant, grant};
    for file in ["examples/orch.toml", "examples/plane-gitea-telegram.toml"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .expect("example");
        let table: toml::Table = toml::from_str(&text).expect("TOML");
        let mut commands: Vec<String> = table
            .get("agent_cmd")
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .into_iter()
            .collect();
        if let Some(per_stage) = table.get("agent_cmds").and_then(toml::Value::as_table) {
            commands.extend(
                per_stage
                    .values()
                    .filter_map(|v| v.as_str().map(str::to_owned)),
            );
        }
        assert!(!commands.is_empty(), "{file} has no agent command");
        for cmd in commands.iter().filter(|c| c.starts_with("claude")) {
            let words: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
            let g = grant(&words, None, 0, false);
            assert!(matches!(g, Grant::Works(_)), "{file}: {cmd}: {g:?}");
        }
    }
}

/// The example lists only settings that act: every top-level key is a setting
/// of `Config` (a removed one would load with a warning, and mislead).
#[test]
fn example_config_names_only_settings_that_act() {
    let text = std::fs::read_to_string(example()).expect("examples/orch.toml");
    let example: toml::Table = toml::from_str(&text).expect("example is TOML");
    let defaults = toml::Table::try_from(orch::config::Config::default()).expect("defaults");
    let extra: Vec<&String> = example
        .keys()
        .filter(|k| !defaults.contains_key(*k))
        .collect();
    assert!(
        extra.is_empty(),
        "examples/orch.toml names non-settings {extra:?}"
    );
}
