//! `assessments`: one row per attempt, what a test-taker sees of their own history (and
//! what `GET /api/tests` counts attempts from).
//!
//! [`apply`] is pure: it folds events into rows held in memory. The runner loads the rows a
//! batch touches, applies the batch, and writes them back with its checkpoint.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::UserEvent;
use serde::Serialize;

use crate::feed::FeedEvent;

pub const NAME: &str = "assessments";
/// The live table; a rebuild writes a table of this name plus `_rebuild` beside it.
pub const TABLE: &str = "assessments";
/// The columns that identify a row (a rebuild's table needs them unique to upsert).
pub const KEY: &str = "user_id, assessment_id";

/// One attempt as the view holds it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AssessmentRow {
    pub user_id: String,
    pub assessment_id: String,
    pub test_id: String,
    pub test_version: i32,
    pub title: String,
    pub attempt: i32,
    /// `in_progress` or `completed`.
    pub status: String,
    pub answered: i32,
    pub total_questions: i32,
    pub score: f64,
    pub max_score: f64,
    pub passed: Option<bool>,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<f64>,
}

/// Rows by (user, attempt): the user is part of the key, so one user's events can never
/// touch another user's row, whatever ids they carry.
pub type Rows = BTreeMap<(String, String), AssessmentRow>;

/// The (user, attempt) an event is about, if it is about an attempt.
pub fn key_of(event: &FeedEvent) -> Option<(String, String)> {
    event
        .event
        .assessment_id()
        .map(|id| (event.user_id.clone(), id.to_string()))
}

/// Applies one event to `rows`, which must hold the row of the attempt it is about when
/// that attempt started before this batch.
pub fn apply(rows: &mut Rows, event: &FeedEvent) {
    let Some(key) = key_of(event) else {
        return;
    };
    match &event.event {
        UserEvent::AssessmentStarted {
            test_id,
            test_version,
            title,
            attempt,
            total_questions,
            max_score,
            deadline,
            started_at,
            ..
        } => {
            rows.insert(
                key.clone(),
                AssessmentRow {
                    user_id: key.0,
                    assessment_id: key.1,
                    test_id: test_id.clone(),
                    test_version: clamp(u64::from(*test_version)),
                    title: title.clone(),
                    attempt: clamp(u64::from(*attempt)),
                    status: "in_progress".into(),
                    answered: 0,
                    total_questions: clamp(u64::from(*total_questions)),
                    score: 0.0,
                    max_score: *max_score,
                    passed: None,
                    reason: None,
                    started_at: *started_at,
                    deadline: *deadline,
                    completed_at: None,
                    duration_secs: None,
                },
            );
        }
        UserEvent::FeedbackGiven { score, .. } => {
            if let Some(row) = rows.get_mut(&key) {
                row.answered += 1;
                row.score += score;
            }
        }
        UserEvent::AssessmentCompleted {
            score,
            passed,
            reason,
            completed_at,
            ..
        } => {
            if let Some(row) = rows.get_mut(&key) {
                row.status = "completed".into();
                row.score = *score;
                row.passed = Some(*passed);
                row.reason = Some(reason.as_str().to_string());
                row.completed_at = Some(*completed_at);
                row.duration_secs =
                    Some((*completed_at - row.started_at).num_milliseconds() as f64 / 1000.0);
            }
        }
        UserEvent::DeadlineExtended { deadline, .. } => {
            if let Some(row) = rows.get_mut(&key) {
                row.deadline = Some(*deadline);
            }
        }
        UserEvent::AnswerRegraded {
            attempt_score,
            attempt_max_score,
            passed,
            ..
        } => {
            if let Some(row) = rows.get_mut(&key) {
                row.score = *attempt_score;
                row.max_score = *attempt_max_score;
                // An attempt in progress is judged when it completes.
                if row.status == "completed" {
                    row.passed = Some(*passed);
                }
            }
        }
        UserEvent::QuestionCorrected {
            attempt_max_score, ..
        } => {
            if let Some(row) = rows.get_mut(&key) {
                row.max_score = *attempt_max_score;
            }
        }
        UserEvent::QuestionPresented { .. }
        | UserEvent::AnswerSubmitted { .. }
        | UserEvent::ChatExchanged { .. }
        | UserEvent::OverrideSet { .. }
        | UserEvent::OverrideCleared { .. } => {}
    }
}

