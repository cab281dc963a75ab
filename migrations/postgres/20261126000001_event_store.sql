-- The event store. Column names and types match what postgres-es 0.5 reads and writes
-- (it names every column it uses), so the extra columns below are invisible to it.
create table events
(
    -- Insertion order across all streams (not commit order: see transaction_id).
    global_position bigint generated always as identity unique,
    aggregate_type  text        not null,
    aggregate_id    text        not null,
    sequence        bigint      not null check (sequence >= 1),
    event_type      text        not null,
    event_version   text        not null,
    payload         jsonb       not null,
    metadata        jsonb       not null,
    event_id        uuid        not null unique default gen_random_uuid(),
    recorded_at     timestamptz not null default now(),
    -- The writing transaction, so subscribers can read only below the oldest running
    -- writer and never skip an event that commits late.
    transaction_id  xid8        not null default pg_current_xact_id(),
    -- Payloads are {"EventType": {...}}; these let the audit API filter without parsing.
    assessment_id   text generated always as (payload -> event_type ->> 'assessment_id') stored,
    test_id         text generated always as (payload -> event_type ->> 'test_id') stored,
    -- Optimistic concurrency: two writers can never both append at the same sequence.
    primary key (aggregate_type, aggregate_id, sequence)
);

create index events_by_assessment on events (assessment_id);
create index events_by_test on events (test_id);
create index events_by_type on events (event_type);
create index events_by_time on events (recorded_at);
create index events_by_commit on events (transaction_id, global_position);

-- One snapshot row per stream. The key is (aggregate_type, aggregate_id) and not the
-- crate's (..., last_sequence): with one row per stream, a stale writer's snapshot insert
-- fails before its transaction commits instead of adding a second, conflicting row.
create table snapshots
(
    aggregate_type   text   not null,
    aggregate_id     text   not null,
    last_sequence    bigint not null check (last_sequence >= 0),
    current_snapshot bigint not null check (current_snapshot >= 0),
    payload          jsonb  not null,
    primary key (aggregate_type, aggregate_id)
);

-- Test definitions are versioned and never changed in place: an attempt records the
-- version it started with and is graded against exactly that.
create table test_definitions
(
    test_id    text        not null,
    version    integer     not null check (version >= 1),
    definition jsonb       not null,
    created_at timestamptz not null default now(),
    primary key (test_id, version)
);
