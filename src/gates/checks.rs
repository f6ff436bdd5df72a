//! The seven gates that read only the artifact directory of a work item.
//!
//! Each check takes the artifact directory (`docs/work-items/<id>/`), reads
//! the frontmatter of one or more files through [`super::frontmatter`], and
//! returns a [`GateResult`] whose reason names the file and the value found.
//! Problems with the files themselves are `Fail` (retry the agent); only an
//! explicit "no" written by the agent (`REQUEST_CHANGES`, `FAIL`, `FAILED`) is
//! `Reject`. Values are trimmed and compared case-sensitively.
//!
//! Each check first collects every problem it finds ([`Findings`]), so a dry
//! run (`orch gates check`) can list them all at once; the verdict and its
//! reason (the first problem) are what the gate has always decided.

use std::io;
use std::path::Path;

use serde_json::Value;

use super::frontmatter::{
    Document, Fields, FrontmatterError, check_regular, kind_of, quote, read_document,
    read_yaml_mapping,
};
use super::{Gate, GateResult, long_label};

/// The most `ADR-*.md` files `check_architecture_done` looks at.
const MAX_ADR_FILES: usize = 200;

/// A status field whose two expected values mean "yes" and "no".
struct StatusField {
    gate: Gate,
    file: &'static str,
    key: &'static str,
    pass: &'static str,
    reject: &'static str,
}

/// What a gate decided, and every problem it found on the way (the
/// decision's reason is the first of them when it fails).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Findings {
    /// The gate's verdict and reason, exactly as when it runs in the pipeline.
    pub result: GateResult,
    /// Every problem found, in order; empty when it passes or rejects.
    pub problems: Vec<String>,
}

impl Findings {
    fn fail(gate: Gate, problems: Vec<String>) -> Findings {
        let first = problems.first().cloned().unwrap_or_default();
        Findings {
            result: GateResult::fail(gate, first),
            problems,
        }
    }

    fn decided(result: GateResult) -> Findings {
        Findings {
            result,
            problems: Vec::new(),
        }
    }
}

/// Every problem an artifact gate finds in `dir`, or `None` for the gates
/// the pipeline implements.
pub fn findings(gate: Gate, dir: &Path) -> Option<Findings> {
    let status_field = |file, key, pass, reject| StatusField {
        gate,
        file,
        key,
        pass,
        reject,
    };
    Some(match gate {
        Gate::AnalysisComplete => analysis_findings(dir),
        Gate::ArchitectureDone => architecture_findings(dir),
        Gate::ReviewApproved => review(gate, dir, false),
        Gate::ReviewerVerdict => review(gate, dir, true),
        Gate::TestsPassed => status(
            &status_field("13-test-report.md", "result", "PASS", "FAIL"),
            dir,
            None,
        ),
        Gate::StagingStatus => status(
            &status_field("15-staging-log.md", "staging_status", "SUCCESS", "FAILED"),
            dir,
            None,
        ),
        Gate::DeployStatus => status(
            &status_field("14-deploy-log.md", "deploy_status", "SUCCESS", "FAILED"),
            dir,
            None,
        ),
        Gate::AnalysisApproved
        | Gate::CiGreen
        | Gate::TestsLocal
        | Gate::BranchMergeable
        | Gate::StagingImageFresh => return None,
    })
}

/// `12-review.md` frontmatter `verdict`: `APPROVED` passes, `REQUEST_CHANGES`
/// rejects (back to development), anything else fails. The reason carries the
/// review's `version` when present.
pub fn check_review_approved(dir: &Path) -> GateResult {
    review(Gate::ReviewApproved, dir, false).result
}

/// Like [`check_review_approved`], but stricter about what the file is: its
/// frontmatter must also say `type: review`, so a stray file that merely has a
/// `verdict` key does not count as a review.
pub fn check_reviewer_verdict(dir: &Path) -> GateResult {
    review(Gate::ReviewerVerdict, dir, true).result
}

/// `13-test-report.md` frontmatter `result`: `PASS` passes, `FAIL` rejects,
/// anything else fails.
pub fn check_tests_passed(dir: &Path) -> GateResult {
    findings(Gate::TestsPassed, dir).map_or_else(
        || GateResult::fail(Gate::TestsPassed, "not an artifact gate"),
        |f| f.result,
    )
}

/// `15-staging-log.md` frontmatter `staging_status`: `SUCCESS` passes,
/// `FAILED` rejects, anything else fails.
pub fn check_staging_status(dir: &Path) -> GateResult {
    findings(Gate::StagingStatus, dir).map_or_else(
        || GateResult::fail(Gate::StagingStatus, "not an artifact gate"),
        |f| f.result,
    )
}

/// `14-deploy-log.md` frontmatter `deploy_status`: `SUCCESS` passes,
/// `FAILED` rejects, anything else fails.
pub fn check_deploy_status(dir: &Path) -> GateResult {
    findings(Gate::DeployStatus, dir).map_or_else(
        || GateResult::fail(Gate::DeployStatus, "not an artifact gate"),
        |f| f.result,
    )
}

