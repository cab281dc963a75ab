//! `GET /ws`: the WebSocket upgrade. The caller is authenticated and authorised BEFORE the
//! upgrade, and refused with 503 when the node is at its connection cap.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::require;
use crate::auth::{bearer_token, Identity, Role};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::ws::session;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ws", get(websocket))
}

/// The caller of `/ws`: the header, or the `access_token` query parameter for browsers
/// (which cannot set headers on a WebSocket).
pub struct SocketCaller(pub Identity);

impl FromRequestParts<AppState> for SocketCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts, true)?;
        Ok(SocketCaller(state.keys.verify(&token)?))
    }
}

async fn websocket(
    State(state): State<AppState>,
    SocketCaller(identity): SocketCaller,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
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
