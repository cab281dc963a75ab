//! Read-only queries over the event history, for auditors: filtered listings in commit order
//! with keyset paging (the opaque cursor), and one user's state rebuilt from their events.
//!
//! **Commit order.** A reader that pages by a number taken at INSERT can pass over an event
//! that commits late. Three orders avoid that:
//!
//! - **One user's stream** (a `user_id` filter), on both backends: by `sequence`. An append
//!   at sequence n+1 is decided from a stream that already holds n, and the primary key
//!   refuses a second n, so a stream's events commit in sequence order; a reader that has
//!   seen sequence n has seen everything before it. Cursor `s<sequence>`.
//! - **Across streams on SQLite**: by `global_position`. SQLite has one writer at a time,
//!   so insertion order is commit order. Cursor `g<global_position>`.
//! - **Across streams on PostgreSQL**: only events of transactions older than the oldest
//!   transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`), by
//!   (`transaction_id`, `global_position`). Everything below that horizon has committed or
//!   rolled back, and no later transaction can get an id below it, so a reader moving along
//!   this order never passes over an event. The price: a transaction that stays open
//!   anywhere in the PostgreSQL cluster (ids are cluster-wide) holds back the events of
//!   every transaction that started writing after it, until it ends. Cursor
//!   `p<transaction_id>.<global_position>`.
//!
//! A cursor is accepted only by the kind of listing that issued it, and only in the exact
//! form this module writes.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use domain::{UserEvent, UserStream};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};
use thiserror::Error;

use super::{Database, StoreError};

/// The aggregate type of every user's stream.
const USER: &str = <UserStream as cqrs_es::Aggregate>::TYPE;

/// Which events to return; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<String>,
    pub assessment_id: Option<String>,
    pub test_id: Option<String>,
    pub event_type: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// One event as an auditor sees it (docs/protocol.md, section 4).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// The stream's user (the token `sub` of the test-taker).
    pub user_id: String,
    /// The event's 1-based position in that stream.
    pub sequence: i64,
    /// Such as `AssessmentStarted` or `AnswerSubmitted`.
    pub event_type: String,
    /// The version of the event's shape, such as `1.0`.
    pub event_version: String,
    /// The event's own fields (PROTOCOL section 5), without the stored `{"<event_type>": ...}`
    /// wrapper.
    pub payload: Value,
    /// String values: `node_id`, `actor`, `time`, `connection_id`, `request_id`, `hash`.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// When the database stored the event.
    pub recorded_at: DateTime<Utc>,
    /// Unique id of the event.
    pub event_id: String,
    /// Insertion order across all streams (commit order on SQLite).
    pub global_position: i64,
}

/// Where a row stands in each order a listing may use. `transaction_id` is 0 on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub sequence: i64,
    pub global_position: i64,
    pub transaction_id: u64,
}

/// An event of a listing, with its place in it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub position: Position,
    pub event: AuditEvent,
}

/// A cursor this server did not give out for this kind of listing.
#[derive(Debug, Error)]
#[error("cursor is not one this server gave out for this query")]
pub struct BadCursor;

/// The order of a listing and where it stands in it (module documentation). `after` is the
/// last row already returned; `until` is the fixed end of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keyset {
    Stream {
        after: Option<i64>,
        until: Option<i64>,
    },
    Position {
        after: Option<i64>,
        until: Option<i64>,
    },
    /// `until` is a transaction id: only older transactions are read. Without it, the
    /// horizon is taken afresh by each query.
    Commit {
        after: Option<(u64, i64)>,
        until: Option<u64>,
    },
}

/// A listing of the event history: a filter, and a place in its order.
#[derive(Debug, Clone)]
pub struct Scan {
    filter: AuditFilter,
    keyset: Keyset,
}

