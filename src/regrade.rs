//! Regrading by replay (PROTOCOL section 6): one question's key or points corrected for
//! every attempt, finished or not, of every version of a test that has the question.
//!
//! A [`Plan`] holds each version's own question and the correction, checked against every
//! one of them as a test definition's question is. The users to look at (those who
//! answered the question, and those with an attempt of the test in progress) are found
//! through the events table's `test_id` index ([`crate::store::takers`]), never by
//! loading every stream. For each of them the domain decides [`UserCommand::Regrade`] on
//! their stream: the recorded answer graded again with the domain's own grading, one
//! `AnswerRegraded` per answer whose grade changes, and `QuestionCorrected` in an attempt
//! in progress that has not answered the question yet, so the answer it gives later is
//! graded with the correction. The dry run decides without appending; the real run stores
//! the corrected definition as a new version first (so new attempts use it) and then runs
//! the commands through the one command path as an admin, so each open socket is told
//! (`SCORE_CHANGED`), a concurrent answer of the user waits its turn, and the read models
//! follow. A second run of the same correction finds nothing to change.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use domain::{
    grading, AttemptStatus, Correction, Outcome, Regrade, TestDefinition, UserCommand, UserEvent,
    UserStream, ValidationError, VersionQuestion,
};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use thiserror::Error;
use utoipa::ToSchema;

use crate::commands::{self, Origin};
use crate::state::AppState;
use crate::store::{takers, StoreError};

/// How many users' streams are regraded (or, for a dry run, decided) at once: enough to
/// keep the database busy, few enough that live commands still find a pooled connection.
const STREAMS_AT_ONCE: usize = 4;

