//! The PostgreSQL append: a commit's events, its snapshot and (for a user's own session)
//! the check that the session still owns the user, in ONE transaction.
//!
//! postgres-es opens its own transaction inside `persist`, where nothing can be added, so
//! the chained repository writes through this instead on PostgreSQL. The statements are
//! postgres-es 0.5's own (same columns, same snapshot rules: insert the first snapshot,
//! update a later one only from the number it was read at), so its readers are unaffected;
//! what is added is [`owners::check_in`] before the inserts. A claim of the user by a
//! newer session updates the row this locks `for share`, so it waits for this transaction,
//! and this transaction fails when the claim came first.

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::owners::{self, OwnerCheckError};

/// Appends `events` (and the snapshot update) of one stream, only while `must_own` owns the
/// user when it is given.
///
/// # Errors
/// `OptimisticLockError` when another writer took a sequence or the snapshot first;
/// `UnknownError` holding an [`owners::NotOwner`] when the session was replaced; any
/// other database error.
pub async fn persist<A: Aggregate>(
    pool: &PgPool,
    events: &[SerializedEvent],
    snapshot_update: Option<(String, Value, usize)>,
    must_own: Option<Uuid>,
) -> Result<(), PersistenceError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let mut tx = pool.begin().await.map_err(sql_error)?;
    if let Some(session_id) = must_own {
        owners::check_in(&mut tx, &first.aggregate_id, session_id)
            .await
            .map_err(|e| match e {
                OwnerCheckError::NotOwner(e) => PersistenceError::UnknownError(Box::new(e)),
                OwnerCheckError::Sql(e) => sql_error(e),
            })?;
    }
    // One statement for the commit's events, however many (an answer appends three):
    // each statement is a round trip inside the transaction.
    let mut sequences = Vec::with_capacity(events.len());
    for event in events {
        sequences.push(to_i64(event.sequence)?);
    }
    let last_sequence = events.last().map_or(first.sequence, |e| e.sequence);
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata) \
         select $1, $2, * from unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])",
    )
    .bind(A::TYPE)
    .bind(&first.aggregate_id)
    .bind(sequences)
    .bind(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_version.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| &e.payload).collect::<Vec<_>>())
    .bind(events.iter().map(|e| &e.metadata).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .map_err(sql_error)?;
    if let Some((aggregate_id, payload, current_snapshot)) = snapshot_update {
        if current_snapshot == 1 {
            sqlx::query(
                "insert into snapshots (aggregate_type, aggregate_id, last_sequence, \
                 current_snapshot, payload) values ($1, $2, $3, $4, $5)",
            )
            .bind(A::TYPE)
            .bind(&aggregate_id)
            .bind(to_i64(last_sequence)?)
            .bind(to_i64(current_snapshot)?)
            .bind(&payload)
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
        } else {
            let updated = sqlx::query(
                "update snapshots set last_sequence = $3, payload = $5, current_snapshot = $4 \
                 where aggregate_type = $1 and aggregate_id = $2 and current_snapshot = $6",
            )
            .bind(A::TYPE)
            .bind(&aggregate_id)
            .bind(to_i64(last_sequence)?)
            .bind(to_i64(current_snapshot)?)
            .bind(&payload)
            .bind(to_i64(current_snapshot - 1)?)
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
            // Another writer moved the snapshot on: this commit lost the race. Dropping the
            // transaction rolls the events back with it.
            if updated.rows_affected() != 1 {
                return Err(PersistenceError::OptimisticLockError);
            }
        }
    }
    tx.commit().await.map_err(sql_error)?;
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
