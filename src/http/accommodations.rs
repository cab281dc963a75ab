//! Admin changes to what a user's attempt allows or earned (PROTOCOL section 6): extra
//! time on an open attempt, per-user overrides of a test's limits, and regrading one
//! question for every attempt. Each is a command on the user's own stream through the one
//! command path (so it is audited, replayable, and pushed to the user's open socket); the
//! regrade itself lives in [`crate::regrade`].
//!
//! The role is checked before the body is read, so a caller without it learns nothing
//! about the body; a bad body is 422 naming its field.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::test_definition::AnswerKey;
use domain::{Correction, Outcome, UserCommand, UserEvent};
use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::projections::JobStarted;
use super::{require, Caller};
use crate::auth::Role;
use crate::commands::{self, Origin};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::regrade::{self, Change, Plan};
use crate::state::AppState;
use crate::store::takers;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/admin/users/{user_id}/assessments/{assessment_id}/extend",
            post(extend),
        )
        .route(
            "/api/admin/tests/{test_id}/overrides/{user_id}",
            put(set_override).delete(clear_override),
        )
        .route(
            "/api/admin/tests/{test_id}/overrides",
            axum::routing::get(list_overrides),
        )
        .route("/api/admin/tests/{test_id}/regrade", post(regrade))
}

/// The body as `T`, or 422 naming the field to blame.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        // No body at all: every required field is missing; say which.
        b"{}".as_slice()
    } else {
        bytes
    };
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(ApiError::bad_body)
}

fn admin_origin(admin_id: &str) -> Origin {
    Origin::Admin {
        admin_id: admin_id.to_string(),
    }
}

/// The body of `extend`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// Seconds to add to the deadline, 1 to 86400.
    #[schema(minimum = 1, maximum = 86400)]
    pub extra_secs: i64,
    /// Why, for the audit history.
    pub reason: String,
}

/// The reply of `extend`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Extended {
    pub assessment_id: String,
    /// The new deadline (RFC 3339, as `DEADLINE_CHANGED` says it).
    pub deadline: String,
    /// The sequence of the recorded `DeadlineExtended` in the user's stream.
    pub seq: u64,
}