/// The analyst's artifacts: `01-brd.md`, `02-trz.md` and
/// `03-acceptance-criteria.md` are regular files with frontmatter saying
/// `type: brd`, `trz` and `acceptance-criteria`, and some text after it;
/// `04-test-plan.yaml` is a mapping whose `tests` is a non-empty list of
/// mappings, each with an `id`. The first problem found is the reason.
pub fn check_analysis_complete(dir: &Path) -> GateResult {
    analysis_findings(dir).result
}

fn analysis_findings(dir: &Path) -> Findings {
    let gate = Gate::AnalysisComplete;
    if let Err(reason) = check_dir(dir) {
        return Findings::fail(gate, vec![reason]);
    }
    let mut problems = Vec::new();
    for (file, kind) in [
        ("01-brd.md", "brd"),
        ("02-trz.md", "trz"),
        ("03-acceptance-criteria.md", "acceptance-criteria"),
    ] {
        let doc = match read(dir, file) {
            Ok(doc) => doc,
            Err(reason) => {
                problems.push(reason);
                continue;
            }
        };
        if let Err(problem) = expect_type(&doc.frontmatter, kind) {
            problems.push(format!("{file}: {problem}"));
        }
        if doc.body.trim().is_empty() {
            problems.push(format!("{file}: no text after the frontmatter"));
        }
    }
    let plan = "04-test-plan.yaml";
    let tests = match read_yaml_mapping(&dir.join(plan)) {
        Ok(fields) => {
            let (tests, found) = test_plan_problems(&fields);
            problems.extend(found.into_iter().map(|p| format!("{plan}: {p}")));
            tests
        }
        Err(err) => {
            problems.push(describe(dir, plan, &err));
            0
        }
    };
    if !problems.is_empty() {
        return Findings::fail(gate, problems);
    }
    Findings::decided(GateResult::pass(
        gate,
        format!(
            "01-brd.md, 02-trz.md, 03-acceptance-criteria.md and {plan} ({tests} test{}) are complete",
            if tests == 1 { "" } else { "s" }
        ),
    ))
}

/// At least one `06-adr/ADR-*.md` regular file has frontmatter with
/// `type: adr` and `status` `proposed` or `accepted`.
pub fn check_architecture_done(dir: &Path) -> GateResult {
    architecture_findings(dir).result
}

/// The `ADR-*.md` names in `adr_dir`, sorted, or why it cannot be read.
fn adr_names(adr_dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(adr_dir)
        .map_err(|e| format!("{} cannot be read: {e}", long_label(adr_dir)))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            // Case-sensitive on purpose, like every other name the gates read.
            // Names with control characters are ignored: they would break the one-line reason.
            name.starts_with("ADR-")
                && Path::new(name).extension().is_some_and(|ext| ext == "md")
                && !name.chars().any(char::is_control)
        })
        .take(MAX_ADR_FILES)
        .collect();
    names.sort();
    Ok(names)
}

fn architecture_findings(dir: &Path) -> Findings {
    let gate = Gate::ArchitectureDone;
    let adr_dir = dir.join("06-adr");
    let names = match check_dir(dir)
        .and_then(|()| check_dir(&adr_dir))
        .and_then(|()| adr_names(&adr_dir))
    {
        Ok(names) => names,
        Err(reason) => return Findings::fail(gate, vec![reason]),
    };
    if names.is_empty() {
        return Findings::fail(gate, vec!["06-adr/ holds no ADR-*.md file".to_owned()]);
    }
    let mut problems = Vec::new();
    for name in &names {
        let rel = format!("06-adr/{name}");
        match read(dir, &rel) {
            Ok(doc) => match adr_problems(&doc.frontmatter) {
                Ok(status) => {
                    return Findings::decided(GateResult::pass(
                        gate,
                        format!("{rel}: type adr, status {status}"),
                    ));
                }
                Err(found) => problems.extend(found.into_iter().map(|p| format!("{rel}: {p}"))),
            },
            Err(reason) => problems.push(reason),
        }
    }
    let first = problems.first().cloned().unwrap_or_default();
    let reason = if names.len() > 1 {
        format!("{first} (none of the {} ADR files qualifies)", names.len())
    } else {
        first
    };
    Findings {
        result: GateResult::fail(gate, reason),
        problems,
    }
}

fn review(gate: Gate, dir: &Path, require_type: bool) -> Findings {
    let field = StatusField {
        gate,
        file: "12-review.md",
        key: "verdict",
        pass: "APPROVED",
        reject: "REQUEST_CHANGES",
    };
    status(&field, dir, require_type.then_some("review"))
}

/// " (review v3)" when the review has a usable `version`.
fn review_version(fields: &Fields) -> String {
    let version = match fields.get("version") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            let s = s.trim();
            let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
            s.chars().filter(|c| !c.is_control()).take(20).collect()
        }
        _ => return String::new(),
    };
    format!(" (review v{version})")
}

