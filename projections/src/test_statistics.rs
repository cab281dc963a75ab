//! `test_statistics`: item analysis per test and definition version.
//!
//! The view keeps its own copy of each attempt (the same columns and code as
//! [`crate::assessments`], in `statistics_attempts`) and every graded answer
//! (`statistics_answers`); [`compute`] turns them into the figures: attempts started and
//! completed, mean score, pass rate, and per question the facility index (the share of
//! completed attempts with full marks on it) and the discrimination index (that share in
//! the top third by total score minus the share in the bottom third).

use std::collections::{BTreeMap, HashMap};

use domain::UserEvent;
use serde::Serialize;

use crate::feed::FeedEvent;
use crate::{on_db, Db, ProjectionError};

pub const NAME: &str = "test_statistics";
pub const ATTEMPTS: &str = "statistics_attempts";
pub const ANSWERS: &str = "statistics_answers";
pub const ANSWER_KEY: &str = "user_id, assessment_id, question_id";

/// One graded answer.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AnswerRow {
    pub user_id: String,
    pub assessment_id: String,
    pub question_id: String,
    pub score: f64,
    pub max_score: f64,
}

/// Answers by (user, attempt, question).
pub type Answers = BTreeMap<(String, String, String), AnswerRow>;

/// Applies one event to the answers (the attempts go through [`crate::assessments::apply`]).
pub fn apply(answers: &mut Answers, event: &FeedEvent) {
    // A regraded answer takes its new score and points, as a first grade would.
    let (UserEvent::FeedbackGiven {
        assessment_id,
        question_id,
        score,
        max_score,
        ..
    }
    | UserEvent::AnswerRegraded {
        assessment_id,
        question_id,
        new_score: score,
        max_score,
        ..
    }) = &event.event
    else {
        return;
    };
    {
        answers.insert(
            (
                event.user_id.clone(),
                assessment_id.clone(),
                question_id.clone(),
            ),
            AnswerRow {
                user_id: event.user_id.clone(),
                assessment_id: assessment_id.clone(),
                question_id: question_id.clone(),
                score: *score,
                max_score: *max_score,
            },
        );
    }
}

/// Inserts `$answers` (an iterator of `&AnswerRow`) into `$table`; an answer already
/// there takes the new score (it was regraded).
macro_rules! write_answers {
    ($conn:expr, $table:expr, $answers:expr) => {{
        let answers: Vec<&$crate::test_statistics::AnswerRow> = $answers.collect();
        $crate::bulk::Bulk::write_answers(&mut *$conn, $table, &answers).await?;
    }};
}
pub(crate) use write_answers;

/// Applies a live batch to the view's two tables, on an open transaction.
macro_rules! apply_batch {
    ($conn:expr, $attempts:expr, $answers:expr, $events:expr) => {{
        let events: &[$crate::feed::FeedEvent] = $events;
        $crate::assessments::apply_batch!($conn, $attempts, events);
        let mut answers = $crate::test_statistics::Answers::new();
        for event in events {
            $crate::test_statistics::apply(&mut answers, event);
        }
        $crate::test_statistics::write_answers!($conn, $answers, answers.values());
    }};
}
pub(crate) use apply_batch;

/// One definition version of a test, analysed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatistics {
    pub version: i32,
    pub attempts_started: u64,
    pub attempts_completed: u64,
    /// Over completed attempts; null when there are none.
    pub mean_score: Option<f64>,
    /// The share of completed attempts that passed; null when there are none.
    pub pass_rate: Option<f64>,
    pub questions: Vec<QuestionStatistics>,
}

/// One question of a version, analysed over its completed attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionStatistics {
    pub question_id: String,
    /// Completed attempts that answered it.
    pub answered: u64,
    /// The share of completed attempts with full marks on it (an unanswered question
    /// counts as not correct); null without completed attempts.
    pub facility: Option<f64>,
    /// Full-marks share in the top third by total score minus that in the bottom third,
    /// from -1 to 1; null with fewer than three completed attempts.
    pub discrimination: Option<f64>,
}

/// An attempt as the statistics need it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFacts {
    pub user_id: String,
    pub assessment_id: String,
    pub version: i32,
    pub completed: bool,
    pub score: f64,
    pub passed: bool,
}

