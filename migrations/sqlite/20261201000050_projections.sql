-- Read models. Each projection applies events in commit order from its own checkpoint and
-- writes its rows and its checkpoint in one transaction, so a crash between the two is
-- impossible and no event is applied twice or skipped.
create table projection_checkpoints
(
    name            text    not null primary key,
    -- Where the projection stands in commit order: (writing transaction, global position).
    -- SQLite has one writer, so position order is commit order and tx is always 0.
    tx              integer not null default 0,
    position        integer not null default 0,
    events_applied  integer not null default 0,
    last_rebuilt_at text,
    updated_at      text    not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- One row per attempt: what a test-taker sees of their own history.
create table assessments
(
    user_id         text    not null,
    assessment_id   text    not null,
    test_id         text    not null,
    test_version    integer not null,
    title           text    not null,
    attempt         integer not null,
    status          text    not null check (status in ('in_progress', 'completed')),
    answered        integer not null,
    total_questions integer not null,
    score           real    not null,
    max_score       real    not null,
    passed          integer,
    reason          text,
    started_at      text    not null,
    deadline        text,
    completed_at    text,
    duration_secs   real,
    primary key (user_id, assessment_id)
);

create index assessments_by_test on assessments (test_id, test_version);
