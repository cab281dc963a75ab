//! The PostgreSQL append: a commit's events, its snapshot and (for a user's own session)
//! the check that the session still owns the user, in ONE statement, so one round trip.
//!
//! The chained repository writes through this on PostgreSQL. The rows are postgres-es 0.5's
//! own (same columns, same snapshot rules: insert the first snapshot,
//! update a later one only from the number it was read at), so its readers are unaffected.
//! A transaction around several statements cost a round trip each (begin, owner check,
//! insert, snapshot, commit); one statement with data-modifying `with` parts commits as a
//! whole or not at all, just the same. What is added is the owner check: the owner row is
//! locked `for share` before anything is written, so a claim of the user by a newer
//! session (which updates that row) waits for this append, and this append writes nothing
//! when the claim came first.

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::owners::NotOwner;

/// `$1` aggregate type, `$2` user, `$3`..`$7` the events' columns, `$8` the session that
/// must own the user (null: none must), `$9` the last sequence, `$10` the snapshot's new
/// number (0: no snapshot this time), `$11` its payload. The events go in only if the
/// session owns the user and the snapshot (when there is one) was written: its update
/// finds no row when another writer moved it on first. A sequence or first snapshot
/// another writer took fails the whole statement as a unique violation.
const APPEND: &str = "\
    with owner as ( \
        select session_id from session_owners \
         where $8::uuid is not null and user_id = $2 for share \
    ), allowed as ( \
        select $8::uuid is null or exists (select 1 from owner where session_id = $8) as ok \
    ), first_snapshot as ( \
        insert into snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
        select $1, $2, $9, $10, $11::jsonb where $10 = 1 and (select ok from allowed) \
        returning 1 \
    ), next_snapshot as ( \
        update snapshots set last_sequence = $9, payload = $11::jsonb, current_snapshot = $10 \
         where aggregate_type = $1 and aggregate_id = $2 and current_snapshot = $10 - 1 \
           and $10 > 1 and (select ok from allowed) \
        returning 1 \
    ), inserted as ( \
        insert into events (aggregate_type, aggregate_id, sequence, event_type, \
                            event_version, payload, metadata) \
        select $1, $2, * from unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[]) \
         where (select ok from allowed) \
           and ($10 = 0 or exists (select 1 from first_snapshot) \
                or exists (select 1 from next_snapshot)) \
        returning 1 \
    ) \
    select (select ok from allowed), (select count(*) from inserted)";

/// Appends `events` (and the snapshot update) of one stream, only while `must_own` owns the
/// user when it is given.
///
/// # Errors
/// `OptimisticLockError` when another writer took a sequence or the snapshot first;
/// `UnknownError` holding an [`NotOwner`] when the session was replaced; any other
/// database error.
pub async fn persist<A: Aggregate>(
    pool: &PgPool,
    events: &[SerializedEvent],
    snapshot_update: Option<(String, Value, usize)>,
    must_own: Option<Uuid>,
) -> Result<(), PersistenceError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let mut sequences = Vec::with_capacity(events.len());
    for event in events {
        sequences.push(to_i64(event.sequence)?);
    }
    let last_sequence = events.last().map_or(first.sequence, |e| e.sequence);
    let (snapshot_number, snapshot) = match snapshot_update {
        Some((_, payload, number)) => (to_i64(number)?, Some(payload)),
        None => (0, None),
    };
    let (owned, inserted): (bool, i64) = sqlx::query_as(APPEND)
        .bind(A::TYPE)
        .bind(&first.aggregate_id)
        .bind(sequences)
        .bind(
            events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.event_version.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| &e.payload).collect::<Vec<_>>())
        .bind(events.iter().map(|e| &e.metadata).collect::<Vec<_>>())
        .bind(must_own)
        .bind(to_i64(last_sequence)?)
        .bind(snapshot_number)
        .bind(snapshot)
        .fetch_one(pool)
        .await
        .map_err(sql_error)?;
    if !owned {
        return Err(PersistenceError::UnknownError(Box::new(NotOwner {
            user_id: first.aggregate_id.clone(),
            session_id: must_own.unwrap_or_default(),
        })));
    }
    if usize::try_from(inserted).ok() != Some(events.len()) {
        // Another writer moved the snapshot on: this commit lost the race, and wrote nothing.
        return Err(PersistenceError::OptimisticLockError);
    }
    Ok(())
}

fn to_i64(n: usize) -> Result<i64, PersistenceError> {
    i64::try_from(n).map_err(|e| PersistenceError::UnknownError(Box::new(e)))
}

/// As postgres-es maps them: a unique violation is a lost race, a broken connection is a
/// connection error, anything else unexpected.
fn sql_error(err: sqlx::Error) -> PersistenceError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            PersistenceError::ConnectionError(Box::new(err))
        }
        _ => PersistenceError::UnknownError(Box::new(err)),
    }
}
