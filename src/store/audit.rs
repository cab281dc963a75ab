//! Read-only queries over the event history, for auditors: filters, and paging by the
//! global position (the cursor).

use chrono::{DateTime, SecondsFormat, Utc};
use domain::UserStream;
use serde::Serialize;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::{Database, StoreError};

/// Which events to return; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<String>,
    pub assessment_id: Option<String>,
    pub test_id: Option<String>,
    pub event_type: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only events after this global position (the decoded cursor).
    pub after: Option<i64>,
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
    /// Commit order across all streams.
    pub global_position: i64,
}

/// SQLite stores times as text in this format, which sorts like the times themselves.
fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Events matching `filter` in global order, at most `limit` of them.
pub async fn events(
    db: &Database,
    filter: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditEvent>, StoreError> {
    const SELECT: &str = "select global_position, aggregate_id, sequence, event_type, event_version, \
                          payload, metadata, recorded_at, event_id from events where aggregate_type = ";
    macro_rules! narrow {
        ($qb:expr, $time:expr) => {{
            let qb = $qb;
            qb.push_bind(<UserStream as cqrs_es::Aggregate>::TYPE);
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
            if let Some(v) = filter.after {
                qb.push(" and global_position > ").push_bind(v);
            }
            qb.push(" order by global_position limit ").push_bind(limit);
        }};
    }
    match db {
        Database::Sqlite(pool) => {
            let mut qb = QueryBuilder::<Sqlite>::new(SELECT);
            narrow!(&mut qb, sqlite_time);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let recorded_at: String = row.try_get("recorded_at")?;
                    let recorded_at = DateTime::parse_from_rfc3339(&recorded_at)
                        .map_err(|e| StoreError::Corrupt(format!("recorded_at: {e}")))?
                        .with_timezone(&Utc);
                    Ok(audit_event(
                        row.try_get("global_position")?,
                        row.try_get("aggregate_id")?,
                        row.try_get("sequence")?,
                        row.try_get("event_type")?,
                        row.try_get("event_version")?,
                        row.try_get("payload")?,
                        row.try_get("metadata")?,
                        recorded_at,
                        row.try_get("event_id")?,
                    ))
                })
                .collect()
        }
        Database::Postgres(pool) => {
            let mut qb = QueryBuilder::<Postgres>::new(SELECT);
            narrow!(&mut qb, |t: DateTime<Utc>| t);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let event_id: uuid::Uuid = row.try_get("event_id")?;
                    Ok(audit_event(
                        row.try_get("global_position")?,
                        row.try_get("aggregate_id")?,
                        row.try_get("sequence")?,
                        row.try_get("event_type")?,
                        row.try_get("event_version")?,
                        row.try_get("payload")?,
                        row.try_get("metadata")?,
                        row.try_get("recorded_at")?,
                        event_id.to_string(),
                    ))
                })
                .collect()
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn audit_event(
    global_position: i64,
    user_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
    recorded_at: DateTime<Utc>,
    event_id: String,
) -> AuditEvent {
    // Payloads are stored as {"EventType": {...}} (cqrs-es's enum encoding); auditors get
    // the inner object, the type being a field of its own.
    let payload = match payload {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(&event_type) => {
            map.remove(&event_type).unwrap_or(Value::Null)
        }
        other => other,
    };
    AuditEvent {
        user_id,
        sequence,
        event_type,
        event_version,
        payload,
        metadata,
        recorded_at,
        event_id,
        global_position,
    }
}
