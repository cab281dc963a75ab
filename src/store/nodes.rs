//! The table `nodes`: each node's heartbeat row, stamped with the database's clock (so
//! nodes whose own clocks disagree still agree on who is alive). The beating itself, and
//! what a node does with it, is [`crate::nodes`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Database, StoreError};

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