impl Scan {
    /// A listing of `filter` on `db`, starting after `cursor` (from the beginning without).
    ///
    /// # Errors
    /// [`BadCursor`] when `cursor` is not one this kind of listing gives out.
    pub fn new(
        db: &Database,
        filter: AuditFilter,
        cursor: Option<&str>,
    ) -> Result<Self, BadCursor> {
        let keyset = match (filter.user_id.is_some(), db) {
            (true, _) => Keyset::Stream {
                after: cursor
                    .map(|c| decode_one(c, 's').ok_or(BadCursor))
                    .transpose()?,
                until: None,
            },
            (false, Database::Sqlite(_)) => Keyset::Position {
                after: cursor
                    .map(|c| decode_position(c).ok_or(BadCursor))
                    .transpose()?,
                until: None,
            },
            (false, Database::Postgres(_)) => Keyset::Commit {
                after: cursor
                    .map(|c| decode_commit(c).ok_or(BadCursor))
                    .transpose()?,
                until: None,
            },
        };
        Ok(Scan { filter, keyset })
    }

    /// Fixes the end of the listing at what is committed now, so that an export is one
    /// well-defined set of events and ends even while events keep arriving: on one stream
    /// its current last sequence, on SQLite the current last position, on PostgreSQL the
    /// current horizon.
    ///
    /// # Errors
    /// A database error.
    pub async fn freeze(&mut self, db: &Database) -> Result<(), StoreError> {
        match (&mut self.keyset, db) {
            (Keyset::Stream { until, .. }, _) => {
                let user = self.filter.user_id.clone().unwrap_or_default();
                let sql_sqlite = "select coalesce(max(sequence), 0) from events where aggregate_type = ? and aggregate_id = ?";
                let sql_pg = "select coalesce(max(sequence), 0) from events where aggregate_type = $1 and aggregate_id = $2";
                *until = Some(match db {
                    Database::Sqlite(pool) => {
                        sqlx::query_scalar(sql_sqlite)
                            .bind(USER)
                            .bind(user)
                            .fetch_one(pool)
                            .await?
                    }
                    Database::Postgres(pool) => {
                        sqlx::query_scalar(sql_pg)
                            .bind(USER)
                            .bind(user)
                            .fetch_one(pool)
                            .await?
                    }
                });
            }
            (Keyset::Position { until, .. }, Database::Sqlite(pool)) => {
                *until = Some(
                    sqlx::query_scalar("select coalesce(max(global_position), 0) from events")
                        .fetch_one(pool)
                        .await?,
                );
            }
            (Keyset::Commit { until, .. }, Database::Postgres(pool)) => {
                let horizon: String =
                    sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text")
                        .fetch_one(pool)
                        .await?;
                *until = Some(horizon.parse().map_err(|_| {
                    StoreError::Corrupt(format!("transaction horizon {horizon:?}"))
                })?);
            }
            // Scan::new picks the keyset from the backend, so these cannot meet.
            (Keyset::Position { .. }, Database::Postgres(_))
            | (Keyset::Commit { .. }, Database::Sqlite(_)) => {
                return Err(StoreError::EventStore(
                    "a listing was used with another backend".into(),
                ))
            }
        }
        Ok(())
    }

    /// The cursor that continues the listing after `position`.
    pub fn cursor_after(&self, position: &Position) -> String {
        match self.keyset {
            Keyset::Stream { .. } => format!("s{}", position.sequence),
            Keyset::Position { .. } => encode_position(position.global_position),
            Keyset::Commit { .. } => {
                encode_commit(position.transaction_id, position.global_position)
            }
        }
    }

    /// Moves the listing past `position`.
    pub fn advance(&mut self, position: &Position) {
        match &mut self.keyset {
            Keyset::Stream { after, .. } => *after = Some(position.sequence),
            Keyset::Position { after, .. } => *after = Some(position.global_position),
            Keyset::Commit { after, .. } => {
                *after = Some((position.transaction_id, position.global_position))
            }
        }
    }

