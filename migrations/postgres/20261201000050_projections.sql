-- Read models. Each projection applies events in commit order from its own checkpoint and
-- writes its rows and its checkpoint in one transaction, so a crash between the two is
-- impossible and no event is applied twice or skipped.
create table projection_checkpoints
(
    name            text        not null primary key,
    -- Where the projection stands in commit order: (writing transaction, global position).
    -- Events are read only below the oldest running writer, ordered by this pair, so an
    -- event that commits late is never passed over.
    tx              bigint      not null default 0,
    position        bigint      not null default 0,
    events_applied  bigint      not null default 0,
    last_rebuilt_at timestamptz,
    updated_at      timestamptz not null default now()
);

-- One row per attempt: what a test-taker sees of their own history.
create table assessments
(
    user_id         text             not null,
    assessment_id   text             not null,
    test_id         text             not null,
    test_version    integer          not null,
    title           text             not null,
    attempt         integer          not null,
    status          text             not null check (status in ('in_progress', 'completed')),
    answered        integer          not null,
    total_questions integer          not null,
    score           double precision not null,
    max_score       double precision not null,
    passed          boolean,
    reason          text,
    started_at      timestamptz      not null,
    deadline        timestamptz,
    completed_at    timestamptz,
    duration_secs   double precision,
    primary key (user_id, assessment_id)
);

create index assessments_by_test on assessments (test_id, test_version);