/// Why a regrade cannot start; nothing was recorded.
#[derive(Debug, Error)]
pub enum PlanError {
    #[error("no test {test_id:?}")]
    UnknownTest { test_id: String },
    /// A bad body value, with the field to blame.
    #[error(transparent)]
    Invalid(ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A checked correction of one question of one test.
#[derive(Debug, Clone)]
pub struct Plan {
    pub test_id: String,
    pub question_id: String,
    pub correction: Correction,
    /// Every version that has the question, with its own question (uncorrected).
    pub versions: BTreeMap<u32, VersionQuestion>,
    /// The latest version with the corrected question, when the latest version has it.
    pub next_definition: Option<TestDefinition>,
    pub reason: String,
}

fn invalid(field: &str, message: impl Into<String>) -> PlanError {
    PlanError::Invalid(ValidationError {
        field: field.to_string(),
        message: message.into(),
    })
}

impl Plan {
    /// Applies `correction` to `question_id` in every version of `test_id`.
    ///
    /// # Errors
    /// [`PlanError::UnknownTest`]; [`PlanError::Invalid`] naming `question_id` when no
    /// version has it, or the correction's field a version refuses (a key that is not
    /// among its choices, points that are not positive, ...).
    pub async fn new(
        state: &AppState,
        test_id: &str,
        question_id: &str,
        correction: Correction,
        reason: String,
    ) -> Result<Plan, PlanError> {
        let latest =
            state
                .catalog
                .latest(test_id)
                .await?
                .ok_or_else(|| PlanError::UnknownTest {
                    test_id: test_id.to_string(),
                })?;
        if reason.trim().is_empty() {
            return Err(invalid("reason", "must not be empty"));
        }
        let mut versions = BTreeMap::new();
        let mut next_definition = None;
        for version in 1..=latest.version {
            let Some(definition) = state.catalog.version(test_id, version).await? else {
                continue;
            };
            let Some(question) = definition.question(question_id) else {
                continue;
            };
            let fixed = correction.apply_to(question).map_err(|e| {
                if version == latest.version {
                    PlanError::Invalid(e)
                } else {
                    PlanError::Invalid(ValidationError {
                        message: format!("{} (in version {version} of the test)", e.message),
                        field: e.field,
                    })
                }
            })?;
            if version == latest.version {
                let mut next = (*definition).clone();
                if let Some(q) = next.questions.iter_mut().find(|q| q.id == question_id) {
                    *q = fixed;
                }
                next_definition = Some(next);
            }
            versions.insert(
                version,
                VersionQuestion {
                    question: question.clone(),
                    adaptive: definition.adaptive_count().is_some(),
                },
            );
        }
        if versions.is_empty() {
            return Err(invalid(
                "question_id",
                format!("no version of test {test_id:?} has a question {question_id:?}"),
            ));
        }
        Ok(Plan {
            test_id: test_id.to_string(),
            question_id: question_id.to_string(),
            correction,
            versions,
            next_definition,
            reason,
        })
    }

    fn command(&self, actor: &str, corrected_version: Option<u32>) -> UserCommand {
        UserCommand::Regrade(Box::new(Regrade {
            test_id: self.test_id.clone(),
            question_id: self.question_id.clone(),
            versions: self.versions.clone(),
            correction: self.correction.clone(),
            corrected_version,
            reason: self.reason.clone(),
            actor: actor.to_string(),
            now: Utc::now(),
        }))
    }
}

/// One attempt a regrade changes, as the dry run lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Change {
    pub user_id: String,
    pub assessment_id: String,
    /// The attempt's total score before and after.
    pub old_score: f64,
    pub new_score: f64,
    pub max_score: f64,
    /// Passed before and after (an attempt in progress: as it would be judged now).
    pub old_passed: bool,
    pub new_passed: bool,
    /// The answer's own score before and after.
    pub old_answer_score: f64,
    pub new_answer_score: f64,
}

fn passed_now(stream: &UserStream, assessment_id: &str) -> bool {
    stream
        .attempt(assessment_id)
        .is_some_and(|a| match &a.status {
            AttemptStatus::Completed { passed, .. } => *passed,
            AttemptStatus::InProgress => grading::passed(a.score, a.max_score, a.pass_ratio),
        })
}

/// The users whose streams a regrade of `plan` must decide on, in id order: those who
/// answered the question, and those with an attempt of the test in progress (the
/// corrected version is stored before this is asked, so an attempt started later has it).
async fn users(state: &AppState, plan: &Plan) -> Result<Vec<String>, StoreError> {
    let mut users = takers::answered(&state.db, &plan.test_id, &plan.question_id).await?;
    users.extend(takers::in_progress(&state.db, &plan.test_id).await?);
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

/// What a dry run finds.
#[derive(Debug, Default)]
pub struct Preview {
    /// Each attempt whose score would change.
    pub changes: Vec<Change>,
    /// Attempts in progress that have not answered the question yet: their answer would
    /// be graded with the correction.
    pub open_attempts_corrected: u64,
}

/// What `plan` would change, deciding on every affected stream and recording nothing.
///
/// # Errors
/// A database error.
pub async fn dry_run(state: &AppState, plan: &Plan, actor: &str) -> Result<Preview, StoreError> {
    let users = users(state, plan).await?;
    let found: Vec<(Vec<Change>, u64)> = futures_util::stream::iter(users)
        .map(|user_id| async move {
            let stream = state.streams.load(&user_id).await?;
            // A stream the rules refuse to regrade (an unexpected state) changes nothing.
            let events = stream
                .decide(plan.command(actor, None))
                .map(|d| d.events)
                .unwrap_or_default();
            let ahead = events
                .iter()
                .filter(|e| matches!(e, UserEvent::QuestionCorrected { .. }))
                .count() as u64;
            let changes = events
                .into_iter()
                .filter_map(|event| match event {
                    UserEvent::AnswerRegraded {
                        assessment_id,
                        old_score,
                        new_score,
                        attempt_score,
                        attempt_max_score,
                        passed,
                        ..
                    } => {
                        let attempt = stream.attempt(&assessment_id)?;
                        Some(Change {
                            user_id: user_id.clone(),
                            old_score: attempt.score,
                            new_score: attempt_score,
                            max_score: attempt_max_score,
                            old_passed: passed_now(&stream, &assessment_id),
                            new_passed: passed,
                            old_answer_score: old_score,
                            new_answer_score: new_score,
                            assessment_id,
                        })
                    }
                    _ => None,
                })
                .collect();
            Ok::<_, StoreError>((changes, ahead))
        })
        .buffered(STREAMS_AT_ONCE)
        .try_collect()
        .await?;
    let mut preview = Preview::default();
    for (changes, ahead) in found {
        preview.changes.extend(changes);
        preview.open_attempts_corrected += ahead;
    }
    Ok(preview)
}

/// Stores the corrected definition as a new version and starts the regrade of every
/// affected stream as a job (`GET /api/admin/jobs/{job_id}`); returns the job's id.
///
/// # Errors
/// A database error before the job started; nothing was regraded then.
pub async fn start(state: &AppState, plan: Plan, admin_id: &str) -> Result<String, StoreError> {
    let corrected_version = match plan.next_definition.clone() {
        Some(definition) => Some(state.catalog.put(definition).await?.version),
        None => None,
    };
    let users = users(state, &plan).await?;
    let job = state
        .jobs
        .start_regrade(&plan.test_id, users.len() as u64)
        .await?;
    let job_id = job.id().to_string();
    let (state, admin) = (state.clone(), admin_id.to_string());
    tracing::info!(test_id = %plan.test_id, question_id = %plan.question_id, streams = users.len(), ?corrected_version, admin = %admin, "regrade started");
    tokio::spawn(async move {
        let plan = Arc::new(plan);
        let actor = format!("admin:{admin}");
        let origin = Origin::Admin { admin_id: admin };
        let mut results = futures_util::stream::iter(users)
            .map(|user_id| {
                let (state, plan, origin) = (state.clone(), plan.clone(), origin.clone());
                let command = plan.command(&actor, corrected_version);
                async move {
                    let result = commands::execute(&state, &user_id, command, &origin).await;
                    (user_id, result)
                }
            })
            .buffer_unordered(STREAMS_AT_ONCE);
        let (mut done, mut answers, mut open_corrected, mut failed) = (0u64, 0u64, 0u64, 0u64);
        while let Some((user_id, result)) = results.next().await {
            done += 1;
            match result {
                Ok(committed) => {
                    if let Outcome::Regraded { changed, corrected } = committed.outcome {
                        answers += u64::from(changed);
                        open_corrected += u64::from(corrected);
                    }
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(user_id, error = %e, "regrade of a stream failed");
                }
            }
            job.regrade_progress(done, answers, open_corrected);
        }
        let result = if failed == 0 {
            Ok(())
        } else {
            Err(format!(
                "{failed} of {done} streams could not be regraded; the same regrade again \
                 regrades them (and changes nothing else)"
            ))
        };
        tracing::info!(test_id = %plan.test_id, streams = done, answers, open_corrected, failed, "regrade finished");
        job.finish(result).await;
    });
    Ok(job_id)
}
