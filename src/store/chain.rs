//! The event repository the event store reads and writes through: the crates' repository
//! for the backend, plus what they do not do.
//!
//! - **Tamper evidence.** Each event's metadata carries `hash` = SHA-256 over the previous
//!   event's hash and this event's content (stream id, sequence, type, version, payload,
//!   metadata without the hash), in canonical JSON. [`verify`] recomputes the chain, so an
//!   auditor can prove a stream was not altered after it was written.
//! - **Snapshots labelled with the state they hold.** The caller hands over the state
//!   after the commit's LAST event (cqrs-es 0.5's own commit would hand over the state at
//!   the snapshot boundary, labelled with the last sequence: later loads would skip the
//!   events between); a snapshot that does not fit is passed over when the stream is read
//!   ([`super::read_stream`]).
//! - **One writer per user across nodes.** On PostgreSQL the append goes through
//!   [`super::pg_append`], which checks in the same transaction that the appending session
//!   still owns the user when the command path asks for it ([`ChainedRepository::append`]).
//! - **Group commit on SQLite.** There the append goes through [`super::sqlite_append`],
//!   whose one writer task commits many streams' appends in one transaction.
//!
//! The command path ([`super::streams`]) appends through [`ChainedRepository::append`]
//! with the state it keeps in memory. The rows are those sqlite-es / postgres-es read and
//! write (same tables and columns), so the crates' repositories still read them.

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Database, StoreError};

/// The hash before the first event of every stream.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_KEY: &str = "hash";

pub struct ChainedRepository {
    db: Database,
    /// The SQLite group-commit writer, started by the first append.
    sqlite_writer: std::sync::OnceLock<super::sqlite_append::Writer>,
}

impl ChainedRepository {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            sqlite_writer: std::sync::OnceLock::new(),
        }
    }
}

