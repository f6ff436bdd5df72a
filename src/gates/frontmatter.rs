//! Reading the YAML frontmatter of a Markdown artifact, and YAML artifacts
//! themselves, without trusting either.
//!
//! Artifacts are written by agents, so every byte is hostile: the file may be
//! missing, a symlink out of the worktree, a directory, huge, not UTF-8, lack
//! its frontmatter, or hold a YAML alias bomb. This module turns all of that
//! into a typed [`FrontmatterError`] with a one-line message, and never
//! panics. Gates decide on the fields alone: the body is returned but never
//! interpreted here.
//!
//! Frontmatter is the block between a first line `---` and the next line that
//! is `---` or `...`. A UTF-8 byte-order mark before the first line, CRLF line
//! endings and trailing blanks on the delimiter lines are tolerated. YAML is
//! parsed with `serde_saphyr` under a [`Budget`](serde_saphyr::Budget) much
//! tighter than its default, since frontmatter is at most 64 KiB.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

use serde_json::Value;

/// The largest artifact file we read, in bytes (1 MiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The largest frontmatter block we parse, in bytes (64 KiB).
pub const MAX_FRONTMATTER_BYTES: usize = 64 * 1024;

/// How long a value may be when quoted back in a message, in characters.
const MAX_QUOTED_CHARS: usize = 60;

/// What a path turned out to be when it should have been a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A symbolic link (refused: it could point outside the worktree).
    Symlink,
    /// A directory.
    Directory,
    /// A FIFO, socket or device.
    Special,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Symlink => "a symlink",
            FileKind::Directory => "a directory",
            FileKind::Special => "a special file",
        })
    }
}

/// Which YAML text a parse error is about: a frontmatter block or a whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlSource {
    /// The block between the `---` lines of a Markdown file.
    Frontmatter,
    /// A file that is YAML from top to bottom, such as `04-test-plan.yaml`.
    Document,
}

impl fmt::Display for YamlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            YamlSource::Frontmatter => "frontmatter",
            YamlSource::Document => "YAML document",
        })
    }
}

/// Why an artifact's frontmatter (or YAML) could not be read.
///
/// Messages are one line and do not name the file: the caller prefixes it
/// (`"13-test-report.md: no frontmatter (…)"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontmatterError {
    /// Nothing exists at the path.
    #[error("file is missing")]
    Missing,
    /// The path exists but is not a regular file.
    #[error("file is {0}, not a regular file")]
    NotRegularFile(FileKind),
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("file is too large ({size} bytes; the limit is {limit})")]
    TooLarge {
        /// The size seen, in bytes (a lower bound if the file grew while read).
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The file changed between the checks and the read (for example, it was
    /// replaced by a symlink).
    #[error("file changed while it was being read")]
    Changed,
    /// Reading failed for another reason.
    #[error("file cannot be read: {0}")]
    Io(String),
    /// The file is not UTF-8 text.
    #[error("file is not valid UTF-8 text")]
    NotUtf8,
    /// The file is empty or only white space.
    #[error("file is empty")]
    Empty,
    /// The first line is not `---`.
    #[error("no frontmatter (the file must start with a '---' line)")]
    NoFrontmatter,
    /// No `---` or `...` line closes the frontmatter.
    #[error("frontmatter is not closed (no '---' or '...' line after the opening '---')")]
    Unclosed,
    /// The frontmatter block is larger than [`MAX_FRONTMATTER_BYTES`].
    #[error("frontmatter is larger than {limit} bytes")]
    FrontmatterTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The YAML does not parse, or breaks the parsing budget.
    #[error("invalid YAML in {what}: {message}")]
    InvalidYaml {
        /// Frontmatter or whole document.
        what: YamlSource,
        /// The parser's message, on one line, with the file's line and column.
        message: String,
    },
    /// The YAML parses but its top level is not a mapping of keys to values.
    #[error("{what} is {found}, not a mapping of keys to values")]
    NotAMapping {
        /// Frontmatter or whole document.
        what: YamlSource,
        /// What it is instead: "a list", "a string", ...
        found: &'static str,
    },
}

/// The top-level fields of a frontmatter block or YAML document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(BTreeMap<String, Value>);

impl Fields {
    /// The value of a top-level key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The value of a top-level key if it is a string, trimmed of surrounding white space.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str).map(str::trim)
    }

    /// The value of a top-level key if it is a list.
    pub fn get_list(&self, key: &str) -> Option<&[Value]> {
        self.get(key).and_then(Value::as_array).map(Vec::as_slice)
    }

    /// Whether there is no field at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All fields, by key.
    pub fn as_map(&self) -> &BTreeMap<String, Value> {
        &self.0
    }

    /// All fields, by key, owned.
    pub fn into_map(self) -> BTreeMap<String, Value> {
        self.0
    }
}

