//! The stages a task moves through and the agent that works on each
//! (docs/pipeline.md). A task sits on the stage its current agent works in.

use std::fmt;
use std::str::FromStr;

/// A task's place in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Known but not started.
    Created,
    /// The analyst writes the BRD, TRZ, acceptance criteria and test plan; a human approves.
    Analysis,
    /// The architect writes ADRs.
    Architecture,
    /// The developer implements; CI must be green.
    Development,
    /// The reviewer approves or requests changes.
    Review,
    /// The tester runs the test plan.
    Testing,
    /// The deployer deploys to staging; the merge gate serialises the merge.
    DeployStaging,
    /// Production deploy (after "Confirm Deploy" for the self-hosting repo).
    Deploy,
    /// Finished.
    Done,
    /// Stopped by STOP; terminal.
    Cancelled,
}

impl Stage {
    /// Every stage of the pipeline proper, in order (the seeds' `STAGE_TRANSITIONS` keys).
    pub const PIPELINE: [Stage; 9] = [
        Stage::Created,
        Stage::Analysis,
        Stage::Architecture,
        Stage::Development,
        Stage::Review,
        Stage::Testing,
        Stage::DeployStaging,
        Stage::Deploy,
        Stage::Done,
    ];

    /// The stage's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Created => "created",
            Stage::Analysis => "analysis",
            Stage::Architecture => "architecture",
            Stage::Development => "development",
            Stage::Review => "review",
            Stage::Testing => "testing",
            Stage::DeployStaging => "deploy-staging",
            Stage::Deploy => "deploy",
            Stage::Done => "done",
            Stage::Cancelled => "cancelled",
        }
    }

    /// The stage after this one, if any.
    pub fn next(self) -> Option<Stage> {
        let i = Stage::PIPELINE.iter().position(|s| *s == self)?;
        Stage::PIPELINE.get(i + 1).copied()
    }

    /// Whether nothing more happens to a task on this stage.
    pub fn is_terminal(self) -> bool {
        matches!(self, Stage::Done | Stage::Cancelled)
    }

    /// The agent that works while a task sits on this stage.
    pub fn agent(self) -> Option<&'static str> {
        match self {
            Stage::Analysis => Some("analyst"),
            Stage::Architecture => Some("architect"),
            Stage::Development => Some("developer"),
            Stage::Review => Some("reviewer"),
            Stage::Testing => Some("tester"),
            Stage::DeployStaging | Stage::Deploy => Some("deployer"),
            Stage::Created | Stage::Done | Stage::Cancelled => None,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::PIPELINE
            .iter()
            .chain(std::iter::once(&Stage::Cancelled))
            .find(|st| st.as_str() == s)
            .copied()
            .ok_or_else(|| format!("unknown stage {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc19_stage_transitions_are_the_nine_of_the_seeds() {
        let names: Vec<&str> = Stage::PIPELINE.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "created",
                "analysis",
                "architecture",
                "development",
                "review",
                "testing",
                "deploy-staging",
                "deploy",
                "done"
            ]
        );
        assert_eq!(Stage::Deploy.next(), Some(Stage::Done));
        assert_eq!(Stage::Done.next(), None);
        assert_eq!(Stage::Cancelled.next(), None);
    }

    #[test]
    fn names_round_trip() {
        for s in Stage::PIPELINE.iter().chain([Stage::Cancelled].iter()) {
            assert_eq!(s.as_str().parse::<Stage>().expect("parses"), *s);
        }
        assert!("deploy_staging".parse::<Stage>().is_err());
    }
}
