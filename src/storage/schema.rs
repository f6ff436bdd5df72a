//! The schema, as an ordered list of add-only migrations.
//!
//! `PRAGMA user_version` is the number of migrations applied. A migration is
//! never edited once released: new columns and tables come as a new entry, so
//! an old database is brought forward by the next `orch` that opens it, and a
//! database newer than the binary is refused instead of misread.
//!
//! Invariants that must hold on every path are written as CHECK constraints,
//! so no code path (or hand-written SQL) can store an impossible row; the
//! run-ownership invariant of ORCH-126 is one of them.

/// `PRAGMA application_id` of an orch database ("orch" in ASCII), so a foreign
/// SQLite file is recognised and refused.
pub const APPLICATION_ID: i32 = 0x6f72_6368;

/// Job statuses. `done`, `failed` and `cancelled` are terminal.
pub const JOB_STATUSES: &[&str] = &["queued", "running", "done", "failed", "cancelled"];

/// The migrations, oldest first. Index + 1 is the `user_version` after it.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6];

const V1: &str = r"
CREATE TABLE tasks (
    id                  INTEGER PRIMARY KEY,
    work_item_id        TEXT NOT NULL,
    title               TEXT NOT NULL DEFAULT '',
    description         TEXT NOT NULL DEFAULT '',
    repo                TEXT NOT NULL,
    branch              TEXT,
    stage               TEXT NOT NULL DEFAULT 'created' CHECK (stage IN
                        ('created','analysis','architecture','development','review',
                         'testing','deploy-staging','deploy','done','cancelled')),
    plane_id            TEXT,
    plane_issue_id      TEXT,
    plane_project_id    TEXT,
    depends_on          INTEGER REFERENCES tasks(id),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    escalated_at        INTEGER,
    cancelled_at        INTEGER,
    cancel_requested_at INTEGER
);
CREATE UNIQUE INDEX tasks_work_item ON tasks(repo, work_item_id);
CREATE UNIQUE INDEX tasks_plane_id ON tasks(plane_id) WHERE plane_id IS NOT NULL;
CREATE INDEX tasks_plane_issue_id ON tasks(plane_issue_id) WHERE plane_issue_id IS NOT NULL;

