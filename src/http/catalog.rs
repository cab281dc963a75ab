//! Tests: what a taker may take (`GET /api/tests`), and test definitions for admins
//! (list, and create a new version).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{list, require, Caller};
use crate::auth::Role;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/tests", get(list_tests))
        .route("/api/admin/tests", get(admin_list_tests))
        .route("/api/admin/tests/{test_id}", put(admin_put_test))
}

/// `GET /api/tests`: the tests the caller may take, with their attempts used.
async fn list_tests(
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
async fn admin_list_tests(
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
async fn admin_put_test(
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