/// Item statistics of every version, from the attempts and answers of one test. Pure.
/// `questions` orders the questions of each version (those of its definition); answered
/// questions missing from it are added after them.
pub fn compute(
    attempts: &[AttemptFacts],
    answers: &[AnswerRow],
    questions: &HashMap<i32, Vec<String>>,
) -> Vec<VersionStatistics> {
    // Whether each (attempt, question) earned full marks.
    let mut full: HashMap<(&str, &str, &str), bool> = HashMap::new();
    for a in answers {
        full.insert(
            (&a.user_id, &a.assessment_id, &a.question_id),
            a.score + 1e-9 >= a.max_score,
        );
    }
    let mut versions: BTreeMap<i32, Vec<&AttemptFacts>> = BTreeMap::new();
    for attempt in attempts {
        versions.entry(attempt.version).or_default().push(attempt);
    }
    versions
        .into_iter()
        .map(|(version, of_version)| {
            let mut completed: Vec<&AttemptFacts> =
                of_version.iter().copied().filter(|a| a.completed).collect();
            // Best first; ties broken by id so the thirds are the same on every run.
            completed.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| a.user_id.cmp(&b.user_id))
                    .then_with(|| a.assessment_id.cmp(&b.assessment_id))
            });
            let n = completed.len();
            let share = |part: &[&AttemptFacts], q: &str| {
                let hits = part
                    .iter()
                    .filter(|a| {
                        full.get(&(a.user_id.as_str(), a.assessment_id.as_str(), q))
                            .copied()
                            .unwrap_or(false)
                    })
                    .count();
                hits as f64 / part.len() as f64
            };
            let mut ids: Vec<String> = questions.get(&version).cloned().unwrap_or_default();
            let mut answered_ids: Vec<&str> = answers
                .iter()
                .filter(|a| {
                    completed
                        .iter()
                        .any(|c| c.user_id == a.user_id && c.assessment_id == a.assessment_id)
                })
                .map(|a| a.question_id.as_str())
                .collect();
            answered_ids.sort_unstable();
            answered_ids.dedup();
            for id in answered_ids {
                if !ids.iter().any(|q| q == id) {
                    ids.push(id.to_string());
                }
            }
            let third = n / 3;
            let questions = ids
                .into_iter()
                .map(|q| QuestionStatistics {
                    answered: completed
                        .iter()
                        .filter(|a| {
                            full.contains_key(&(a.user_id.as_str(), a.assessment_id.as_str(), &*q))
                        })
                        .count() as u64,
                    facility: (n > 0).then(|| share(&completed, &q)),
                    discrimination: (third > 0).then(|| {
                        share(&completed[..third], &q) - share(&completed[n - third..], &q)
                    }),
                    question_id: q,
                })
                .collect();
            VersionStatistics {
                version,
                attempts_started: of_version.len() as u64,
                attempts_completed: n as u64,
                mean_score: (n > 0)
                    .then(|| completed.iter().map(|a| a.score).sum::<f64>() / n as f64),
                pass_rate: (n > 0)
                    .then(|| completed.iter().filter(|a| a.passed).count() as f64 / n as f64),
                questions,
            }
        })
        .collect()
}

