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

/// The snapshot first, then the events after the sequence it holds, in order.
/// `$1`/`?1` is the aggregate type, `$2`/`?2` the user.
const READ_PG: &str = "\
    select 0::bigint, current_snapshot, last_sequence, payload::text from snapshots \
     where aggregate_type = $1 and aggregate_id = $2 \
    union all \
    select 1, 0, sequence, payload::text from events \
     where aggregate_type = $1 and aggregate_id = $2 \
       and sequence > coalesce((select last_sequence from snapshots \
            where aggregate_type = $1 and aggregate_id = $2), 0) \
    order by 1, 3";
const READ_SQLITE: &str = "\
    select 0, current_snapshot, last_sequence, payload from snapshots \
     where aggregate_type = ?1 and aggregate_id = ?2 \
    union all \
    select 1, 0, sequence, payload from events \
     where aggregate_type = ?1 and aggregate_id = ?2 \
       and sequence > coalesce((select last_sequence from snapshots \
            where aggregate_type = ?1 and aggregate_id = ?2), 0) \
    order by 1, 3";
/// Every event of the stream, for a snapshot that no longer fits.
const REPLAY_PG: &str = "select 1::bigint, 0::bigint, sequence, payload::text from events \
     where aggregate_type = $1 and aggregate_id = $2 order by 3";
const REPLAY_SQLITE: &str = "select 1, 0, sequence, payload from events \
     where aggregate_type = ?1 and aggregate_id = ?2 order by 3";

/// Reads `user_id`'s stream.
///
/// # Errors
/// A database error, or [`StoreError::Corrupt`] for an event that does not read as one
/// or a gap in the sequence.
pub(super) async fn read(db: &Database, user_id: &str) -> Result<Read, StoreError> {
    let found = rows(db, user_id, Part::SnapshotAndAfter).await?;
    let (snapshot, state, events) = match found.split_first() {
        Some(((0, number, sequence, payload), after)) => {
            let number = usize::try_from(*number).ok();
            match serde_json::from_str::<UserStream>(payload) {
                // A snapshot holds exactly the state it is labelled with, or it is not used.
                Ok(state) if i64::try_from(state.sequence).ok() == Some(*sequence) => {
                    (number, state, after.to_vec())
                }
                _ => {
                    tracing::warn!(
                        user_id,
                        "snapshot no longer fits the aggregate; replaying the stream"
                    );
                    let all = rows(db, user_id, Part::EveryEvent).await?;
                    (number, UserStream::default(), all)
                }
            }
        }
        _ => (None, UserStream::default(), found),
    };
    let mut state = state;
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

enum Part {
    SnapshotAndAfter,
    EveryEvent,
}

async fn rows(db: &Database, user_id: &str, part: Part) -> Result<Vec<Row>, StoreError> {
    Ok(match db {
        Database::Sqlite(pool) => {
            let sql = match part {
                Part::SnapshotAndAfter => READ_SQLITE,
                Part::EveryEvent => REPLAY_SQLITE,
            };
            sqlx::query_as(sql)
                .bind(UserStream::TYPE)
                .bind(user_id)
                .fetch_all(pool)
                .await?
        }
        Database::Postgres(pool) => {
            let sql = match part {
                Part::SnapshotAndAfter => READ_PG,
                Part::EveryEvent => REPLAY_PG,
            };
            sqlx::query_as(sql)
                .bind(UserStream::TYPE)
                .bind(user_id)
                .fetch_all(pool)
                .await?
        }
    })
}
