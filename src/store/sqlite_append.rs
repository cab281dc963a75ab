//! The SQLite append: one writer task commits the appends of many users' commands in one
//! transaction (group commit).
//!
//! SQLite has one writer at a time, and every commit waits for the WAL to reach the disk
//! (`synchronous=FULL`). Committing each command on its own makes that flush the limit of
//! the whole server; here the appends that arrive while a commit is being flushed are
//! gathered and committed together by the next one. Each command still hears of its append
//! only after the commit that holds it, so nothing is acknowledged before it is durable.
//!
//! Each append runs in a savepoint of its own: one that loses its race (another writer took
//! its sequence, or moved the snapshot on) is rolled back alone and reported as a lost
//! race, and the others commit. The statements are sqlite-es 0.5's own (same columns, same
//! snapshot rules: insert the first snapshot, update a later one only from the number it
//! was read at), so its readers are unaffected; unlike sqlite-es, a snapshot that moved on
//! is found before the commit, not after it (when the events are already stored).

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde_json::Value;
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

/// The most appends one transaction takes: enough to carry the server's peak between two
/// flushes, few enough that a failed commit fails a bounded number of commands.
const MAX_BATCH: usize = 256;
/// Appends waiting for the writer before senders wait for room.
const QUEUE: usize = 4096;

/// One stream's commit, waiting for the writer.
struct Append {
    aggregate_type: &'static str,
    events: Vec<SerializedEvent>,
    snapshot_update: Option<(String, Value, usize)>,
    done: oneshot::Sender<Result<(), PersistenceError>>,
}

