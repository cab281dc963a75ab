-- Every read an auditor or admin makes of users' data through the audit API, written by the
-- request that reads (docs/protocol.md, section 4), listed at GET /api/admin/audit-reads.
create table audit_reads
(
    -- Insertion order, which is commit order with SQLite's one writer.
    id           integer primary key autoincrement,
    read_at      text    not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- The caller's token `sub` and roles.
    reader       text    not null,
    reader_roles text    not null check (json_valid(reader_roles)),
    -- Such as 'GET /api/audit/users/{user_id}/state'.
    endpoint     text    not null,
    -- Whose data; null for a read across users (a listing without user_id, an export).
    user_id      text,
    -- The query parameters as the server understood them (a token is never a parameter).
    parameters   text    not null check (json_valid(parameters))
);

create index audit_reads_by_reader on audit_reads (reader, id);
create index audit_reads_by_user on audit_reads (user_id, id);
