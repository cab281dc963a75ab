//! The event history for auditors and admins: the filtered listing in commit order with
//! cursor paging, or all of it as an NDJSON export; one user's stream; one user's state
//! rebuilt from their events, now or at an earlier point; and the tamper-evidence check of
//! a stream.
//!
//! Every one of these reads is recorded first ([`crate::store::audit_log`]): who asked,
//! with which parameters, for whose data. A read that cannot be recorded is not made.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::{AttemptStatus, CompletionReason, UserStream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::{list, page_limit, query_params, require, Caller};
use crate::auth::{Identity, Role};
use crate::error::{ApiError, ClientError, ErrorBody, ErrorCode};
use crate::state::AppState;
use crate::store::audit::{self, AuditEvent, AuditFilter, Rebuilt, Scan, StatePoint};
use crate::store::audit_log::{self, NewRead};
use crate::store::chain::{self, Verification};
use crate::store::{Database, StoreError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/audit/events", get(audit_events))
        .route("/api/audit/users/{user_id}/events", get(audit_user_events))
        .route("/api/audit/users/{user_id}/state", get(audit_state))
        .route("/api/audit/users/{user_id}/verify", get(audit_verify))
}

/// The media type of the export.
pub const NDJSON: &str = "application/x-ndjson";

/// Query parameters of the audit event endpoints (PROTOCOL section 3). The doc comments and
/// `param` attributes are their OpenAPI description; any other parameter is refused (400).
/// Serialized as they were understood, they are the `parameters` of the recorded read.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only this user's stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// Only this attempt's events.
    #[serde(skip_serializing_if = "Option::is_none")]
    assessment_id: Option<String>,
    /// Only events of this test.
    #[serde(skip_serializing_if = "Option::is_none")]
    test_id: Option<String>,
    /// Only events of this type, such as `AnswerSubmitted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    /// Only events recorded at or after this RFC 3339 time (inclusive).
    #[param(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    /// Only events recorded before this RFC 3339 time (exclusive).
    #[param(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    /// The most events in one page. Not with `Accept: application/x-ndjson`.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page; opaque. Not with
    /// `Accept: application/x-ndjson`.
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

// [`list`] writes the page with `json!`; this type only describes it.
/// One page of audit events, in commit order.
#[derive(ToSchema)]
pub struct AuditEventPage {
    pub items: Vec<AuditEvent>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Events fetched per query of an export (about 3.5 MB of NDJSON); the export holds at most
/// [`EXPORT_AHEAD`] + 2 batches in memory at once. Each batch is a query, a round trip
/// during which PostgreSQL has nothing to send: fewer, larger batches keep it busier.
const EXPORT_BATCH: i64 = 5000;
/// How many batches an export may have fetched and written ahead of its client.
const EXPORT_AHEAD: usize = 2;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn time_param(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad_request(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

/// Whether the caller asked for the NDJSON export: `Accept` names `application/x-ndjson`
/// with a non-zero quality.
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            media.eq_ignore_ascii_case(NDJSON) && !refused
        })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Taker => "taker",
        Role::Auditor => "auditor",
        Role::Admin => "admin",
    }
}

/// Records that `identity` is about to read `user_id`'s data (everyone's when `None`)
/// through `endpoint` with `parameters`. Called after the parameters are checked and
/// before anything is read: a refused request reads nothing, and a read that cannot be
/// recorded is not made (500).
async fn record_read(
    db: &Database,
    identity: &Identity,
    endpoint: &str,
    user_id: Option<&str>,
    parameters: &impl Serialize,
) -> Result<(), ApiError> {
    let parameters = serde_json::to_value(parameters).map_err(|e| ClientError::internal(&e))?;
    let read = NewRead {
        reader: identity.user_id.clone(),
        roles: identity
            .roles
            .iter()
            .map(|r| role_name(*r).to_string())
            .collect(),
        endpoint: endpoint.to_string(),
        user_id: user_id.map(str::to_string),
        parameters,
    };
    audit_log::record(db, &read).await?;
    Ok(())
}

