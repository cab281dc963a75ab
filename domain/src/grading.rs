//! Offline grading (PROTOCOL section 5): choice questions are all-or-nothing against the
//! answer key; free text earns `points` times the share of keywords found, ignoring case.

use crate::events::{AiGrading, AiVerdict, Answer, GradedBy};
use crate::test_definition::{AnswerKey, QuestionDefinition, QuestionKind};

/// The grade of one answer, before it is recorded as `FeedbackGiven`.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    pub correct: bool,
    pub score: f64,
    pub max_score: f64,
    pub feedback: String,
}

/// Who grades when no AI is involved; recorded in `FeedbackGiven::graded_by`.
pub const OFFLINE_GRADER: &str = "offline";

/// Grades `answer`, which [`check_answer_shape`] has accepted for `question`.
pub fn grade(question: &QuestionDefinition, answer: &Answer) -> Grade {
    let max_score = question.points;
    let (score, mut feedback) = match (&question.kind, answer, &question.answer) {
        (QuestionKind::SingleChoice, Answer::Text(chosen), Some(AnswerKey::One(key))) => {
            if chosen == key {
                (max_score, "Correct.".to_string())
            } else {
                (0.0, "Not quite.".to_string())
            }
        }
        (QuestionKind::MultipleChoice, Answer::Choices(chosen), Some(AnswerKey::Many(key))) => {
            if Answer::Choices(chosen.clone()).same_as(&Answer::Choices(key.clone())) {
                (max_score, "Correct.".to_string())
            } else {
                (
                    0.0,
                    "Not quite: the answer needs exactly the right set of choices.".to_string(),
                )
            }
        }
        (QuestionKind::FreeText, Answer::Text(text), _) => {
            let text = text.to_lowercase();
            let found: Vec<&String> = question
                .keywords
                .iter()
                .filter(|k| text.contains(&k.to_lowercase()))
                .collect();
            // Validation requires keywords; an empty list still must not divide by zero.
            let share = found.len() as f64 / question.keywords.len().max(1) as f64;
            let feedback = format!(
                "Your answer covers {} of {} key ideas.",
                found.len(),
                question.keywords.len()
            );
            (max_score * share, feedback)
        }
        // The shape was checked before grading; a mismatch can only earn nothing.
        _ => (0.0, "This answer does not fit the question.".to_string()),
    };
    if let Some(explanation) = &question.explanation {
        feedback.push(' ');
        feedback.push_str(explanation);
    }
    Grade {
        correct: score >= max_score,
        score,
        max_score,
        feedback,
    }
}

/// Longest feedback kept from a model, in characters; the caller validates first, this
/// only bounds what reaches the event.
pub const MAX_AI_FEEDBACK_CHARS: usize = 2_000;

/// Grades `answer` with the AI grader's verdict when there is one for a free-text
/// question: its score clamped to `[0, points]`, full marks counting as correct. A
/// fallback, a verdict that is not a finite score with some feedback, or a question that
/// is not free text is graded offline (and a fallback says why in the record).
pub fn grade_with(
    question: &QuestionDefinition,
    answer: &Answer,
    grading: Option<AiGrading>,
) -> (Grade, GradedBy) {
    let offline = || grade(question, answer);
    let Some(ai) = grading.filter(|_| question.kind == QuestionKind::FreeText) else {
        return (offline(), GradedBy::from(OFFLINE_GRADER));
    };
    let mut graded_by = GradedBy {
        graded_by: OFFLINE_GRADER.to_string(),
        provider_profile: Some(ai.provider_profile),
        model: Some(ai.model.clone()),
        usage: ai.usage,
        fallback: None,
    };
    match ai.verdict {
        AiVerdict::Graded { score, feedback }
            if score.is_finite() && !feedback.trim().is_empty() =>
        {
            let max_score = question.points;
            let score = score.clamp(0.0, max_score);
            graded_by.graded_by = ai.model;
            let feedback = feedback
                .trim()
                .chars()
                .take(MAX_AI_FEEDBACK_CHARS)
                .collect();
            let grade = Grade {
                correct: score >= max_score,
                score,
                max_score,
                feedback,
            };
            (grade, graded_by)
        }
        AiVerdict::Graded { .. } => {
            graded_by.fallback = Some("invalid_output".to_string());
            (offline(), graded_by)
        }
        AiVerdict::Fallback { reason } => {
            graded_by.fallback = Some(reason);
            (offline(), graded_by)
        }
    }
}