/// A Markdown artifact split into its parsed frontmatter and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The frontmatter fields.
    pub frontmatter: Fields,
    /// Everything after the closing delimiter line (never interpreted by gates).
    pub body: String,
}

/// Reads `path` and parses its frontmatter.
pub fn read_frontmatter(path: &Path) -> Result<Fields, FrontmatterError> {
    read_document(path).map(|doc| doc.frontmatter)
}

/// Reads `path` and splits it into parsed frontmatter and body.
pub fn read_document(path: &Path) -> Result<Document, FrontmatterError> {
    let text = read_artifact_text(path)?;
    parse_document(&text)
}

/// Reads a file that is YAML throughout (such as `04-test-plan.yaml`) and
/// returns its top-level mapping, with the same file checks as
/// [`read_document`].
pub fn read_yaml_mapping(path: &Path) -> Result<Fields, FrontmatterError> {
    let text = read_artifact_text(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim().is_empty() {
        return Err(FrontmatterError::Empty);
    }
    parse_mapping(text, YamlSource::Document, 0)
}

/// Splits Markdown text into parsed frontmatter and body.
pub fn parse_document(text: &str) -> Result<Document, FrontmatterError> {
    let (yaml, body) = split_frontmatter(text)?;
    // The YAML starts on the file's second line.
    let frontmatter = parse_mapping(yaml, YamlSource::Frontmatter, 1)?;
    Ok(Document {
        frontmatter,
        body: body.to_owned(),
    })
}

/// Splits Markdown text into the raw YAML between the delimiters and the body.
pub fn split_frontmatter(text: &str) -> Result<(&str, &str), FrontmatterError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(FrontmatterError::Empty);
    }
    let mut lines = Lines { text, pos: 0 };
    match lines.next() {
        Some(first) if is_delimiter(first.content, false) => {}
        _ => return Err(FrontmatterError::NoFrontmatter),
    }
    let yaml_start = lines.pos;
    while let Some(line) = lines.next() {
        if line.start - yaml_start > MAX_FRONTMATTER_BYTES {
            return Err(FrontmatterError::FrontmatterTooLarge {
                limit: MAX_FRONTMATTER_BYTES,
            });
        }
        if is_delimiter(line.content, true) {
            let yaml = text.get(yaml_start..line.start).unwrap_or("");
            let body = text.get(lines.pos..).unwrap_or("");
            return Ok((yaml, body));
        }
    }
    if text.len() - yaml_start > MAX_FRONTMATTER_BYTES {
        return Err(FrontmatterError::FrontmatterTooLarge {
            limit: MAX_FRONTMATTER_BYTES,
        });
    }
    Err(FrontmatterError::Unclosed)
}

/// One line of text: where it starts, and its content without the line ending.
struct Line<'a> {
    start: usize,
    content: &'a str,
}

/// Iterates over lines, keeping byte offsets (`str::lines` loses them).
struct Lines<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let rest = self.text.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        let (content, advance) = match rest.find('\n') {
            Some(i) => (rest.get(..i).unwrap_or(""), i + 1),
            None => (rest, rest.len()),
        };
        self.pos += advance;
        Some(Line {
            start,
            content: content.strip_suffix('\r').unwrap_or(content),
        })
    }
}

/// Whether a line is a frontmatter delimiter (`---`, or `...` when closing),
/// ignoring trailing blanks.
fn is_delimiter(line: &str, closing: bool) -> bool {
    let line = line.trim_end_matches([' ', '\t']);
    line == "---" || (closing && line == "...")
}

/// The parsing budget for artifact YAML: generous for real frontmatter and
/// test plans, fatal for alias bombs and nesting storms.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES as usize);
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_recorded_anchor_events = 20_000;
    budget.max_recorded_anchor_bytes = 1024 * 1024;
    budget.max_depth = 32;
    budget.max_documents = 1;
    budget.max_nodes = 50_000;
    budget.max_total_scalar_bytes = 4 * 1024 * 1024;
    budget.max_merge_keys = 100;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 20_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.with_snippet = false;
    options
}

