//! The man pages and shell completions, built from the same clap
//! definitions as `--help` so they never drift, plus what `--help` has no
//! room for: EXAMPLES, EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO. Hidden
//! commands (`debug`, `demo-agent`) are internal and appear in neither.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use clap_mangen::Man;

/// Write `orch.1` and one `orch-<command>.1` per visible subcommand into `dir`.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write_tree(&cmd, "orch", dir)
}

fn write_tree(cmd: &clap::Command, page: &str, dir: &Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, &format!("{page}-{}", sub.get_name()), dir)?;
    }
    let path = dir.join(format!("{page}.1"));
    let mut out = Vec::new();
    let man = Man::new(cmd.clone()).title(page.to_uppercase());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    write_extra_sections(&mut out, page)?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}

/// The sections clap has no notion of, in roff.
fn write_extra_sections(out: &mut Vec<u8>, page: &str) -> std::io::Result<()> {
    if let Some((_, examples)) = EXAMPLES.iter().find(|(p, _)| *p == page) {
        writeln!(out, ".SH EXAMPLES")?;
        for (what, command) in *examples {
            writeln!(
                out,
                ".TP\n{}\n.nf\n\\fB{}\\fR\n.fi",
                roff(what),
                roff(command)
            )?;
        }
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (code, meaning) in EXIT_STATUS {
        writeln!(out, ".TP\n{code}\n{}", roff(meaning))?;
    }
    writeln!(
        out,
        ".PP\nThe full table, with every case: docs/exit-codes.md."
    )?;
    writeln!(out, ".SH ENVIRONMENT")?;
    for (var, meaning) in ENVIRONMENT {
        writeln!(out, ".TP\n\\fB{var}\\fR\n{}", roff(meaning))?;
    }
    writeln!(out, ".SH FILES")?;
    for (file, meaning) in FILES {
        writeln!(out, ".TP\n\\fI{}\\fR\n{}", roff(file), roff(meaning))?;
    }
    writeln!(out, ".SH \"SEE ALSO\"")?;
    let see: &str = if page == "orch" { "" } else { "orch(1), " };
    writeln!(
        out,
        "{see}docs/ in the source tree: architecture.md, pipeline.md, operations.md (the runbook), configuration.md, security.md."
    )
}

/// Text made safe for roff: a leading `.` or `'` would be a request, and
/// `\` starts an escape.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// `cmd` without its hidden subcommands, at every level, for completions.
pub fn visible_only(cmd: &clap::Command) -> clap::Command {
    if cmd.get_subcommands().next().is_none() {
        return cmd.clone();
    }
    // clap cannot remove a subcommand: a copy of the command without any is
    // given back the visible ones.
    // Without the --help and --version a built command was given: the
    // completion generator builds the copy, which adds its own.
    let own = cmd.get_arguments().filter(|a| {
        !matches!(
            a.get_action(),
            clap::ArgAction::Help
                | clap::ArgAction::HelpShort
                | clap::ArgAction::HelpLong
                | clap::ArgAction::Version
        )
    });
    let mut bare = clap::Command::new(cmd.get_name().to_owned())
        .args(own.cloned())
        .aliases(cmd.get_all_aliases().map(str::to_owned).collect::<Vec<_>>())
        .subcommand_required(cmd.is_subcommand_required_set());
    if let Some(about) = cmd.get_about() {
        bare = bare.about(about.clone());
    }
    // `help` too is the generator's to add.
    bare.subcommands(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .map(visible_only),
    )
}

/// What each exit code means, briefly (docs/exit-codes.md has every case).
const EXIT_STATUS: &[(u8, &str)] = &[
    (0, "Success."),
    (
        1,
        "Failure: an unclassified error, a record that does not exist, a failed doctor check, or a partial pass (the output's errors say what failed).",
    ),
    (2, "Usage: the command line or a value in it was rejected."),
    (
        3,
        "Nothing to do: no claimable job, the gates keep the task where it is, nothing to cancel or finalize.",
    ),
    (65, "Malformed input (a webhook body or request)."),
    (
        74,
        "A webhook client went away before its answer (the delivery was stored).",
    ),
    (
        75,
        "Temporary failure, nothing changed: run again later (the database was busy).",
    ),
    (77, "Signature rejected."),
    (
        78,
        "Configuration error, or a state directory or config file another user could change.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("ORCH_STATE_DIR", "The state directory (as --state-dir)."),
    ("ORCH_CONFIG", "The configuration file (as --config)."),
    (
        "ORCH_<SETTING>",
        "Overrides the setting of that name, e.g. ORCH_MAX_CONCURRENCY=2, ORCH_AGENT_CMD, ORCH_SANDBOX=off (docs/configuration.md).",
    ),
    (
        "ORCH_PLANE_API_TOKEN, ORCH_GITEA_TOKEN, ORCH_TELEGRAM_BOT_TOKEN, ORCH_PLANE_WEBHOOK_SECRET, ORCH_GITEA_WEBHOOK_SECRET",
        "Credentials; never passed to agents, tests or hooks, never logged.",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "systemd credentials: the same secrets as files (orch-plane-api-token, …).",
    ),
    (
        "STATE_DIRECTORY, XDG_STATE_HOME",
        "Where the state directory is when none is given.",
    ),
    (
        "RUST_LOG",
        "Log filter (as -v/-q), e.g. RUST_LOG=orch=debug; HTTP client internals stay capped at warn.",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        "<state>/orch.toml",
        "The configuration (private: refused if another user can change it).",
    ),
    (
        "<state>/orch.db",
        "The SQLite database: tasks, jobs, runs, costs, deliveries, outbox.",
    ),
    (
        "<state>/runs/job-<id>-run<n>/",
        "One directory per agent attempt: agent.log (and agent.log.1 once rotated), task.md, the agent's own agent/.",
    ),
    (
        "<state>/repos/<repo>/",
        "The clone cache and one worktree per task.",
    ),
    (
        "<state>/locks/",
        "The file locks that prove a worker alive.",
    ),
    ("<state>/logs/", "Test, merge-gate and webhook-router logs."),
];

/// Examples per man page (`orch`, `orch-status`, `orch-task-create`, …).
const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "orch",
        &[
            (
                "Run the whole pipeline offline in a fresh state directory.",
                "orch demo --state-dir ~/.local/state/orch-demo",
            ),
            ("Check an installation.", "orch doctor --offline"),
            (
                "What runs, what is stuck, what needs a human.",
                "orch status",
            ),
        ],
    ),
    (
        "orch-init",
        &[(
            "Create the state directory and database.",
            "orch --state-dir ~/.local/state/orch-mine init",
        )],
    ),
    (
        "orch-status",
        &[
            ("The queue, running jobs and their owners.", "orch status"),
            (
                "The same as JSON, for scripts.",
                "orch status --json | jq .counts",
            ),
        ],
    ),
    (
        "orch-doctor",
        &[
            ("Check everything but remote APIs.", "orch doctor --offline"),
            (
                "Check the APIs too (Plane board, Gitea, Telegram).",
                "orch doctor",
            ),
        ],
    ),
    (
        "orch-metrics",
        &[(
            "Write the node_exporter textfile.",
            "orch metrics --output /var/lib/node_exporter/textfile_collector/orch.prom",
        )],
    ),
    (
        "orch-claim",
        &[(
            "A scripting primitive: claim, then hand the job to your own runner (it holds an attempt until finished or reaped).",
            "orch claim --json",
        )],
    ),
    (
        "orch-run-agent",
        &[
            (
                "Run the next claimable job to its committed end.",
                "orch run-agent --next",
            ),
            (
                "Run one job with another agent command.",
                "ORCH_AGENT_CMD='my-agent' orch run-agent --job 7",
            ),
        ],
    ),
    (
        "orch-advance",
        &[
            (
                "Approve the analysis (the human gate).",
                "orch advance --task 1 --approve",
            ),
            (
                "Start the self-hosting repo's production deploy.",
                "orch advance --task 1 --confirm-deploy",
            ),
        ],
    ),
    (
        "orch-cancel",
        &[(
            "STOP a task.",
            "orch cancel --task 1 --reason 'wrong repository'",
        )],
    ),
    (
        "orch-finalize-deploy",
        &[(
            "Read a finished deploy hook's result and advance or roll back.",
            "orch finalize-deploy --task 1",
        )],
    ),
    (
        "orch-reap",
        &[(
            "One reaper pass (orch-reap.timer runs it every minute).",
            "orch reap --json",
        )],
    ),
    (
        "orch-reconcile",
        &[("One reconciler pass.", "orch reconcile")],
    ),
    (
        "orch-reclaim-leases",
        &[(
            "Free merge leases no holder can use.",
            "orch reclaim-leases",
        )],
    ),
    (
        "orch-ingest-webhook",
        &[(
            "Store a signed Plane delivery from a file.",
            "ORCH_SIGNATURE=$sig orch ingest-webhook --source plane < body.json",
        )],
    ),
    (
        "orch-demo",
        &[
            (
                "Everything offline, from nothing to done.",
                "orch demo --state-dir ~/.local/state/orch-demo",
            ),
            (
                "Watch rollbacks.",
                "orch demo --state-dir /path --script review=request_changes*1,testing=fail*1",
            ),
        ],
    ),
    (
        "orch-task-create",
        &[(
            "A task for repo demo (its analyst job is queued).",
            "orch task create --repo demo --title 'Add a health endpoint'",
        )],
    ),
    (
        "orch-task-list",
        &[(
            "Every task in development.",
            "orch task list --stage development",
        )],
    ),
    (
        "orch-task-show",
        &[(
            "A task with its jobs, history and costs.",
            "orch task show 1",
        )],
    ),
    (
        "orch-task-resume",
        &[
            ("Resume an escalated task.", "orch task resume --task 1"),
            (
                "Resume a task blocked over budget with a higher budget.",
                "orch task resume --task 1 --budget 20",
            ),
        ],
    ),
    (
        "orch-task",
        &[
            (
                "Create a task, then follow it.",
                "orch task create --repo demo --title 'Add a health endpoint'",
            ),
            ("All tasks.", "orch task list"),
        ],
    ),
    (
        "orch-job",
        &[(
            "Jobs that failed for good.",
            "orch job list --status failed",
        )],
    ),
    (
        "orch-job-enqueue",
        &[(
            "Run the reviewer of task 3 once more by hand.",
            "orch job enqueue --agent reviewer --task 3",
        )],
    ),
    (
        "orch-outbox",
        &[(
            "What the tracker and notifier were not told.",
            "orch outbox list --status dead",
        )],
    ),
    (
        "orch-job-list",
        &[("Failed jobs.", "orch job list --status failed")],
    ),
    ("orch-job-show", &[("One job.", "orch job show 7")]),
    (
        "orch-job-retry",
        &[("Queue a failed job again.", "orch job retry 7")],
    ),
    (
        "orch-outbox-list",
        &[(
            "Messages that could not be delivered.",
            "orch outbox list --status dead",
        )],
    ),
    (
        "orch-logs",
        &[
            (
                "Follow the agent of task 1 as it works.",
                "orch logs -f --task 1",
            ),
            ("The log of job 7's latest attempt.", "orch logs 7"),
            (
                "Every run of task 1 and its check logs.",
                "orch logs --list --task 1",
            ),
        ],
    ),
    (
        "orch-gates",
        &[(
            "Every problem the gates of task 1's stage see now.",
            "orch gates check --task 1",
        )],
    ),
    (
        "orch-gates-check",
        &[(
            "Every problem the gates of task 1's stage see now, without running anything.",
            "orch gates check --task 1",
        )],
    ),
    (
        "orch-web",
        &[
            (
                "A quick look at the board on this machine.",
                "orch web --listen 127.0.0.1:8789",
            ),
            (
                "What the socket unit runs for each connection.",
                "orch web --inetd",
            ),
        ],
    ),
    (
        "orch-outbox-retry",
        &[(
            "Deliver every dead message again.",
            "orch outbox retry --all-dead",
        )],
    ),
];
