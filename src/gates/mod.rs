//! The quality gates that decide whether a task may leave its stage
//! (docs/pipeline.md): the seeds' twelve gate names, the three-way [`Verdict`],
//! and the gates that only read artifacts in `docs/work-items/<id>/`.
//!
//! Gates exist so that an agent's claim of "done" is checked against what it
//! actually wrote. They read only YAML frontmatter (or a YAML file), never
//! body prose, so a sentence like "verdict: APPROVED" in a review's body can
//! never pass a gate. The five gates that need the tracker, the forge or a
//! command runner (`check_analysis_approved`, `check_ci_green`,
//! `check_tests_local`, `check_branch_mergeable`, `check_staging_image_fresh`)
//! are only names here; the pipeline implements them.

mod checks;
pub mod frontmatter;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use checks::{
    Findings, check_analysis_complete, check_architecture_done, check_deploy_status,
    check_review_approved, check_reviewer_verdict, check_staging_status, check_tests_passed,
    findings,
};

/// A quality gate, by its name in the seeds (`QG_CHECKS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gate {
    /// A human moved the tracker issue to "Approved" (pipeline-implemented).
    AnalysisApproved,
    /// The analyst's four artifacts are present and well-formed.
    AnalysisComplete,
    /// At least one proposed or accepted ADR exists in `06-adr/`.
    ArchitectureDone,
    /// The forge's commit status is green (pipeline-implemented).
    CiGreen,
    /// `12-review.md` says `verdict: APPROVED`.
    ReviewApproved,
    /// `13-test-report.md` says `result: PASS`.
    TestsPassed,
    /// `12-review.md` is a review (`type: review`) that says `verdict: APPROVED`.
    ReviewerVerdict,
    /// The repository's test command passes locally (pipeline-implemented).
    TestsLocal,
    /// `14-deploy-log.md` says `deploy_status: SUCCESS`.
    DeployStatus,
    /// `15-staging-log.md` says `staging_status: SUCCESS`.
    StagingStatus,
    /// The feature branch merges cleanly under the merge lease (pipeline-implemented).
    BranchMergeable,
    /// The staging image was built from the branch head (pipeline-implemented).
    StagingImageFresh,
}

impl Gate {
    /// Every gate, in the seeds' order (TC-19: this registry is frozen).
    pub const ALL: [Gate; 12] = [
        Gate::AnalysisApproved,
        Gate::AnalysisComplete,
        Gate::ArchitectureDone,
        Gate::CiGreen,
        Gate::ReviewApproved,
        Gate::TestsPassed,
        Gate::ReviewerVerdict,
        Gate::TestsLocal,
        Gate::DeployStatus,
        Gate::StagingStatus,
        Gate::BranchMergeable,
        Gate::StagingImageFresh,
    ];

    /// The gate's name as in the seeds, stored and printed.
    pub fn name(self) -> &'static str {
        match self {
            Gate::AnalysisApproved => "check_analysis_approved",
            Gate::AnalysisComplete => "check_analysis_complete",
            Gate::ArchitectureDone => "check_architecture_done",
            Gate::CiGreen => "check_ci_green",
            Gate::ReviewApproved => "check_review_approved",
            Gate::TestsPassed => "check_tests_passed",
            Gate::ReviewerVerdict => "check_reviewer_verdict",
            Gate::TestsLocal => "check_tests_local",
            Gate::DeployStatus => "check_deploy_status",
            Gate::StagingStatus => "check_staging_status",
            Gate::BranchMergeable => "check_branch_mergeable",
            Gate::StagingImageFresh => "check_staging_image_fresh",
        }
    }

    /// The gate with this exact name, if any.
    pub fn from_name(name: &str) -> Option<Gate> {
        Gate::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The check of a gate that reads only the artifact directory, or `None`
    /// for the five gates the pipeline implements.
    pub fn artifact_check(self) -> Option<fn(&Path) -> GateResult> {
        match self {
            Gate::AnalysisComplete => Some(check_analysis_complete),
            Gate::ArchitectureDone => Some(check_architecture_done),
            Gate::ReviewApproved => Some(check_review_approved),
            Gate::ReviewerVerdict => Some(check_reviewer_verdict),
            Gate::TestsPassed => Some(check_tests_passed),
            Gate::DeployStatus => Some(check_deploy_status),
            Gate::StagingStatus => Some(check_staging_status),
            Gate::AnalysisApproved
            | Gate::CiGreen
            | Gate::TestsLocal
            | Gate::BranchMergeable
            | Gate::StagingImageFresh => None,
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Gate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Gate::from_name(s).ok_or_else(|| format!("unknown quality gate {s:?}"))
    }
}

impl serde::Serialize for Gate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// What a gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The task may leave its stage.
    Pass,
    /// The artifact is missing, malformed or incomplete: retry the agent.
    Fail,
    /// The artifact explicitly says no (`REQUEST_CHANGES`, `FAIL`, `FAILED`):
    /// the task goes back (usually to development).
    Reject,
}