/// The attempts and answers of `test_id` as the view holds them.
///
/// # Errors
/// A database error.
pub async fn facts_of(
    db: &Db,
    test_id: &str,
) -> Result<(Vec<AttemptFacts>, Vec<AnswerRow>), ProjectionError> {
    let attempts_sql = format!(
        "select user_id, assessment_id, test_version, status, score, passed from {ATTEMPTS} \
         where test_id = $1"
    );
    let answers_sql = format!(
        "select q.user_id, q.assessment_id, q.question_id, q.score, q.max_score \
         from {ANSWERS} q join {ATTEMPTS} a \
           on a.user_id = q.user_id and a.assessment_id = q.assessment_id \
         where a.test_id = $1"
    );
    type Row = (String, String, i32, String, f64, Option<bool>);
    let (rows, answers): (Vec<Row>, Vec<AnswerRow>) = on_db!(db, pool => (
        sqlx::query_as(&attempts_sql).bind(test_id).fetch_all(pool).await?,
        sqlx::query_as(&answers_sql).bind(test_id).fetch_all(pool).await?,
    ));
    let attempts = rows
        .into_iter()
        .map(
            |(user_id, assessment_id, version, status, score, passed)| AttemptFacts {
                user_id,
                assessment_id,
                version,
                completed: status == "completed",
                score,
                passed: passed.unwrap_or(false),
            },
        )
        .collect();
    Ok((attempts, answers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: &str, score: f64, completed: bool) -> AttemptFacts {
        AttemptFacts {
            user_id: format!("u-{id}"),
            assessment_id: id.into(),
            version: 1,
            completed,
            score,
            passed: score >= 2.0,
        }
    }

    fn answer(id: &str, q: &str, score: f64) -> AnswerRow {
        AnswerRow {
            user_id: format!("u-{id}"),
            assessment_id: id.into(),
            question_id: q.into(),
            score,
            max_score: 1.0,
        }
    }

    #[test]
    fn facility_and_discrimination_follow_their_definitions() {
        // Six completed attempts: scores 3, 3, 2, 1, 1, 0; thirds of two each.
        let attempts = vec![
            attempt("a", 3.0, true),
            attempt("b", 3.0, true),
            attempt("c", 2.0, true),
            attempt("d", 1.0, true),
            attempt("e", 1.0, true),
            attempt("f", 0.0, true),
            attempt("g", 0.0, false),
        ];
        // q1: the top two right, the bottom two wrong -> discrimination 1.
        // q2: everyone right -> facility 1, discrimination 0.
        // q3: only the bottom ("f") right, "d" never answered it -> discrimination -0.5.
        let mut answers = vec![];
        for id in ["a", "b", "c", "d", "e", "f"] {
            let good = ["a", "b", "c"].contains(&id);
            answers.push(answer(id, "q1", if good { 1.0 } else { 0.0 }));
            answers.push(answer(id, "q2", 1.0));
        }
        for id in ["a", "b", "c", "e", "f"] {
            answers.push(answer(id, "q3", if id == "f" { 1.0 } else { 0.0 }));
        }
        // An unfinished attempt's answers do not count.
        answers.push(answer("g", "q3", 1.0));
        let order = HashMap::from([(
            1,
            vec!["q1".to_string(), "q2".into(), "q3".into(), "q4".into()],
        )]);
        let stats = compute(&attempts, &answers, &order);
        assert_eq!(stats.len(), 1);
        let v = &stats[0];
        assert_eq!((v.attempts_started, v.attempts_completed), (7, 6));
        assert_eq!(v.mean_score, Some(10.0 / 6.0));
        assert_eq!(v.pass_rate, Some(0.5));
        let q = |id: &str| {
            v.questions
                .iter()
                .find(|q| q.question_id == id)
                .unwrap()
                .clone()
        };
        assert_eq!(
            (q("q1").facility, q("q1").discrimination),
            (Some(0.5), Some(1.0))
        );
        assert_eq!(
            (q("q2").facility, q("q2").discrimination),
            (Some(1.0), Some(0.0))
        );
        assert_eq!(q("q3").answered, 5);
        assert_eq!(q("q3").facility, Some(1.0 / 6.0));
        assert_eq!(q("q3").discrimination, Some(-0.5));
        // A question of the definition nobody answered is listed, with nothing earned.
        assert_eq!((q("q4").answered, q("q4").facility), (0, Some(0.0)));
        let ids: Vec<_> = v.questions.iter().map(|q| q.question_id.as_str()).collect();
        assert_eq!(ids, ["q1", "q2", "q3", "q4"]);
    }

    #[test]
    fn too_few_attempts_give_no_discrimination() {
        let attempts = vec![attempt("a", 1.0, true), attempt("b", 0.0, true)];
        let answers = vec![answer("a", "q1", 1.0), answer("b", "q1", 0.0)];
        let stats = compute(&attempts, &answers, &HashMap::new());
        assert_eq!(stats[0].questions[0].facility, Some(0.5));
        assert_eq!(stats[0].questions[0].discrimination, None);
        assert!(compute(&[], &[], &HashMap::new()).is_empty());
    }
}
