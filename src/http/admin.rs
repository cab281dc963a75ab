//! Admin commands on a user's stream. They go through the same command path as the user's
//! own socket, so every rule applies and the user's open socket is told at once.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use domain::{Outcome, UserCommand};
use serde_json::{json, Value};

use super::{require, Caller};
use crate::auth::Role;
use crate::commands::{self, Origin};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
        post(end_assessment),
    )
}

/// `POST /api/admin/users/{user_id}/assessments/{assessment_id}/end`.
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
