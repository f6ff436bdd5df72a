//! docs/seed-tests.md maps every case of the seed's test catalogue to the
//! test of ours that asserts it, or says why it is moot. This file keeps the
//! mapping from rotting: every test it names exists as a `fn` in the file it
//! names, every row names a test or says "moot", no suite loses rows, and
//! every test named after a seed case (`orchNNN_…`) appears in the mapping.

use std::collections::BTreeSet;
use std::path::Path;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn doc() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/seed-tests.md"))
}

/// Every `tests/<file>.rs::<fn>` reference in `text`.
fn references(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("tests/") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_/.:".contains(c)))
            .unwrap_or(rest.len());
        if let Some((file, name)) = rest[..end].split_once("::") {
            out.push((file.to_owned(), name.to_owned()));
        }
        rest = &rest[end.max(1)..];
    }
    out
}

/// Whether `file` defines `fn name(`.
fn defines(file: &str, name: &str) -> bool {
    let text = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(file));
    text.contains(&format!("fn {name}("))
}

#[test]
fn every_test_named_in_the_mapping_exists() {
    let refs = references(&doc());
    assert!(refs.len() > 100, "only {} references", refs.len());
    let missing: Vec<String> = refs
        .iter()
        .filter(|(file, name)| {
            let rust = Path::new(file).extension().is_some_and(|e| e == "rs");
            !(file.starts_with("tests/") && rust && defines(file, name))
        })
        .map(|(file, name)| format!("{file}::{name}"))
        .collect();
    assert!(missing.is_empty(), "named but not defined: {missing:#?}");
}

/// The table rows of each `## ORCH-…` suite (header and separator excluded).
fn suites(doc: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in doc.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            out.push((title.to_owned(), Vec::new()));
        } else if line.starts_with("| ")
            && !line.starts_with("| Seed test")
            && let Some((_, rows)) = out.last_mut()
        {
            rows.push(line.to_owned());
        }
    }
    out.retain(|(title, _)| title.starts_with("ORCH-"));
    out
}

#[test]
fn every_row_names_a_test_or_says_why_it_is_moot_and_no_suite_lost_rows() {
    let doc = doc();
    let suites = suites(&doc);
    // The seed catalogue's rows per suite, in this page's order.
    let expected = [
        ("ORCH-113", 13),
        ("ORCH-059", 17),
        ("ORCH-065", 50),
        ("ORCH-110", 7),
        ("ORCH-090", 30),
        ("ORCH-126", 11),
    ];
    assert_eq!(suites.len(), expected.len(), "suites: {suites:#?}");
    for ((title, rows), (id, n)) in suites.iter().zip(expected) {
        assert!(title.starts_with(id), "{title} is not {id}");
        assert_eq!(rows.len(), n, "{title}: {} rows, expected {n}", rows.len());
        for row in rows {
            let last = row
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap_or("")
                .trim();
            let moot = last == "moot" && row.contains("| moot: ");
            let tested = !references(last).is_empty();
            assert!(moot || tested, "{title}: row names no test: {row}");
            assert!(
                row.contains("test_") || row.contains("Test"),
                "{title}: row does not name its seed test: {row}"
            );
        }
    }
}

#[test]
fn every_test_named_after_a_seed_case_is_in_the_mapping() {
    let named: BTreeSet<String> = references(&doc()).into_iter().map(|(_, n)| n).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut unmapped = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = read(&path);
        let mut previous = "";
        for line in text.lines() {
            if previous.trim() == "#[test]"
                && let Some(name) = line.strip_prefix("fn orch")
            {
                let name = format!("orch{}", name.split('(').next().unwrap_or(""));
                let seeded = name
                    .as_bytes()
                    .get(4..7)
                    .is_some_and(|d| d.iter().all(u8::is_ascii_digit));
                if seeded && !named.contains(&name) {
                    unmapped.push(format!("{}::{name}", path.display()));
                }
            }
            previous = line;
        }
    }
    assert!(
        unmapped.is_empty(),
        "tests named after a seed case but absent from docs/seed-tests.md: {unmapped:#?}"
    );
}