/// Reads `field.key` from `field.file`'s frontmatter and maps it to a
/// verdict; with `kind`, the frontmatter must also say `type: <kind>`.
fn status(field: &StatusField, dir: &Path, kind: Option<&str>) -> Findings {
    let StatusField {
        gate,
        file,
        key,
        pass,
        reject,
    } = *field;
    let doc = match check_dir(dir).and_then(|()| read(dir, file)) {
        Ok(doc) => doc,
        Err(reason) => return Findings::fail(gate, vec![reason]),
    };
    let fields = &doc.frontmatter;
    let mut problems = Vec::new();
    if let Some(kind) = kind
        && let Err(problem) = expect_type(fields, kind)
    {
        problems.push(format!("{file}: {problem}"));
    }
    let extra = if file == "12-review.md" {
        review_version(fields)
    } else {
        String::new()
    };
    let decided = match fields.get(key) {
        None => Err(format!(
            "{file}: no '{key}' in the frontmatter (expected {pass} or {reject}){extra}"
        )),
        Some(Value::String(s)) if s.trim() == pass => Ok(GateResult::pass(
            gate,
            format!("{file}: {key} is {pass}{extra}"),
        )),
        Some(Value::String(s)) if s.trim() == reject => Ok(GateResult::reject(
            gate,
            format!("{file}: {key} is {reject}{extra}"),
        )),
        Some(value) => Err(format!(
            "{file}: {key} must be {pass} or {reject}, found {}{extra}",
            found(value)
        )),
    };
    match decided {
        Ok(result) if problems.is_empty() => Findings::decided(result),
        Ok(_) => Findings::fail(gate, problems),
        Err(problem) => {
            problems.push(problem);
            Findings::fail(gate, problems)
        }
    }
}

/// `type` must be exactly `kind`.
fn expect_type(fields: &Fields, kind: &str) -> Result<(), String> {
    match fields.get("type") {
        None => Err(format!("no 'type' in the frontmatter (expected {kind})")),
        Some(Value::String(s)) if s.trim() == kind => Ok(()),
        Some(value) => Err(format!("type must be {kind}, found {}", found(value))),
    }
}

/// An ADR's (qualifying) status, or every problem of its frontmatter.
fn adr_problems(fields: &Fields) -> Result<&'static str, Vec<String>> {
    let mut problems = Vec::new();
    if let Err(problem) = expect_type(fields, "adr") {
        problems.push(problem);
    }
    let status = match fields.get("status") {
        None => {
            problems.push("no 'status' in the frontmatter (expected proposed or accepted)".into());
            ""
        }
        Some(Value::String(s)) if s.trim() == "proposed" => "proposed",
        Some(Value::String(s)) if s.trim() == "accepted" => "accepted",
        Some(value) => {
            problems.push(format!(
                "status must be proposed or accepted, found {}",
                found(value)
            ));
            ""
        }
    };
    if problems.is_empty() {
        Ok(status)
    } else {
        Err(problems)
    }
}

/// The number of tests in a test plan, and every problem of it.
fn test_plan_problems(fields: &Fields) -> (usize, Vec<String>) {
    let tests = match fields.get("tests") {
        None => return (0, vec!["no 'tests' list".to_owned()]),
        Some(Value::Null) => return (0, vec!["'tests' is empty".to_owned()]),
        Some(Value::Array(tests)) => tests,
        Some(other) => {
            return (
                0,
                vec![format!("'tests' must be a list, found {}", kind_of(other))],
            );
        }
    };
    if tests.is_empty() {
        return (0, vec!["'tests' is an empty list".to_owned()]);
    }
    let problems = tests
        .iter()
        .enumerate()
        .filter_map(|(i, test)| {
            let Value::Object(test) = test else {
                return Some(format!(
                    "tests[{i}] is {}, not a mapping with an 'id'",
                    kind_of(test)
                ));
            };
            match test.get("id") {
                Some(Value::String(id)) if !id.trim().is_empty() => None,
                Some(Value::Number(_)) => None,
                Some(other) => Some(format!("tests[{i}] has an unusable id {}", found(other))),
                None => Some(format!("tests[{i}] has no 'id'")),
            }
        })
        .collect();
    (tests.len(), problems)
}

/// A value as quoted back in a reason.
fn found(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        other => quote(other),
    }
}

/// Reads `dir/rel` as a Markdown artifact; the error is a reason.
fn read(dir: &Path, rel: &str) -> Result<Document, String> {
    read_document(&dir.join(rel)).map_err(|err| describe(dir, rel, &err))
}

/// A frontmatter error as a reason naming the file: the full work-item path
/// when the file is not there at all, the short name otherwise.
fn describe(dir: &Path, rel: &str, err: &FrontmatterError) -> String {
    match err {
        FrontmatterError::Missing => format!("{} is missing", long_label(&dir.join(rel))),
        FrontmatterError::NotRegularFile(kind) => {
            format!(
                "{} is {kind}, not a regular file",
                long_label(&dir.join(rel))
            )
        }
        other => format!("{rel}: {other}"),
    }
}

