//! The per-user event streams: load a user's state (snapshot + newer events), decide a
//! command, append its events under optimistic concurrency, decide again on a conflict.
//!
//! Loading is one statement, the snapshot and the newer events together
//! ([`read_stream`]), where cqrs-es's `PersistedEventStore` takes two. Appending goes
//! through [`ChainedRepository`], not cqrs-es's `commit`: the command path keeps what it
//! knows of a stream between commands ([`Known`], held with the user's command lock), so a
//! command is decided on the state in memory and appended without reading the stream
//! first (a load decodes the snapshot and the newer events: most of a command's cost
//! before). Another writer (another node, an admin
//! elsewhere, a tool) is caught by the stream's optimistic concurrency: it took the next
//! sequence, so this append fails, what was known is forgotten, and the command is decided
//! again on the stream as read. A command that records nothing is answered from memory
//! only after one indexed read of the stream's head says memory is current.
//! `CqrsFramework` is not used: it does not return the committed events and it runs
//! queries after the commit, dropping their errors.

use std::collections::HashMap;

use chrono::Utc;
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use domain::{DomainError, Outcome, UserCommand, UserEvent, UserStream};
use thiserror::Error;

use super::chain::ChainedRepository;
use super::owners::NotOwner;
use super::read_stream;
use super::{Database, StoreError};

/// How often a command is decided again after losing an optimistic-concurrency race.
const MAX_ATTEMPTS: usize = 8;

/// Who and what caused a command; recorded as every event's metadata (PROTOCOL section 4).
#[derive(Debug, Clone, Default)]
pub struct EventMetadata {
    pub connection_id: Option<String>,
    pub request_id: Option<String>,
    pub node_id: String,
    /// `user:<sub>` for a test-taker's own actions, `admin:<sub>` for an admin's.
    pub actor: String,
    /// Append only while this session owns the user (on PostgreSQL, checked in the
    /// append's transaction: [`super::owners`]). An instruction, not recorded.
    pub must_own: Option<uuid::Uuid>,
}

impl EventMetadata {
    fn to_value(&self) -> serde_json::Value {
        let mut map = HashMap::from([
            ("node_id".to_string(), self.node_id.clone()),
            ("actor".to_string(), self.actor.clone()),
            (
                "time".to_string(),
                Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ]);
        if let Some(id) = &self.connection_id {
            map.insert("connection_id".into(), id.clone());
        }
        if let Some(id) = &self.request_id {
            map.insert("request_id".into(), id.clone());
        }
        serde_json::json!(map)
    }
}

/// An event as committed, with its position in the user's stream.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub sequence: usize,
    pub event: UserEvent,
}

/// A command as recorded: what the domain decided it means, the events it appended (maybe
/// none), and the state after them.
#[derive(Debug, Clone)]
pub struct Committed {
    pub outcome: Outcome,
    pub events: Vec<Recorded>,
    pub state: UserStream,
}

