-- The admin jobs (src/jobs.rs): projection rebuilds and regrades, one row each, written by
-- the node that runs the job, so GET /api/admin/jobs/{job_id} answers the same on every
-- node and a job outlives its node's restart as a record. A 'running' row whose node is no
-- longer live is reported (and then marked) as failed.
create table jobs
(
    job_id           text   primary key,
    kind             text   not null check (kind in ('rebuild', 'regrade')),
    -- The projection a rebuild works on; '' for a regrade.
    projection       text   not null,
    -- A regrade's test.
    test_id          text,
    -- The node that runs it (nodes.node_id).
    node_id          text   not null,
    status           text   not null check (status in ('running', 'done', 'failed')),
    events_done      bigint not null check (events_done >= 0),
    events_total     bigint not null check (events_total >= 0),
    -- A regrade's AnswerRegraded events so far.
    answers_regraded bigint check (answers_regraded >= 0),
    started_at       timestamptz not null,
    finished_at      timestamptz,
    error            text
);
-- One running rebuild of a projection at a time, across nodes: the second insert fails.
create unique index jobs_one_running_rebuild on jobs (projection)
    where status = 'running' and kind = 'rebuild';
-- A node starting again marks the jobs it left running as failed.
create index jobs_running_by_node on jobs (node_id) where status = 'running';