/// Longest free-text answer accepted, in bytes.
pub const MAX_ANSWER_LEN: usize = 10_000;

/// Refuses an answer whose type does not fit the question or that names an unknown choice.
///
/// # Errors
/// A message saying what is wrong with the answer.
pub fn check_answer_shape(question: &QuestionDefinition, answer: &Answer) -> Result<(), String> {
    let known = |id: &String| question.choices.iter().any(|c| &c.id == id);
    match (question.kind, answer) {
        (QuestionKind::SingleChoice, Answer::Text(id)) => {
            if known(id) {
                Ok(())
            } else {
                Err(format!("{id:?} is not one of the choices"))
            }
        }
        (QuestionKind::MultipleChoice, Answer::Choices(ids)) => {
            // An empty selection is almost always a client bug, and once recorded it is
            // graded wrong for good: refuse it instead.
            if ids.is_empty() {
                return Err("choose at least one of the choices".to_string());
            }
            for (i, id) in ids.iter().enumerate() {
                if !known(id) {
                    return Err(format!("{id:?} is not one of the choices"));
                }
                if ids[..i].contains(id) {
                    return Err(format!("{id:?} is chosen twice"));
                }
            }
            Ok(())
        }
        (QuestionKind::FreeText, Answer::Text(text)) => {
            if text.len() > MAX_ANSWER_LEN {
                Err(format!(
                    "free text answers are at most {MAX_ANSWER_LEN} bytes"
                ))
            } else {
                Ok(())
            }
        }
        (QuestionKind::SingleChoice | QuestionKind::FreeText, Answer::Choices(_)) => Err(format!(
            "a {} question takes a string answer",
            question.kind.as_str()
        )),
        (QuestionKind::MultipleChoice, Answer::Text(_)) => {
            Err("a multiple_choice question takes an array of choice ids".to_string())
        }
    }
}