/// Why a command was not appended; in every case nothing was recorded.
#[derive(Debug, Error)]
pub enum AppendError {
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// Other writers kept appending to the stream; the caller may try again.
    #[error("the stream kept changing; gave up after {MAX_ATTEMPTS} attempts")]
    Conflict,
    /// The appending session no longer owns the user (a newer connection claimed it).
    #[error(transparent)]
    Replaced(#[from] NotOwner),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the command path knows of one user's stream between commands: the state after
/// its latest event as this process last saw it. It lives with the user's command lock
/// ([`crate::registry::Registry::user_lock`]), so only while the user has a live session
/// here, and only a holder of that lock reads or changes it.
#[derive(Debug, Default)]
pub struct Known(Option<KnownStream>);

#[derive(Debug)]
struct KnownStream {
    /// The state after event `state.sequence`.
    state: UserStream,
    /// The number of the stream's snapshot row, as cqrs-es counts them (1 for the first).
    snapshot: Option<usize>,
    /// The hash of event `state.sequence`, once known without reading it back.
    last_hash: Option<String>,
}

/// The event store of every user's stream, on either backend.
pub struct Streams {
    /// What appends go through (a load is one statement: [`read_stream`]).
    repo: ChainedRepository,
    db: Database,
    /// A snapshot is written whenever a commit reaches a multiple of this.
    snapshot_every: usize,
}

enum Attempt {
    Done(Committed),
    /// Another writer appended first, or memory was behind: decide again on the stream.
    Stale,
}

impl Streams {
    /// A snapshot is written every `snapshot_every` events, so loading a stream reads the
    /// snapshot and at most that many newer events.
    pub fn new(db: &Database, snapshot_every: usize) -> Self {
        let every = snapshot_every.max(1);
        Streams {
            repo: ChainedRepository::new(db.clone()),
            db: db.clone(),
            snapshot_every: every,
        }
    }

    /// The user's current state (an empty stream for a user never seen).
    pub async fn load(&self, user_id: &str) -> Result<UserStream, StoreError> {
        Ok(self.read(user_id).await?.state)
    }

    async fn read(&self, user_id: &str) -> Result<KnownStream, StoreError> {
        let read = read_stream::read(&self.db, user_id).await?;
        Ok(KnownStream {
            state: read.state,
            snapshot: read.snapshot,
            last_hash: None,
        })
    }

    /// Decides `command` against the user's latest state (`known`, when it is current) and
    /// appends its events. A lost race (another writer appended first) is decided again on
    /// the stream as read: the domain is deterministic, so this is safe, and a retried
    /// answer is idempotent there. `known` is left holding the state after the command,
    /// or nothing when it cannot be trusted.
    pub async fn execute(
        &self,
        user_id: &str,
        command: UserCommand,
        metadata: &EventMetadata,
        known: &mut Known,
    ) -> Result<Committed, AppendError> {
        for attempt in 0..MAX_ATTEMPTS {
            let (stream, from_memory) = match known.0.take() {
                Some(stream) => (stream, true),
                None => (self.read(user_id).await?, false),
            };
            let outcome = self
                .try_once(
                    user_id,
                    command.clone(),
                    metadata,
                    stream,
                    from_memory,
                    known,
                )
                .await?;
            if let Attempt::Done(committed) = outcome {
                return Ok(committed);
            }
            tracing::debug!(user_id, "the stream moved on; deciding again");
            if !from_memory {
                // Writers that read the same version and lost together would meet again
                // (on SQLite, in the same group commit): a random pause spreads them out.
                let most = 1u64 << attempt.min(6);
                let pause = rand::Rng::random_range(&mut rand::rng(), 0..=most * 1000);
                tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
            }
        }
        Err(AppendError::Conflict)
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        user_id: &str,
        command: UserCommand,
        metadata: &EventMetadata,
        mut stream: KnownStream,
        from_memory: bool,
        known: &mut Known,
    ) -> Result<Attempt, AppendError> {
        let domain::Decision { outcome, events } = stream.state.decide(command)?;
        if events.is_empty() {
            // Nothing to append, so nothing would catch a stale answer: check the head.
            if from_memory && self.head(user_id).await? != stream.state.sequence {
                return Ok(Attempt::Stale);
            }
            let state = stream.state.clone();
            known.0 = Some(stream);
            return Ok(Attempt::Done(Committed {
                outcome,
                events: Vec::new(),
                state,
            }));
        }
        let before = stream.state.sequence;
        let serialized = serialize(user_id, before, &events, metadata)?;
        for event in &events {
            stream.state.apply(event.clone());
        }
        // Written whenever the commit reaches a multiple of the interval, with the state
        // after its last event: a snapshot always holds exactly the state it is labelled with.
        let snapshot =
            if before / self.snapshot_every != stream.state.sequence / self.snapshot_every {
                let next = stream.snapshot.map_or(1, |n| n + 1);
                let payload = serde_json::to_value(&stream.state)
                    .map_err(|e| StoreError::EventStore(e.to_string()))?;
                Some((user_id.to_string(), payload, next))
            } else {
                None
            };
        let next_snapshot = snapshot.as_ref().map(|(_, _, n)| *n).or(stream.snapshot);
        match self
            .repo
            .append::<UserStream>(
                serialized,
                snapshot,
                stream.last_hash.take(),
                metadata.must_own,
            )
            .await
        {
            Ok(last_hash) => {
                let state = stream.state.clone();
                known.0 = Some(KnownStream {
                    state: stream.state,
                    snapshot: next_snapshot,
                    last_hash: Some(last_hash),
                });
                Ok(Attempt::Done(Committed {
                    outcome,
                    events: events
                        .into_iter()
                        .zip(before + 1..)
                        .map(|(event, sequence)| Recorded { sequence, event })
                        .collect(),
                    state,
                }))
            }
            Err(err) if is_lost_race(&err) => Ok(Attempt::Stale),
            Err(PersistenceError::UnknownError(inner)) if inner.is::<NotOwner>() => {
                match inner.downcast::<NotOwner>() {
                    Ok(not_owner) => Err(AppendError::Replaced(*not_owner)),
                    Err(other) => Err(StoreError::EventStore(other.to_string()).into()),
                }
            }
            Err(err) => Err(persistence_error(err).into()),
        }
    }

    /// The sequence of the stream's latest event (0 for a stream never written).
    async fn head(&self, user_id: &str) -> Result<usize, StoreError> {
        let head: i64 = match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query_scalar("select coalesce(max(sequence), 0) from events where aggregate_type = ? and aggregate_id = ?")
                    .bind(UserStream::TYPE)
                    .bind(user_id)
                    .fetch_one(pool)
                    .await?
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar("select coalesce(max(sequence), 0)::bigint from events where aggregate_type = $1 and aggregate_id = $2")
                    .bind(UserStream::TYPE)
                    .bind(user_id)
                    .fetch_one(pool)
                    .await?
            }
        };
        usize::try_from(head).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// One commit's events as the repositories store them, numbered after `before`.
fn serialize(
    user_id: &str,
    before: usize,
    events: &[UserEvent],
    metadata: &EventMetadata,
) -> Result<Vec<SerializedEvent>, StoreError> {
    let metadata = metadata.to_value();
    events
        .iter()
        .zip(before + 1..)
        .map(|(event, sequence)| {
            Ok(SerializedEvent {
                aggregate_id: user_id.to_string(),
                sequence,
                aggregate_type: UserStream::TYPE.to_string(),
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_value(event)
                    .map_err(|e| StoreError::EventStore(e.to_string()))?,
                metadata: metadata.clone(),
            })
        })
        .collect()
}

/// Another writer took a sequence (or moved the snapshot on) first: both appends
/// ([`super::pg_append`], [`super::sqlite_append`]) report it as an optimistic-lock error.
fn is_lost_race(err: &PersistenceError) -> bool {
    matches!(err, PersistenceError::OptimisticLockError)
}

fn persistence_error(err: PersistenceError) -> StoreError {
    match err {
        PersistenceError::DeserializationError(e) => StoreError::Corrupt(e.to_string()),
        other => StoreError::EventStore(other.to_string()),
    }
}
