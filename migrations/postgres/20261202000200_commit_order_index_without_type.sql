-- The commit-order index goes back to (transaction_id, global_position).
--
-- Led by the aggregate type (20261202000001), it matched the stream read's first
-- condition as well as the primary key did. A pooled connection caches a generic plan of
-- the read after five executions, and one cached while the table had no statistics (a new
-- database, or one whose events came in a burst since the last analyze) read the stream
-- through this index: every event of every user for each connect. Measured with
-- benches/run.sh's sequence (19,000 users with empty streams connect, then 5,000 users
-- with an attempt reconnect at 5,000/s): 468 and 508 connects/s, p50 5 s, against 2,478
-- to 3,728/s on a server that had not planned the read on the young table, and 3,920/s
-- after the idle scenario with this index.
--
-- What the type prefix was for stays done: the projection feed reads through
-- events_in_commit_order(), whose own settings (no bitmap scans, no sorts) keep it on
-- this index in commit order, the type a filter (every event is a user's).
drop index events_by_commit;
create index events_by_commit on events (transaction_id, global_position);
