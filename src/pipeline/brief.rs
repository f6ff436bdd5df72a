//! The task file an agent reads: who it is, what is asked, and exactly what
//! its stage's gate will check. Task text goes into this file (and
//! environment variables), never into a shell command line.

use crate::pipeline::Stage;
use crate::pipeline::task::Task;

/// What the gate of `stage` expects, in words an agent can act on.
pub fn stage_contract(stage: Stage, wi: &str) -> String {
    let dir = format!("docs/work-items/{wi}");
    match stage {
        Stage::Analysis => format!(
            "Write {dir}/01-brd.md, 02-trz.md and 03-acceptance-criteria.md, each starting with \
             YAML frontmatter whose `type` is `brd`, `trz` and `acceptance-criteria`, followed by \
             the document, and {dir}/04-test-plan.yaml: a YAML mapping with a non-empty `tests` \
             list whose items have an `id`. A human then approves the analysis."
        ),
        Stage::Architecture => format!(
            "Write at least one ADR as {dir}/06-adr/ADR-001-<slug>.md with frontmatter \
             `type: adr` and `status: proposed` or `accepted`."
        ),
        Stage::Development => "Implement the change with tests. The repository's test command \
             must pass in this worktree; that is the gate."
            .to_owned(),
        Stage::Review => format!(
            "Review the branch against the acceptance criteria. Write {dir}/12-review.md with \
             frontmatter `type: review`, `work_item_id: {wi}`, `verdict: APPROVED` or \
             `verdict: REQUEST_CHANGES`, and `version` (the review pass number); findings go in \
             the body."
        ),
        Stage::Testing => format!(
            "Run the test plan. Write {dir}/13-test-report.md with frontmatter \
             `type: test-report`, `work_item_id: {wi}` and `result: PASS` or `result: FAIL`."
        ),
        Stage::DeployStaging => format!(
            "Deploy the branch to staging and check it. Write {dir}/15-staging-log.md with \
             frontmatter `staging_status: SUCCESS` or `FAILED`, `timestamp` (ISO-8601) and \
             `base_url`. orch then checks that the branch merges cleanly and merges it."
        ),
        Stage::Deploy => format!(
            "Deploy to production and verify health. Write {dir}/14-deploy-log.md with \
             frontmatter `deploy_status: SUCCESS` or `FAILED` and `work_item: {wi}`."
        ),
        Stage::Created | Stage::Done | Stage::Cancelled => String::new(),
    }
}

/// The whole task file for `agent` working on `task` at `stage`.
pub fn task_file(task: &Task, stage: Stage, agent: &str, context: &str) -> String {
    let branch = task.branch.as_deref().unwrap_or("");
    let mut out = format!(
        "# {agent}: {wi} — {title}\n\n\
         You are the {agent} of an automated software-delivery pipeline. You work in the \
         current directory, a git worktree of repository `{repo}` on branch `{branch}`. \
         orch commits and pushes your changes when you finish: do not push, do not switch \
         branches, do not touch `main`.\n\n\
         ## What this stage must produce\n\n{contract}\n\n\
         ## The request\n\n{description}\n",
        wi = task.work_item_id,
        title = task.title,
        repo = task.repo,
        contract = stage_contract(stage, &task.work_item_id),
        description = if task.description.trim().is_empty() {
            &task.title
        } else {
            &task.description
        },
    );
    let context = context.trim();
    if !context.is_empty() && context != task.description.trim() {
        out.push_str("\n## Context from the pipeline\n\n");
        out.push_str(context);
        out.push('\n');
    }
    out
}