/// `score >= pass_ratio × max_score`, with a tolerance for floating-point sums so that
/// 3 of 5 points passes a 0.6 ratio (0.6 × 5 is 3.0000000000000004 in binary).
pub fn passed(score: f64, max_score: f64, pass_ratio: f64) -> bool {
    score + 1e-9 >= pass_ratio * max_score
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_definition::TestDefinition;

    fn test() -> TestDefinition {
        serde_json::from_str(
            r#"{"id":"t","title":"T","questions":[
            {"id":"q1","kind":"single_choice","prompt":"p","choices":[{"id":"a","text":"A"},{"id":"b","text":"B"}],"answer":"b","points":1,"explanation":"Because."},
            {"id":"q2","kind":"multiple_choice","prompt":"p","choices":[{"id":"a","text":"A"},{"id":"b","text":"B"},{"id":"c","text":"C"}],"answer":["a","c"],"points":2},
            {"id":"q3","kind":"free_text","prompt":"p","keywords":["Ownership","borrow","lifetime"],"points":2}]}"#,
        )
        .unwrap()
    }

    fn text(s: &str) -> Answer {
        Answer::Text(s.into())
    }

    fn choices(ids: &[&str]) -> Answer {
        Answer::Choices(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn single_choice_is_all_or_nothing_and_adds_the_explanation() {
        let t = test();
        let right = grade(&t.questions[0], &text("b"));
        assert_eq!((right.correct, right.score), (true, 1.0));
        assert!(right.feedback.ends_with("Because."));
        let wrong = grade(&t.questions[0], &text("a"));
        assert_eq!(
            (wrong.correct, wrong.score, wrong.max_score),
            (false, 0.0, 1.0)
        );
    }

    #[test]
    fn multiple_choice_ignores_order_and_gives_no_partial_credit() {
        let t = test();
        assert_eq!(grade(&t.questions[1], &choices(&["c", "a"])).score, 2.0);
        assert_eq!(grade(&t.questions[1], &choices(&["a"])).score, 0.0);
        assert_eq!(
            grade(&t.questions[1], &choices(&["a", "b", "c"])).score,
            0.0
        );
    }

    #[test]
    fn free_text_earns_the_share_of_keywords_found_ignoring_case() {
        let t = test();
        let g = grade(&t.questions[2], &text("OWNERSHIP and borrowing rules"));
        assert!((g.score - 2.0 * 2.0 / 3.0).abs() < 1e-12, "{}", g.score);
        assert!(!g.correct);
        let full = grade(&t.questions[2], &text("ownership, borrow, lifetime"));
        assert_eq!((full.score, full.correct), (2.0, true));
        assert_eq!(grade(&t.questions[2], &text("no idea")).score, 0.0);
    }

    #[test]
    fn answer_shapes_are_checked() {
        let t = test();
        assert!(check_answer_shape(&t.questions[0], &text("z")).is_err());
        assert!(check_answer_shape(&t.questions[0], &choices(&["a"])).is_err());
        assert!(check_answer_shape(&t.questions[1], &text("a")).is_err());
        assert!(check_answer_shape(&t.questions[1], &choices(&["a", "a"])).is_err());
        assert!(check_answer_shape(&t.questions[1], &choices(&[])).is_err());
        assert!(check_answer_shape(&t.questions[1], &choices(&["a", "c"])).is_ok());
        assert!(
            check_answer_shape(&t.questions[2], &text(&"x".repeat(MAX_ANSWER_LEN + 1))).is_err()
        );
    }

    fn ai(verdict: AiVerdict) -> Option<AiGrading> {
        Some(AiGrading {
            provider_profile: "default".into(),
            model: "m".into(),
            usage: None,
            verdict,
        })
    }

    fn graded(score: f64, feedback: &str) -> Option<AiGrading> {
        ai(AiVerdict::Graded {
            score,
            feedback: feedback.into(),
        })
    }

    #[test]
    fn a_model_grade_is_clamped_to_the_points_and_full_marks_are_correct() {
        let t = test();
        let (g, by) = grade_with(&t.questions[2], &text("x"), graded(7.5, "Well argued."));
        assert_eq!(
            (g.score, g.correct, g.feedback.as_str()),
            (2.0, true, "Well argued.")
        );
        assert_eq!((by.graded_by.as_str(), by.fallback), ("m", None));
        let (g, _) = grade_with(&t.questions[2], &text("x"), graded(-1.0, "No."));
        assert_eq!((g.score, g.correct), (0.0, false));
        let (g, _) = grade_with(&t.questions[2], &text("x"), graded(1.5, "Close."));
        assert_eq!((g.score, g.correct), (1.5, false));
    }

    #[test]
    fn an_unusable_verdict_or_a_fallback_grades_offline_and_says_why() {
        let t = test();
        let answer = text("ownership and borrow");
        let offline = grade(&t.questions[2], &answer);
        for (verdict, reason) in [
            (graded(f64::NAN, "x"), "invalid_output"),
            (graded(f64::INFINITY, "x"), "invalid_output"),
            (graded(1.0, "  "), "invalid_output"),
            (
                ai(AiVerdict::Fallback {
                    reason: "timeout".into(),
                }),
                "timeout",
            ),
        ] {
            let (g, by) = grade_with(&t.questions[2], &answer, verdict);
            assert_eq!(g, offline);
            assert_eq!(by.graded_by, OFFLINE_GRADER);
            assert_eq!(by.fallback.as_deref(), Some(reason));
            assert_eq!(by.model.as_deref(), Some("m"));
        }
        // Choice questions are never graded by a model, whatever the command says.
        let (g, by) = grade_with(&t.questions[0], &text("b"), graded(0.0, "No."));
        assert_eq!((g.score, by), (1.0, GradedBy::from(OFFLINE_GRADER)));
    }

    #[test]
    fn passing_tolerates_binary_fractions() {
        assert!(passed(3.0, 5.0, 0.6));
        assert!(!passed(2.99, 5.0, 0.6));
        assert!(passed(0.0, 5.0, 0.0));
    }
}