/// The events of `params`, as one page or, when asked for, as the NDJSON export; the
/// caller's role is checked by the caller of this function.
async fn audit_listing(
    state: &AppState,
    identity: &Identity,
    endpoint: &str,
    params: AuditParams,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let export = wants_ndjson(headers);
    if export && (params.limit.is_some() || params.cursor.is_some()) {
        return Err(bad_request(
            "the NDJSON export has no pages: limit and cursor do not apply to it",
        ));
    }
    let limit = page_limit(params.limit)?;
    let filter = AuditFilter {
        user_id: params.user_id.clone(),
        assessment_id: params.assessment_id.clone(),
        test_id: params.test_id.clone(),
        event_type: params.event_type.clone(),
        from: time_param("from", params.from.as_deref())?,
        to: time_param("to", params.to.as_deref())?,
    };
    let scan = Scan::new(&state.db, filter, params.cursor.as_deref())?;
    let user_id = params.user_id.as_deref();
    if export {
        let mut parameters =
            serde_json::to_value(&params).map_err(|e| ClientError::internal(&e))?;
        if let Value::Object(map) = &mut parameters {
            map.insert("format".into(), json!("ndjson"));
        }
        record_read(&state.db, identity, endpoint, user_id, &parameters).await?;
        return export_ndjson(&state.db, scan).await;
    }
    record_read(&state.db, identity, endpoint, user_id, &params).await?;
    let mut listed = scan.fetch(&state.db, limit + 1).await?;
    let more = listed.len() as i64 > limit;
    listed.truncate(limit as usize);
    let next_cursor = more
        .then(|| listed.last().map(|l| scan.cursor_after(&l.position)))
        .flatten();
    let items = listed
        .iter()
        .map(|l| serde_json::to_value(&l.event).map_err(|e| ClientError::internal(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(list(items, next_cursor).into_response())
}

/// Streams every event of `scan`, one JSON object per line, in the listing's order. The
/// end is fixed first ([`Scan::freeze`]), then events are fetched in keyset-paged batches
/// of [`EXPORT_BATCH`]: memory does not grow with the export, and no database connection
/// (on PostgreSQL, no snapshot holding back the read models' horizon) is held while the
/// client reads.
///
/// A task fetches and writes the batches ahead of the client, at most [`EXPORT_AHEAD`]
/// batches ahead: the database works on the next batch while the last one is on the wire.
/// It stops when the client goes (the body, and with it the channel, is dropped).
///
/// The first batch is fetched before the reply starts, so a failing database is a plain
/// 500. A failure later can only cut the body short: the chunked reply then lacks its
/// final chunk, so a client cannot take a broken export for a complete one.
async fn export_ndjson(db: &Database, mut scan: Scan) -> Result<Response, ApiError> {
    scan.freeze(db).await?;
    let mut first = Vec::new();
    let written = scan.fetch_ndjson(db, EXPORT_BATCH, &mut first).await?;
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let (ahead, behind) = mpsc::channel(EXPORT_AHEAD);
    // A short batch is the last: the end was fixed before the first.
    if written as i64 == EXPORT_BATCH {
        tokio::spawn(export_ahead(db.clone(), scan, first.len(), ahead));
    }
    let first = futures_util::stream::once(async move { Ok(Bytes::from(first)) });
    let rest = futures_util::stream::unfold(behind, |mut behind| async move {
        let chunk = behind.recv().await?;
        Some((chunk.map_err(BoxError::from), behind))
    });
    Ok((
        [(CONTENT_TYPE, NDJSON)],
        Body::from_stream(first.chain(rest)),
    )
        .into_response())
}

/// The batches of an export after the first, written into `ahead` until the end or until
/// the reader is gone; `size` is the first batch's size in bytes.
async fn export_ahead(
    db: Database,
    mut scan: Scan,
    mut size: usize,
    ahead: mpsc::Sender<Result<Bytes, StoreError>>,
) {
    loop {
        let mut chunk = Vec::with_capacity(size);
        let written = match scan.fetch_ndjson(&db, EXPORT_BATCH, &mut chunk).await {
            Ok(0) => return,
            Ok(written) => written,
            Err(e) => {
                tracing::error!(error = %e, "NDJSON export cut short");
                let _ = ahead.send(Err(e)).await;
                return;
            }
        };
        size = chunk.len();
        if ahead.send(Ok(Bytes::from(chunk))).await.is_err() {
            return; // the client went away
        }
        if (written as i64) < EXPORT_BATCH {
            return;
        }
    }
}

/// `GET /api/audit/events`.
#[utoipa::path(
    get,
    path = "/api/audit/events",
    tag = "audit",
    summary = "Events across users",
    description = "Role: auditor or admin.\n\n\
                   Events of every stream in commit order, filtered and paged: follow \
                   `next_cursor` until it is null. With a `user_id` filter, the order is that \
                   stream's sequence. On PostgreSQL the listing shows only events of \
                   transactions older than the oldest one still running, so a transaction \
                   that commits late is never passed over: a transaction held open delays \
                   the events after it (and only those) until it ends.\n\n\
                   With `Accept: application/x-ndjson`, every matching event committed when \
                   the request arrived is streamed instead, one JSON object (an `AuditEvent`) \
                   per line, in the same order; `limit` and `cursor` are then refused.\n\n\
                   The read is recorded in the log of audit reads.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["auditor", "admin"]))),
    params(AuditParams),
    responses(
        (status = 200, description = "One page of events, or the NDJSON export.", content(
            (AuditEventPage = "application/json"),
            (AuditEvent = "application/x-ndjson"),
        )),
        (status = 400, description = "`bad_request`: an unknown parameter, a bad time, a `limit` out of range, \
                                      a cursor this server did not give out for this query, or `limit` or \
                                      `cursor` with the NDJSON export.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has neither the auditor nor the admin role.", body = ErrorBody),
        (status = 500, description = "`internal`; also when the read could not be recorded.", body = ErrorBody),
    ),
)]
async fn audit_events(
    State(state): State<AppState>,
    Caller(identity): Caller,
    headers: HeaderMap,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_auditor(&identity)?;
    let params = query_params(params)?;
    audit_listing(&state, &identity, "GET /api/audit/events", params, &headers).await
}

/// `GET /api/audit/users/{user_id}/events`: one user's stream in order.
#[utoipa::path(
    get,
    path = "/api/audit/users/{user_id}/events",
    tag = "audit",
    summary = "One user's events",
    description = "Role: auditor or admin.\n\n\
                   One user's stream in sequence order, with the same filters, paging and \
                   NDJSON export as `GET /api/audit/events`; the path's `user_id` wins over \
                   the query's. To read a whole stream, follow `next_cursor` until it is \
                   null. The read is recorded in the log of audit reads.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["auditor", "admin"]))),
    params(
        ("user_id" = String, Path, description = "The user (token `sub`) whose stream to read."),
        AuditParams,
    ),
    responses(
        (status = 200, description = "One page of the stream's events, or the NDJSON export.", content(
            (AuditEventPage = "application/json"),
            (AuditEvent = "application/x-ndjson"),
        )),
        (status = 400, description = "`bad_request`: an unknown parameter, a bad time, a `limit` out of range, \
                                      a cursor this server did not give out for this query, or `limit` or \
                                      `cursor` with the NDJSON export.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has neither the auditor nor the admin role.", body = ErrorBody),
        (status = 500, description = "`internal`; also when the read could not be recorded.", body = ErrorBody),
    ),
)]
async fn audit_user_events(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_auditor(&identity)?;
    let mut params = query_params(params)?;
    params.user_id = Some(user_id);
    audit_listing(
        &state,
        &identity,
        "GET /api/audit/users/{user_id}/events",
        params,
        &headers,
    )
    .await
}

