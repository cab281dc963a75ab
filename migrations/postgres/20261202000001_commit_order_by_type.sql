-- Reading the history in commit order (the projection feed) without a plan that grows
-- with the table.
--
-- The commit-order index leads with the aggregate type that every commit-order reader
-- filters on (the feed, the audit API's commit order). On (transaction_id,
-- global_position) alone, a planner whose statistics lagged a burst of inserts ANDed it
-- with the primary key's `aggregate_type` prefix, so every batch of the feed read the key
-- of every event ever written.
drop index events_by_commit;
create index events_by_commit on events (aggregate_type, transaction_id, global_position);

-- Even then, with statistics that lag (a young table, a burst of writes), the planner
-- estimated a handful of rows after the feed's position and chose to collect all of them
-- in a bitmap and sort them for each batch of 500: the cost of a batch grew with the
-- backlog (measured at 1,000 answers/s on a new database, with this index alone: 4.5 and
-- 28 ms a batch in two runs; through the function below, 2.1 and 6.7 ms). The index is
-- already in commit order; a function is the one place PostgreSQL lets one query carry
-- its own planner settings.
create function events_in_commit_order(after_tx xid8, after_position bigint, max_rows bigint)
    returns table (tx bigint, global_position bigint, aggregate_id text, sequence bigint,
                   payload text, recorded_at timestamptz)
    language sql
    stable
    set enable_bitmapscan = off
    set enable_sort = off
as $$
    select e.transaction_id::text::bigint, e.global_position, e.aggregate_id, e.sequence,
           e.payload::text, e.recorded_at
      from events e
     where e.aggregate_type = 'user'
       and (e.transaction_id, e.global_position) > (after_tx, after_position)
       -- Only below the oldest transaction still running: every event there is committed
       -- (or rolled back), so a reader moving along this order never passes one over.
       and e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
     order by e.transaction_id, e.global_position
     limit max_rows
$$;
