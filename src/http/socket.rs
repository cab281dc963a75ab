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
use crate::error::{ApiError, ErrorBody, ErrorCode};
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

/// The WebSocket for test-takers. The checks run in this order: token (401), role (403),
/// a valid upgrade request (400), the connection cap (503).
#[utoipa::path(
    get,
    path = "/ws",
    tag = "socket",
    summary = "The test-taker's WebSocket",
    description = "Role: taker.\n\n\
                   Upgrades to a WebSocket carrying one JSON object per text frame. The \
                   message protocol (client and server message types, error and close \
                   codes, deadlines, rate limit, flow control) is described in \
                   `docs/protocol.md` in the assessd repository, section 3; OpenAPI cannot \
                   describe it.\n\n\
                   The token goes in the `Authorization: Bearer` header or, for browsers, \
                   which cannot set headers on a WebSocket, in the `access_token` query \
                   parameter; the header wins when both are present. Every refusal happens \
                   before the upgrade, as a plain HTTP response.",
    security(("bearer" = []), ("access_token" = [])),
    extensions(("x-roles" = json!(["taker"]))),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open; the server sends `CONNECTED` first."),
        (status = 400, description = "`bad_request`: not a valid WebSocket upgrade request.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no taker role.", body = ErrorBody),
        (status = 503, description = "`unavailable`: this node is at its connection cap (`ASSESSD_MAX_CONNECTIONS`); try again later.", body = ErrorBody),
    ),
)]
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
        // Small buffers: tungstenite's defaults cost ~128 KiB per idle socket, and it
        // allocates (and zero-fills) the whole read buffer up front. Client messages are
        // short; a longer frame still arrives whole, the buffer growing to fit it, in reads
        // of 1 KiB. Measured (19,000 idle sockets, SQLite): 4 KiB -> 1 KiB took 16.1 ->
        // 12.7 KiB of server memory per socket.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_message_bytes * 4)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes);
    // The session gets a task of its own rather than running inside axum's upgrade task,
    // which would keep its own state (about 200 bytes) for as long as the socket is open.
    Ok(upgrade.on_upgrade(move |socket| {
        let sessions = state.sessions.clone();
        sessions.spawn(session::run(socket, state, identity, slot));
        std::future::ready(())
    }))
}
