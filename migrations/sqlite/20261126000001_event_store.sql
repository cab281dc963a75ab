-- The event store. Column names and types match what sqlite-es 0.5 reads and writes
-- (it names every column it uses), so the extra columns below are invisible to it.
create table events
(
    -- Commit order across all streams. An explicit autoincrement key, because an implicit
    -- rowid may be renumbered by VACUUM and SQLite has one writer, so this is commit order.
    global_position integer primary key autoincrement,
    aggregate_type  text    not null,
    aggregate_id    text    not null,
    sequence        integer not null check (sequence >= 1),
    event_type      text    not null,
    event_version   text    not null,
    payload         text    not null check (json_valid(payload)),
    metadata        text    not null check (json_valid(metadata)),
    event_id        text    not null unique default (lower(hex(randomblob(16)))),
    recorded_at     text    not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Payloads are {"EventType": {...}}; these let the audit API filter without parsing.
    assessment_id   text generated always as (json_extract(payload, '$.' || event_type || '.assessment_id')) virtual,
    test_id         text generated always as (json_extract(payload, '$.' || event_type || '.test_id')) virtual,
    -- Optimistic concurrency: two writers can never both append at the same sequence.
    unique (aggregate_type, aggregate_id, sequence)
);

create index events_by_assessment on events (assessment_id);
create index events_by_test on events (test_id);
create index events_by_type on events (event_type);
create index events_by_time on events (recorded_at);

-- One snapshot row per stream. The key is (aggregate_type, aggregate_id) and not the
-- crate's (..., last_sequence): with one row per stream, a stale writer's snapshot insert
-- fails before its transaction commits instead of adding a second, conflicting row.
create table snapshots
(
    aggregate_type   text    not null,
    aggregate_id     text    not null,
    last_sequence    integer not null check (last_sequence >= 0),
    current_snapshot integer not null check (current_snapshot >= 0),
    payload          text    not null check (json_valid(payload)),
    primary key (aggregate_type, aggregate_id)
);

-- Test definitions are versioned and never changed in place: an attempt records the
-- version it started with and is graded against exactly that.
create table test_definitions
(
    test_id    text    not null,
    version    integer not null check (version >= 1),
    definition text    not null check (json_valid(definition)),
    created_at text    not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    primary key (test_id, version)
);