/// Parses YAML text whose top level must be a mapping. `line_offset` is the
/// number of file lines before the YAML, so reported lines match the file.
fn parse_mapping(
    yaml: &str,
    source: YamlSource,
    line_offset: u64,
) -> Result<Fields, FrontmatterError> {
    if yaml.trim().is_empty() {
        // `---\n---`: a frontmatter block with no field at all.
        return Ok(Fields::default());
    }
    let value: Value = serde_saphyr::from_str_with_options(yaml, options()).map_err(|e| {
        FrontmatterError::InvalidYaml {
            what: source,
            message: yaml_message(&e, line_offset),
        }
    })?;
    match value {
        Value::Object(map) => Ok(Fields(map.into_iter().collect())),
        Value::Null => Ok(Fields::default()),
        other => Err(FrontmatterError::NotAMapping {
            what: source,
            found: kind_of(&other),
        }),
    }
}

/// A parse error as one line, with the location shifted to the file's lines.
fn yaml_message(err: &serde_saphyr::Error, line_offset: u64) -> String {
    let mut err = err.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = err {
        err = error.without_snippet();
    }
    if let serde_saphyr::Error::Budget { breach, .. } = err {
        // Alias bombs and nesting storms: the location is meaningless.
        return truncate(
            &format!(
                "too large or too deeply nested to parse safely ({})",
                one_line(&format!("{breach:?}"))
            ),
            300,
        );
    }
    let mut message = one_line(&err.to_string());
    if let Some(loc) = err.location() {
        let (line, column) = (loc.line(), loc.column());
        // The parser's own text says "line L column C" of the YAML; drop that
        // and say where it is in the file.
        for suffix in [
            format!(" at line {line}, column {column}"),
            format!(" at line {line} column {column}"),
        ] {
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        if line > 0 {
            message = format!(
                "{message} (line {}, column {column})",
                line.saturating_add(line_offset)
            );
        }
    }
    truncate(&message, 300)
}

/// Collapses all white space runs (including newlines) to single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts `text` to at most `max` characters, marking the cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

/// A short description of a YAML value's kind, for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "an empty value",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A value quoted back to the user on one line: strings in double quotes,
/// anything else as compact JSON, cut to a readable length.
pub fn quote(value: &Value) -> String {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "?".to_owned());
    truncate(&text, MAX_QUOTED_CHARS)
}

/// Reads an artifact as text after refusing anything but a regular file of
/// at most [`MAX_FILE_BYTES`].
fn read_artifact_text(path: &Path) -> Result<String, FrontmatterError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FrontmatterError::Missing),
        Err(e) => return Err(io_error(&e)),
    };
    check_regular(&meta)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(FrontmatterError::TooLarge {
            size: meta.len(),
            limit: MAX_FILE_BYTES,
        });
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FrontmatterError::Missing),
        Err(e) => return Err(io_error(&e)),
    };
    // The path may have been swapped (for a symlink, say) between the check
    // and the open: make sure we opened the file we checked.
    let opened = file.metadata().map_err(|e| io_error(&e))?;
    if !same_file(&meta, &opened) {
        return Err(FrontmatterError::Changed);
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(&e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FrontmatterError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| FrontmatterError::NotUtf8)
}

/// Refuses symlinks, directories and special files, given `symlink_metadata`.
pub fn check_regular(meta: &Metadata) -> Result<(), FrontmatterError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        Err(FrontmatterError::NotRegularFile(FileKind::Symlink))
    } else if kind.is_dir() {
        Err(FrontmatterError::NotRegularFile(FileKind::Directory))
    } else if kind.is_file() {
        Ok(())
    } else {
        Err(FrontmatterError::NotRegularFile(FileKind::Special))
    }
}

#[cfg(unix)]
fn same_file(checked: &Metadata, opened: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    checked.dev() == opened.dev() && checked.ino() == opened.ino() && opened.is_file()
}

#[cfg(not(unix))]
fn same_file(_checked: &Metadata, opened: &Metadata) -> bool {
    opened.is_file()
}