/// Query parameters of the state endpoint; at most one of them.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StateParams {
    /// The state after the event with this sequence (0: before the first event). A
    /// sequence beyond the end of the stream is 404.
    #[serde(skip_serializing_if = "Option::is_none")]
    at_sequence: Option<u64>,
    /// The state after the events recorded at or before this RFC 3339 time.
    #[param(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    at_time: Option<String>,
}

/// A user's state, rebuilt from their events.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditState {
    pub user_id: String,
    /// The sequence of the last event applied (0 before the first).
    pub sequence: u64,
    /// Every attempt, oldest first.
    pub assessments: Vec<AuditAssessment>,
}

/// One attempt as the events made it, at the state's point.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditAssessment {
    pub assessment_id: String,
    pub test_id: String,
    /// The test version the attempt runs on.
    pub test_version: u32,
    pub title: String,
    /// 1-based attempt number for this test.
    pub attempt: u32,
    pub status: AssessmentStatus,
    /// How many questions are answered.
    pub answered: u32,
    pub total_questions: u32,
    /// Points earned so far.
    pub score: f64,
    pub max_score: f64,
    /// The question shown and not yet answered, if any.
    #[schema(required = true)]
    pub current_question_id: Option<String>,
    /// Null while in progress.
    #[schema(required = true)]
    pub passed: Option<bool>,
    /// Why the attempt ended; null while in progress.
    #[schema(required = true)]
    pub reason: Option<EndReason>,
    #[schema(required = true)]
    pub time_limit_secs: Option<u32>,
    #[schema(required = true)]
    pub deadline: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    /// Null while in progress.
    #[schema(required = true)]
    pub completed_at: Option<DateTime<Utc>>,
}

