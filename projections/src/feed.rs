//! The event history in commit order, after a position.
//!
//! SQLite has one writer at a time, so the global position (taken at insert) is commit
//! order. PostgreSQL takes the position at insert too, but transactions commit in any
//! order: a slow one can commit position 10 after position 11 was read. So on PostgreSQL
//! events are read only from transactions older than the oldest one still running
//! (`pg_snapshot_xmin`), ordered by (transaction id, position). Every event below that
//! horizon is committed (or rolled back), and no later transaction can get an id below
//! it, so a reader that moves along this order never passes over an event.

use chrono::{DateTime, Utc};
use domain::UserEvent;
use sqlx::Row;

use crate::{on_db, Db, ProjectionError};

/// A place in commit order: (writing transaction, global position). `tx` is 0 on SQLite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub tx: i64,
    pub global: i64,
}

/// One event as a projection sees it.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub position: Position,
    pub user_id: String,
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub event: UserEvent,
}

// The payload is read as text and parsed once into the event (not into a JSON value first).
// `+aggregate_type` keeps SQLite from choosing the (type, stream, sequence) key and sorting
// the whole history for every batch: it walks the position key instead.
const SQLITE_AFTER: &str = "select 0 as tx, global_position, aggregate_id, sequence, payload, \
    recorded_at from events where +aggregate_type = 'user' and global_position > $1 \
    order by global_position limit $2";

// The function (migrations/postgres) walks the commit-order index in order whatever the
// planner's statistics say.
const POSTGRES_AFTER: &str = "select tx, global_position, aggregate_id, sequence, payload, \
    recorded_at from events_in_commit_order($1::text::xid8, $2, $3)";

/// At most `limit` events after `after`, in commit order.
///
/// # Errors
/// A database error, or [`ProjectionError::BadEvent`] for a row that is not an event.
pub async fn after(
    db: &Db,
    after: Position,
    limit: i64,
) -> Result<Vec<FeedEvent>, ProjectionError> {
    let rows = match db {
        Db::Sqlite(pool) => sqlx::query(SQLITE_AFTER)
            .bind(after.global)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| read_row(&r))
            .collect::<Result<Vec<_>, _>>()?,
        Db::Postgres(pool) => sqlx::query(POSTGRES_AFTER)
            .bind(after.tx.to_string())
            .bind(after.global)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| read_row(&r))
            .collect::<Result<Vec<_>, _>>()?,
    };
    rows.into_iter().collect()
}

/// The position of `user_id`'s latest event, or `None` for a user never seen. A reader
/// that waits for a projection to pass it sees every write of that user.
///
/// # Errors
/// A database error.
pub async fn last_of_user(db: &Db, user_id: &str) -> Result<Option<Position>, ProjectionError> {
    let row: Option<(i64, i64)> = match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(
                "select 0, global_position from events where aggregate_type = 'user' \
                 and aggregate_id = $1 order by sequence desc limit 1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_as(
                "select transaction_id::text::bigint, global_position from events \
                 where aggregate_type = 'user' and aggregate_id = $1 \
                 order by sequence desc limit 1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await?
        }
    };
    Ok(row.map(|(tx, global)| Position { tx, global }))
}

/// How many events come after `after` in commit order and are readable now: how far a
/// projection at `after` is behind.
///
/// # Errors
/// A database error.
pub async fn count_after(db: &Db, after: Position) -> Result<i64, ProjectionError> {
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_scalar(
            "select count(*) from events where +aggregate_type = 'user' and global_position > $1",
        )
        .bind(after.global)
        .fetch_one(pool)
        .await?,
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "select count(*) from events where aggregate_type = 'user' \
                 and (transaction_id, global_position) > ($1::text::xid8, $2)",
            )
            .bind(after.tx.to_string())
            .bind(after.global)
            .fetch_one(pool)
            .await?
        }
    })
}

/// How many events are in the history at all (for progress and lag).
///
/// # Errors
/// A database error.
pub async fn count_all(db: &Db) -> Result<i64, ProjectionError> {
    let sql = "select count(*) from events where aggregate_type = 'user'";
    Ok(on_db!(db, pool => sqlx::query_scalar(sql).fetch_one(pool).await?))
}

/// Reads one row, on either backend, into a [`FeedEvent`].
fn read_row<R>(row: &R) -> Result<Result<FeedEvent, ProjectionError>, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let position = Position {
        tx: row.try_get("tx")?,
        global: row.try_get("global_position")?,
    };
    let user_id: String = row.try_get("aggregate_id")?;
    let payload: String = row.try_get("payload")?;
    let event = match serde_json::from_str::<UserEvent>(&payload) {
        Ok(event) => event,
        Err(e) => {
            return Ok(Err(ProjectionError::BadEvent {
                user_id,
                position: position.global,
                reason: e.to_string(),
            }))
        }
    };
    Ok(Ok(FeedEvent {
        position,
        user_id,
        sequence: row.try_get("sequence")?,
        recorded_at: row.try_get("recorded_at")?,
        event,
    }))
}
