//! The per-user event streams: load a user's aggregate (snapshot + newer events), decide a
//! command, append the events under optimistic concurrency, retry on a conflict.
//!
//! Built on cqrs-es's `PersistedEventStore` with the sqlite-es / postgres-es repositories.
//! `CqrsFramework` is not used: it does not return the committed events (the session needs
//! their sequence numbers) and it runs queries after the commit, dropping their errors.

use std::collections::HashMap;

use chrono::Utc;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, EventStore};
use domain::{DomainError, Outcome, UserCommand, UserEvent, UserStream};
use postgres_es::PostgresEventRepository;
use sqlite_es::SqliteEventRepository;
use thiserror::Error;

use super::chain::ChainedRepository;
use super::owners::NotOwner;
use super::{Database, StoreError};

/// How often a command is decided again after losing an optimistic-concurrency race.
const MAX_ATTEMPTS: usize = 5;

/// Who and what caused a command; recorded as every event's metadata (PROTOCOL section 4).
#[derive(Debug, Clone, Default)]
pub struct EventMetadata {
    pub connection_id: Option<String>,
    pub request_id: Option<String>,
    pub node_id: String,
    /// `user:<sub>` for a test-taker's own actions, `admin:<sub>` for an admin's.
    pub actor: String,
    /// Append only while this session owns the user (on PostgreSQL, checked in the
    /// append's transaction: [`super::owners`]). Not recorded.
    pub must_own: Option<uuid::Uuid>,
}

impl EventMetadata {
    fn to_map(&self) -> HashMap<String, String> {
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
        if let Some(session) = self.must_own {
            map.insert(super::owners::MUST_OWN_KEY.into(), session.to_string());
        }
        map
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

type Store<R> = PersistedEventStore<R, UserStream>;

/// The event store of every user's stream, on either backend.
pub enum Streams {
    Sqlite(Store<ChainedRepository<SqliteEventRepository>>),
    Postgres(Store<ChainedRepository<PostgresEventRepository>>),
}

/// Runs `$body` with `$store` bound to the backend's `PersistedEventStore`.
macro_rules! on_store {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            Streams::Sqlite($store) => $body,
            Streams::Postgres($store) => $body,
        }
    };
}

enum Attempt {
    Done(Committed),
    Conflict,
}

impl Streams {
    /// A snapshot is written every `snapshot_every` events, so loading a stream reads the
    /// snapshot and at most that many newer events.
    pub fn new(db: &Database, snapshot_every: usize) -> Self {
        let every = snapshot_every.max(1);
        match db {
            Database::Sqlite(pool) => Streams::Sqlite(PersistedEventStore::new_snapshot_store(
                ChainedRepository::new(SqliteEventRepository::new(pool.clone()), db.clone(), every),
                every,
            )),
            Database::Postgres(pool) => Streams::Postgres(PersistedEventStore::new_snapshot_store(
                ChainedRepository::new(
                    PostgresEventRepository::new(pool.clone()),
                    db.clone(),
                    every,
                ),
                every,
            )),
        }
    }

    /// The user's current state (an empty stream for a user never seen).
    pub async fn load(&self, user_id: &str) -> Result<UserStream, StoreError> {
        on_store!(self, store => {
            let context = store.load_aggregate(user_id).await.map_err(store_error)?;
            Ok(context.aggregate)
        })
    }

    /// Decides `command` against the user's latest state and appends its events. A lost
    /// race (another writer appended first) is decided again on the new state: the domain
    /// is deterministic, so this is safe, and a retried answer is idempotent there.
    pub async fn execute(
        &self,
        user_id: &str,
        command: UserCommand,
        metadata: &EventMetadata,
    ) -> Result<Committed, AppendError> {
        for _ in 0..MAX_ATTEMPTS {
            let attempt = on_store!(self, store => try_once(store, user_id, command.clone(), metadata).await)?;
            if let Attempt::Done(outcome) = attempt {
                return Ok(outcome);
            }
            tracing::debug!(user_id, "optimistic concurrency conflict; deciding again");
        }
        Err(AppendError::Conflict)
    }
}

async fn try_once<R: cqrs_es::persist::PersistedEventRepository>(
    store: &Store<R>,
    user_id: &str,
    command: UserCommand,
    metadata: &EventMetadata,
) -> Result<Attempt, AppendError> {
    let context = store.load_aggregate(user_id).await.map_err(store_error)?;
    let domain::Decision { outcome, events } = context.aggregate.decide(command)?;
    let mut state = context.aggregate.clone();
    for event in &events {
        cqrs_es::Aggregate::apply(&mut state, event.clone());
    }
    if events.is_empty() {
        return Ok(Attempt::Done(Committed {
            outcome,
            events: Vec::new(),
            state,
        }));
    }
    match store.commit(events, context, metadata.to_map()).await {
        Ok(envelopes) => Ok(Attempt::Done(Committed {
            outcome,
            events: envelopes
                .into_iter()
                .map(|e| Recorded {
                    sequence: e.sequence,
                    event: e.payload,
                })
                .collect(),
            state,
        })),
        Err(err) if is_conflict(&err) => Ok(Attempt::Conflict),
        Err(AggregateError::UnexpectedError(inner)) if inner.is::<NotOwner>() => {
            match inner.downcast::<NotOwner>() {
                Ok(not_owner) => Err(AppendError::Replaced(*not_owner)),
                Err(other) => Err(store_error(AggregateError::UnexpectedError(other)).into()),
            }
        }
        Err(err) => Err(store_error(err).into()),
    }
}

/// postgres-es reports a duplicate sequence as `AggregateConflict`; sqlite-es only does so
/// for a primary-key violation (1555), so the unique constraint of our schema (2067)
/// arrives as an unexpected sqlx error and is recognised here.
pub fn is_conflict(err: &AggregateError<DomainError>) -> bool {
    match err {
        AggregateError::AggregateConflict => true,
        AggregateError::UnexpectedError(inner) => inner
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .is_some_and(|db| db.is_unique_violation()),
        _ => false,
    }
}

fn store_error(err: AggregateError<DomainError>) -> StoreError {
    match err {
        AggregateError::UserError(e) => StoreError::EventStore(e.to_string()),
        AggregateError::DeserializationError(e) => StoreError::Corrupt(e.to_string()),
        other => StoreError::EventStore(other.to_string()),
    }
}
