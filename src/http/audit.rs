//! The event history for auditors and admins: filtered listing with cursor paging, one
//! user's stream, and the tamper-evidence check of a stream.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{list, require, Caller};
use crate::auth::{Identity, Role};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::audit::{self, AuditFilter};
use crate::store::chain::{self, Verification};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/audit/events", get(audit_events))
        .route("/api/audit/users/{user_id}/events", get(audit_user_events))
        .route("/api/audit/users/{user_id}/verify", get(audit_verify))
}

/// Query parameters of the audit endpoints (PROTOCOL section 3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    user_id: Option<String>,
    assessment_id: Option<String>,
    test_id: Option<String>,
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

fn time_param(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        format!("{name} must be an RFC 3339 time"),
                    )
                })
        })
        .transpose()
}

/// The cursor is opaque to clients; inside it is the last global position returned.
fn decode_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| {
            c.strip_prefix('g')
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        "cursor is not one this server gave out",
                    )
                })
        })
        .transpose()
}

/// One page of events; the caller's role is checked by the caller of this function.
async fn audit_page(state: &AppState, params: AuditParams) -> Result<Json<Value>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let filter = AuditFilter {
        user_id: params.user_id,
        assessment_id: params.assessment_id,
        test_id: params.test_id,
        event_type: params.event_type,
        from: time_param("from", params.from.as_deref())?,
        to: time_param("to", params.to.as_deref())?,
        after: decode_cursor(params.cursor.as_deref())?,
    };
    let mut events = audit::events(&state.db, &filter, limit + 1).await?;
    let more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next_cursor = more
        .then(|| events.last().map(|e| format!("g{}", e.global_position)))
        .flatten();
    let items = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    Ok(list(items, next_cursor))
}

fn query_params(
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<AuditParams, ApiError> {
    params
        .map(|Query(p)| p)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
}

/// `GET /api/audit/events`.
async fn audit_events(
    State(state): State<AppState>,
    Caller(identity): Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_auditor(&identity)?;
    audit_page(&state, query_params(params)?).await
}

/// `GET /api/audit/users/{user_id}/events`: one user's stream in order.
async fn audit_user_events(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(user_id): Path<String>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_auditor(&identity)?;
    let mut params = query_params(params)?;
    params.user_id = Some(user_id);
    audit_page(&state, params).await
}

/// `GET /api/audit/users/{user_id}/verify`: recomputes the stream's hash chain.
async fn audit_verify(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(user_id): Path<String>,
) -> Result<Json<Verification>, ApiError> {
    require_auditor(&identity)?;
    let report = chain::verify(
        &state.db,
        <domain::UserStream as cqrs_es::Aggregate>::TYPE,
        &user_id,
    )
    .await?;
    if !report.ok {
        tracing::warn!(user_id, first_bad_sequence = ?report.first_bad_sequence, "stream failed verification");
    }
    Ok(Json(report))
}

/// Auditors and admins read the history; the role is checked before any parameter, so a
/// caller without it learns nothing about the endpoint.
fn require_auditor(identity: &Identity) -> Result<(), ApiError> {
    require(identity, &[Role::Auditor, Role::Admin])
}
