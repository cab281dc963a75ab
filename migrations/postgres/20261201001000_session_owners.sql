-- Which WebSocket session owns each user, across every node on this database
-- (src/ownership.rs). A new connection takes the row in one transaction and only then reads
-- the user's stream; every append of a session locks the row `for share` inside the
-- transaction that inserts its events and records nothing unless the session still owns
-- it. A takeover's update therefore waits for an append in flight, and every later append
-- of the replaced session fails.
create table session_owners
(
    user_id    text        primary key,
    session_id uuid        not null,
    node_id    text        not null,
    -- Raised by every takeover: a node compares it with its local session's, so a
    -- notification that arrives late (or out of order with a newer claim) never evicts the
    -- newer session.
    generation bigint      not null check (generation >= 1),
    since      timestamptz not null default now()
);