    /// The next `limit` events of the listing, in its order; it does not move.
    ///
    /// # Errors
    /// A database error, or a row that cannot be read.
    pub async fn fetch(&self, db: &Database, limit: i64) -> Result<Vec<Listed>, StoreError> {
        let mut listed = Vec::new();
        self.for_each_row(db, limit, |row| {
            listed.push(Listed {
                position: row.position,
                event: row.to_event()?,
            });
            Ok(())
        })
        .await?;
        Ok(listed)
    }

    /// Appends the next `limit` events of the listing to `out` as NDJSON (one
    /// [`AuditEvent`] per line) and moves past them; returns how many it wrote.
    ///
    /// The export path: payload and metadata go out as the JSON text the database holds,
    /// checked but never decoded into values, which is most of the work of [`Scan::fetch`].
    ///
    /// # Errors
    /// A database error, or a row that cannot be read.
    pub async fn fetch_ndjson(
        &mut self,
        db: &Database,
        limit: i64,
        out: &mut Vec<u8>,
    ) -> Result<usize, StoreError> {
        let mut written = 0;
        let mut last = None;
        self.for_each_row(db, limit, |row| {
            row.write_line(&mut *out)?;
            written += 1;
            last = Some(row.position);
            Ok(())
        })
        .await?;
        if let Some(position) = last {
            self.advance(&position);
        }
        Ok(written)
    }