/// The reason `dir` is not a real directory, if it is not.
fn check_dir(dir: &Path) -> Result<(), String> {
    let label = || long_label(dir);
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            Err(format!("{} is a symlink; refusing to follow it", label()))
        }
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => match check_regular(&meta) {
            Err(FrontmatterError::NotRegularFile(kind)) => {
                Err(format!("{} is {kind}, not a directory", label()))
            }
            _ => Err(format!("{} is a file, not a directory", label())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "{} is missing (no artifacts were written)",
            label()
        )),
        Err(e) => Err(format!("{} cannot be read: {e}", label())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::Verdict;
    use crate::gates::frontmatter::tests::alias_bomb;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    type Check = fn(&Path) -> GateResult;

    /// A worktree with an empty `docs/work-items/DEMO-1/`.
    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("wt/docs/work-items/DEMO-1");
            std::fs::create_dir_all(&dir).expect("mkdir");
            Fixture { _tmp: tmp, dir }
        }

        fn write(&self, rel: &str, text: impl AsRef<[u8]>) -> &Self {
            let path = self.dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(path, text).expect("write");
            self
        }

        fn analysis(&self) -> &Self {
            self.write("01-brd.md", "---\ntype: brd\n---\n# BRD\n")
                .write("02-trz.md", "---\ntype: trz\n---\n# TRZ\n")
                .write(
                    "03-acceptance-criteria.md",
                    "---\ntype: acceptance-criteria\n---\nAC-1: PASS when …\n",
                )
                .write(
                    "04-test-plan.yaml",
                    "work_item: DEMO-1\ntests:\n  - id: TC-01\n    type: unit\n  - id: TC-02\n",
                )
        }
    }

    fn assert_result(result: &GateResult, verdict: Verdict, reason: &str) {
        assert_eq!(
            (result.verdict, result.reason.as_str()),
            (verdict, reason),
            "{result}"
        );
    }

    #[test]
    fn findings_list_every_problem_at_once() {
        let fx = Fixture::new();
        fx.write("01-brd.md", "# no frontmatter\n")
            .write("02-trz.md", "---\ntype: brd\n---\n")
            .write("04-test-plan.yaml", "tests:\n  - TC-01\n  - type: unit\n");
        let f = findings(Gate::AnalysisComplete, &fx.dir).expect("artifact gate");
        assert_eq!(f.result.verdict, Verdict::Fail);
        assert_eq!(
            f.problems,
            [
                "01-brd.md: no frontmatter (the file must start with a '---' line)",
                "02-trz.md: type must be trz, found \"brd\"",
                "02-trz.md: no text after the frontmatter",
                "docs/work-items/DEMO-1/03-acceptance-criteria.md is missing",
                "04-test-plan.yaml: tests[0] is a string, not a mapping with an 'id'",
                "04-test-plan.yaml: tests[1] has no 'id'",
            ]
        );
        assert_eq!(
            f.result.reason, f.problems[0],
            "the verdict's reason is unchanged"
        );
        fx.write("06-adr/ADR-001.md", "---\ntype: note\nstatus: draft\n---\n");
        let f = findings(Gate::ArchitectureDone, &fx.dir).expect("artifact gate");
        assert_eq!(
            f.problems,
            [
                "06-adr/ADR-001.md: type must be adr, found \"note\"",
                "06-adr/ADR-001.md: status must be proposed or accepted, found \"draft\"",
            ]
        );
        fx.write("12-review.md", "---\ntype: note\nverdict: maybe\n---\n");
        let f = findings(Gate::ReviewerVerdict, &fx.dir).expect("artifact gate");
        assert_eq!(
            f.problems,
            [
                "12-review.md: type must be review, found \"note\"",
                "12-review.md: verdict must be APPROVED or REQUEST_CHANGES, found \"maybe\"",
            ]
        );
        // A "no" is a decision, not a problem.
        fx.write("13-test-report.md", "---\nresult: FAIL\n---\n");
        let f = findings(Gate::TestsPassed, &fx.dir).expect("artifact gate");
        assert_eq!((f.result.verdict, f.problems.len()), (Verdict::Reject, 0));
        assert!(findings(Gate::CiGreen, &fx.dir).is_none());
    }

    // ---- review ----

    #[test]
    fn review_approved_passes() {
        let fx = Fixture::new();
        fx.write(
            "12-review.md",
            "---\ntype: review\nwork_item_id: DEMO-1\nverdict: APPROVED\nversion: 3\n---\n## P2\n",
        );
        assert_result(
            &check_review_approved(&fx.dir),
            Verdict::Pass,
            "12-review.md: verdict is APPROVED (review v3)",
        );
        assert_result(
            &check_reviewer_verdict(&fx.dir),
            Verdict::Pass,
            "12-review.md: verdict is APPROVED (review v3)",
        );
        assert_eq!(check_reviewer_verdict(&fx.dir).gate, Gate::ReviewerVerdict);
    }

    #[test]
    fn review_request_changes_rejects() {
        let fx = Fixture::new();
        fx.write(
            "12-review.md",
            "---\ntype: review\nverdict: REQUEST_CHANGES\nversion: \"2\"\n---\n",
        );
        assert_result(
            &check_review_approved(&fx.dir),
            Verdict::Reject,
            "12-review.md: verdict is REQUEST_CHANGES (review v2)",
        );
        assert_eq!(check_reviewer_verdict(&fx.dir).verdict, Verdict::Reject);
    }

    #[test]
    fn review_lowercase_verdict_fails_and_says_so() {
        let fx = Fixture::new();
        fx.write(
            "12-review.md",
            "---\ntype: review\nverdict: approved\nversion: 3\n---\n",
        );
        assert_result(
            &check_review_approved(&fx.dir),
            Verdict::Fail,
            "12-review.md: verdict must be APPROVED or REQUEST_CHANGES, found \"approved\" (review v3)",
        );
    }

    #[test]
    fn review_odd_verdict_values_fail() {
        let fx = Fixture::new();
        for (value, found) in [
            ("", "nothing"),
            ("3", "3"),
            ("true", "true"),
            ("[APPROVED]", "[\"APPROVED\"]"),
            ("{a: APPROVED}", "{\"a\":\"APPROVED\"}"),
            ("APPROVED_WITH_NITS", "\"APPROVED_WITH_NITS\""),
            ("\"'APPROVED'\"", "\"'APPROVED'\""),
        ] {
            fx.write("12-review.md", format!("---\nverdict: {value}\n---\n"));
            assert_result(
                &check_review_approved(&fx.dir),
                Verdict::Fail,
                &format!(
                    "12-review.md: verdict must be APPROVED or REQUEST_CHANGES, found {found}"
                ),
            );
        }
    }

    #[test]
    fn review_values_with_spaces_and_quotes_pass() {
        let fx = Fixture::new();
        for value in [
            "\"APPROVED\"",
            "'APPROVED'",
            "\"  APPROVED \"",
            "APPROVED   # ok",
            "  APPROVED",
        ] {
            fx.write("12-review.md", format!("---\nverdict: {value}\n---\n"));
            assert_result(
                &check_review_approved(&fx.dir),
                Verdict::Pass,
                "12-review.md: verdict is APPROVED",
            );
        }
    }

    #[test]
    fn review_missing_verdict_fails() {
        let fx = Fixture::new();
        fx.write(
            "12-review.md",
            "---\ntype: review\nversion: 1\n---\nverdict: APPROVED\n",
        );
        assert_result(
            &check_review_approved(&fx.dir),
            Verdict::Fail,
            "12-review.md: no 'verdict' in the frontmatter (expected APPROVED or REQUEST_CHANGES) (review v1)",
        );
    }

    #[test]
    fn review_body_only_verdict_does_not_pass() {
        let fx = Fixture::new();
        fx.write(
            "12-review.md",
            "# Review\n\nverdict: APPROVED\n---\nverdict: APPROVED\n---\n",
        );
        assert_result(
            &check_review_approved(&fx.dir),
            Verdict::Fail,
            "12-review.md: no frontmatter (the file must start with a '---' line)",
        );
    }

    #[test]
    fn review_missing_file_fails_with_its_path() {
        let fx = Fixture::new();
        assert_result(
            &check_review_approved(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/12-review.md is missing",
        );
    }

    #[test]
    fn reviewer_verdict_requires_type_review() {
        let fx = Fixture::new();
        fx.write("12-review.md", "---\nverdict: APPROVED\n---\n");
        assert_eq!(check_review_approved(&fx.dir).verdict, Verdict::Pass);
        assert_result(
            &check_reviewer_verdict(&fx.dir),
            Verdict::Fail,
            "12-review.md: no 'type' in the frontmatter (expected review)",
        );
        fx.write(
            "12-review.md",
            "---\ntype: test-report\nverdict: APPROVED\n---\n",
        );
        assert_result(
            &check_reviewer_verdict(&fx.dir),
            Verdict::Fail,
            "12-review.md: type must be review, found \"test-report\"",
        );
    }

    #[test]
    fn review_crlf_and_bom_pass() {
        let fx = Fixture::new();
        fx.write(
            "12-review.md",
            "\u{feff}---\r\ntype: review\r\nverdict: APPROVED\r\n---\r\nbody\r\n",
        );
        assert_eq!(check_reviewer_verdict(&fx.dir).verdict, Verdict::Pass);
    }

    // ---- tests, staging, deploy ----

    #[test]
    fn tests_passed_verdicts() {
        let fx = Fixture::new();
        let file = "13-test-report.md";
        fx.write(
            file,
            "---\ntype: test-report\nwork_item_id: DEMO-1\nresult: PASS\n---\n",
        );
        assert_result(
            &check_tests_passed(&fx.dir),
            Verdict::Pass,
            "13-test-report.md: result is PASS",
        );
        fx.write(file, "---\nresult: FAIL\n---\n");
        assert_result(
            &check_tests_passed(&fx.dir),
            Verdict::Reject,
            "13-test-report.md: result is FAIL",
        );
        fx.write(file, "---\nresult: pass\n---\n");
        assert_result(
            &check_tests_passed(&fx.dir),
            Verdict::Fail,
            "13-test-report.md: result must be PASS or FAIL, found \"pass\"",
        );
        fx.write(file, "---\ntype: test-report\n---\nresult: PASS\n");
        assert_result(
            &check_tests_passed(&fx.dir),
            Verdict::Fail,
            "13-test-report.md: no 'result' in the frontmatter (expected PASS or FAIL)",
        );
    }

    #[test]
    fn staging_status_verdicts() {
        let fx = Fixture::new();
        let file = "15-staging-log.md";
        fx.write(
            file,
            "---\nstaging_status: SUCCESS\ntimestamp: 2026-01-01T00:00:00Z\nbase_url: http://localhost:8501\n---\n",
        );
        assert_result(
            &check_staging_status(&fx.dir),
            Verdict::Pass,
            "15-staging-log.md: staging_status is SUCCESS",
        );
        fx.write(file, "---\nstaging_status: FAILED\n---\n");
        assert_result(
            &check_staging_status(&fx.dir),
            Verdict::Reject,
            "15-staging-log.md: staging_status is FAILED",
        );
        fx.write(file, "---\nstaging_status: FAIL\n---\n");
        assert_result(
            &check_staging_status(&fx.dir),
            Verdict::Fail,
            "15-staging-log.md: staging_status must be SUCCESS or FAILED, found \"FAIL\"",
        );
    }

    #[test]
    fn deploy_status_verdicts() {
        let fx = Fixture::new();
        let file = "14-deploy-log.md";
        fx.write(
            file,
            "---\ndeploy_status: SUCCESS\nwork_item: DEMO-1\nhook_exit_code: 0\ndeployed_by: deploy-finalizer\n---\n",
        );
        assert_result(
            &check_deploy_status(&fx.dir),
            Verdict::Pass,
            "14-deploy-log.md: deploy_status is SUCCESS",
        );
        fx.write(file, "---\ndeploy_status: FAILED\n---\n");
        assert_result(
            &check_deploy_status(&fx.dir),
            Verdict::Reject,
            "14-deploy-log.md: deploy_status is FAILED",
        );
        fx.write(file, "---\ndeploy_status: success\n---\n");
        assert_result(
            &check_deploy_status(&fx.dir),
            Verdict::Fail,
            "14-deploy-log.md: deploy_status must be SUCCESS or FAILED, found \"success\"",
        );
        std::fs::remove_file(fx.dir.join(file)).expect("rm");
        assert_result(
            &check_deploy_status(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/14-deploy-log.md is missing",
        );
    }

    /// Every hostile file makes every status gate `Fail`, quickly, with a
    /// reason naming the file.
    #[test]
    fn hostile_artifacts_fail_every_status_gate() {
        let mut huge = String::from("---\nverdict: APPROVED\nresult: PASS\n---\n");
        huge.push_str(&"x".repeat(2 * 1024 * 1024));
        let hostile: Vec<(&str, String, &str)> = vec![
            ("empty", String::new(), "file is empty"),
            (
                "no frontmatter",
                "verdict: APPROVED\nresult: PASS\n".to_owned(),
                "no frontmatter",
            ),
            (
                "unclosed",
                "---\nverdict: APPROVED\nresult: PASS\n".to_owned(),
                "not closed",
            ),
            (
                "invalid",
                "---\nverdict: [APPROVED\n---\n".to_owned(),
                "invalid YAML in frontmatter",
            ),
            (
                "list",
                "---\n- verdict: APPROVED\n---\n".to_owned(),
                "frontmatter is a list",
            ),
            (
                "scalar",
                "---\nAPPROVED\n---\n".to_owned(),
                "frontmatter is a string",
            ),
            ("huge", huge, "file is too large"),
            ("bomb", alias_bomb(), "too large or too deeply nested"),
        ];
        let gates: [(Check, &str); 5] = [
            (check_review_approved, "12-review.md"),
            (check_reviewer_verdict, "12-review.md"),
            (check_tests_passed, "13-test-report.md"),
            (check_staging_status, "15-staging-log.md"),
            (check_deploy_status, "14-deploy-log.md"),
        ];
        let fx = Fixture::new();
        for (what, text, expected) in &hostile {
            for (check, file) in gates {
                fx.write(file, text);
                let start = Instant::now();
                let result = check(&fx.dir);
                assert!(start.elapsed() < Duration::from_secs(5), "{what}: slow");
                assert_eq!(result.verdict, Verdict::Fail, "{what}: {result}");
                assert!(
                    result.reason.starts_with(&format!("{file}: "))
                        && result.reason.contains(expected),
                    "{what}: {result}"
                );
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_artifact_is_refused() {
        let fx = Fixture::new();
        let outside = fx.dir.join("../../../../outside.md");
        std::fs::write(&outside, "---\nverdict: APPROVED\n---\n").expect("write");
        std::os::unix::fs::symlink(&outside, fx.dir.join("12-review.md")).expect("symlink");
        assert_result(
            &check_review_approved(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/12-review.md is a symlink, not a regular file",
        );
    }

    #[test]
    fn directory_artifact_is_refused() {
        let fx = Fixture::new();
        std::fs::create_dir(fx.dir.join("13-test-report.md")).expect("mkdir");
        assert_result(
            &check_tests_passed(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/13-test-report.md is a directory, not a regular file",
        );
    }

    #[test]
    fn missing_artifact_dir_fails() {
        let fx = Fixture::new();
        let gone = fx.dir.with_file_name("DEMO-9");
        for check in [
            check_review_approved,
            check_analysis_complete,
            check_architecture_done,
        ] {
            assert_result(
                &check(&gone),
                Verdict::Fail,
                "docs/work-items/DEMO-9 is missing (no artifacts were written)",
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_artifact_dir_fails() {
        let fx = Fixture::new();
        fx.write("12-review.md", "---\nverdict: APPROVED\n---\n");
        let link = fx.dir.with_file_name("LINK-1");
        std::os::unix::fs::symlink(&fx.dir, &link).expect("symlink");
        assert_result(
            &check_review_approved(&link),
            Verdict::Fail,
            "docs/work-items/LINK-1 is a symlink; refusing to follow it",
        );
    }

    // ---- analysis ----

    #[test]
    fn analysis_complete_passes() {
        let fx = Fixture::new();
        fx.analysis();
        assert_result(
            &check_analysis_complete(&fx.dir),
            Verdict::Pass,
            "01-brd.md, 02-trz.md, 03-acceptance-criteria.md and 04-test-plan.yaml (2 tests) are complete",
        );
    }

    #[test]
    fn analysis_complete_reports_the_first_missing_file() {
        let fx = Fixture::new();
        fx.analysis();
        std::fs::remove_file(fx.dir.join("02-trz.md")).expect("rm");
        std::fs::remove_file(fx.dir.join("04-test-plan.yaml")).expect("rm");
        assert_result(
            &check_analysis_complete(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/02-trz.md is missing",
        );
        fx.write("02-trz.md", "---\ntype: trz\n---\ntext\n");
        assert_result(
            &check_analysis_complete(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/04-test-plan.yaml is missing",
        );
    }

    #[test]
    fn analysis_complete_checks_each_document() {
        let cases: [(&str, &str, &str); 6] = [
            ("01-brd.md", "", "01-brd.md: file is empty"),
            (
                "01-brd.md",
                "# BRD\nprose\n",
                "01-brd.md: no frontmatter (the file must start with a '---' line)",
            ),
            (
                "02-trz.md",
                "---\ntitle: x\n---\ntext\n",
                "02-trz.md: no 'type' in the frontmatter (expected trz)",
            ),
            (
                "02-trz.md",
                "---\ntype: brd\n---\ntext\n",
                "02-trz.md: type must be trz, found \"brd\"",
            ),
            (
                "03-acceptance-criteria.md",
                "---\ntype: acceptance-criteria\n---\n  \n",
                "03-acceptance-criteria.md: no text after the frontmatter",
            ),
            (
                "03-acceptance-criteria.md",
                "---\ntype: [\n---\n",
                "03-acceptance-criteria.md: invalid YAML in frontmatter: unclosed bracket '[' (line 2, column 7)",
            ),
        ];
        for (file, text, reason) in cases {
            let fx = Fixture::new();
            fx.analysis().write(file, text);
            assert_result(&check_analysis_complete(&fx.dir), Verdict::Fail, reason);
        }
    }

    #[test]
    fn analysis_complete_checks_the_test_plan() {
        let cases: [(&str, &str); 9] = [
            ("", "04-test-plan.yaml: file is empty"),
            ("work_item: DEMO-1\n", "04-test-plan.yaml: no 'tests' list"),
            (
                "tests: TC-01\n",
                "04-test-plan.yaml: 'tests' must be a list, found a string",
            ),
            ("tests: []\n", "04-test-plan.yaml: 'tests' is an empty list"),
            ("tests:\n", "04-test-plan.yaml: 'tests' is empty"),
            (
                "tests:\n  - TC-01\n",
                "04-test-plan.yaml: tests[0] is a string, not a mapping with an 'id'",
            ),
            (
                "tests:\n  - id: TC-01\n  - type: unit\n",
                "04-test-plan.yaml: tests[1] has no 'id'",
            ),
            (
                "tests:\n  - id: \"\"\n",
                "04-test-plan.yaml: tests[0] has an unusable id \"\"",
            ),
            (
                "- id: TC-01\n",
                "04-test-plan.yaml: YAML document is a list, not a mapping of keys to values",
            ),
        ];
        for (text, reason) in cases {
            let fx = Fixture::new();
            fx.analysis().write("04-test-plan.yaml", text);
            assert_result(&check_analysis_complete(&fx.dir), Verdict::Fail, reason);
        }
        let fx = Fixture::new();
        fx.analysis().write("04-test-plan.yaml", "tests: [\n");
        let result = check_analysis_complete(&fx.dir);
        assert_eq!(result.verdict, Verdict::Fail);
        assert!(
            result
                .reason
                .starts_with("04-test-plan.yaml: invalid YAML in YAML document"),
            "{result}"
        );
    }

    // ---- architecture ----

    #[test]
    fn architecture_done_passes_with_a_proposed_or_accepted_adr() {
        let fx = Fixture::new();
        fx.write(
            "06-adr/ADR-001-storage.md",
            "---\ntype: adr\nstatus: accepted\n---\n# Context\n",
        );
        assert_result(
            &check_architecture_done(&fx.dir),
            Verdict::Pass,
            "06-adr/ADR-001-storage.md: type adr, status accepted",
        );
        let fx = Fixture::new();
        fx.write(
            "06-adr/ADR-002-x.md",
            "---\ntype: adr\nstatus: ' proposed '\n---\n",
        );
        assert_eq!(check_architecture_done(&fx.dir).verdict, Verdict::Pass);
    }

    #[test]
    fn architecture_done_needs_an_adr() {
        let fx = Fixture::new();
        assert_result(
            &check_architecture_done(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/06-adr is missing (no artifacts were written)",
        );
        fx.write("06-adr/notes.md", "---\ntype: adr\nstatus: accepted\n---\n")
            .write(
                "06-adr/adr-001.md",
                "---\ntype: adr\nstatus: accepted\n---\n",
            )
            .write(
                "06-adr/ADR-001.txt",
                "---\ntype: adr\nstatus: accepted\n---\n",
            );
        assert_result(
            &check_architecture_done(&fx.dir),
            Verdict::Fail,
            "06-adr/ holds no ADR-*.md file",
        );
    }

    #[test]
    fn architecture_done_reports_the_first_bad_adr() {
        let fx = Fixture::new();
        fx.write(
            "06-adr/ADR-001-a.md",
            "---\ntype: adr\nstatus: superseded\n---\n",
        )
        .write(
            "06-adr/ADR-002-b.md",
            "---\ntype: note\nstatus: accepted\n---\n",
        );
        assert_result(
            &check_architecture_done(&fx.dir),
            Verdict::Fail,
            "06-adr/ADR-001-a.md: status must be proposed or accepted, found \"superseded\" (none of the 2 ADR files qualifies)",
        );
        fx.write("06-adr/ADR-003-c.md", "# ADR\nstatus: accepted\n");
        assert_eq!(check_architecture_done(&fx.dir).verdict, Verdict::Fail);
        fx.write(
            "06-adr/ADR-004-d.md",
            "---\ntype: adr\nstatus: Accepted\n---\n",
        );
        assert_eq!(check_architecture_done(&fx.dir).verdict, Verdict::Fail);
        fx.write(
            "06-adr/ADR-005-e.md",
            "---\ntype: adr\nstatus: accepted\n---\n",
        );
        assert_result(
            &check_architecture_done(&fx.dir),
            Verdict::Pass,
            "06-adr/ADR-005-e.md: type adr, status accepted",
        );
    }

    #[cfg(unix)]
    #[test]
    fn architecture_done_refuses_symlinks() {
        let fx = Fixture::new();
        let outside = fx.dir.join("../../../../adr");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(
            outside.join("ADR-001.md"),
            "---\ntype: adr\nstatus: accepted\n---\n",
        )
        .expect("write");
        std::os::unix::fs::symlink(outside.join("ADR-001.md"), fx.dir.join("06-adr/ADR-001.md"))
            .or_else(|_| {
                std::fs::create_dir_all(fx.dir.join("06-adr"))?;
                std::os::unix::fs::symlink(
                    outside.join("ADR-001.md"),
                    fx.dir.join("06-adr/ADR-001.md"),
                )
            })
            .expect("symlink");
        assert_result(
            &check_architecture_done(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/06-adr/ADR-001.md is a symlink, not a regular file",
        );
        std::fs::remove_dir_all(fx.dir.join("06-adr")).expect("rm");
        std::os::unix::fs::symlink(&outside, fx.dir.join("06-adr")).expect("symlink");
        assert_result(
            &check_architecture_done(&fx.dir),
            Verdict::Fail,
            "docs/work-items/DEMO-1/06-adr is a symlink; refusing to follow it",
        );
    }
}
