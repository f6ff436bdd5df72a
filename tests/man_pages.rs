//! The committed man pages in `man/` are exactly what `orch generate man`
//! writes today, so they never go stale. After changing a `///` help text,
//! regenerate them with `cargo run -- generate man man/`.

use std::collections::BTreeMap;
use std::path::Path;

fn pages(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (name, text)
        })
        .collect()
}

#[test]
fn committed_man_pages_match_the_generated_ones() {
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["generate", "man"])
        .arg(fresh_dir.path())
        .status()
        .expect("run orch generate man");
    assert!(status.success(), "orch generate man failed: {status}");

    let committed = pages(&Path::new(env!("CARGO_MANIFEST_DIR")).join("man"));
    let fresh = pages(fresh_dir.path());
    let stale = "man/ is stale: run `cargo run -- generate man man/` and commit the result";
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>(),
        "{stale} (the set of pages differs)"
    );
    for (name, text) in &fresh {
        assert!(committed[name] == *text, "{stale} ({name} differs)");
    }
}

#[test]
fn orch_1_documents_the_exit_codes() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/orch.1"))
        .expect("man/orch.1");
    for code in [
        "0 success",
        "1 failure",
        "2 usage",
        "3 nothing to do",
        "65 malformed",
        "75 temporary failure",
        "77 signature rejected",
        "78 configuration error",
    ] {
        assert!(
            page.contains(code),
            "orch.1 does not mention exit code {code:?}"
        );
    }
}

/// Every man page has the sections a reader looks for, and every example
/// in them is a command line orch accepts (checked by parsing it with
/// `--help` appended: clap rejects an unknown flag before printing help).
#[test]
fn every_page_has_examples_exit_status_environment_and_files_that_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for (name, text) in pages(&dir) {
        for section in [
            ".SH EXAMPLES",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH FILES",
        ] {
            assert!(text.contains(section), "{name} has no {section}");
        }
        let section = text
            .split(".SH EXAMPLES")
            .nth(1)
            .and_then(|rest| rest.split("\n.SH ").next())
            .unwrap_or("");
        let examples = section
            .lines()
            .filter_map(|l| l.strip_prefix("\\fBorch "))
            .map(|l| l.trim_end_matches("\\fR"));
        for example in examples {
            let command = example.split(" | ").next().unwrap_or("");
            let words = shell_words(command.split(" < ").next().unwrap_or(""));
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
                .args(&words)
                .arg("--help")
                .output()
                .expect("orch");
            assert!(
                out.status.success(),
                "{name}: example `orch {example}` does not parse: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Completions offer what `--help` lists, not the hidden internal commands.
#[test]
fn completions_offer_no_hidden_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
            .args(["generate", "completions", shell])
            .output()
            .expect("orch");
        let script = String::from_utf8_lossy(&out.stdout);
        // How each shell's script names an offered subcommand.
        let offered = |name: &str| match shell {
            "bash" => format!("orch,{name})"),
            "zsh" => format!("'{name}:"),
            _ => format!("-a \"{name}\""),
        };
        assert!(script.contains(&offered("run-agent")), "{shell}: {script}");
        for hidden in ["demo-agent", "debug"] {
            assert!(
                !script.contains(&offered(hidden)),
                "{shell} offers {hidden}"
            );
        }
    }
}

/// Words of a simple command line with single quotes (all the examples use).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut started) = (false, false);
    for c in line.chars() {
        match c {
            '\'' => (quoted, started) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            c => (word, started) = (word + &c.to_string(), true),
        }
    }
    if started {
        words.push(word);
    }
    words
}
