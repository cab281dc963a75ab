//! Every error a client can see, mapped in one place: to a protocol `ERROR` code
//! (PROTOCOL section 2.3) and to an HTTP status with a `{"error": {code, message}}` body.
//! Internal detail is logged here and never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::{DomainError, ValidationError};
use serde::Serialize;
use serde_json::json;

use crate::auth::AuthError;
use crate::commands::CommandError;
use crate::store::audit::BadCursor;
use crate::store::StoreError;

/// The protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    Forbidden,
    NotFound,
    AssessmentCompleted,
    AssessmentInProgress,
    NoActiveAssessment,
    WrongQuestion,
    TimeExpired,
    RateLimited,
    AiUnavailable,
    Conflict,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AssessmentCompleted => "assessment_completed",
            ErrorCode::AssessmentInProgress => "assessment_in_progress",
            ErrorCode::NoActiveAssessment => "no_active_assessment",
            ErrorCode::WrongQuestion => "wrong_question",
            ErrorCode::TimeExpired => "time_expired",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::AiUnavailable => "ai_unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AssessmentCompleted
            | ErrorCode::AssessmentInProgress
            | ErrorCode::NoActiveAssessment
            | ErrorCode::WrongQuestion
            | ErrorCode::TimeExpired
            | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::AiUnavailable | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error with the code and the message a client may see.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Logs the detail and gives the client only a generic message.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; the request was not completed",
        )
    }
}

impl From<DomainError> for ClientError {
    fn from(err: DomainError) -> Self {
        let code = match &err {
            DomainError::AssessmentInProgress { .. } => ErrorCode::AssessmentInProgress,
            DomainError::AttemptsUsedUp { .. } | DomainError::AssessmentCompleted { .. } => {
                ErrorCode::AssessmentCompleted
            }
            DomainError::TimeExpired { .. } => ErrorCode::TimeExpired,
            DomainError::NoActiveAssessment => ErrorCode::NoActiveAssessment,
            DomainError::AssessmentNotFound { .. } => ErrorCode::NotFound,
            DomainError::WrongQuestion { .. } => ErrorCode::WrongQuestion,
            DomainError::AnswerAlreadyRecorded { .. } => ErrorCode::Conflict,
            DomainError::InvalidAnswer(_)
            | DomainError::InvalidChat(_)
            | DomainError::Invalid(_) => ErrorCode::BadRequest,
            DomainError::NoOverride { .. } => ErrorCode::NotFound,
            DomainError::InconsistentCommand(_) => return ClientError::internal(&err),
        };
        ClientError::new(code, err.to_string())
    }
}

impl From<projections::ProjectionError> for ClientError {
    fn from(err: projections::ProjectionError) -> Self {
        ClientError::internal(&err)
    }
}

impl From<StoreError> for ClientError {
    fn from(err: StoreError) -> Self {
        ClientError::internal(&err)
    }
}

impl From<BadCursor> for ClientError {
    fn from(err: BadCursor) -> Self {
        ClientError::new(ErrorCode::BadRequest, err.to_string())
    }
}

impl From<CommandError> for ClientError {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::Rule(e) => e.into(),
            CommandError::Conflict => ClientError::new(
                ErrorCode::Conflict,
                "your stream changed while this was being recorded; send it again",
            ),
            CommandError::Replaced => ClientError::new(
                ErrorCode::Conflict,
                "this connection was replaced by a newer one; nothing was recorded",
            ),
            CommandError::Store(e) => e.into(),
        }
    }
}

impl From<crate::ai::Busy> for ClientError {
    fn from(err: crate::ai::Busy) -> Self {
        ClientError::new(ErrorCode::AiUnavailable, err.to_string())
    }
}

impl From<&crate::ai::AiError> for ClientError {
    /// The detail (an upstream message, a URL) is for the log; the client learns only
    /// that the tutor is unavailable.
    fn from(_: &crate::ai::AiError) -> Self {
        ClientError::new(
            ErrorCode::AiUnavailable,
            "the AI tutor is unavailable right now; nothing was recorded, ask again later",
        )
    }
}

impl From<AuthError> for ClientError {
    fn from(err: AuthError) -> Self {
        ClientError::new(ErrorCode::Unauthorized, err.to_string())
    }
}

// Only the OpenAPI document uses the two types below: `ApiError::into_response` writes the
// body with `json!`, and the API tests compare the two.

/// The body of every error response.
#[derive(utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Which error; the HTTP status follows from it (`bad_request` is 400, or 422 for a
    /// refused test definition).
    pub code: ErrorCode,
    /// For people; never internal detail.
    pub message: String,
    /// Only on 422: the path of the field that refused the test definition, such as
    /// `questions[1].answer`, or `body` for a JSON syntax error.
    #[schema(nullable = false)]
    pub field: Option<String>,
}

/// An HTTP API error: a [`ClientError`], or a refused test definition (422).
#[derive(Debug)]
pub enum ApiError {
    Client(ClientError),
    Invalid(ValidationError),
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::Client(ClientError::new(code, message))
    }

    /// A regrade that cannot start: 404 for an unknown test, 422 naming the field.
    pub fn from_plan(err: crate::regrade::PlanError) -> Self {
        match err {
            crate::regrade::PlanError::UnknownTest { .. } => {
                ApiError::new(ErrorCode::NotFound, err.to_string())
            }
            crate::regrade::PlanError::Invalid(e) => ApiError::Invalid(e),
            crate::regrade::PlanError::Store(e) => ApiError::Client(e.into()),
        }
    }

    /// A request body of an admin endpoint that is not the JSON it expects: 422 naming
    /// the field to blame (`body` when no field is).
    pub fn bad_body(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        // serde says "missing field `x`" or "unknown field `x`, expected ..." at the top.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let field = match (path.as_str(), named) {
            ("." | "?" | "", Some(name)) => name,
            ("." | "?" | "", None) => "body".to_string(),
            (path, _) => path.to_string(),
        };
        ApiError::Invalid(ValidationError { field, message })
    }

    /// A command refused for a bad value in an admin's request body (`extra_secs`,
    /// `max_attempts`, `reason`, ...): 422 naming that field; anything else as usual.
    pub fn from_command(err: CommandError) -> Self {
        match err {
            CommandError::Rule(DomainError::Invalid(e)) => ApiError::Invalid(e),
            other => ApiError::Client(other.into()),
        }
    }
}

impl<E: Into<ClientError>> From<E> for ApiError {
    fn from(err: E) -> Self {
        ApiError::Client(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client(e) => (
                e.code.status(),
                Json(json!({"error": {"code": e.code.as_str(), "message": e.message}})),
            )
                .into_response(),
            ApiError::Invalid(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": {
                    "code": "bad_request",
                    "message": e.to_string(),
                    "field": e.field,
                }})),
            )
                .into_response(),
        }
    }
}
