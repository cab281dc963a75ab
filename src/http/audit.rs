//! The event history for auditors and admins: filtered listing with cursor paging, one
//! user's stream, and the tamper-evidence check of a stream.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{list, require, Caller};
use crate::auth::{Identity, Role};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;
use crate::store::audit::{self, AuditEvent, AuditFilter};
use crate::store::chain::{self, Verification};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/audit/events", get(audit_events))
        .route("/api/audit/users/{user_id}/events", get(audit_user_events))
        .route("/api/audit/users/{user_id}/verify", get(audit_verify))
}

/// Query parameters of the audit endpoints (PROTOCOL section 3). The doc comments and
/// `param` attributes are their OpenAPI description; any other parameter is refused (400).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only this user's stream.
    user_id: Option<String>,
    /// Only this attempt's events.
    assessment_id: Option<String>,
    /// Only events of this test.
    test_id: Option<String>,
    /// Only events of this type, such as `AnswerSubmitted`.
    event_type: Option<String>,
    /// Only events recorded at or after this RFC 3339 time (inclusive).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only events recorded before this RFC 3339 time (exclusive).
    #[param(format = DateTime)]
    to: Option<String>,
    /// The most events in one page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page; opaque.
    cursor: Option<String>,
}

// [`list`] writes the page with `json!`; this type only describes it.
/// One page of audit events, in commit order.
#[derive(ToSchema)]
pub struct AuditEventPage {
    pub items: Vec<AuditEvent>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
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
#[utoipa::path(
    get,
    path = "/api/audit/events",
    tag = "audit",
    summary = "Events across users",
    description = "Role: auditor or admin.\n\n\
                   Events of every stream in commit order (`global_position`), filtered and \
                   paged: follow `next_cursor` until it is null.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["auditor", "admin"]))),
    params(AuditParams),
    responses(
        (status = 200, description = "One page of events.", body = AuditEventPage),
        (status = 400, description = "`bad_request`: an unknown parameter, a bad time, a `limit` out of range, \
                                      or a cursor this server did not give out.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has neither the auditor nor the admin role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn audit_events(
    State(state): State<AppState>,
    Caller(identity): Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_auditor(&identity)?;
    audit_page(&state, query_params(params)?).await
}

/// `GET /api/audit/users/{user_id}/events`: one user's stream in order.
#[utoipa::path(
    get,
    path = "/api/audit/users/{user_id}/events",
    tag = "audit",
    summary = "One user's events",
    description = "Role: auditor or admin.\n\n\
                   One user's stream in sequence order, with the same filters and paging as \
                   `GET /api/audit/events`; the path's `user_id` wins over the query's. To \
                   read a whole stream, follow `next_cursor` until it is null.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["auditor", "admin"]))),
    params(
        ("user_id" = String, Path, description = "The user (token `sub`) whose stream to read."),
        AuditParams,
    ),
    responses(
        (status = 200, description = "One page of the stream's events.", body = AuditEventPage),
        (status = 400, description = "`bad_request`: an unknown parameter, a bad time, a `limit` out of range, \
                                      or a cursor this server did not give out.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has neither the auditor nor the admin role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/api/audit/users/{user_id}/verify",
    tag = "audit",
    summary = "Check a stream's hash chain",
    description = "Role: auditor or admin.\n\n\
                   Recomputes the tamper-evidence hash chain of the user's stream from the \
                   genesis hash, stopping at the first event that does not match or that \
                   follows a gap. A user with no events verifies as ok with 0 events checked.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["auditor", "admin"]))),
    params(
        ("user_id" = String, Path, description = "The user (token `sub`) whose stream to check."),
    ),
    responses(
        (status = 200, description = "The result; `ok` is false when the stream was altered.", body = Verification),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has neither the auditor nor the admin role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
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
