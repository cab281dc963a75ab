//! Admin commands on a user's stream. They go through the same command path as the user's
//! own socket, so every rule applies and the user's open socket is told at once.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use domain::{Outcome, UserCommand};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{require, Caller};
use crate::auth::Role;
use crate::commands::{self, Origin};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
        post(end_assessment),
    )
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