    /// Runs the listing's query for the next `limit` rows and hands each to `each`, in order.
    async fn for_each_row(
        &self,
        db: &Database,
        limit: i64,
        mut each: impl FnMut(RowRef<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        const COLUMNS: &str = "global_position, aggregate_id, sequence, event_type, \
                               event_version, recorded_at";
        macro_rules! build {
            ($qb:expr, $time:expr) => {{
                let qb = $qb;
                qb.push_bind(USER);
                let filter = &self.filter;
                if let Some(v) = &filter.user_id {
                    qb.push(" and aggregate_id = ").push_bind(v.clone());
                }
                if let Some(v) = &filter.assessment_id {
                    qb.push(" and assessment_id = ").push_bind(v.clone());
                }
                if let Some(v) = &filter.test_id {
                    qb.push(" and test_id = ").push_bind(v.clone());
                }
                if let Some(v) = &filter.event_type {
                    qb.push(" and event_type = ").push_bind(v.clone());
                }
                if let Some(v) = filter.from {
                    qb.push(" and recorded_at >= ").push_bind($time(v));
                }
                if let Some(v) = filter.to {
                    qb.push(" and recorded_at < ").push_bind($time(v));
                }
            }};
        }
        // The orders both backends share; false for the commit order (PostgreSQL only).
        macro_rules! shared_order {
            ($qb:expr) => {{
                let qb = $qb;
                match &self.keyset {
                    Keyset::Stream { after, until } => {
                        if let Some(v) = after {
                            qb.push(" and sequence > ").push_bind(*v);
                        }
                        if let Some(v) = until {
                            qb.push(" and sequence <= ").push_bind(*v);
                        }
                        qb.push(" order by sequence");
                        true
                    }
                    Keyset::Position { after, until } => {
                        if let Some(v) = after {
                            qb.push(" and global_position > ").push_bind(*v);
                        }
                        if let Some(v) = until {
                            qb.push(" and global_position <= ").push_bind(*v);
                        }
                        qb.push(" order by global_position");
                        true
                    }
                    Keyset::Commit { .. } => false,
                }
            }};
        }
        match db {
            Database::Sqlite(pool) => {
                // In position order, `+` keeps SQLite from choosing the (type, stream,
                // sequence) key and sorting the whole table for every page; one stream's
                // events are still found through that key.
                let kind = match &self.keyset {
                    Keyset::Position { .. } => "+aggregate_type",
                    _ => "aggregate_type",
                };
                let mut qb = QueryBuilder::<Sqlite>::new(format!(
                    "select global_position, sequence, {SQLITE_PACKED} as packed \
                     from events where {kind} = "
                ));
                build!(&mut qb, sqlite_time);
                // Scan::new gives SQLite no commit-order keyset.
                if !shared_order!(&mut qb) {
                    return Err(StoreError::EventStore(
                        "a PostgreSQL listing reached SQLite".into(),
                    ));
                }
                qb.push(" limit ").push_bind(limit);
                let mut rows = qb.build().fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    let position = Position {
                        sequence: row.try_get("sequence")?,
                        global_position: row.try_get("global_position")?,
                        transaction_id: 0,
                    };
                    let packed: &str = row.try_get("packed")?;
                    let mut fields = packed.splitn(7, SQLITE_SEPARATOR);
                    let mut field = || {
                        fields.next().ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "event at position {} has fewer fields than written",
                                position.global_position
                            ))
                        })
                    };
                    let (event_type, event_version, recorded_at) = (field()?, field()?, field()?);
                    let (event_id, metadata, payload, user_id) =
                        (field()?, field()?, field()?, field()?);
                    each(RowRef {
                        position,
                        user_id,
                        event_type,
                        event_version,
                        payload,
                        metadata,
                        recorded_at: parse_sqlite_time(recorded_at)?,
                        event_id,
                    })?;
                }
            }
            Database::Postgres(pool) => {
                let mut qb = QueryBuilder::<Postgres>::new(format!(
                    "select {COLUMNS}, payload::text as payload, metadata::text as metadata, \
                     event_id, transaction_id from events where aggregate_type = "
                ));
                build!(&mut qb, |t: DateTime<Utc>| t);
                if let Keyset::Commit { after, until } = &self.keyset {
                    push_commit_keyset(&mut qb, *after, *until);
                    qb.push(" order by transaction_id, global_position");
                } else {
                    shared_order!(&mut qb);
                }
                qb.push(" limit ").push_bind(limit);
                let mut rows = qb.build().fetch(pool);
                let mut event_id = uuid::Uuid::encode_buffer();
                while let Some(row) = rows.try_next().await? {
                    // xid8 has no sqlx type; on the wire it is an 8-byte integer, read as one.
                    let transaction_id: i64 = row.try_get_unchecked("transaction_id")?;
                    let uuid: uuid::Uuid = row.try_get("event_id")?;
                    each(RowRef {
                        position: Position {
                            sequence: row.try_get("sequence")?,
                            global_position: row.try_get("global_position")?,
                            transaction_id: transaction_id as u64,
                        },
                        user_id: row.try_get("aggregate_id")?,
                        event_type: row.try_get("event_type")?,
                        event_version: row.try_get("event_version")?,
                        payload: row.try_get("payload")?,
                        metadata: row.try_get("metadata")?,
                        recorded_at: row.try_get("recorded_at")?,
                        event_id: uuid.hyphenated().encode_lower(&mut event_id),
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// The text columns of a listed SQLite row in one value, in this order, parted by
/// [`SQLITE_SEPARATOR`]. sqlx copies every column of every row into its own allocation on
/// SQLite's thread and frees it on the reader's; one column instead of seven makes a long
/// read (the export) about half as costly. The separator (unit separator, U+001F) cannot
/// occur in JSON text, a time or a UUID, and the one free-form field, the user id, comes
/// last, so it may hold anything. (A tampered row that broke this would fail to parse: the
/// time would not be a time.)
const SQLITE_PACKED: &str = "event_type || char(31) || event_version || char(31) || \
     recorded_at || char(31) || event_id || char(31) || metadata || char(31) || payload || \
     char(31) || aggregate_id";
const SQLITE_SEPARATOR: char = '\u{1f}';

/// A listed row as the database returned it, borrowed from it: payload and metadata are
/// JSON text.
struct RowRef<'r> {
    position: Position,
    user_id: &'r str,
    event_type: &'r str,
    event_version: &'r str,
    payload: &'r str,
    metadata: &'r str,
    recorded_at: DateTime<Utc>,
    event_id: &'r str,
}

/// An [`AuditEvent`] written with its JSON fields passed through as they are; the same
/// fields in the same order, so a line of the export and an item of a page read alike.
#[derive(Serialize)]
struct AuditLine<'r> {
    user_id: &'r str,
    sequence: i64,
    event_type: &'r str,
    event_version: &'r str,
    payload: &'r RawValue,
    metadata: &'r RawValue,
    recorded_at: DateTime<Utc>,
    event_id: &'r str,
    global_position: i64,
}

impl RowRef<'_> {
    fn corrupt(&self, field: &str, e: serde_json::Error) -> StoreError {
        StoreError::Corrupt(format!(
            "{field} of event {} of {}: {e}",
            self.position.sequence, self.user_id
        ))
    }

    fn to_event(&self) -> Result<AuditEvent, StoreError> {
        let payload = match serde_json::from_str(self.payload) {
            // The stored {"EventType": {...}} wrapper (see [`inner_payload`]).
            Ok(Value::Object(mut map)) if map.len() == 1 && map.contains_key(self.event_type) => {
                map.remove(self.event_type).unwrap_or(Value::Null)
            }
            Ok(other) => other,
            Err(e) => return Err(self.corrupt("payload", e)),
        };
        Ok(AuditEvent {
            user_id: self.user_id.to_owned(),
            sequence: self.position.sequence,
            event_type: self.event_type.to_owned(),
            event_version: self.event_version.to_owned(),
            payload,
            metadata: serde_json::from_str(self.metadata)
                .map_err(|e| self.corrupt("metadata", e))?,
            recorded_at: self.recorded_at,
            event_id: self.event_id.to_owned(),
            global_position: self.position.global_position,
        })
    }

    /// Writes the row as one NDJSON line. The JSON text is checked (a row that is not JSON
    /// would otherwise break the line and every reader after it), not decoded into values.
    fn write_line(&self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let line = AuditLine {
            user_id: self.user_id,
            sequence: self.position.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: inner_payload(self.payload, self.event_type)
                .map_err(|e| self.corrupt("payload", e))?,
            metadata: serde_json::from_str(self.metadata)
                .map_err(|e| self.corrupt("metadata", e))?,
            recorded_at: self.recorded_at,
            event_id: self.event_id,
            global_position: self.position.global_position,
        };
        serde_json::to_writer(&mut *out, &line).map_err(|e| self.corrupt("line", e))?;
        out.push(b'\n');
        Ok(())
    }
}

/// The event's own fields in a stored `payload`, as JSON text. Payloads are stored as
/// `{"EventType": {...}}` (cqrs-es's enum encoding); auditors get the inner object, the
/// type being a field of its own. Anything else is passed on whole.
fn inner_payload<'r>(
    payload: &'r str,
    event_type: &str,
) -> Result<&'r RawValue, serde_json::Error> {
    // One pass reads the outer object and checks the JSON text of its values. (A key with
    // an escape in it cannot be borrowed and fails this; no event type has one.)
    if let Ok(outer) = serde_json::from_str::<BTreeMap<&'r str, &'r RawValue>>(payload) {
        if let (1, Some(inner)) = (outer.len(), outer.get(event_type)) {
            return Ok(inner);
        }
    }
    serde_json::from_str(payload)
}

