//! Admin endpoints: commands on a user's stream, which go through the same command path as
//! the user's own socket (so every rule applies and the user's open socket is told at
//! once); the log of audit reads; and the live connections of this node.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use domain::{Outcome, UserCommand};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::{list, page_limit, query_params, require, Caller};
use crate::auth::Role;
use crate::commands::{self, Origin};
use crate::error::{ApiError, ClientError, ErrorBody, ErrorCode};
use crate::state::AppState;
use crate::store::audit_log::{self, ReadCursor, ReadFilter, RecordedRead};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
            post(end_assessment),
        )
        .route("/api/admin/audit-reads", get(audit_reads))
        .route("/api/admin/connections", get(connections))
}

/// `POST /api/admin/users/{user_id}/assessments/{assessment_id}/end`.
#[utoipa::path(
    post,
    path = "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
    tag = "admin",
    summary = "End an attempt in progress",
    description = "Role: admin.\n\n\
                   Records the attempt's completion with `reason: ended_by_admin`, scored \
                   on what was answered. The user's open socket on this node receives \
                   `ASSESSMENT_COMPLETED`. No request body.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(
        ("user_id" = String, Path, description = "The user (token `sub`) whose stream holds the attempt."),
        ("assessment_id" = String, Path, description = "The attempt."),
    ),
    responses(
        (status = 200, description = "The attempt is ended.", body = EndedAttempt),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: the user has no such attempt.", body = ErrorBody),
        (status = 409, description = "`assessment_completed`: the attempt is already finished, or its time \
                                      limit had passed (the expiry is then what got recorded); `conflict`: \
                                      the stream kept changing, send again.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn end_assessment(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path((user_id, assessment_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let command = UserCommand::EndByAdmin {
        assessment_id: assessment_id.clone(),
        now: Utc::now(),
    };
    let origin = Origin::Admin {
        admin_id: identity.user_id.clone(),
    };
    let committed = commands::execute(&state, &user_id, command, &origin).await?;
    let seq = committed.events.last().map(|r| r.sequence);
    match committed.outcome {
        Outcome::Ended { .. } => {
            tracing::info!(user_id, assessment_id, admin = %identity.user_id, "attempt ended by an admin");
            Ok(Json(
                json!({"assessment_id": assessment_id, "status": "completed", "reason": "ended_by_admin", "seq": seq}),
            ))
        }
        // The time limit had passed: the expiry is what got recorded.
        _ => Err(ApiError::new(
            ErrorCode::AssessmentCompleted,
            format!(
                "assessment {assessment_id} had run out of time and is completed (time_expired)"
            ),
        )),
    }
}

// The handler writes its reply with `json!`; this type only describes it for the OpenAPI
// document, and the API tests compare the two.

