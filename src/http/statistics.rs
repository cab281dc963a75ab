//! `GET /api/admin/tests/{test_id}/statistics`: item analysis from the `test_statistics`
//! read model, per definition version, with the questions in their definition's order.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::{require, Caller};
use crate::auth::Role;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/admin/tests/{test_id}/statistics",
        get(test_statistics),
    )
}

/// The statistics of one test.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestStatistics {
    pub test_id: String,
    /// One entry per definition version that has attempts, oldest first.
    pub versions: Vec<VersionStatistics>,
}

/// One definition version, over its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionStatistics {
    pub version: i32,
    pub attempts_started: u64,
    pub attempts_completed: u64,
    /// Mean score of completed attempts; null when none completed.
    #[schema(required = true)]
    pub mean_score: Option<f64>,
    /// Share of completed attempts that passed; null when none completed.
    #[schema(required = true)]
    pub pass_rate: Option<f64>,
    pub questions: Vec<QuestionStatistics>,
}

/// One question, over the version's completed attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuestionStatistics {
    pub question_id: String,
    /// Completed attempts that answered it.
    pub answered: u64,
    /// Facility index: the share of completed attempts with full marks on it (unanswered
    /// counts as not correct); null without completed attempts.
    #[schema(required = true)]
    pub facility: Option<f64>,
    /// Discrimination index: the full-marks share in the top third of completed attempts
    /// by total score minus that in the bottom third (-1 to 1); null with fewer than three.
    #[schema(required = true)]
    pub discrimination: Option<f64>,
}

/// `GET /api/admin/tests/{test_id}/statistics`.
#[utoipa::path(
    get,
    path = "/api/admin/tests/{test_id}/statistics",
    tag = "catalog",
    summary = "Item statistics of a test, per definition version",
    description = "Role: admin.\n\n\
                   From the `test_statistics` read model: attempts started and completed, \
                   mean score and pass rate of completed attempts, and per question the \
                   facility and discrimination indexes.",
    params(("test_id" = String, Path, description = "The test.")),
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    responses(
        (status = 200, description = "The statistics.", body = TestStatistics),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such test.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn test_statistics(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(test_id): Path<String>,
) -> Result<Json<TestStatistics>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let Some(latest) = state.catalog.latest(&test_id).await? else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no test {test_id:?}"),
        ));
    };
    let db = state.projections.db();
    let (attempts, mut answers) = projections::test_statistics::facts_of(&db, &test_id).await?;
    // Each version's questions in its definition's order, so unanswered ones are listed.
    let mut order: HashMap<i32, Vec<String>> = HashMap::new();
    let mut adaptive = HashSet::new();
    for version in 1..=latest.version {
        if let Some(definition) = state.catalog.version(&test_id, version).await? {
            let version = i32::try_from(version).unwrap_or(i32::MAX);
            if definition.adaptive_count().is_some() {
                adaptive.insert(version);
            }
            order.insert(
                version,
                definition.questions.iter().map(|q| q.id.clone()).collect(),
            );
        }
    }
    // A question a model wrote for one attempt of an adaptive test is that attempt's own
    // (`ai-1` is another question for each user): it has no item statistics. The bank
    // questions that stood in do.
    let version_of: HashMap<(&str, &str), i32> = attempts
        .iter()
        .map(|a| ((a.user_id.as_str(), a.assessment_id.as_str()), a.version))
        .collect();
    answers.retain(
        |a| match version_of.get(&(a.user_id.as_str(), a.assessment_id.as_str())) {
            Some(v) if adaptive.contains(v) => {
                order.get(v).is_some_and(|ids| ids.contains(&a.question_id))
            }
            _ => true,
        },
    );
    let versions = projections::test_statistics::compute(&attempts, &answers, &order)
        .into_iter()
        .map(|v| VersionStatistics {
            version: v.version,
            attempts_started: v.attempts_started,
            attempts_completed: v.attempts_completed,
            mean_score: v.mean_score,
            pass_rate: v.pass_rate,
            questions: v
                .questions
                .into_iter()
                .map(|q| QuestionStatistics {
                    question_id: q.question_id,
                    answered: q.answered,
                    facility: q.facility,
                    discrimination: q.discrimination,
                })
                .collect(),
        })
        .collect();
    Ok(Json(TestStatistics { test_id, versions }))
}