/// The PostgreSQL commit-order conditions on a table with `transaction_id` and an
/// insertion-order column named `global_position` or aliased so; shared with the log of
/// audit reads.
pub(crate) fn push_commit_keyset(
    qb: &mut QueryBuilder<'_, Postgres>,
    after: Option<(u64, i64)>,
    until: Option<u64>,
) {
    push_commit_keyset_on(qb, "global_position", after, until)
}

/// [`push_commit_keyset`] with the insertion-order column named `column`.
pub(crate) fn push_commit_keyset_on(
    qb: &mut QueryBuilder<'_, Postgres>,
    column: &str,
    after: Option<(u64, i64)>,
    until: Option<u64>,
) {
    // xid8 has no binary encoding in sqlx: ids travel as text and are cast.
    match until {
        Some(horizon) => {
            qb.push(" and transaction_id < ")
                .push_bind(horizon.to_string())
                .push("::text::xid8");
        }
        None => {
            qb.push(" and transaction_id < pg_snapshot_xmin(pg_current_snapshot())");
        }
    }
    if let Some((tx, position)) = after {
        qb.push(format!(" and (transaction_id, {column}) > ("))
            .push_bind(tx.to_string())
            .push("::text::xid8, ")
            .push_bind(position)
            .push(")");
    }
}

