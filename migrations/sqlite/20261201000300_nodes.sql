-- The server processes sharing this database, each beating its row every few seconds
-- (src/nodes.rs): a node whose heartbeat is older than the lease is gone. GET
-- /api/admin/connections on any node lists the live ones with their socket counts.
create table nodes
(
    node_id      text    primary key,
    started_at   text   not null,
    -- The database's clock, so nodes with skewed clocks still agree who is alive.
    heartbeat_at text   not null,
    -- Live WebSocket sessions on the node at its last heartbeat.
    connections  bigint  not null check (connections >= 0)
);