fn clamp(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(crate) const COLUMNS: &str =
    "user_id, assessment_id, test_id, test_version, title, attempt, status, \
    answered, total_questions, score, max_score, passed, reason, started_at, deadline, \
    completed_at, duration_secs";

/// Every column of `table`, in [`AssessmentRow`]'s order.
pub(crate) fn select_sql(table: &str) -> String {
    format!("select {COLUMNS} from {table}")
}

/// What a row already in the view takes from a newer version of itself.
pub(crate) const ON_CONFLICT: &str = " on conflict (user_id, assessment_id) do update set \
    status = excluded.status, answered = excluded.answered, score = excluded.score, \
    max_score = excluded.max_score, deadline = excluded.deadline, passed = excluded.passed, reason = excluded.reason, completed_at = excluded.completed_at, \
    duration_secs = excluded.duration_secs";

/// Loads the rows `events` touch from `$table`, applies them, and writes the rows back, on
/// an open transaction of either backend (`$conn` is `&mut` a connection).
macro_rules! apply_batch {
    ($conn:expr, $table:expr, $events:expr) => {{
        let events: &[$crate::feed::FeedEvent] = $events;
        let mut rows = $crate::assessments::Rows::new();
        let keys: std::collections::BTreeSet<(String, String)> = events
            .iter()
            .filter_map($crate::assessments::key_of)
            .collect();
        let select = format!(
            "{} where user_id = $1 and assessment_id = $2",
            $crate::assessments::select_sql($table)
        );
        for (user_id, assessment_id) in &keys {
            let row: Option<$crate::assessments::AssessmentRow> = sqlx::query_as(&select)
                .bind(user_id)
                .bind(assessment_id)
                .fetch_optional(&mut *$conn)
                .await?;
            if let Some(row) = row {
                rows.insert((user_id.clone(), assessment_id.clone()), row);
            }
        }
        for event in events {
            $crate::assessments::apply(&mut rows, event);
        }
        $crate::assessments::write_rows!($conn, $table, rows.values());
    }};
}
pub(crate) use apply_batch;

/// Inserts or updates `$rows` (an iterator of `&AssessmentRow`) in `$table`, on an open
/// transaction of either backend.
macro_rules! write_rows {
    ($conn:expr, $table:expr, $rows:expr) => {{
        let rows: Vec<&$crate::assessments::AssessmentRow> = $rows.collect();
        $crate::bulk::Bulk::write_attempts(&mut *$conn, $table, &rows).await?;
    }};
}
pub(crate) use write_rows;

/// The attempts of `user_id`, oldest first.
///
/// # Errors
/// A database error.
pub async fn of_user(
    db: &crate::Db,
    user_id: &str,
) -> Result<Vec<AssessmentRow>, crate::ProjectionError> {
    let sql = format!(
        "{} where user_id = $1 order by started_at, assessment_id",
        select_sql(TABLE)
    );
    Ok(crate::on_db!(db, pool => sqlx::query_as(&sql).bind(user_id).fetch_all(pool).await?))
}

/// Every row of the view, in key order (to compare a view with a rebuilt one).
///
/// # Errors
/// A database error.
pub async fn all(db: &crate::Db) -> Result<Vec<AssessmentRow>, crate::ProjectionError> {
    let sql = format!("{} order by {KEY}", select_sql(TABLE));
    Ok(crate::on_db!(db, pool => sqlx::query_as(&sql).fetch_all(pool).await?))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use domain::CompletionReason;

    use super::*;
    use crate::feed::Position;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn feed(user: &str, global: i64, event: UserEvent) -> FeedEvent {
        FeedEvent {
            position: Position { tx: 0, global },
            user_id: user.into(),
            sequence: global,
            recorded_at: at(global),
            event,
        }
    }

    fn started(id: &str) -> UserEvent {
        UserEvent::AssessmentStarted {
            assessment_id: id.into(),
            test_id: "t".into(),
            test_version: 2,
            title: "T".into(),
            attempt: 1,
            total_questions: 2,
            max_score: 3.0,
            pass_ratio: 0.5,
            time_limit_secs: Some(60),
            deadline: Some(at(60)),
            question_order: vec!["a".into(), "b".into()],
            started_at: at(0),
        }
    }

    fn feedback(id: &str, score: f64) -> UserEvent {
        UserEvent::FeedbackGiven {
            assessment_id: id.into(),
            test_id: "t".into(),
            question_id: "a".into(),
            correct: score > 0.0,
            score,
            max_score: 1.0,
            feedback: String::new(),
            graded_by: "offline".into(),
            given_at: at(5),
        }
    }

    #[test]
    fn an_attempt_is_one_row_from_start_to_completion() {
        let mut rows = Rows::new();
        apply(&mut rows, &feed("u", 1, started("x")));
        apply(&mut rows, &feed("u", 2, feedback("x", 1.0)));
        apply(&mut rows, &feed("u", 3, feedback("x", 0.5)));
        let row = &rows[&("u".to_string(), "x".to_string())];
        assert_eq!(
            (row.status.as_str(), row.answered, row.score),
            ("in_progress", 2, 1.5)
        );
        apply(
            &mut rows,
            &feed(
                "u",
                4,
                UserEvent::AssessmentCompleted {
                    assessment_id: "x".into(),
                    test_id: "t".into(),
                    score: 1.5,
                    max_score: 3.0,
                    passed: true,
                    reason: CompletionReason::AllAnswered,
                    completed_at: at(30),
                },
            ),
        );
        let row = &rows[&("u".to_string(), "x".to_string())];
        assert_eq!(row.status, "completed");
        assert_eq!(row.passed, Some(true));
        assert_eq!(row.reason.as_deref(), Some("all_answered"));
        assert_eq!(row.duration_secs, Some(30.0));
        assert_eq!(row.test_version, 2);
    }

    #[test]
    fn extra_time_and_a_regrade_update_the_row() {
        let mut rows = Rows::new();
        apply(&mut rows, &feed("u", 1, started("x")));
        apply(&mut rows, &feed("u", 2, feedback("x", 1.0)));
        apply(
            &mut rows,
            &feed(
                "u",
                3,
                UserEvent::DeadlineExtended {
                    assessment_id: "x".into(),
                    test_id: "t".into(),
                    extra_secs: 30,
                    deadline: at(90),
                    reason: "r".into(),
                    actor: "admin:root".into(),
                    extended_at: at(10),
                },
            ),
        );
        let regraded = |global, passed| {
            feed(
                "u",
                global,
                UserEvent::AnswerRegraded {
                    assessment_id: "x".into(),
                    test_id: "t".into(),
                    question_id: "a".into(),
                    old_score: 1.0,
                    new_score: 0.0,
                    max_score: 2.0,
                    correct: false,
                    feedback: String::new(),
                    attempt_score: 0.0,
                    attempt_max_score: 4.0,
                    passed,
                    correction: domain::Correction::default(),
                    corrected_version: Some(3),
                    graded_by: None,
                    reason: "r".into(),
                    actor: "admin:root".into(),
                    regraded_at: at(20),
                },
            )
        };
        apply(&mut rows, &regraded(4, false));
        let row = &rows[&("u".to_string(), "x".to_string())];
        assert_eq!(row.deadline, Some(at(90)));
        assert_eq!((row.score, row.max_score, row.passed), (0.0, 4.0, None));
        apply(
            &mut rows,
            &feed(
                "u",
                5,
                UserEvent::AssessmentCompleted {
                    assessment_id: "x".into(),
                    test_id: "t".into(),
                    score: 0.0,
                    max_score: 4.0,
                    passed: false,
                    reason: CompletionReason::AllAnswered,
                    completed_at: at(30),
                },
            ),
        );
        apply(&mut rows, &regraded(6, true));
        let row = &rows[&("u".to_string(), "x".to_string())];
        assert_eq!(
            row.passed,
            Some(true),
            "a completed attempt is judged again"
        );
    }

    #[test]
    fn a_correction_ahead_of_the_answer_moves_the_maximum() {
        let mut rows = Rows::new();
        apply(&mut rows, &feed("u", 1, started("x")));
        let before = rows[&("u".to_string(), "x".to_string())].max_score;
        let corrected = UserEvent::QuestionCorrected {
            assessment_id: "x".into(),
            test_id: "t".into(),
            question_id: "b".into(),
            points: 3.0,
            attempt_max_score: before + 2.0,
            correction: domain::Correction::default(),
            corrected_version: Some(2),
            reason: "r".into(),
            actor: "admin:root".into(),
            corrected_at: at(5),
        };
        apply(&mut rows, &feed("u", 2, corrected));
        let row = &rows[&("u".to_string(), "x".to_string())];
        assert_eq!((row.max_score, row.score), (before + 2.0, 0.0));
    }

    #[test]
    fn users_are_kept_apart_whatever_ids_their_events_carry() {
        let mut rows = Rows::new();
        apply(&mut rows, &feed("u", 1, started("same")));
        apply(&mut rows, &feed("v", 2, started("same")));
        apply(&mut rows, &feed("v", 3, feedback("same", 1.0)));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[&("u".to_string(), "same".to_string())].answered, 0);
        assert_eq!(rows[&("v".to_string(), "same".to_string())].answered, 1);
        // Feedback for an attempt the view has never seen changes nothing.
        apply(&mut rows, &feed("w", 4, feedback("same", 1.0)));
        assert_eq!(rows.len(), 2);
    }
}