/// A PostgreSQL `transaction_id` read as text.
pub(crate) fn parse_transaction_id(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("transaction_id {text:?}")))
}

/// `n` when `digits` is `n` written the way this module writes numbers (decimal digits, no
/// sign, no leading zero), so only cursors it gave out are accepted.
fn number<T: std::str::FromStr + ToString>(digits: &str) -> Option<T> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: T = digits.parse().ok()?;
    (n.to_string() == digits).then_some(n)
}

fn decode_one(text: &str, prefix: char) -> Option<i64> {
    number(text.strip_prefix(prefix)?)
}

/// The cursor after insertion position `position` (SQLite).
pub(crate) fn encode_position(position: i64) -> String {
    format!("g{position}")
}

pub(crate) fn decode_position(text: &str) -> Option<i64> {
    decode_one(text, 'g')
}

/// The cursor after (`transaction_id`, `position`) (PostgreSQL).
pub(crate) fn encode_commit(transaction_id: u64, position: i64) -> String {
    format!("p{transaction_id}.{position}")
}

pub(crate) fn decode_commit(text: &str) -> Option<(u64, i64)> {
    let (tx, position) = text.strip_prefix('p')?.split_once('.')?;
    Some((number(tx)?, number(position)?))
}

/// SQLite stores times as text in this format, which sorts like the times themselves.
pub(crate) fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn parse_sqlite_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time {text:?}: {e}")))
}

/// Which state of a stream to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatePoint {
    /// After the last event.
    Latest,
    /// After the event with this sequence (0: before the first).
    Sequence(u64),
    /// After the last of the events recorded at or before this time.
    Time(DateTime<Utc>),
}

/// A user's state rebuilt from their events, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Rebuilt {
    /// The user has no events at all.
    UnknownUser,
    /// A sequence beyond the end of the stream was asked for; the stream has `last` events.
    BeyondStream {
        last: usize,
    },
    State(UserStream),
}