/// As recorded: an attempt whose deadline passed unnoticed is `in_progress` until its
/// expiry is recorded.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssessmentStatus {
    InProgress,
    Completed,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    AllAnswered,
    TimeExpired,
    EndedByAdmin,
}

impl From<CompletionReason> for EndReason {
    fn from(reason: CompletionReason) -> Self {
        match reason {
            CompletionReason::AllAnswered => EndReason::AllAnswered,
            CompletionReason::TimeExpired => EndReason::TimeExpired,
            CompletionReason::EndedByAdmin => EndReason::EndedByAdmin,
        }
    }
}

fn audit_state_of(user_id: String, stream: &UserStream) -> AuditState {
    let assessments = stream
        .attempts
        .iter()
        .map(|a| {
            let (status, passed, reason, completed_at) = match &a.status {
                AttemptStatus::InProgress => (AssessmentStatus::InProgress, None, None, None),
                AttemptStatus::Completed {
                    reason,
                    passed,
                    completed_at,
                    ..
                } => (
                    AssessmentStatus::Completed,
                    Some(*passed),
                    Some(EndReason::from(*reason)),
                    Some(*completed_at),
                ),
            };
            AuditAssessment {
                assessment_id: a.assessment_id.clone(),
                test_id: a.test_id.clone(),
                test_version: a.test_version,
                title: a.title.clone(),
                attempt: a.attempt,
                status,
                answered: a.answered(),
                total_questions: a.total_questions,
                score: a.score,
                max_score: a.max_score,
                current_question_id: a
                    .current_question
                    .as_ref()
                    .map(|(q, _)| q.question_id.clone()),
                passed,
                reason,
                time_limit_secs: a.time_limit_secs,
                deadline: a.deadline,
                started_at: a.started_at,
                completed_at,
            }
        })
        .collect();
    AuditState {
        user_id,
        sequence: stream.sequence as u64,
        assessments,
    }
}

/// `GET /api/audit/users/{user_id}/state`: the user's state rebuilt from their events.
#[utoipa::path(
    get,
    path = "/api/audit/users/{user_id}/state",
    tag = "audit",
    summary = "One user's state, now or then",
    description = "Role: auditor or admin.\n\n\
                   The user's state rebuilt by replaying their events from the first with \
                   the domain's own rules, never from a snapshot or a projection: after the \
                   last event, after event `at_sequence`, or after the events recorded at \
                   or before `at_time`. It is the state as recorded: an attempt whose \
                   deadline passed unnoticed stays `in_progress` until its expiry is \
                   recorded. The read is recorded in the log of audit reads.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["auditor", "admin"]))),
    params(
        ("user_id" = String, Path, description = "The user (token `sub`) whose state to rebuild."),
        StateParams,
    ),
    responses(
        (status = 200, description = "The state.", body = AuditState),
        (status = 400, description = "`bad_request`: an unknown parameter, both `at_sequence` and `at_time`, \
                                      or a value that does not parse.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has neither the auditor nor the admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: the user has no events, or `at_sequence` is beyond the \
                                      end of the stream.", body = ErrorBody),
        (status = 500, description = "`internal`; also when the read could not be recorded, or the stream \
                                      cannot be replayed (an event removed or unreadable: see `verify`).", body = ErrorBody),
    ),
)]
async fn audit_state(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(user_id): Path<String>,
    params: Result<Query<StateParams>, QueryRejection>,
) -> Result<Json<AuditState>, ApiError> {
    require_auditor(&identity)?;
    let params = query_params(params)?;
    let at = match (params.at_sequence, params.at_time.as_deref()) {
        (Some(_), Some(_)) => return Err(bad_request("give at_sequence or at_time, not both")),
        (Some(n), None) => StatePoint::Sequence(n),
        (None, Some(t)) => match time_param("at_time", Some(t))? {
            Some(t) => StatePoint::Time(t),
            None => StatePoint::Latest,
        },
        (None, None) => StatePoint::Latest,
    };
    record_read(
        &state.db,
        &identity,
        "GET /api/audit/users/{user_id}/state",
        Some(&user_id),
        &params,
    )
    .await?;
    match audit::state_at(&state.db, &user_id, at).await? {
        Rebuilt::State(stream) => Ok(Json(audit_state_of(user_id, &stream))),
        Rebuilt::UnknownUser => Err(no_events(&user_id)),
        Rebuilt::BeyondStream { last } => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("the stream of user {user_id} has {last} events"),
        )),
    }
}

