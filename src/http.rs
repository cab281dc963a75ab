//! HTTP routes (PROTOCOL section 3): health, metrics, the WebSocket upgrade, tests, admin
//! and audit. Handlers check the caller's role, call the store, and shape JSON; every
//! error goes through [`ApiError`].

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::UserCommand;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{bearer_token, Identity, Role};
use crate::error::{ApiError, ErrorCode};
use crate::store::audit::{self, AuditFilter};
use crate::store::streams::EventMetadata;
use crate::ws::session;

/// The caller of an HTTP endpoint, proven by the `Authorization` header.
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts, false)?;
        Ok(Caller(state.keys.verify(&token)?))
    }
}

/// The caller of `/ws`: the header, or the `access_token` query parameter for browsers.
pub struct SocketCaller(pub Identity);

impl FromRequestParts<AppState> for SocketCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts, true)?;
        Ok(SocketCaller(state.keys.verify(&token)?))
    }
}

fn require(identity: &Identity, roles: &[Role]) -> Result<(), ApiError> {
    if identity.has_any(roles) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "your role may not use this endpoint",
        ))
    }
}

fn list(items: Vec<Value>, next_cursor: Option<String>) -> Json<Value> {
    Json(json!({ "items": items, "next_cursor": next_cursor }))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.db.is_ready().await {
        Ok(true) => {
            Json(json!({"status": "ready", "database": state.db.backend()})).into_response()
        }
        Ok(false) => {
            ApiError::new(ErrorCode::Unavailable, "migrations are not applied").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::new(ErrorCode::Unavailable, "database unreachable").into_response()
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /ws`: authenticated and authorised BEFORE the upgrade; refused with 503 when full.
pub async fn websocket(
    State(state): State<AppState>,
    SocketCaller(identity): SocketCaller,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    require(&identity, &[Role::Taker])?;
    let upgrade = upgrade.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let Some(slot) = state.registry.try_reserve() else {
        state.metrics.refused_connections.inc();
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is full; try again later",
        ));
    };
    let limits = &state.limits;
    let upgrade = upgrade
        // Small buffers: tungstenite's defaults cost ~128 KiB per idle socket.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_message_bytes * 4)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes);
    let sessions = state.sessions.clone();
    Ok(upgrade.on_upgrade(move |socket| {
        sessions.track_future(session::run(socket, state, identity, slot))
    }))
}

/// `GET /api/tests`: the tests the caller may take, with their attempts used.
pub async fn list_tests(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<Value>, ApiError> {
    require(&identity, &[Role::Taker])?;
    let tests = state.catalog.list_latest().await?;
    let stream = state.streams.load(&identity.user_id).await?;
    let items = tests
        .iter()
        .map(|t| {
            let used = stream.attempts_used(&t.id);
            let in_progress = stream.in_progress().is_some_and(|a| a.test_id == t.id);
            let status = if in_progress {
                "in_progress"
            } else if used >= t.max_attempts {
                "completed"
            } else {
                "available"
            };
            json!({
                "id": t.id,
                "title": t.title,
                "version": t.version,
                "total_questions": t.questions.len(),
                "time_limit_secs": t.time_limit_secs,
                "max_attempts": t.max_attempts,
                "attempts_used": used,
                "pass_ratio": t.pass_ratio,
                "status": status,
            })
        })
        .collect();
    Ok(list(items, None))
}

/// `GET /api/admin/tests`: the latest version of every test, answer keys included.
pub async fn admin_list_tests(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<Value>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let items = state
        .catalog
        .list_latest()
        .await?
        .iter()
        .map(|t| serde_json::to_value(&**t).unwrap_or(Value::Null))
        .collect();
    Ok(list(items, None))
}

/// `PUT /api/admin/tests/{test_id}`: validated, stored as a new version (201), or kept when
/// identical to the latest (200).
pub async fn admin_put_test(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(test_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&identity, &[Role::Admin])?;
    let definition = crate::definitions::parse(&body, Some(&test_id)).map_err(ApiError::Invalid)?;
    let stored = state.catalog.put(definition).await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(test_id, version = stored.version, created = stored.created, admin = %identity.user_id, "test definition stored");
    Ok((
        status,
        Json(json!({"id": test_id, "version": stored.version, "created": stored.created})),
    )
        .into_response())
}

/// `POST /api/admin/users/{user_id}/assessments/{assessment_id}/end`.
pub async fn admin_end_assessment(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path((user_id, assessment_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let metadata = EventMetadata {
        connection_id: None,
        request_id: None,
        node_id: state.node_id.clone(),
        actor: format!("admin:{}", identity.user_id),
    };
    let lock = state.registry.user_lock(&user_id);
    let outcome = {
        let _turn = lock.lock().await;
        state
            .streams
            .execute(
                &user_id,
                UserCommand::EndByAdmin {
                    assessment_id: assessment_id.clone(),
                    now: Utc::now(),
                },
                &metadata,
            )
            .await?
    };
    state.registry.notify(&user_id);
    let seq = outcome.events.last().map(|r| r.sequence);
    Ok(Json(
        json!({"assessment_id": assessment_id, "status": "completed", "reason": "ended_by_admin", "seq": seq}),
    ))
}

/// Query parameters of the audit endpoints (PROTOCOL section 3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
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

async fn audit_page(
    state: &AppState,
    identity: &Identity,
    params: AuditParams,
) -> Result<Json<Value>, ApiError> {
    require(identity, &[Role::Auditor, Role::Admin])?;
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
pub async fn audit_events(
    State(state): State<AppState>,
    Caller(identity): Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query_params(params)?;
    audit_page(&state, &identity, params).await
}

/// `GET /api/audit/users/{user_id}/events`: one user's stream in order.
pub async fn audit_user_events(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(user_id): Path<String>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut params = query_params(params)?;
    params.user_id = Some(user_id);
    audit_page(&state, &identity, params).await
}

/// `GET /api/audit/users/{user_id}/verify`: recomputes the stream's hash chain.
pub async fn audit_verify(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(user_id): Path<String>,
) -> Result<Json<crate::store::chain::Verification>, ApiError> {
    require(&identity, &[Role::Auditor, Role::Admin])?;
    let report = crate::store::chain::verify(
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
