//! Reading a user's stream in one statement: the snapshot and the events after it.
//!
//! cqrs-es loads in two round trips (the snapshot, then the events after it), and a
//! connect loads the stream every time, so on PostgreSQL that was a whole round trip of
//! every connect. One `union all` reads both; a snapshot that no longer fits the
//! aggregate (its shape changed) is ignored and the stream replayed from its first event,
//! as the chained repository does for the crate's load.

use cqrs_es::Aggregate;
use domain::{UserEvent, UserStream};

use super::{Database, StoreError};

/// A stream as read: the state after its last event, and the number of its snapshot.
pub(super) struct Read {
    pub state: UserStream,
    pub snapshot: Option<usize>,
}

/// One row: the snapshot (`part` 0, `number` its count) or an event (`part` 1), as
/// `(part, number, sequence, payload)`.
type Row = (i64, i64, i64, String);

/// The snapshot first, then the events after the sequence it holds, in order; `$1` is the
/// aggregate type, `$2` the user. Written for both stores (the casts make the columns'
/// types agree across the union on PostgreSQL). Public so a test can hold PostgreSQL's
/// plan of it to the primary key.
pub const READ: &str = "\
    select cast(0 as bigint), current_snapshot, last_sequence, cast(payload as text) \
      from snapshots where aggregate_type = $1 and aggregate_id = $2 \
    union all \
    select cast(1 as bigint), cast(0 as bigint), sequence, cast(payload as text) from events \
     where aggregate_type = $1 and aggregate_id = $2 \
       and sequence > coalesce((select last_sequence from snapshots \
            where aggregate_type = $1 and aggregate_id = $2), 0) \
    order by 1, 3";
/// Every event of the stream, for a snapshot that no longer fits.
const REPLAY: &str = "\
    select cast(1 as bigint), cast(0 as bigint), sequence, cast(payload as text) from events \
     where aggregate_type = $1 and aggregate_id = $2 order by 3";

/// Reads `user_id`'s stream.
///
/// # Errors
/// A database error, or [`StoreError::Corrupt`] for an event that does not read as one
/// or a gap in the sequence.
pub(super) async fn read(db: &Database, user_id: &str) -> Result<Read, StoreError> {
    let mut events = rows(db, user_id, READ).await?;
    let (mut state, mut snapshot) = (UserStream::default(), None);
    if events.first().is_some_and(|(part, ..)| *part == 0) {
        let (_, number, sequence, payload) = events.remove(0);
        snapshot = usize::try_from(number).ok();
        match serde_json::from_str::<UserStream>(&payload) {
            // A snapshot holds exactly the state it is labelled with, or it is not used.
            Ok(read) if i64::try_from(read.sequence).ok() == Some(sequence) => state = read,
            _ => {
                tracing::warn!(
                    user_id,
                    "snapshot no longer fits the aggregate; replaying the stream"
                );
                events = rows(db, user_id, REPLAY).await?;
            }
        }
    }
    for (_, _, sequence, payload) in events {
        if usize::try_from(sequence).ok() != Some(state.sequence + 1) {
            return Err(StoreError::Corrupt(format!(
                "stream {user_id}: event {sequence} follows {}",
                state.sequence
            )));
        }
        let event: UserEvent = serde_json::from_str(&payload)
            .map_err(|e| StoreError::Corrupt(format!("stream {user_id}, event {sequence}: {e}")))?;
        state.apply(event);
    }
    Ok(Read { state, snapshot })
}

async fn rows(db: &Database, user_id: &str, sql: &str) -> Result<Vec<Row>, StoreError> {
    Ok(match db {
        Database::Sqlite(pool) => {
            sqlx::query_as(sql)
                .bind(UserStream::TYPE)
                .bind(user_id)
                .fetch_all(pool)
                .await?
        }
        Database::Postgres(pool) => {
            sqlx::query_as(sql)
                .bind(UserStream::TYPE)
                .bind(user_id)
                .fetch_all(pool)
                .await?
        }
    })
}
