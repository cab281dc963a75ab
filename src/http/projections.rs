//! The read models, for admins: their state and lag, a rebuild started in the background,
//! and the job that reports its progress (on any node: jobs are rows, src/jobs.rs).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{require, Caller};
use crate::auth::Role;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::jobs::{self, Job};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/projections", get(list_projections))
        .route(
            "/api/admin/projections/{name}/rebuild",
            post(rebuild_projection),
        )
        .route("/api/admin/jobs/{job_id}", get(get_job))
}

/// One projection as an admin sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionState {
    pub name: String,
    /// `rebuilding` (a rebuild of it runs on a live node), `live` (caught up) or
    /// `catching_up`.
    pub status: String,
    pub events_applied: i64,
    /// Events recorded and not yet applied.
    pub lag: i64,
    #[schema(required = true)]
    pub last_rebuilt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// `{items, next_cursor}` of projections (never paged).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionPage {
    pub items: Vec<ProjectionState>,
    /// Always null.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The reply to a rebuild request.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStarted {
    pub job_id: String,
}

/// `GET /api/admin/projections`.
#[utoipa::path(
    get,
    path = "/api/admin/projections",
    tag = "projections",
    summary = "Every read model with its state and lag",
    description = "Role: admin.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    responses(
        (status = 200, description = "Every projection.", body = ProjectionPage),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn list_projections(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<ProjectionPage>, ApiError> {
    require(&identity, &[Role::Admin])?;
    let db = state.projections.db();
    let mut items = Vec::new();
    for checkpoint in state.projections.status().await? {
        let lag = projections::feed::count_after(&db, checkpoint.position).await?;
        let status = if state.jobs.rebuilding(&checkpoint.name).await? {
            "rebuilding"
        } else if lag == 0 {
            "live"
        } else {
            "catching_up"
        };
        items.push(ProjectionState {
            status: status.into(),
            events_applied: checkpoint.events_applied,
            lag,
            last_rebuilt_at: checkpoint.last_rebuilt_at,
            updated_at: checkpoint.updated_at,
            name: checkpoint.name,
        });
    }
    Ok(Json(ProjectionPage {
        items,
        next_cursor: None,
    }))
}

/// `POST /api/admin/projections/{name}/rebuild`.
#[utoipa::path(
    post,
    path = "/api/admin/projections/{name}/rebuild",
    tag = "projections",
    summary = "Rebuild a read model from the first event",
    description = "Role: admin.\n\n\
                   Builds the projection again beside the live one and swaps it in within \
                   one transaction; readers never see a half-built view and answers keep \
                   flowing. Follow the job at `GET /api/admin/jobs/{job_id}` on any node. \
                   One rebuild of a projection runs at a time across every node on the \
                   database.",
    params(("name" = String, Path, description = "The projection, e.g. `assessments`.")),
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    responses(
        (status = 202, description = "The rebuild started.", body = JobStarted),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such projection.", body = ErrorBody),
        (status = 409, description = "`conflict`: a rebuild of it is already running (on any live node).", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn rebuild_projection(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require(&identity, &[Role::Admin])?;
    if !projections::runner::ALL.contains(&name.as_str()) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no projection named {name:?}"),
        ));
    }
    let job_id = jobs::spawn_rebuild(&state.jobs, state.projections.db(), &name)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Conflict,
                format!("a rebuild of {name} is already running"),
            )
        })?;
    tracing::info!(projection = %name, %job_id, admin = %identity.user_id, "rebuild started");
    Ok((StatusCode::ACCEPTED, Json(JobStarted { job_id })).into_response())
}

/// `GET /api/admin/jobs/{job_id}`.
#[utoipa::path(
    get,
    path = "/api/admin/jobs/{job_id}",
    tag = "projections",
    summary = "A background job's progress",
    description = "Role: admin.\n\n\
                   Jobs are kept in the database, so every node answers for every job, and \
                   a job is still there after its node restarts. A job whose node stopped \
                   before it ended (killed, or shut down) is `failed` with the error \
                   \"the node running it stopped (<node id>)\".",
    params(("job_id" = String, Path, description = "From the reply that started the job.")),
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["admin"]))),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has no admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job (a job id is a UUID).", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
    ),
)]
async fn get_job(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(job_id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    require(&identity, &[Role::Admin])?;
    state
        .jobs
        .get(&job_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job {job_id:?}")))
}
