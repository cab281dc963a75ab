//! Tests: what a taker may take (`GET /api/tests`), and test definitions for admins
//! (list, and create a new version).
//!
//! The replies are built with `json!`; the structs at the end of this module describe them
//! for the OpenAPI document, along with a mirror of `domain::TestDefinition` (the `domain`
//! crate stays free of documentation dependencies).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{list, require, Caller};
use crate::auth::Role;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/tests", get(list_tests))
        .route("/api/admin/tests", get(admin_list_tests))
        .route("/api/admin/tests/{test_id}", put(admin_put_test))
}

/// `GET /api/tests`: the tests the caller may take, with their attempts used.
#[utoipa::path(
    get,
    path = "/api/tests",
    tag = "catalog",
    summary = "The tests a taker may take",
    description = "Role: taker.\n\n\
                   The latest version of every test, ordered by id, with the caller's \
                   attempts used (over all versions) and status, from the `assessments` read model after it \
                   has applied the caller's latest event (waiting up to 2 s). Not paged: `next_cursor` is \
                   always null.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["taker"]))),
    responses(
        (status = 200, description = "Every test.", body = TakerTestPage),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no taker role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn list_tests(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<Value>, ApiError> {
    require(&identity, &[Role::Taker])?;
    let tests = state.catalog.list_latest().await?;
    let user_id = &identity.user_id;
    if !state
        .projections
        .wait_for_user(
            projections::assessments::NAME,
            user_id,
            super::me::READ_YOUR_WRITES,
        )
        .await?
    {
        tracing::warn!(
            user_id,
            "assessments read model is behind; answering with what it has"
        );
    }
    let attempts = projections::assessments::of_user(&state.projections.db(), user_id).await?;
    // An admin's override of a test's limits for this user is in the user's stream.
    let stream = state.streams.load(user_id).await?;
    let now = chrono::Utc::now();
    let items = tests
        .iter()
        .map(|t| {
            let of_test = || attempts.iter().filter(|a| a.test_id == t.id);
            let used = of_test().count() as u32;
            let (max_attempts, time_limit_secs) = stream.effective_limits(t);
            // An attempt whose deadline passed unnoticed is over, though not yet recorded so.
            let in_progress =
                of_test().any(|a| a.status == "in_progress" && a.deadline.is_none_or(|d| now < d));
            let status = if in_progress {
                "in_progress"
            } else if used >= max_attempts {
                "completed"
            } else {
                "available"
            };
            json!({
                "id": t.id,
                "title": t.title,
                "version": t.version,
                "total_questions": t.questions.len(),
                "time_limit_secs": time_limit_secs,
                "max_attempts": max_attempts,
                "attempts_used": used,
                "pass_ratio": t.pass_ratio,
                "status": status,
            })
        })
        .collect();
    Ok(list(items, None))
}

/// `GET /api/admin/tests`: the latest version of every test, answer keys included.
#[utoipa::path(
    get,
    path = "/api/admin/tests",
    tag = "catalog",
    summary = "Every test definition",
    description = "Role: admin.\n\n\
                   The latest version of every test as a full definition, answer keys \
                   included, with its `id` and `version`. Not paged: `next_cursor` is always \
                   null.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    responses(
        (status = 200, description = "Every test definition.", body = TestDefinitionPage),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn admin_list_tests(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<Value>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let items = state
        .catalog
        .list_latest()
        .await?
        .iter()
        .map(|t| serde_json::to_value(&**t).unwrap_or(Value::Null))
        .collect();
    Ok(list(items, None))
}

/// `PUT /api/admin/tests/{test_id}`: validated, stored as a new version (201), or kept when
/// identical to the latest (200).
#[utoipa::path(
    put,
    path = "/api/admin/tests/{test_id}",
    tag = "catalog",
    summary = "Store a new version of a test",
    description = "Role: admin.\n\n\
                   The body is validated whole and refused at the first problem, naming its \
                   field. A body that differs from the latest version is stored as version \
                   N+1 (201); one identical to it keeps the latest version (200, `created: \
                   false`). Attempts in progress keep the version they started with.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(
        ("test_id" = String, Path, description = "The test's id: 1 to 64 of `A-Z a-z 0-9 _ - .`. A body `id`, if any, must equal it."),
    ),
    request_body(
        content = TestDefinitionSchema,
        content_type = "application/json",
        description = "A test definition (`docs/protocol.md`, section 6).",
    ),
    responses(
        (status = 200, description = "Identical to the latest version, which is kept.", body = StoredTest),
        (status = 201, description = "Stored as a new version.", body = StoredTest),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 422, description = "`bad_request` with `field`: the definition was refused.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn admin_put_test(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(test_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&identity, &[Role::Admin])?;
    let definition = crate::definitions::parse(&body, Some(&test_id)).map_err(ApiError::Invalid)?;
    // Keys live only in the server's configuration, so a definition can only name a
    // profile, and it must be one this server has. An offline server accepts any name
    // (its tutor is offline whatever the test says), so definitions move between servers.
    if let Some(profile) = definition.ai.as_ref().and_then(|ai| ai.profile.as_deref()) {
        let known = state.ai.profile_names();
        if !known.is_empty() && !state.ai.knows(profile) {
            return Err(ApiError::Invalid(domain::ValidationError {
                field: "ai.profile".into(),
                message: format!(
                    "no AI provider profile {profile:?}; this server has {}",
                    known.join(", ")
                ),
            }));
        }
    }
    let stored = state.catalog.put(definition).await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(test_id, version = stored.version, created = stored.created, admin = %identity.user_id, "test definition stored");
    Ok((
        status,
        Json(json!({"id": test_id, "version": stored.version, "created": stored.created})),
    )
        .into_response())
}

// The replies below are written with `json!` by the handlers above; these types only
// describe them, and the API tests compare them with real replies.

/// The reply of `GET /api/tests`: every test, not paged.
#[derive(ToSchema)]
pub struct TakerTestPage {
    pub items: Vec<TakerTest>,
    /// Always null: the list is not paged.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One item of `GET /api/tests`.
#[derive(ToSchema)]
pub struct TakerTest {
    pub id: String,
    pub title: String,
    /// The latest version, the one a new attempt uses.
    pub version: u32,
    pub total_questions: u32,
    /// Null when the test has no time limit. The caller's own when an admin's override
    /// sets one (for attempts started from now on).
    #[schema(required = true)]
    pub time_limit_secs: Option<u32>,
    /// The caller's own when an admin's override sets one.
    pub max_attempts: u32,
    /// The caller's attempts at this test, over all its versions.
    pub attempts_used: u32,
    pub pass_ratio: f64,
    pub status: TestStatus,
}

/// Where the caller stands with a test.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum TestStatus {
    /// An attempt of this test is in progress.
    InProgress,
    /// No attempts are left, whatever the scores were.
    Completed,
    /// The caller may start an attempt.
    Available,
}

/// The reply of `PUT /api/admin/tests/{test_id}`.
#[derive(ToSchema)]
pub struct StoredTest {
    pub id: String,
    /// The version now latest: the new one, or the identical one kept.
    pub version: u32,
    /// True when a new version was stored (201), false when the body was identical to the
    /// latest version (200).
    pub created: bool,
}

/// The reply of `GET /api/admin/tests`: every test definition, not paged.
#[derive(ToSchema)]
pub struct TestDefinitionPage {
    pub items: Vec<TestDefinitionSchema>,
    /// Always null: the list is not paged.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

// A mirror of `domain::TestDefinition` and its parts, for the document only: the `domain`
// crate stays free of documentation dependencies. A unit test in `super::openapi` keeps
// the mirror and the real type in step.

/// A test definition, as `PUT /api/admin/tests/{test_id}` takes it and
/// `GET /api/admin/tests` returns it (`docs/protocol.md`, section 6). It is refused whole
/// at the first problem, naming its field; unknown fields are refused at every level.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TestDefinition)]
pub struct TestDefinitionSchema {
    /// 1 to 64 of `A-Z a-z 0-9 _ - .`. Defaults to the path's id; must equal it if given.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub id: String,
    /// Accepted and ignored: the server assigns versions. Set in `GET /api/admin/tests`.
    #[serde(default)]
    pub version: u32,
    /// Not blank; at most 10000 bytes.
    pub title: String,
    /// At least 1.
    #[serde(default)]
    #[schema(minimum = 1, default = 1)]
    pub max_attempts: u32,
    /// Positive when set; null or absent means no limit.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub time_limit_secs: Option<u32>,
    /// The share of the maximum score needed to pass, 0 to 1 inclusive.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1, default = 0.6)]
    pub pass_ratio: f64,
    /// Draw the question order at random when an attempt starts (choices keep their order).
    #[serde(default)]
    #[schema(default = false)]
    pub shuffle: bool,
    /// 1 to 500 questions with ids unique within the test.
    #[schema(min_items = 1, max_items = 500)]
    pub questions: Vec<QuestionSchema>,
    /// Stored and validated, not used yet.
    #[serde(default)]
    #[schema(nullable = false)]
    pub ai: Option<AiSettingsSchema>,
}

/// One question with its answer key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = QuestionDefinition)]
pub struct QuestionSchema {
    /// Same rule as the test id; unique within the test.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub id: String,
    pub kind: QuestionKindSchema,
    /// Not blank; at most 10000 bytes.
    pub prompt: String,
    /// Choice questions need at least 2, with unique ids; `free_text` questions none.
    #[serde(default)]
    pub choices: Vec<ChoiceSchema>,
    /// `single_choice`: one choice id. `multiple_choice`: a non-empty array of distinct
    /// choice ids. `free_text`: absent.
    #[serde(default)]
    #[schema(nullable = false)]
    pub answer: Option<AnswerKeySchema>,
    /// `free_text`: at least one, none blank, found anywhere in the answer ignoring case.
    /// Choice questions: none.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Greater than 0.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, default = 1)]
    pub points: f64,
    /// At most 10000 bytes; appended to the feedback of every answer to the question.
    #[serde(default)]
    #[schema(nullable = false)]
    pub explanation: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = QuestionKind)]
pub enum QuestionKindSchema {
    SingleChoice,
    MultipleChoice,
    FreeText,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ChoiceDefinition)]
pub struct ChoiceSchema {
    /// Same rule as the test id; unique within the question.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub id: String,
    /// Not blank; at most 10000 bytes.
    pub text: String,
}

/// A choice id, or a list of them.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(as = AnswerKey)]
pub enum AnswerKeySchema {
    One(String),
    Many(Vec<String>),
}

/// Settings for AI-generated questions.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AiSettings)]
pub struct AiSettingsSchema {
    #[serde(default)]
    #[schema(default = false)]
    pub adaptive: bool,
    /// At least 1 when set.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub question_count: Option<u32>,
    #[serde(default)]
    pub topic: Option<String>,
}