/// `POST /api/admin/users/{user_id}/assessments/{assessment_id}/extend`.
#[utoipa::path(
    post,
    path = "/api/admin/users/{user_id}/assessments/{assessment_id}/extend",
    tag = "accommodations",
    summary = "Give an attempt in progress extra time",
    description = "Role: admin.\n\n\
                   Moves the deadline of a timed attempt in progress `extra_secs` later and \
                   records `DeadlineExtended` in the user's stream. The user's open socket \
                   receives `DEADLINE_CHANGED` at once and its countdown moves; an answer \
                   after the old deadline and before the new one is accepted.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(
        ("user_id" = String, Path, description = "The user (token `sub`) whose stream holds the attempt."),
        ("assessment_id" = String, Path, description = "The attempt."),
    ),
    request_body = ExtendBody,
    responses(
        (status = 200, description = "The deadline moved.", body = Extended),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: the user has no such attempt.", body = ErrorBody),
        (status = 409, description = "`assessment_completed`: the attempt is not in progress (or its \
                                      time had run out, which is then what got recorded); `conflict`: \
                                      send again.", body = ErrorBody),
        (status = 422, description = "`bad_request` with `field`: `extra_secs` outside 1..86400 or the \
                                      attempt has no time limit, `reason` empty, or a bad body.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn extend(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path((user_id, assessment_id)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Extended>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let request: ExtendBody = body(&bytes)?;
    // Out of u32's range is out of 1..86400 too; the domain names the field.
    let extra_secs = u32::try_from(request.extra_secs).unwrap_or(0);
    let command = UserCommand::ExtendDeadline {
        assessment_id: assessment_id.clone(),
        extra_secs,
        reason: request.reason,
        actor: format!("admin:{}", identity.user_id),
        now: Utc::now(),
    };
    let committed = commands::execute(&state, &user_id, command, &admin_origin(&identity.user_id))
        .await
        .map_err(ApiError::from_command)?;
    let extended = committed.events.iter().find_map(|r| match &r.event {
        UserEvent::DeadlineExtended { deadline, .. } => Some((*deadline, r.sequence)),
        _ => None,
    });
    match (committed.outcome, extended) {
        (Outcome::Extended { .. }, Some((deadline, seq))) => {
            tracing::info!(user_id, assessment_id, extra_secs, admin = %identity.user_id, "deadline extended");
            Ok(Json(Extended {
                assessment_id,
                deadline: crate::ws::protocol::rfc3339(deadline),
                seq: seq as u64,
            }))
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

/// The body of `PUT .../overrides/{user_id}`: at least one of the two limits.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    /// Attempts this user may start of the test; absent: the test's own.
    #[schema(minimum = 1)]
    pub max_attempts: Option<u32>,
    /// The time limit of this user's attempts started from now on; absent: the test's own.
    #[schema(minimum = 1)]
    pub time_limit_secs: Option<u32>,
    pub reason: String,
}

/// The body of `DELETE .../overrides/{user_id}`, which may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    #[serde(default)]
    pub reason: String,
}

/// An override in force, as set.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverrideInForce {
    pub user_id: String,
    pub test_id: String,
    /// Null: the test's own.
    #[schema(required = true)]
    pub max_attempts: Option<u32>,
    /// Null: the test's own.
    #[schema(required = true)]
    pub time_limit_secs: Option<u32>,
    pub reason: String,
    /// Who set it, e.g. `admin:root`.
    pub actor: String,
    pub set_at: DateTime<Utc>,
    /// The sequence of its `OverrideSet` in the user's stream.
    pub seq: u64,
}

/// The reply of `DELETE .../overrides/{user_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverrideCleared {
    pub user_id: String,
    pub test_id: String,
    /// The sequence of the recorded `OverrideCleared`.
    pub seq: u64,
}

/// The overrides of a test in force, not paged.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverridePage {
    pub items: Vec<OverrideInForce>,
    /// Always null: the list is not paged.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

fn in_force(user_id: &str, test_id: &str, stream: &domain::UserStream) -> Option<OverrideInForce> {
    stream.overrides.get(test_id).map(|o| OverrideInForce {
        user_id: user_id.to_string(),
        test_id: test_id.to_string(),
        max_attempts: o.max_attempts,
        time_limit_secs: o.time_limit_secs,
        reason: o.reason.clone(),
        actor: o.actor.clone(),
        set_at: o.set_at,
        seq: o.seq as u64,
    })
}

async fn known_test(state: &AppState, test_id: &str) -> Result<(), ApiError> {
    match state.catalog.latest(test_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no test {test_id:?}"),
        )),
    }
}