impl Verdict {
    /// The verdict's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Reject => "reject",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one gate: the verdict and a reason a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateResult {
    /// The gate that decided.
    pub gate: Gate,
    /// What it decided.
    pub verdict: Verdict,
    /// Why, on one line, naming the file and the value found.
    pub reason: String,
}

impl GateResult {
    /// A result with any verdict.
    pub fn new(gate: Gate, verdict: Verdict, reason: impl Into<String>) -> Self {
        GateResult {
            gate,
            verdict,
            reason: reason.into(),
        }
    }

    /// The gate passed.
    pub fn pass(gate: Gate, reason: impl Into<String>) -> Self {
        GateResult::new(gate, Verdict::Pass, reason)
    }

    /// The artifact is missing, malformed or incomplete.
    pub fn fail(gate: Gate, reason: impl Into<String>) -> Self {
        GateResult::new(gate, Verdict::Fail, reason)
    }

    /// The artifact explicitly says no.
    pub fn reject(gate: Gate, reason: impl Into<String>) -> Self {
        GateResult::new(gate, Verdict::Reject, reason)
    }

    /// Whether the task may leave its stage.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }
}

impl fmt::Display for GateResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.gate, self.verdict, self.reason)
    }
}

/// Where a work item's artifacts live: `<worktree>/docs/work-items/<work_item_id>`.
///
/// This only joins paths; [`resolve_artifact_dir`] also checks them.
pub fn artifact_dir(worktree: &Path, work_item_id: &str) -> PathBuf {
    worktree.join("docs").join("work-items").join(work_item_id)
}

/// The artifact directory of a work item, after checking that the id is a
/// valid name, that neither `docs`, `docs/work-items` nor the directory is a
/// symlink, that the directory exists, and that it resolves inside the
/// worktree. The error is a one-line reason for a `Fail` verdict.
pub fn resolve_artifact_dir(worktree: &Path, work_item_id: &str) -> Result<PathBuf, String> {
    crate::names::validate_work_item_id(work_item_id).map_err(|e| e.to_string())?;
    let dir = artifact_dir(worktree, work_item_id);
    let mut path = worktree.to_path_buf();
    let mut shown = String::new();
    for part in ["docs", "work-items", work_item_id] {
        path.push(part);
        if !shown.is_empty() {
            shown.push('/');
        }
        shown.push_str(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{shown} is a symlink; refusing to follow it"));
            }
            Ok(meta) if !meta.is_dir() => return Err(format!("{shown} is not a directory")),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!("{shown} is missing (no artifacts were written)"));
            }
            Err(e) => return Err(format!("{shown} cannot be read: {e}")),
        }
    }
    let root = std::fs::canonicalize(worktree)
        .map_err(|e| format!("worktree {} cannot be resolved: {e}", worktree.display()))?;
    let real =
        std::fs::canonicalize(&dir).map_err(|e| format!("{shown} cannot be resolved: {e}"))?;
    if !real.starts_with(&root) {
        return Err(format!("{shown} resolves outside the worktree"));
    }
    Ok(dir)
}

/// Runs an artifact-only gate for a work item in a worktree, or returns
/// `None` for the gates the pipeline implements. A bad artifact directory is
/// a `Fail`.
pub fn check_artifacts(gate: Gate, worktree: &Path, work_item_id: &str) -> Option<GateResult> {
    let check = gate.artifact_check()?;
    Some(match resolve_artifact_dir(worktree, work_item_id) {
        Ok(dir) => check(&dir),
        Err(reason) => GateResult::fail(gate, reason),
    })
}

