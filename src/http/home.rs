//! Liveness, readiness and Prometheus metrics. None of them needs a token. (`GET /` is the
//! test-taker's page, in [`super::pages`].)

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

// The handlers write these bodies with `json!`; the types below only describe them for the
// OpenAPI document, and the API tests compare them with real replies.

/// The body of `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    pub status: HealthStatus,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
}

/// The body of `GET /readyz` when the node is ready.
#[derive(ToSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    /// The event store's backend.
    pub database: StorageBackend,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum StorageBackend {
    Sqlite,
    Postgres,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "home",
    summary = "Liveness",
    description = "The process is up and serving HTTP. No token; touches no database.",
    responses(
        (status = 200, description = "Alive.", body = Health),
    ),
)]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "home",
    summary = "Readiness",
    description = "The database answers and its migrations are applied. No token.",
    responses(
        (status = 200, description = "Ready to serve.", body = Readiness),
        (status = 503, description = "`unavailable`: \"database unreachable\" or \"migrations are not applied\".", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
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

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "home",
    summary = "Prometheus metrics",
    description = "OpenMetrics text, every metric prefixed `assessd_`: connections, messages in \
                   and out by type, command duration, evictions, errors by code, refused \
                   connections. No token.",
    responses(
        (status = 200, description = "The metrics.", body = String,
         content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    ),
)]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