/// `PUT /api/admin/tests/{test_id}/overrides/{user_id}`.
#[utoipa::path(
    put,
    path = "/api/admin/tests/{test_id}/overrides/{user_id}",
    tag = "accommodations",
    summary = "Set a user's own limits for a test",
    description = "Role: admin.\n\n\
                   Records `OverrideSet` in the user's stream: this user's `max_attempts` \
                   and/or `time_limit_secs` for the test, for attempts started from now on \
                   (one in progress keeps its deadline; extend it instead). A limit left out \
                   is the test's own. `GET /api/tests` shows the user the effective limits. \
                   Setting it again replaces it. The user needs no events yet: there is no \
                   user directory, identities come from tokens.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(
        ("test_id" = String, Path, description = "The test."),
        ("user_id" = String, Path, description = "The user (token `sub`)."),
    ),
    request_body = OverrideBody,
    responses(
        (status = 200, description = "The override in force.", body = OverrideInForce),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such test.", body = ErrorBody),
        (status = 409, description = "`conflict`: the stream kept changing, send again.", body = ErrorBody),
        (status = 422, description = "`bad_request` with `field`: neither limit given, a limit of 0, \
                                      `reason` empty, or a bad body.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn set_override(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path((test_id, user_id)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<OverrideInForce>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let request: OverrideBody = body(&bytes)?;
    known_test(&state, &test_id).await?;
    let command = UserCommand::SetOverride {
        test_id: test_id.clone(),
        max_attempts: request.max_attempts,
        time_limit_secs: request.time_limit_secs,
        reason: request.reason,
        actor: format!("admin:{}", identity.user_id),
        now: Utc::now(),
    };
    let committed = commands::execute(&state, &user_id, command, &admin_origin(&identity.user_id))
        .await
        .map_err(ApiError::from_command)?;
    tracing::info!(user_id, test_id, admin = %identity.user_id, "override set");
    in_force(&user_id, &test_id, &committed.state)
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the override was not recorded"))
}

/// `DELETE /api/admin/tests/{test_id}/overrides/{user_id}`.
#[utoipa::path(
    delete,
    path = "/api/admin/tests/{test_id}/overrides/{user_id}",
    tag = "accommodations",
    summary = "End a user's override of a test",
    description = "Role: admin.\n\n\
                   Records `OverrideCleared` in the user's stream: the test's own limits \
                   apply to the user's attempts started from now on. The body \
                   `{reason}` may be left out.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(
        ("test_id" = String, Path, description = "The test."),
        ("user_id" = String, Path, description = "The user (token `sub`)."),
    ),
    request_body(content = Option<ClearBody>, description = "Optional."),
    responses(
        (status = 200, description = "The override is over.", body = OverrideCleared),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such test, or no override of it in force for \
                                      the user.", body = ErrorBody),
        (status = 409, description = "`conflict`: the stream kept changing, send again.", body = ErrorBody),
        (status = 422, description = "`bad_request` with `field`: a bad body.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn clear_override(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path((test_id, user_id)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<OverrideCleared>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let request: ClearBody = body(&bytes)?;
    known_test(&state, &test_id).await?;
    let command = UserCommand::ClearOverride {
        test_id: test_id.clone(),
        reason: request.reason,
        actor: format!("admin:{}", identity.user_id),
        now: Utc::now(),
    };
    let committed = commands::execute(&state, &user_id, command, &admin_origin(&identity.user_id))
        .await
        .map_err(ApiError::from_command)?;
    let seq = committed.events.last().map_or(0, |r| r.sequence as u64);
    tracing::info!(user_id, test_id, admin = %identity.user_id, "override cleared");
    Ok(Json(OverrideCleared {
        user_id,
        test_id,
        seq,
    }))
}

/// How many users' streams are read at once to list overrides.
const LOADS_AT_ONCE: usize = 4;

/// `GET /api/admin/tests/{test_id}/overrides`.
#[utoipa::path(
    get,
    path = "/api/admin/tests/{test_id}/overrides",
    tag = "accommodations",
    summary = "The overrides of a test in force",
    description = "Role: admin.\n\n\
                   Every user's override of the test that is in force (set and not \
                   cleared), ordered by user id, read from those users' streams. Not paged: \
                   `next_cursor` is always null.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(("test_id" = String, Path, description = "The test.")),
    responses(
        (status = 200, description = "The overrides in force.", body = OverridePage),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such test.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn list_overrides(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(test_id): Path<String>,
) -> Result<Json<OverridePage>, ApiError> {
    require(&identity, &[Role::Admin])?;
    known_test(&state, &test_id).await?;
    let users = takers::with_override(&state.db, &test_id).await?;
    let items: Vec<Option<OverrideInForce>> = futures_util::stream::iter(users)
        .map(|user_id| {
            let (state, test_id) = (state.clone(), test_id.clone());
            async move {
                let stream = state.streams.load(&user_id).await?;
                Ok::<_, crate::store::StoreError>(in_force(&user_id, &test_id, &stream))
            }
        })
        .buffered(LOADS_AT_ONCE)
        .try_collect()
        .await?;
    Ok(Json(OverridePage {
        items: items.into_iter().flatten().collect(),
        next_cursor: None,
    }))
}

/// The body of `regrade`: the question, what to correct (at least one of `answer`,
/// `keywords`, `points`), why, and whether to only look.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegradeBody {
    pub question_id: String,
    /// The right choice id (`single_choice`) or ids (`multiple_choice`).
    #[schema(value_type = Option<Object>)]
    pub answer: Option<AnswerKey>,
    /// The rubric of a `free_text` question.
    pub keywords: Option<Vec<String>>,
    /// The question's points (positive).
    pub points: Option<f64>,
    pub reason: String,
    /// True: record nothing, list what would change.
    pub dry_run: bool,
}

/// The reply of a dry run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegradePreview {
    /// The attempts whose score would change.
    pub attempts_affected: u64,
    pub changes: Vec<Change>,
    /// Attempts in progress that have not answered the question yet: the answer they
    /// give would be graded with the correction.
    pub open_attempts_corrected: u64,
}