/// Rebuilds `value` with every object's keys in sorted order, so the same content always
/// serializes to the same bytes, whichever order a database returns keys in.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut sorted = Map::new();
            for key in keys {
                sorted.insert(key.clone(), canonical(&map[key]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The hash of one event, chained to `previous`.
pub fn event_hash(
    previous: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    event_version: &str,
    payload: &Value,
    metadata: &Value,
) -> String {
    let mut metadata = canonical(metadata);
    if let Value::Object(map) = &mut metadata {
        map.remove(HASH_KEY);
    }
    let content = serde_json::json!({
        "aggregate_id": aggregate_id,
        "sequence": sequence,
        "event_type": event_type,
        "event_version": event_version,
        "payload": canonical(payload),
        "metadata": metadata,
    });
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(content.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

impl ChainedRepository {
    /// The hash of event `sequence` of the stream (the genesis hash before event 1).
    async fn hash_at(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<String, StoreError> {
        if sequence == 0 {
            return Ok(GENESIS.to_string());
        }
        let metadata: Option<Value> = match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query_scalar("select metadata from events where aggregate_type = ? and aggregate_id = ? and sequence = ?")
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(sequence as i64)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar("select metadata from events where aggregate_type = $1 and aggregate_id = $2 and sequence = $3")
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(sequence as i64)
                    .fetch_optional(pool)
                    .await?
            }
        };
        // A missing predecessor means another writer is ahead or behind us; the append
        // itself then fails on the sequence, so any value is safe here.
        Ok(metadata
            .as_ref()
            .and_then(|m| m.get(HASH_KEY))
            .and_then(Value::as_str)
            .unwrap_or(GENESIS)
            .to_string())
    }
}

impl ChainedRepository {
    /// Chains `events` (one commit of one stream, in order) to `previous`, the hash of the
    /// event before the first (read from the database when not given), and appends them
    /// with `snapshot_update`, which must hold the state after the LAST of them. Only while
    /// `must_own` owns the user when given (PostgreSQL: checked in the append's
    /// transaction). Returns the last event's hash, so the next commit of a writer that
    /// keeps the stream in memory need not read it back.
    ///
    /// # Errors
    /// `OptimisticLockError` when another writer took a sequence (or the snapshot) first;
    /// on PostgreSQL, `UnknownError` holding a [`super::owners::NotOwner`] when `must_own`
    /// no longer owns the user.
    pub async fn append<A: Aggregate>(
        &self,
        mut events: Vec<SerializedEvent>,
        snapshot_update: Option<(String, Value, usize)>,
        previous: Option<String>,
        must_own: Option<Uuid>,
    ) -> Result<String, PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(previous.unwrap_or_else(|| GENESIS.to_string()));
        };
        let mut previous = match previous {
            Some(hash) => hash,
            None => self
                .hash_at(
                    &first.aggregate_type,
                    &first.aggregate_id,
                    first.sequence.saturating_sub(1),
                )
                .await
                .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?,
        };
        for event in &mut events {
            let hash = event_hash(
                &previous,
                &event.aggregate_id,
                event.sequence as i64,
                &event.event_type,
                &event.event_version,
                &event.payload,
                &event.metadata,
            );
            if let Value::Object(map) = &mut event.metadata {
                map.insert(HASH_KEY.to_string(), Value::String(hash.clone()));
            }
            previous = hash;
        }
        match &self.db {
            Database::Postgres(pool) => {
                super::pg_append::persist::<A>(pool, &events, snapshot_update, must_own).await?
            }
            // One process is the whole cluster: the command lock and the registry's
            // live-session check already keep a replaced session from recording.
            Database::Sqlite(pool) => {
                self.sqlite_writer
                    .get_or_init(|| super::sqlite_append::Writer::start(pool.clone()))
                    .append(A::TYPE, events, snapshot_update)
                    .await?
            }
        }
        Ok(previous)
    }
}

/// The result of checking one stream's chain (docs/protocol.md, section 5, "What verify
/// reports").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// True when every event's recorded hash matched the recomputed chain.
    pub ok: bool,
    /// How many events were examined, the first bad one included.
    pub events_checked: u64,
    /// The sequence of the first event that failed (a changed event, or one after a gap),
    /// or null.
    #[schema(required = true)]
    pub first_bad_sequence: Option<i64>,
}

/// Recomputes the hash chain of `aggregate_id`'s stream from its first event.
pub async fn verify(
    db: &Database,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Verification, StoreError> {
    type Row = (i64, String, String, Value, Value);
    let rows: Vec<Row> = match db {
        Database::Sqlite(pool) => {
            sqlx::query_as("select sequence, event_type, event_version, payload, metadata from events where aggregate_type = ? and aggregate_id = ? order by sequence")
                .bind(aggregate_type)
                .bind(aggregate_id)
                .fetch_all(pool)
                .await?
        }
        Database::Postgres(pool) => {
            sqlx::query_as("select sequence, event_type, event_version, payload, metadata from events where aggregate_type = $1 and aggregate_id = $2 order by sequence")
                .bind(aggregate_type)
                .bind(aggregate_id)
                .fetch_all(pool)
                .await?
        }
    };
    let mut previous = GENESIS.to_string();
    let mut checked = 0;
    for (index, (sequence, event_type, event_version, payload, metadata)) in rows.iter().enumerate()
    {
        checked += 1;
        let expected = event_hash(
            &previous,
            aggregate_id,
            *sequence,
            event_type,
            event_version,
            payload,
            metadata,
        );
        let recorded = metadata.get(HASH_KEY).and_then(Value::as_str);
        // A gap in the sequence is tampering too (an event was removed).
        if *sequence != index as i64 + 1 || recorded != Some(expected.as_str()) {
            return Ok(Verification {
                ok: false,
                events_checked: checked,
                first_bad_sequence: Some(*sequence),
            });
        }
        previous = expected;
    }
    Ok(Verification {
        ok: true,
        events_checked: checked,
        first_bad_sequence: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_ignores_key_order_and_its_own_field() {
        let a = event_hash(
            GENESIS,
            "u",
            1,
            "T",
            "1.0",
            &json!({"a": 1, "b": [{"x": 1, "y": 2}]}),
            &json!({"n": "1"}),
        );
        let b = event_hash(
            GENESIS,
            "u",
            1,
            "T",
            "1.0",
            &json!({"b": [{"y": 2, "x": 1}], "a": 1}),
            &json!({"hash": "zzz", "n": "1"}),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn every_part_of_the_event_is_covered() {
        let base = event_hash(GENESIS, "u", 1, "T", "1.0", &json!({"a": 1}), &json!({}));
        assert_ne!(
            base,
            event_hash("1", "u", 1, "T", "1.0", &json!({"a": 1}), &json!({}))
        );
        assert_ne!(
            base,
            event_hash(GENESIS, "v", 1, "T", "1.0", &json!({"a": 1}), &json!({}))
        );
        assert_ne!(
            base,
            event_hash(GENESIS, "u", 2, "T", "1.0", &json!({"a": 1}), &json!({}))
        );
        assert_ne!(
            base,
            event_hash(GENESIS, "u", 1, "U", "1.0", &json!({"a": 1}), &json!({}))
        );
        assert_ne!(
            base,
            event_hash(GENESIS, "u", 1, "T", "2.0", &json!({"a": 1}), &json!({}))
        );
        assert_ne!(
            base,
            event_hash(GENESIS, "u", 1, "T", "1.0", &json!({"a": 2}), &json!({}))
        );
        assert_ne!(
            base,
            event_hash(
                GENESIS,
                "u",
                1,
                "T",
                "1.0",
                &json!({"a": 1}),
                &json!({"k": "v"})
            )
        );
    }
}
