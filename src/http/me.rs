//! What a test-taker may read of their own: `GET /api/me/assessments`, from the
//! `assessments` projection, after waiting (briefly) for it to apply the caller's own
//! latest events, so an attempt finished a moment ago is there.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{page_limit, query_params, require, Caller};
use crate::auth::Role;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

/// How long a read waits for the projection to catch up with the caller's own writes
/// before it answers with what is there.
pub const READ_YOUR_WRITES: Duration = Duration::from_secs(2);

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/me/assessments", get(my_assessments))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// 1 to 1000; default 100.
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /api/me/assessments`: the caller's attempts, oldest first.
#[utoipa::path(
    get,
    path = "/api/me/assessments",
    tag = "me",
    summary = "The caller's own attempts",
    description = "Role: taker.\n\n\
                   Every attempt of the caller, oldest first, from the `assessments` read \
                   model. The read waits (up to 2 s) until the read model has applied the \
                   caller's latest event, so an attempt finished a moment ago is shown \
                   finished.",
    params(PageParams),
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["taker"]))),
    responses(
        (status = 200, description = "A page of attempts.", body = MyAssessmentPage),
        (status = 400, description = "`bad_request`: a bad `limit` or `cursor`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no taker role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn my_assessments(
    State(state): State<AppState>,
    Caller(identity): Caller,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<MyAssessmentPage>, ApiError> {
    require(&identity, &[Role::Taker])?;
    let params = query_params(params)?;
    // In range 1..=1000 once checked, so the conversion cannot fail.
    let limit = usize::try_from(page_limit(params.limit)?).unwrap_or(1);
    let start = match params.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    "cursor is not one this server gave out",
                )
            })?,
    };
    let user_id = &identity.user_id;
    if !state
        .projections
        .wait_for_user(projections::assessments::NAME, user_id, READ_YOUR_WRITES)
        .await?
    {
        tracing::warn!(
            user_id,
            "assessments read model is behind; answering with what it has"
        );
    }
    // Oldest first, so a new attempt only ever appends: an offset cursor stays valid.
    let rows = projections::assessments::of_user(&state.projections.db(), user_id).await?;
    let items: Vec<MyAssessment> = rows
        .into_iter()
        .skip(start)
        .take(limit + 1)
        .map(MyAssessment::from)
        .collect();
    let more = items.len() > limit;
    let mut items = items;
    items.truncate(limit);
    Ok(Json(MyAssessmentPage {
        next_cursor: more.then(|| format!("o{}", start + limit)),
        items,
    }))
}

/// A page of the caller's attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyAssessmentPage {
    pub items: Vec<MyAssessment>,
    /// Null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One attempt as its test-taker sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyAssessment {
    pub assessment_id: String,
    pub test_id: String,
    /// The test version the attempt was taken on.
    pub test_version: i32,
    pub title: String,
    /// 1 for the first attempt at this test.
    pub attempt: i32,
    /// `in_progress` or `completed`.
    pub status: String,
    pub answered: i32,
    pub total_questions: i32,
    pub score: f64,
    pub max_score: f64,
    /// Null while in progress.
    #[schema(required = true)]
    pub passed: Option<bool>,
    /// Why it ended (`all_answered`, `time_expired`, `ended_by_admin`); null while in progress.
    #[schema(required = true)]
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Null when the test has no time limit.
    #[schema(required = true)]
    pub deadline: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Seconds from start to completion; null while in progress.
    #[schema(required = true)]
    pub duration_secs: Option<f64>,
}

impl From<projections::assessments::AssessmentRow> for MyAssessment {
    fn from(row: projections::assessments::AssessmentRow) -> Self {
        Self {
            assessment_id: row.assessment_id,
            test_id: row.test_id,
            test_version: row.test_version,
            title: row.title,
            attempt: row.attempt,
            status: row.status,
            answered: row.answered,
            total_questions: row.total_questions,
            score: row.score,
            max_score: row.max_score,
            passed: row.passed,
            reason: row.reason,
            started_at: row.started_at,
            deadline: row.deadline,
            completed_at: row.completed_at,
            duration_secs: row.duration_secs,
        }
    }
}