/// `POST /api/admin/tests/{test_id}/regrade`.
#[utoipa::path(
    post,
    path = "/api/admin/tests/{test_id}/regrade",
    tag = "accommodations",
    summary = "Correct one question's key or points for every attempt",
    description = "Role: admin.\n\n\
                   Corrects question `question_id` (its `answer` for a choice question, its \
                   `keywords` for free text, and/or its `points`) in every version of the \
                   test that has it, and grades every recorded answer to it again with the \
                   server's own grading, finished attempts and attempts in progress alike. \
                   `dry_run: true` records nothing and lists each attempt whose score would \
                   change. Otherwise the corrected question is stored as a new version of \
                   the test (new attempts use it), and a job records one `AnswerRegraded` \
                   per changed answer in each user's stream, and `QuestionCorrected` in \
                   each attempt in progress that has not answered the question yet (its \
                   answer is then graded with the correction); open sockets receive \
                   `SCORE_CHANGED`; follow the job at `GET /api/admin/jobs/{job_id}` \
                   (`events_done` / `events_total` count users' streams, `answers_regraded` \
                   the answers, `open_attempts_corrected` the attempts in progress \
                   corrected). The same correction again changes nothing.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    params(("test_id" = String, Path, description = "The test.")),
    request_body = RegradeBody,
    responses(
        (status = 200, description = "The dry run: what would change.", body = RegradePreview),
        (status = 202, description = "The regrade runs as a job.", body = JobStarted),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such test.", body = ErrorBody),
        (status = 422, description = "`bad_request` with `field`: `question_id` not in any version of \
                                      the test, an `answer` that is not among the choices or does not \
                                      fit the question, `points` not positive, nothing to correct, \
                                      `reason` empty, or a bad body.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn regrade(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(test_id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    require(&identity, &[Role::Admin])?;
    let request: RegradeBody = body(&bytes)?;
    let correction = Correction {
        answer: request.answer,
        keywords: request.keywords,
        points: request.points,
    };
    let plan = Plan::new(
        &state,
        &test_id,
        &request.question_id,
        correction,
        request.reason,
    )
    .await
    .map_err(ApiError::from_plan)?;
    if request.dry_run {
        let actor = format!("admin:{}", identity.user_id);
        let preview = regrade::dry_run(&state, &plan, &actor).await?;
        return Ok(Json(RegradePreview {
            attempts_affected: preview.changes.len() as u64,
            changes: preview.changes,
            open_attempts_corrected: preview.open_attempts_corrected,
        })
        .into_response());
    }
    let job_id = regrade::start(&state, plan, &identity.user_id).await?;
    Ok((StatusCode::ACCEPTED, Json(JobStarted { job_id })).into_response())
}
