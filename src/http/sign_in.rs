//! Development sign-in for the pages: `GET /api/dev/config` tells a page whether this
//! server mints tokens itself, and `POST /api/dev/token` mints one for a name and a role.
//!
//! Minting happens only when tokens are verified with the generated development secret
//! (no `ASSESSD_JWT_SECRET`, no `ASSESSD_JWT_PUBLIC_KEY`) and the server listens on a
//! loopback address: a server with a real signing key, or reachable from elsewhere, answers
//! 404, and its pages take a token handed over by the host application instead.
//! Neither endpoint needs a token; the minted token is never logged.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Role;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/dev/config", get(dev_config))
        .route("/api/dev/token", post(dev_token))
}

/// How long a development token is valid.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// Longest accepted name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// What a page needs to know before it signs anyone in.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevConfig {
    /// True when `POST /api/dev/token` mints tokens (the server runs with its generated
    /// development secret); false when tokens come from an identity provider or the host
    /// application.
    pub dev_sign_in: bool,
    /// The server's version.
    pub version: String,
    /// This node's id (`ASSESSD_NODE_ID`).
    pub node_id: String,
    /// The event store's backend: `sqlite` or `postgres`.
    pub database: String,
}

/// The body of `POST /api/dev/token`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    /// The user id the token is for (its `sub`): 1 to 64 characters of letters, digits,
    /// space, `_`, `-`, `.` and `@`, without leading or trailing spaces.
    pub name: String,
    /// `taker` (the default), `auditor` or `admin`.
    #[serde(default)]
    pub role: Option<String>,
}

/// A minted development token.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevToken {
    /// The JWT; send it as `Authorization: Bearer` or `?access_token=` on `/ws`.
    pub token: String,
    /// Its `sub`.
    pub user_id: String,
    pub role: String,
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(
    get,
    path = "/api/dev/config",
    tag = "pages",
    summary = "Whether this server mints development tokens",
    description = "No token. `dev_sign_in` is true when the server verifies tokens with its \
                   generated development secret (no `ASSESSD_JWT_SECRET`, no public key), so \
                   the pages offer a name field; otherwise they take a token from the host \
                   application (`#token=` in the URL fragment) or a pasted one. Also the \
                   version, node id and storage backend, which the pages show.",
    responses(
        (status = 200, description = "The configuration.", body = DevConfig),
    ),
)]
async fn dev_config(State(state): State<AppState>) -> Json<DevConfig> {
    Json(DevConfig {
        dev_sign_in: state.dev_sign_in,
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: state.node_id.clone(),
        database: state.db.backend().to_string(),
    })
}

#[utoipa::path(
    post,
    path = "/api/dev/token",
    tag = "pages",
    summary = "Mint a development token (development mode only)",
    description = "No token. Only when the server runs with its generated development secret \
                   (see `GET /api/dev/config`); with `ASSESSD_JWT_SECRET` or a public key it \
                   answers 404 and mints nothing. The token is valid for 8 hours and is never \
                   logged. Anyone who can reach such a server can mint any role: development \
                   mode is for a machine of one's own.",
    request_body(content = DevTokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The token.", body = DevToken),
        (status = 400, description = "`bad_request`: the body is not a JSON object with a string `name` (and optional string `role`).", body = ErrorBody),
        (status = 404, description = "`not_found`: development sign-in is off on this server.", body = ErrorBody),
        (status = 422, description = "`bad_request` with `field` (`name` or `role`): the value is refused.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn dev_token(State(state): State<AppState>, body: Bytes) -> Result<Json<DevToken>, ApiError> {
    if !state.dev_sign_in {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "development sign-in is off: this server has a configured signing key, so tokens \
             come from your organisation's sign-in",
        ));
    }
    let request: DevTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the body must be {{\"name\": \"...\", \"role\": \"taker\"}}: {e}"),
        )
    })?;
    let name = check_name(&request.name)?;
    let role = match request.role.as_deref().unwrap_or("taker") {
        "taker" => Role::Taker,
        "auditor" => Role::Auditor,
        "admin" => Role::Admin,
        other => {
            return Err(invalid(
                "role",
                format!("{other:?} is not a role; use taker, auditor or admin"),
            ))
        }
    };
    let token = state
        .keys
        .mint(name, &[role], DEV_TOKEN_TTL)
        .map_err(|e| crate::error::ClientError::internal(&e))?;
    let expires_at = Utc::now()
        + chrono::Duration::from_std(DEV_TOKEN_TTL).unwrap_or_else(|_| chrono::Duration::hours(8));
    tracing::info!(user_id = %name, ?role, "development token minted");
    Ok(Json(DevToken {
        token,
        user_id: name.to_string(),
        role: format!("{role:?}").to_lowercase(),
        expires_at,
    }))
}

/// A refused value (422), naming its field.
fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(domain::ValidationError {
        field: field.to_string(),
        message: message.into(),
    })
}

/// The name as a user id, or 422 saying what is wrong with it.
fn check_name(name: &str) -> Result<&str, ApiError> {
    if name.trim().is_empty() {
        return Err(invalid("name", "enter a name"));
    }
    if name.trim() != name {
        return Err(invalid("name", "a name may not start or end with a space"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("a name is at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.' | '@')))
    {
        return Err(invalid(
            "name",
            format!("{bad:?} is not allowed in a name; use letters, digits, space, _ - . @"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["alice", "Ann Lee", "a.b-c_d@x", "Zoë", "x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_NAME_CHARS + 1);
        for bad in [
            "",
            "   ",
            " alice",
            "alice ",
            "a/b",
            "a<b",
            "tab\there",
            &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
