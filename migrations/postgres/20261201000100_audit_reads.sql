-- Every read an auditor or admin makes of users' data through the audit API, written by the
-- request that reads (docs/protocol.md, section 4), listed at GET /api/admin/audit-reads.
create table audit_reads
(
    -- Insertion order; pages follow commit order, as the event listing does.
    id             bigint generated always as identity primary key,
    read_at        timestamptz not null default now(),
    -- The caller's token `sub` and roles.
    reader         text        not null,
    reader_roles   jsonb       not null,
    -- Such as 'GET /api/audit/users/{user_id}/state'.
    endpoint       text        not null,
    -- Whose data; null for a read across users (a listing without user_id, an export).
    user_id        text,
    -- The query parameters as the server understood them (a token is never a parameter).
    parameters     jsonb       not null,
    transaction_id xid8        not null default pg_current_xact_id()
);

create index audit_reads_by_commit on audit_reads (transaction_id, id);
create index audit_reads_by_reader on audit_reads (reader, transaction_id, id);
create index audit_reads_by_user on audit_reads (user_id, transaction_id, id);
