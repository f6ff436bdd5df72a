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