/// How an artifact is named in reasons: from `docs/work-items/` on when the
/// path has that shape (`docs/work-items/DEMO-1/01-brd.md`), else in full.
fn long_label(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let start = parts
        .windows(2)
        .rposition(|w| matches!(w, [a, b] if a == "docs" && b == "work-items"));
    match start {
        Some(i) => parts.get(i..).unwrap_or_default().join("/"),
        None => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc19_qg_checks_registry_unchanged() {
        let names: Vec<&str> = Gate::ALL.iter().map(|g| g.name()).collect();
        assert_eq!(
            names,
            [
                "check_analysis_approved",
                "check_analysis_complete",
                "check_architecture_done",
                "check_ci_green",
                "check_review_approved",
                "check_tests_passed",
                "check_reviewer_verdict",
                "check_tests_local",
                "check_deploy_status",
                "check_staging_status",
                "check_branch_mergeable",
                "check_staging_image_fresh",
            ]
        );
    }

    #[test]
    fn gate_names_round_trip() {
        for gate in Gate::ALL {
            assert_eq!(gate.name().parse::<Gate>(), Ok(gate));
            assert_eq!(Gate::from_name(&gate.to_string()), Some(gate));
            assert_eq!(
                serde_json::to_string(&gate).expect("serializes"),
                format!("\"{}\"", gate.name())
            );
        }
        assert!("analysis_complete".parse::<Gate>().is_err());
        assert!("CHECK_CI_GREEN".parse::<Gate>().is_err());
    }

    #[test]
    fn only_the_seven_artifact_gates_have_checks_here() {
        let with: Vec<Gate> = Gate::ALL
            .into_iter()
            .filter(|g| g.artifact_check().is_some())
            .collect();
        assert_eq!(
            with,
            [
                Gate::AnalysisComplete,
                Gate::ArchitectureDone,
                Gate::ReviewApproved,
                Gate::TestsPassed,
                Gate::ReviewerVerdict,
                Gate::DeployStatus,
                Gate::StagingStatus,
            ]
        );
    }

    #[test]
    fn verdicts_and_results_serialize() {
        let result = GateResult::reject(Gate::ReviewApproved, "12-review.md: no");
        assert!(!result.passed());
        assert_eq!(
            serde_json::to_value(&result).expect("serializes"),
            serde_json::json!({
                "gate": "check_review_approved",
                "verdict": "reject",
                "reason": "12-review.md: no"
            })
        );
        assert!(GateResult::pass(Gate::TestsPassed, "ok").passed());
        assert!(!GateResult::fail(Gate::TestsPassed, "x").passed());
        assert_eq!(
            GateResult::fail(Gate::TestsPassed, "x").to_string(),
            "check_tests_passed: fail: x"
        );
    }

    #[test]
    fn artifact_dir_joins_the_conventional_path() {
        assert_eq!(
            artifact_dir(Path::new("/w"), "DEMO-1"),
            PathBuf::from("/w/docs/work-items/DEMO-1")
        );
        assert_eq!(
            long_label(Path::new("/w/docs/work-items/DEMO-1/01-brd.md")),
            "docs/work-items/DEMO-1/01-brd.md"
        );
        assert_eq!(
            long_label(Path::new("/w/docs/work-items/DEMO-1")),
            "docs/work-items/DEMO-1"
        );
        assert_eq!(long_label(Path::new("/x/a.md")), "/x/a.md");
    }

    #[test]
    fn artifact_dir_is_refused_when_missing_escaping_or_a_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wt = tmp.path().join("wt");
        std::fs::create_dir_all(wt.join("docs/work-items/DEMO-1")).expect("mkdir");

        assert!(resolve_artifact_dir(&wt, "DEMO-1").is_ok());
        let err = resolve_artifact_dir(&wt, "DEMO-2").expect_err("missing");
        assert_eq!(
            err,
            "docs/work-items/DEMO-2 is missing (no artifacts were written)"
        );
        assert!(resolve_artifact_dir(&wt, "../../etc").is_err());
        assert!(resolve_artifact_dir(&wt, "").is_err());

        let result = check_artifacts(Gate::ReviewApproved, &wt, "DEMO-2").expect("artifact gate");
        assert_eq!(result.verdict, Verdict::Fail);
        assert!(check_artifacts(Gate::CiGreen, &wt, "DEMO-1").is_none());

        #[cfg(unix)]
        {
            let outside = tmp.path().join("outside");
            std::fs::create_dir_all(&outside).expect("mkdir");
            std::os::unix::fs::symlink(&outside, wt.join("docs/work-items/EVIL-1"))
                .expect("symlink");
            let err = resolve_artifact_dir(&wt, "EVIL-1").expect_err("symlink");
            assert!(err.contains("symlink"), "{err}");

            let wt2 = tmp.path().join("wt2");
            std::fs::create_dir_all(&wt2).expect("mkdir");
            std::fs::create_dir_all(outside.join("work-items/DEMO-1")).expect("mkdir");
            std::os::unix::fs::symlink(&outside, wt2.join("docs")).expect("symlink");
            let err = resolve_artifact_dir(&wt2, "DEMO-1").expect_err("symlink");
            assert_eq!(err, "docs is a symlink; refusing to follow it");
        }
    }
}