CREATE TABLE jobs (
    id                 INTEGER PRIMARY KEY,
    agent              TEXT NOT NULL,
    repo               TEXT NOT NULL,
    task_id            INTEGER REFERENCES tasks(id),
    stage              TEXT,
    status             TEXT NOT NULL DEFAULT 'queued' CHECK (status IN
                       ('queued','running','done','failed','cancelled')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    max_attempts       INTEGER NOT NULL DEFAULT 2 CHECK (max_attempts >= 1),
    transient_attempts INTEGER NOT NULL DEFAULT 0,
    available_at       INTEGER NOT NULL DEFAULT 0,
    task_content       TEXT NOT NULL DEFAULT '',
    claim_token        TEXT,
    owner_pid          INTEGER,
    owner_boot_id      TEXT,
    run_id             INTEGER,
    pid                INTEGER,
    created_at         INTEGER NOT NULL,
    started_at         INTEGER,
    finished_at        INTEGER,
    error              TEXT,
    -- ORCH-126 run-ownership invariant, enforced by the database itself.
    CHECK (status <> 'queued' OR (run_id IS NULL AND pid IS NULL AND started_at IS NULL
           AND finished_at IS NULL AND claim_token IS NULL AND owner_pid IS NULL
           AND owner_boot_id IS NULL)),
    -- A running job always names the lock that proves its owner alive.
    CHECK (status <> 'running' OR claim_token IS NOT NULL)
);
CREATE INDEX jobs_claimable ON jobs(status, available_at, id);
-- FIFO claims walk queued jobs in id order and stop at the first eligible one.
CREATE INDEX jobs_queued_fifo ON jobs(id) WHERE status = 'queued';
-- Makes the impossible-queued sweep O(1) when there is nothing to heal.
CREATE INDEX jobs_impossible_queued ON jobs(id) WHERE status = 'queued' AND (run_id IS NOT NULL
    OR pid IS NOT NULL OR started_at IS NOT NULL OR finished_at IS NOT NULL
    OR claim_token IS NOT NULL OR owner_pid IS NOT NULL OR owner_boot_id IS NOT NULL);
CREATE INDEX jobs_task ON jobs(task_id, status);
CREATE INDEX jobs_repo_running ON jobs(repo) WHERE status = 'running';

CREATE TABLE agent_runs (
    id                    INTEGER PRIMARY KEY,
    job_id                INTEGER REFERENCES jobs(id),
    task_id               INTEGER REFERENCES tasks(id),
    agent                 TEXT NOT NULL,
    stage                 TEXT,
    command               TEXT NOT NULL DEFAULT '',
    pid                   INTEGER,
    started_at            INTEGER NOT NULL,
    finished_at           INTEGER,
    exit_code             INTEGER,
    signal                INTEGER,
    timed_out             TEXT CHECK (timed_out IN ('wall','stall')),
    output_path           TEXT,
    session_id            TEXT,
    outcome               TEXT,
    is_error              INTEGER,
    cost_usd              REAL,
    input_tokens          INTEGER,
    output_tokens         INTEGER,
    cache_read_tokens     INTEGER,
    cache_creation_tokens INTEGER,
    num_turns             INTEGER
);
CREATE INDEX agent_runs_task ON agent_runs(task_id, agent);

CREATE TABLE webhook_deliveries (
    id           INTEGER PRIMARY KEY,
    source       TEXT NOT NULL,
    event        TEXT,
    delivery_id  TEXT,
    content_hash TEXT NOT NULL,
    body         BLOB NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN
                 ('pending','processed','ignored','failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    error        TEXT
);
CREATE UNIQUE INDEX webhook_delivery_id ON webhook_deliveries(source, delivery_id)
    WHERE delivery_id IS NOT NULL;
CREATE UNIQUE INDEX webhook_content ON webhook_deliveries(source, content_hash);

CREATE TABLE merge_leases (
    repo          TEXT PRIMARY KEY,
    task_id       INTEGER REFERENCES tasks(id),
    branch        TEXT NOT NULL,
    work_item_id  TEXT,
    token         TEXT NOT NULL,
    holder_job_id INTEGER,
    owner_pid     INTEGER,
    acquired_at   INTEGER NOT NULL
);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    dedup_key       TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,
    task_id         INTEGER REFERENCES tasks(id),
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','delivered','dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX outbox_pending ON outbox(status, next_attempt_at);

CREATE TABLE counters (
    name       TEXT PRIMARY KEY,
    value      INTEGER NOT NULL DEFAULT 0,
    detail     TEXT,
    updated_at INTEGER NOT NULL
);
";

/// The pipeline release: the local tracker's states and comments, and the
/// audit trail of stage transitions (from which developer retries are counted).
const V2: &str = r"
ALTER TABLE tasks ADD COLUMN tracker_state TEXT;
-- The last commit of the branch whose tests passed (check_ci_green or a merge re-test).
ALTER TABLE tasks ADD COLUMN tested_sha TEXT;

CREATE TABLE tracker_comments (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES tasks(id),
    author      TEXT NOT NULL,
    body        TEXT NOT NULL,
    external_id TEXT UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE INDEX tracker_comments_task ON tracker_comments(task_id);

CREATE TABLE task_transitions (
    id         INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL REFERENCES tasks(id),
    from_stage TEXT NOT NULL,
    to_stage   TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN
               ('start','advance','rollback','escalate','approve','cancel','block','resume')),
    reason     TEXT NOT NULL DEFAULT '',
    job_id     INTEGER REFERENCES jobs(id),
    at         INTEGER NOT NULL
);
CREATE INDEX task_transitions_task ON task_transitions(task_id, kind);

-- The self-hosting repo's production deploy (phases A, B, C of Confirm Deploy).
CREATE TABLE deploys (
    task_id              INTEGER PRIMARY KEY REFERENCES tasks(id),
    staging_sha          TEXT,
    approve_requested_at INTEGER,
    initiated_at         INTEGER,
    hook_pid             INTEGER,
    run_dir              TEXT,
    exit_code            INTEGER,
    finished_at          INTEGER
);
";

/// Operations: the post-deploy monitor's record per task, and cost budgets.
const V3: &str = r"
CREATE TABLE post_deploys (
    task_id       INTEGER PRIMARY KEY REFERENCES tasks(id),
    started_at    INTEGER NOT NULL,
    window_s      INTEGER NOT NULL,
    checks_total  INTEGER NOT NULL,
    checks_done   INTEGER NOT NULL DEFAULT 0,
    checks_failed INTEGER NOT NULL DEFAULT 0,
    next_check_at INTEGER,
    status        TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running','healthy','degraded')),
    action_taken  TEXT,
    finished_at   INTEGER,
    last_error    TEXT
);

-- A task's cost cap in USD; NULL = the task_budget_usd setting.
ALTER TABLE tasks ADD COLUMN budget_usd REAL;
-- Why a task is blocked (e.g. over budget); NULL = not blocked.
ALTER TABLE tasks ADD COLUMN blocked_reason TEXT;
";

/// The post-deploy monitor's audit trail: one row per check (the task's
/// monitoring history, shown by `orch task show`), and the marker that makes
/// an automatic rollback at-most-once across crashes.
const V4: &str = r"
CREATE TABLE post_deploy_checks (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    -- 1-based; a check is counted once: the key refuses a second row.
    seq     INTEGER NOT NULL CHECK (seq >= 1),
    at      INTEGER NOT NULL,
    ok      INTEGER NOT NULL CHECK (ok IN (0, 1)),
    detail  TEXT NOT NULL DEFAULT '',
    job_id  INTEGER REFERENCES jobs(id),
    PRIMARY KEY (task_id, seq)
);

-- Set before rollback_cmd starts (so it never starts twice), and its exit code after.
ALTER TABLE post_deploys ADD COLUMN rollback_started_at INTEGER;
ALTER TABLE post_deploys ADD COLUMN rollback_exit_code INTEGER;
";

/// Finalize-only continuations: a job whose agent succeeded but whose worker
/// died is requeued for a worker to finalize that run (commit, push, gates)
/// without running the agent again; `orch reap` never finalizes in-process.
const V5: &str = r"
-- The successful agent run this job finalizes instead of running its agent;
-- NULL = a normal job. Set by the reaper, cleared with the job's ownership.
ALTER TABLE jobs ADD COLUMN finalize_run_id INTEGER REFERENCES agent_runs(id);
";

/// The running jobs in the order a person reads them (longest running
/// first), with what liveness needs, and by owner token: `orch status` shows
/// the first few and counts the live ones without reading every running
/// job's row.
const V6: &str = r"
CREATE INDEX jobs_running_since
    ON jobs(coalesce(started_at, created_at), id, claim_token, task_id)
    WHERE status = 'running';
CREATE INDEX jobs_running_token ON jobs(claim_token) WHERE status = 'running';
";