/// A handle on the writer task of one SQLite database; the task ends when every handle is
/// dropped.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Append>,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(pool: SqlitePool) -> Self {
        let (queue, appends) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, appends));
        Self { queue }
    }

    /// Appends `events` of one stream (and the snapshot update, labelled with the last
    /// event's sequence) and returns once they are committed.
    ///
    /// # Errors
    /// `OptimisticLockError` when another writer took a sequence or the snapshot first;
    /// any other database error, in which case nothing of this append was stored.
    pub async fn append(
        &self,
        aggregate_type: &'static str,
        events: Vec<SerializedEvent>,
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let (done, outcome) = oneshot::channel();
        let append = Append {
            aggregate_type,
            events,
            snapshot_update,
            done,
        };
        self.queue.send(append).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> PersistenceError {
    PersistenceError::UnknownError("the SQLite writer stopped".into())
}

async fn run(pool: SqlitePool, mut appends: mpsc::Receiver<Append>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while appends.recv_many(&mut batch, MAX_BATCH).await > 0 {
        commit(&pool, std::mem::take(&mut batch)).await;
    }
}

/// Commits `batch` in one transaction and tells each append how it went.
async fn commit(pool: &SqlitePool, batch: Vec<Append>) {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            let reason = e.to_string();
            for append in batch {
                let _ = append.done.send(Err(failed(&reason)));
            }
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for append in &batch {
        outcomes.push(in_savepoint(&mut tx, append).await);
    }
    // A failed commit stores none of them, including those whose savepoint went well.
    if let Err(e) = tx.commit().await {
        let reason = e.to_string();
        for outcome in &mut outcomes {
            if outcome.is_ok() {
                *outcome = Err(failed(&reason));
            }
        }
    }
    for (append, outcome) in batch.into_iter().zip(outcomes) {
        // A command that stopped waiting (its socket closed) still had its events stored.
        let _ = append.done.send(outcome);
    }
}

fn failed(reason: &str) -> PersistenceError {
    PersistenceError::UnknownError(format!("the commit failed: {reason}").into())
}

/// One append inside its own savepoint: stored entirely or rolled back entirely.
async fn in_savepoint(
    tx: &mut Transaction<'static, Sqlite>,
    append: &Append,
) -> Result<(), PersistenceError> {
    let Some(last) = append.events.last() else {
        return Ok(());
    };
    // Inside the batch's transaction, sqlx opens a savepoint.
    let mut savepoint = sqlx::Connection::begin(&mut **tx)
        .await
        .map_err(sql_error)?;
    for event in &append.events {
        sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) values (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(append.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(to_i64(event.sequence)?)
        .bind(&event.event_type)
        .bind(&event.event_version)
        .bind(&event.payload)
        .bind(&event.metadata)
        .execute(&mut *savepoint)
        .await
        .map_err(sql_error)?;
    }
    if let Some((aggregate_id, payload, current_snapshot)) = &append.snapshot_update {
        let stored = if *current_snapshot == 1 {
            sqlx::query(
                "insert into snapshots (aggregate_type, aggregate_id, last_sequence, \
                 current_snapshot, payload) values (?, ?, ?, ?, ?)",
            )
            .bind(append.aggregate_type)
            .bind(aggregate_id)
            .bind(to_i64(last.sequence)?)
            .bind(to_i64(*current_snapshot)?)
            .bind(payload)
            .execute(&mut *savepoint)
            .await
        } else {
            sqlx::query(
                "update snapshots set last_sequence = ?, payload = ?, current_snapshot = ? \
                 where aggregate_type = ? and aggregate_id = ? and current_snapshot = ?",
            )
            .bind(to_i64(last.sequence)?)
            .bind(payload)
            .bind(to_i64(*current_snapshot)?)
            .bind(append.aggregate_type)
            .bind(aggregate_id)
            .bind(to_i64(current_snapshot - 1)?)
            .execute(&mut *savepoint)
            .await
        }
        .map_err(sql_error)?;
        // Another writer moved the snapshot on: this append lost the race. Dropping the
        // savepoint rolls its events back with it.
        if stored.rows_affected() != 1 {
            return Err(PersistenceError::OptimisticLockError);
        }
    }
    savepoint.commit().await.map_err(sql_error)
}

fn to_i64(n: usize) -> Result<i64, PersistenceError> {
    i64::try_from(n).map_err(|e| PersistenceError::UnknownError(Box::new(e)))
}

/// A unique violation is a lost race (the stream's sequence, or the first snapshot);
/// anything else is unexpected.
fn sql_error(err: sqlx::Error) -> PersistenceError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            PersistenceError::OptimisticLockError
        }
        _ => PersistenceError::UnknownError(Box::new(err)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Database;

    fn event(stream: &str, sequence: usize, text: &str) -> SerializedEvent {
        SerializedEvent {
            aggregate_id: stream.into(),
            sequence,
            aggregate_type: "user".into(),
            event_type: "Note".into(),
            event_version: "1.0".into(),
            payload: json!({ "Note": { "text": text } }),
            metadata: json!({}),
        }
    }

    /// Appends queued together are committed in one transaction, and one that loses its
    /// race there (a taken sequence, a snapshot that moved on) is rolled back alone.
    /// On the current-thread runtime all four are queued before the writer first runs.
    #[tokio::test]
    async fn a_lost_race_in_a_batch_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("append.db").display());
        let db = Database::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        let Database::Sqlite(pool) = db else {
            panic!("not SQLite")
        };
        let writer = Writer::start(pool.clone());
        let taken = writer.append("user", vec![event("a", 1, "first")], None);
        let other = writer.append("user", vec![event("b", 1, "b")], None);
        let again = writer.append("user", vec![event("a", 1, "second")], None);
        let moved = writer.append(
            "user",
            vec![event("d", 1, "d1"), event("d", 2, "d2")],
            Some(("d".into(), json!({}), 2)),
        );
        let (taken, other, again, moved) = tokio::join!(taken, other, again, moved);
        assert!(taken.is_ok() && other.is_ok(), "{taken:?} {other:?}");
        assert!(
            matches!(again, Err(PersistenceError::OptimisticLockError)),
            "{again:?}"
        );
        assert!(
            matches!(moved, Err(PersistenceError::OptimisticLockError)),
            "{moved:?}"
        );
        let stored: Vec<(String, i64, String)> = sqlx::query_as(
            "select aggregate_id, sequence, json_extract(payload, '$.Note.text') \
             from events order by global_position",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            stored,
            [("a".into(), 1, "first".into()), ("b".into(), 1, "b".into())]
        );
    }
}
