//! Which server processes share the database: each node beats its row in `nodes` every
//! [`Membership::every`](crate::config::Membership) with its live socket count, and a node whose last beat is older
//! than the lease is gone (killed, cut off, or stopped without saying so). A node that
//! stops cleanly deletes its row. `GET /api/admin/connections` on any node lists the live
//! ones from here (docs/protocol.md, section 7).
//!
//! Heartbeats are stamped with the database's clock, so nodes whose own clocks disagree
//! still agree on who is alive.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

pub use crate::config::Membership;
use crate::state::AppState;
use crate::store::{Database, StoreError};

/// A live node as its last heartbeat left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    pub node_id: String,
    pub connections: u64,
}

/// Records that `node_id` is alive now with `connections` live sockets.
///
/// # Errors
/// A database error.
pub async fn beat(
    db: &Database,
    node_id: &str,
    started_at: DateTime<Utc>,
    connections: usize,
) -> Result<(), StoreError> {
    let connections = i64::try_from(connections).unwrap_or(i64::MAX);
    match db {
        Database::Sqlite(pool) => {
            sqlx::query(
                "insert into nodes (node_id, started_at, heartbeat_at, connections) \
                 values (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?) \
                 on conflict (node_id) do update \
                 set heartbeat_at = excluded.heartbeat_at, connections = excluded.connections",
            )
            .bind(node_id)
            .bind(crate::store::audit::sqlite_time(started_at))
            .bind(connections)
            .execute(pool)
            .await?;
        }
        Database::Postgres(pool) => {
            sqlx::query(
                "insert into nodes (node_id, started_at, heartbeat_at, connections) \
                 values ($1, $2, now(), $3) \
                 on conflict (node_id) do update \
                 set heartbeat_at = excluded.heartbeat_at, connections = excluded.connections",
            )
            .bind(node_id)
            .bind(started_at)
            .bind(connections)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// The nodes whose last heartbeat is younger than `lease`, by node id.
///
/// # Errors
/// A database error.
pub async fn live(db: &Database, lease: Duration) -> Result<Vec<LiveNode>, StoreError> {
    let seconds = lease.as_secs_f64();
    let rows: Vec<(String, i64)> = match db {
        Database::Sqlite(pool) => {
            sqlx::query_as(
                "select node_id, connections from nodes where heartbeat_at > \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%.3f seconds', ?)) \
                 order by node_id",
            )
            .bind(seconds)
            .fetch_all(pool)
            .await?
        }
        Database::Postgres(pool) => {
            sqlx::query_as(
                "select node_id, connections from nodes \
                 where heartbeat_at > now() - make_interval(secs => $1) order by node_id",
            )
            .bind(seconds)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(node_id, connections)| LiveNode {
            node_id,
            connections: u64::try_from(connections).unwrap_or(0),
        })
        .collect())
}

/// Removes `node_id`'s row: it stopped and says so, instead of waiting out its lease.
///
/// # Errors
/// A database error.
pub async fn leave(db: &Database, node_id: &str) -> Result<(), StoreError> {
    match db {
        Database::Sqlite(pool) => {
            sqlx::query("delete from nodes where node_id = ?")
                .bind(node_id)
                .execute(pool)
                .await?;
        }
        Database::Postgres(pool) => {
            sqlx::query("delete from nodes where node_id = $1")
                .bind(node_id)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// Beats this node's row every `state.membership.every` until `stop`, then leaves. A failed
/// beat (the database is away) is logged and tried again at the next one: the node's
/// sockets do not depend on it.
pub async fn run(state: AppState, stop: CancellationToken) {
    let (db, node_id) = (&state.db, &state.node_id);
    let started_at = Utc::now();
    let mut every = tokio::time::interval(state.membership.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        if let Err(e) = beat(db, node_id, started_at, state.registry.live()).await {
            tracing::warn!(error = %e, "node heartbeat failed; trying again at the next one");
        }
    }
    if let Err(e) = leave(db, node_id).await {
        tracing::warn!(error = %e, "could not remove this node's heartbeat; it expires by itself");
    }
}