fn io_error(e: &io::Error) -> FrontmatterError {
    FrontmatterError::Io(one_line(&e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fmt::Write as _;
    use std::time::{Duration, Instant};

    fn parse(text: &str) -> Result<Fields, FrontmatterError> {
        parse_document(text).map(|d| d.frontmatter)
    }

    /// A nine-level "billion laughs" frontmatter (9^9 strings once expanded).
    pub(crate) fn alias_bomb() -> String {
        let mut yaml = String::from(
            "---\nverdict: APPROVED\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for pair in names.windows(2) {
            let (prev, name) = (pair[0], pair[1]);
            let refs = vec![format!("*{prev}"); 9].join(",");
            let _ = writeln!(yaml, "{name}: &{name} [{refs}]");
        }
        yaml.push_str("---\nbody\n");
        yaml
    }

    #[test]
    fn frontmatter_fields_and_body_are_split() {
        let doc = parse_document("---\ntype: review\nversion: 3\nlabels: [a, b]\n---\n# Title\nverdict: REQUEST_CHANGES\n")
            .expect("parses");
        assert_eq!(doc.frontmatter.get_str("type"), Some("review"));
        assert_eq!(doc.frontmatter.get("version"), Some(&Value::from(3)));
        assert_eq!(
            doc.frontmatter.get_list("labels").map(<[Value]>::len),
            Some(2)
        );
        assert_eq!(
            doc.frontmatter.get("verdict"),
            None,
            "body is not frontmatter"
        );
        assert_eq!(doc.body, "# Title\nverdict: REQUEST_CHANGES\n");
    }

    #[test]
    fn frontmatter_dot_closer_crlf_bom_and_trailing_blanks_are_accepted() {
        let fields =
            parse("\u{feff}---  \r\nresult: PASS\r\nn: 1\r\n...\r\nbody\r\n").expect("parses");
        assert_eq!(fields.get_str("result"), Some("PASS"));
        let fields = parse("---\nresult: PASS\n---").expect("closer at end of file");
        assert_eq!(fields.get_str("result"), Some("PASS"));
    }

    #[test]
    fn frontmatter_values_are_unquoted_and_trimmed() {
        let fields =
            parse("---\na: \"  PASS \"\nb: 'PASS'\nc:    PASS   # comment\n---\n").expect("parses");
        for key in ["a", "b", "c"] {
            assert_eq!(fields.get_str(key), Some("PASS"), "{key}");
        }
    }

    #[test]
    fn frontmatter_empty_block_is_an_empty_mapping() {
        assert!(parse("---\n---\nbody").expect("parses").is_empty());
        assert!(
            parse("---\n# only a comment\n---\nbody")
                .expect("parses")
                .is_empty()
        );
    }

    #[test]
    fn frontmatter_missing_or_unclosed_is_refused() {
        assert_eq!(parse(""), Err(FrontmatterError::Empty));
        assert_eq!(parse(" \n\n"), Err(FrontmatterError::Empty));
        assert_eq!(
            parse("# Review\nverdict: APPROVED\n"),
            Err(FrontmatterError::NoFrontmatter)
        );
        assert_eq!(
            parse("\n---\nverdict: APPROVED\n---\n"),
            Err(FrontmatterError::NoFrontmatter)
        );
        assert_eq!(
            parse("---verdict: APPROVED\n---\n"),
            Err(FrontmatterError::NoFrontmatter)
        );
        assert_eq!(
            parse("---\nverdict: APPROVED\n"),
            Err(FrontmatterError::Unclosed)
        );
        assert_eq!(parse("---"), Err(FrontmatterError::Unclosed));
        assert_eq!(
            parse("---\nverdict: APPROVED\n----\n"),
            Err(FrontmatterError::Unclosed)
        );
    }

    #[test]
    fn frontmatter_invalid_yaml_reports_file_line_on_one_line() {
        let err = parse("---\ntype: review\nverdict: [\n---\n").expect_err("invalid");
        let FrontmatterError::InvalidYaml { what, message } = &err else {
            panic!("wrong error {err:?}");
        };
        assert_eq!(*what, YamlSource::Frontmatter);
        assert!(message.contains("line 3"), "{message}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn frontmatter_duplicate_keys_are_refused() {
        let err =
            parse("---\nverdict: REQUEST_CHANGES\nverdict: APPROVED\n---\n").expect_err("dup");
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn frontmatter_that_is_a_list_or_scalar_is_refused() {
        assert_eq!(
            parse("---\n- verdict: APPROVED\n---\n"),
            Err(FrontmatterError::NotAMapping {
                what: YamlSource::Frontmatter,
                found: "a list"
            })
        );
        assert_eq!(
            parse("---\nAPPROVED\n---\n"),
            Err(FrontmatterError::NotAMapping {
                what: YamlSource::Frontmatter,
                found: "a string"
            })
        );
        assert_eq!(
            parse("---\n42\n---\n"),
            Err(FrontmatterError::NotAMapping {
                what: YamlSource::Frontmatter,
                found: "a number"
            })
        );
    }

    #[test]
    fn frontmatter_alias_bomb_is_refused() {
        let start = Instant::now();
        let err = parse(&alias_bomb()).expect_err("bomb");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
        assert!(
            matches!(err, FrontmatterError::InvalidYaml { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("too large or too deeply nested"),
            "{err}"
        );
    }

    #[test]
    fn frontmatter_deep_nesting_is_refused() {
        let yaml = format!(
            "---\na: {}{}\n---\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(
            parse(&yaml),
            Err(FrontmatterError::InvalidYaml { .. })
        ));
    }

    #[test]
    fn frontmatter_over_64k_is_refused() {
        let big = format!(
            "---\n{}---\n",
            "k: v\n# padding padding padding padding\n".repeat(3000)
        );
        assert_eq!(
            parse(&big),
            Err(FrontmatterError::FrontmatterTooLarge {
                limit: MAX_FRONTMATTER_BYTES
            })
        );
        let unclosed = format!("---\n{}", "# x\n".repeat(20_000));
        assert_eq!(
            parse(&unclosed),
            Err(FrontmatterError::FrontmatterTooLarge {
                limit: MAX_FRONTMATTER_BYTES
            })
        );
    }

    #[test]
    fn frontmatter_hostile_bytes_never_panic() {
        let samples = [
            "---\n\u{0}\n---\n",
            "---\n: :\n---\n",
            "---\n? \n---\n",
            "---\n!!python/object:os.system x\n---\n",
            "---\na: !!binary @@@\n---\n",
            "---\n&a [*a]\n---\n",
            "---\n\u{feff}\u{feff}\n---\n",
            "---\r---\r",
            "---\n\"\n---\n",
            "---\n{a: 1, a: 1}\n---\n",
            "---\na: 1e999\n---\n",
        ];
        for text in samples {
            let _ = parse(text);
        }
    }

    #[test]
    fn frontmatter_file_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.md");
        assert_eq!(read_frontmatter(&missing), Err(FrontmatterError::Missing));

        assert_eq!(
            read_frontmatter(dir.path()),
            Err(FrontmatterError::NotRegularFile(FileKind::Directory))
        );

        let good = dir.path().join("good.md");
        std::fs::write(&good, "---\nresult: PASS\n---\n").expect("write");
        assert_eq!(
            read_frontmatter(&good).expect("ok").get_str("result"),
            Some("PASS")
        );

        let empty = dir.path().join("empty.md");
        std::fs::write(&empty, "").expect("write");
        assert_eq!(read_frontmatter(&empty), Err(FrontmatterError::Empty));

        let binary = dir.path().join("binary.md");
        std::fs::write(&binary, b"---\nresult: \xff\xfe\n---\n").expect("write");
        assert_eq!(read_frontmatter(&binary), Err(FrontmatterError::NotUtf8));

        let huge = dir.path().join("huge.md");
        let mut text = String::from("---\nresult: PASS\n---\n");
        text.push_str(&"x".repeat(2 * 1024 * 1024));
        std::fs::write(&huge, text).expect("write");
        assert!(matches!(
            read_frontmatter(&huge),
            Err(FrontmatterError::TooLarge { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn frontmatter_symlink_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target.md");
        std::fs::write(&target, "---\nresult: PASS\n---\n").expect("write");
        let link = dir.path().join("link.md");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(
            read_frontmatter(&link),
            Err(FrontmatterError::NotRegularFile(FileKind::Symlink))
        );
        let dangling = dir.path().join("dangling.md");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
        assert_eq!(
            read_frontmatter(&dangling),
            Err(FrontmatterError::NotRegularFile(FileKind::Symlink))
        );
    }

    #[test]
    fn yaml_document_is_read_as_a_mapping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = dir.path().join("plan.yaml");
        std::fs::write(&plan, "\u{feff}tests:\r\n  - id: TC-01\r\n").expect("write");
        let fields = read_yaml_mapping(&plan).expect("ok");
        assert_eq!(fields.get_list("tests").map(<[Value]>::len), Some(1));
        std::fs::write(&plan, "- id: TC-01\n").expect("write");
        assert_eq!(
            read_yaml_mapping(&plan),
            Err(FrontmatterError::NotAMapping {
                what: YamlSource::Document,
                found: "a list"
            })
        );
        std::fs::write(&plan, "tests: [\n").expect("write");
        let err = read_yaml_mapping(&plan).expect_err("invalid");
        assert!(
            err.to_string().starts_with("invalid YAML in YAML document"),
            "{err}"
        );
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn error_messages_are_one_line() {
        let errors = [
            FrontmatterError::Missing,
            FrontmatterError::NotRegularFile(FileKind::Symlink),
            FrontmatterError::TooLarge { size: 2, limit: 1 },
            FrontmatterError::NoFrontmatter,
            FrontmatterError::Unclosed,
            FrontmatterError::Io("a\nb".replace('\n', " ")),
        ];
        for e in errors {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
