//! The HTTP API (PROTOCOL section 3), one module per feature, each with its own routes:
//!
//! - [`pages`]: the browser pages (`/`, `/audit`, `/admin`) and their assets.
//! - [`sign_in`]: development sign-in for the pages (`/api/dev/config`, `/api/dev/token`).
//! - [`home`]: health, readiness and metrics.
//! - [`socket`]: the WebSocket upgrade at `/ws`.
//! - [`catalog`]: the tests a taker may take, and test definitions for admins.
//! - [`statistics`]: item statistics of a test, for admins.
//! - [`me`]: a test-taker's own attempts, from the read model.
//! - [`projections`]: the read models for admins: state, lag, rebuild jobs.
//! - [`admin`]: admin commands on a user's stream.
//! - [`accommodations`]: extra time, per-user overrides and regrades (admin).
//! - [`audit`]: the event history for auditors.
//! - [`openapi`]: the OpenAPI description of all of the above, `GET /api/openapi.json`.
//!
//! Handlers check the caller's role, call the store or the command path, and shape JSON;
//! every error goes through [`ApiError`]. Each handler carries its `#[utoipa::path]`
//! description, and a route added here must be listed in [`openapi::ApiDoc`] too (the API
//! tests compare the routes in these files with the document).

pub mod accommodations;
pub mod admin;
pub mod audit;
pub mod catalog;
pub mod home;
pub mod me;
pub mod openapi;
pub mod pages;
pub mod projections;
pub mod sign_in;
pub mod socket;
pub mod statistics;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth::{bearer_token, Identity, Role};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Every route of the HTTP API, and a JSON 404 for the rest.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(pages::routes())
        .merge(sign_in::routes())
        .merge(home::routes())
        .merge(socket::routes())
        .merge(catalog::routes())
        .merge(me::routes())
        .merge(statistics::routes())
        .merge(projections::routes())
        .merge(admin::routes())
        .merge(accommodations::routes())
        .merge(audit::routes())
        .merge(openapi::routes())
        .fallback(not_found)
}

/// The caller of an HTTP endpoint, proven by the `Authorization` header.
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts, false)?;
        Ok(Caller(state.keys.verify(&token)?))
    }
}

/// Refuses a caller without one of `roles` (403).
pub fn require(identity: &Identity, roles: &[Role]) -> Result<(), ApiError> {
    if identity.has_any(roles) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "your role may not use this endpoint",
        ))
    }
}

/// The page size of a list when the caller names none, and the most it may ask for.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// A list's `limit` parameter, checked (400 outside 1 to [`MAX_LIMIT`]).
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit must be 1 to {MAX_LIMIT}"),
        ))
    }
}

/// Query parameters, or 400 saying what is wrong with them.
pub fn query_params<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params
        .map(|Query(p)| p)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
}

/// The list envelope of every list response. The OpenAPI document describes it once per
/// item type (`TakerTestPage`, `TestDefinitionPage`, `AuditEventPage`): utoipa 5 would
/// copy the item schema into a generic `Page<T>` instead of referring to it.
pub fn list(items: Vec<Value>, next_cursor: Option<String>) -> Json<Value> {
    Json(json!({ "items": items, "next_cursor": next_cursor }))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}