fn no_events(user_id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("user {user_id} has no events"))
}

/// `GET /api/audit/users/{user_id}/verify`: recomputes the stream's hash chain.
#[utoipa::path(
    get,
    path = "/api/audit/users/{user_id}/verify",
    tag = "audit",
    summary = "Check a stream's hash chain",
    description = "Role: auditor or admin.\n\n\
                   Recomputes the tamper-evidence hash chain of the user's stream from the \
                   genesis hash, stopping at the first event that does not match or that \
                   follows a gap. The read is recorded in the log of audit reads.",
    security(("bearer" = [])),
    extensions(("x-roles" = json!(["auditor", "admin"]))),
    params(
        ("user_id" = String, Path, description = "The user (token `sub`) whose stream to check."),
    ),
    responses(
        (status = 200, description = "The result; `ok` is false when the stream was altered.", body = Verification),
        (status = 401, description = "`unauthorized`: missing or bad token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token has neither the auditor nor the admin role.", body = ErrorBody),
        (status = 404, description = "`not_found`: the user has no events, so there is nothing to vouch for.", body = ErrorBody),
        (status = 500, description = "`internal`; also when the read could not be recorded.", body = ErrorBody),
    ),
)]
async fn audit_verify(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(user_id): Path<String>,
) -> Result<Json<Verification>, ApiError> {
    require_auditor(&identity)?;
    record_read(
        &state.db,
        &identity,
        "GET /api/audit/users/{user_id}/verify",
        Some(&user_id),
        &json!({}),
    )
    .await?;
    let report = chain::verify(
        &state.db,
        <domain::UserStream as cqrs_es::Aggregate>::TYPE,
        &user_id,
    )
    .await?;
    // An empty chain is trivially intact, and "ok" would vouch for a user who does not
    // exist (or whose every event was removed).
    if report.events_checked == 0 {
        return Err(no_events(&user_id));
    }
    if !report.ok {
        tracing::warn!(user_id, first_bad_sequence = ?report.first_bad_sequence, "stream failed verification");
    }
    Ok(Json(report))
}

/// Auditors and admins read the history; the role is checked before any parameter, so a
/// caller without it learns nothing about the endpoint.
fn require_auditor(identity: &Identity) -> Result<(), ApiError> {
    require(identity, &[Role::Auditor, Role::Admin])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, value.parse().expect("a header value"));
        headers
    }

    #[test]
    fn the_export_is_chosen_by_accept() {
        assert!(wants_ndjson(&accept("application/x-ndjson")));
        assert!(wants_ndjson(&accept("Application/X-NDJSON; charset=utf-8")));
        assert!(wants_ndjson(&accept(
            "application/json;q=0.5, application/x-ndjson"
        )));
        assert!(!wants_ndjson(&accept(
            "application/x-ndjson;q=0, application/json"
        )));
        assert!(!wants_ndjson(&accept("application/json")));
        assert!(!wants_ndjson(&accept("*/*")));
        assert!(!wants_ndjson(&HeaderMap::new()));
    }
}