/// The reply of the `end` endpoint.
#[derive(ToSchema)]
pub struct EndedAttempt {
    pub assessment_id: String,
    pub status: EndedStatus,
    pub reason: EndedReason,
    /// The sequence of the recorded `AssessmentCompleted` event in the user's stream.
    pub seq: u64,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum EndedStatus {
    Completed,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum EndedReason {
    EndedByAdmin,
}

/// Query parameters of the log of audit reads; any other parameter is refused (400).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReadsParams {
    /// Only the reads of this caller (token `sub`).
    reader: Option<String>,
    /// Only the reads that could have returned this user's data: those that named the
    /// user, and those across users (`user_id` null).
    user_id: Option<String>,
    /// The most reads in one page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page; opaque.
    cursor: Option<String>,
}

// [`list`] writes the page with `json!`; this type only describes it.
/// One page of the log of audit reads, oldest first.
#[derive(ToSchema)]
pub struct AuditReadPage {
    pub items: Vec<RecordedRead>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /api/admin/audit-reads`: who read whose data through the audit API.
#[utoipa::path(
    get,
    path = "/api/admin/audit-reads",
    tag = "admin",
    summary = "The log of audit reads",
    description = "Role: admin.\n\n\
                   Every read of users' data made through the audit API (event listings and \
                   exports, a user's events, state and verification), oldest first: who \
                   (`reader`, `roles`), what (`endpoint`, `user_id`, `parameters`) and when \
                   (`read_at`). Each is recorded by the request that reads, before it reads. \
                   Paged like the event listing, in commit order.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(ReadsParams),
    responses(
        (status = 200, description = "One page of recorded reads.", body = AuditReadPage),
        (status = 400, description = "`bad_request`: an unknown parameter, a `limit` out of range, or a cursor \
                                      this server did not give out.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn audit_reads(
    State(state): State<AppState>,
    Caller(identity): Caller,
    params: Result<Query<ReadsParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let params = query_params(params)?;
    let limit = page_limit(params.limit)?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| ReadCursor::parse(&state.db, c))
        .transpose()?;
    let filter = ReadFilter {
        reader: params.reader,
        user_id: params.user_id,
    };
    let mut reads = audit_log::list(&state.db, &filter, after, limit + 1).await?;
    let more = reads.len() as i64 > limit;
    reads.truncate(limit as usize);
    let next_cursor = more
        .then(|| reads.last().map(|(_, cursor)| cursor.clone()))
        .flatten();
    let items = reads
        .iter()
        .map(|(read, _)| serde_json::to_value(read).map_err(|e| ClientError::internal(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(list(items, next_cursor))
}

/// The live connections (docs/protocol.md, section 4).
#[derive(Debug, Serialize, ToSchema)]
pub struct Connections {
    /// Live sessions on every live node: the sum of `by_node`.
    pub total: u64,
    /// Live sessions by node id, for every node whose heartbeat is within its lease (this
    /// node's count is taken now, the others' at their last heartbeat), 0 included.
    pub by_node: BTreeMap<String, u64>,
    /// This node's live sessions whose user has an attempt in progress, by that attempt's
    /// test id.
    pub by_test: BTreeMap<String, u64>,
}

/// How many live users' streams are loaded at once for `by_test`: a share of the pool, so
/// the endpoint does not starve the sessions' commands.
const LOADS_AT_ONCE: usize = 4;

/// `GET /api/admin/connections`.
#[utoipa::path(
    get,
    path = "/api/admin/connections",
    tag = "admin",
    summary = "Live connections",
    description = "Role: admin.\n\n\
                   The live WebSocket sessions (one per connected user) of every node sharing \
                   the database: by node id (every node whose heartbeat is within its lease, \
                   this one counted now, the others at their last heartbeat) and their sum; \
                   and this node's, by the test id of the user's attempt in progress. An \
                   attempt whose deadline has passed does not count as in progress.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    responses(
        (status = 200, description = "The counts.", body = Connections),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn connections(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<Connections>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let users = state.registry.live_users();
    let mut by_node: BTreeMap<String, u64> = crate::nodes::live(&state.db, state.membership.lease)
        .await?
        .into_iter()
        .map(|node| (node.node_id, node.connections))
        .collect();
    // This node is live whether or not its first heartbeat has been written yet.
    by_node.insert(state.node_id.clone(), users.len() as u64);
    let now = Utc::now();
    // Each live user's stream is loaded (snapshot plus newer events) to find the attempt in
    // progress: one small read per connected user per request. Fine for an admin's page at
    // today's scale; a registry that kept each session's test id would make this free, but
    // only the session (src/ws) knows when that changes.
    let total = by_node.values().sum();
    let tests: Vec<Option<String>> = futures_util::stream::iter(users)
        .map(|user| {
            let state = state.clone();
            async move {
                let stream = state.streams.load(&user).await?;
                Ok::<_, crate::store::StoreError>(
                    stream
                        .in_progress()
                        .filter(|a| !a.is_overdue(now))
                        .map(|a| a.test_id.clone()),
                )
            }
        })
        .buffer_unordered(LOADS_AT_ONCE)
        .try_collect()
        .await?;
    let mut by_test = BTreeMap::new();
    for test_id in tests.into_iter().flatten() {
        *by_test.entry(test_id).or_insert(0) += 1;
    }
    Ok(Json(Connections {
        total,
        by_node,
        by_test,
    }))
}