/// `user_id`'s state at `at`, rebuilt by folding their events with the domain's own
/// `apply` onto an empty stream: no snapshot and no projection is read, so the answer is
/// exactly what the events say. Rows are read one at a time, and reading stops at `at`.
///
/// # Errors
/// A database error, an event that does not deserialize, or a stream with a gap in its
/// sequence (an event removed; `verify` reports where).
pub async fn state_at(db: &Database, user_id: &str, at: StatePoint) -> Result<Rebuilt, StoreError> {
    let mut state = UserStream::default();
    let mut seen_any = false;
    // At least the first event is read, to tell an empty state from an unknown user.
    let bound = match at {
        StatePoint::Sequence(n) => Some(i64::try_from(n.max(1)).unwrap_or(i64::MAX)),
        StatePoint::Latest | StatePoint::Time(_) => None,
    };
    // For each row in sequence order: false once the row is past `at` and reading stops.
    let mut fold =
        |sequence: i64, recorded_at: DateTime<Utc>, payload: Value| -> Result<bool, StoreError> {
            seen_any = true;
            match at {
                StatePoint::Sequence(n) if sequence > i64::try_from(n).unwrap_or(i64::MAX) => {
                    return Ok(false)
                }
                // A prefix of the stream: recorded_at follows the sequence, but a prefix is
                // what "the state then" means even if a clock stepped back.
                StatePoint::Time(t) if recorded_at > t => return Ok(false),
                _ => {}
            }
            if sequence != state.sequence as i64 + 1 {
                return Err(StoreError::Corrupt(format!(
                    "stream {user_id} has sequence {sequence} after {}",
                    state.sequence
                )));
            }
            let event: UserEvent = serde_json::from_value(payload)
                .map_err(|e| StoreError::Corrupt(format!("event {sequence} of {user_id}: {e}")))?;
            cqrs_es::Aggregate::apply(&mut state, event);
            Ok(true)
        };
    match db {
        Database::Sqlite(pool) => {
            let mut rows = sqlx::query(
                "select sequence, payload, recorded_at from events \
                 where aggregate_type = ? and aggregate_id = ? and sequence <= ? order by sequence",
            )
            .bind(USER)
            .bind(user_id)
            .bind(bound.unwrap_or(i64::MAX))
            .fetch(pool);
            while let Some(row) = rows.try_next().await? {
                let recorded_at: String = row.try_get("recorded_at")?;
                let recorded_at = parse_sqlite_time(&recorded_at)?;
                if !fold(
                    row.try_get("sequence")?,
                    recorded_at,
                    row.try_get("payload")?,
                )? {
                    break;
                }
            }
        }
        Database::Postgres(pool) => {
            let mut rows = sqlx::query(
                "select sequence, payload, recorded_at from events \
                 where aggregate_type = $1 and aggregate_id = $2 and sequence <= $3 order by sequence",
            )
            .bind(USER)
            .bind(user_id)
            .bind(bound.unwrap_or(i64::MAX))
            .fetch(pool);
            while let Some(row) = rows.try_next().await? {
                if !fold(
                    row.try_get("sequence")?,
                    row.try_get("recorded_at")?,
                    row.try_get("payload")?,
                )? {
                    break;
                }
            }
        }
    }
    if !seen_any {
        return Ok(Rebuilt::UnknownUser);
    }
    if let StatePoint::Sequence(n) = at {
        if (state.sequence as u64) < n {
            return Ok(Rebuilt::BeyondStream {
                last: state.sequence,
            });
        }
    }
    Ok(Rebuilt::State(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cursors_written_here_are_read_back() {
        assert_eq!(decode_position(&encode_position(42)), Some(42));
        assert_eq!(
            decode_commit(&encode_commit(7_000_000_001, 42)),
            Some((7_000_000_001, 42))
        );
        assert_eq!(decode_one("s0", 's'), Some(0));
        for bad in [
            "",
            "g",
            "g-1",
            "g+1",
            "g01",
            "g1.2",
            "p1",
            "p1.",
            "p.1",
            "p01.2",
            "p1.02",
            "p1.-2",
            "p+1.2",
            "s1",
            "zzz",
            "g99999999999999999999",
        ] {
            assert_eq!(decode_position(bad), None, "{bad}");
            assert_eq!(decode_commit(bad), None, "{bad}");
        }
        assert_eq!(decode_one("g1", 's'), None);
    }

    #[test]
    fn the_export_takes_the_stored_wrapper_off_the_payload() {
        let inner = |payload: &str| {
            inner_payload(payload, "ChatExchanged")
                .map(|raw| raw.get().to_string())
                .map_err(|_| ())
        };
        assert_eq!(
            inner(r#"{"ChatExchanged": {"text": "hi", "n": [1, 2]}}"#),
            Ok(r#"{"text": "hi", "n": [1, 2]}"#.into())
        );
        // Anything but a one-key wrapper named for the event is passed on whole.
        for whole in [
            r#"{"Other": {"a": 1}}"#,
            r#"{"ChatExchanged": {"a": 1}, "extra": 2}"#,
            r#"[1, 2]"#,
            r#""text""#,
            r#"{}"#,
        ] {
            assert_eq!(inner(whole), Ok(whole.into()), "{whole}");
        }
        // Text that is not JSON never reaches a line.
        for broken in [r#"{"ChatExchanged": {"a": }}"#, "{", "", r#"{"a": 1} x"#] {
            assert_eq!(inner(broken), Err(()), "{broken}");
        }
    }
}
