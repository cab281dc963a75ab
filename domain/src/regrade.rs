//! Corrections of one question's key or points (PROTOCOL section 6, regrade): what an
//! admin may correct, checked against the question it corrects. Pure; the aggregate
//! regrades recorded answers with the corrected question it builds here, and keeps the
//! corrections an attempt has seen, merged, to grade its later answers with them.

use serde::{Deserialize, Serialize};

use crate::test_definition::{AnswerKey, QuestionDefinition, QuestionKind, ValidationError};

/// A correction as the admin asked for it, recorded on every `AnswerRegraded` it caused.
/// A field left out is not corrected.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Correction {
    /// The right choice id (`single_choice`) or ids (`multiple_choice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerKey>,
    /// The rubric of a `free_text` question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<f64>,
}

fn invalid(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

impl Correction {
    /// `question` with this correction applied, validated as a test definition's question
    /// is; the field named in an error is the correction's (`answer`, `keywords`, `points`).
    ///
    /// # Errors
    /// [`ValidationError`] when the correction corrects nothing, does not fit the
    /// question's kind, or leaves a question a test definition would refuse (a key that
    /// is not among the choices, points that are not positive, ...).
    pub fn apply_to(
        &self,
        question: &QuestionDefinition,
    ) -> Result<QuestionDefinition, ValidationError> {
        if self.answer.is_none() && self.keywords.is_none() && self.points.is_none() {
            return Err(invalid(
                "answer",
                "give answer, keywords or points to correct",
            ));
        }
        if self.answer.is_some() && question.kind == QuestionKind::FreeText {
            return Err(invalid(
                "answer",
                "a free_text question is graded by keywords; correct keywords instead",
            ));
        }
        if self.keywords.is_some() && question.kind != QuestionKind::FreeText {
            return Err(invalid(
                "keywords",
                "only free_text questions have keywords; correct answer instead",
            ));
        }
        if let Some(points) = self.points {
            if !(points.is_finite() && points > 0.0) {
                return Err(invalid("points", "must be a positive number"));
            }
        }
        let corrected = self.overlay(question);
        corrected.validate_as("question").map_err(|e| {
            // `question.answer` -> `answer`, `question.keywords[2]` -> `keywords[2]`.
            let field = e
                .field
                .strip_prefix("question.")
                .unwrap_or(&e.field)
                .to_string();
            ValidationError { field, ..e }
        })?;
        Ok(corrected)
    }

    /// `question` with the fields this correction names replaced, unchecked: for a
    /// correction [`Correction::apply_to`] accepted for this question, or several such
    /// merged with [`Correction::then`].
    pub fn overlay(&self, question: &QuestionDefinition) -> QuestionDefinition {
        let mut corrected = question.clone();
        if let Some(answer) = &self.answer {
            corrected.answer = Some(answer.clone());
        }
        if let Some(keywords) = &self.keywords {
            corrected.keywords = keywords.clone();
        }
        if let Some(points) = self.points {
            corrected.points = points;
        }
        corrected
    }

    /// This correction followed by `later`: each field as the later one names it, else as
    /// this one does (each field is replaced whole, so the order is all that matters).
    pub fn then(&self, later: &Correction) -> Correction {
        Correction {
            answer: later.answer.clone().or_else(|| self.answer.clone()),
            keywords: later.keywords.clone().or_else(|| self.keywords.clone()),
            points: later.points.or(self.points),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(json: &str) -> QuestionDefinition {
        serde_json::from_str(json).unwrap()
    }

    fn single() -> QuestionDefinition {
        question(
            r#"{"id":"q1","kind":"single_choice","prompt":"?","choices":[{"id":"a","text":"A"},{"id":"b","text":"B"}],"answer":"a"}"#,
        )
    }

    fn free() -> QuestionDefinition {
        question(r#"{"id":"q3","kind":"free_text","prompt":"?","keywords":["k"],"points":2}"#)
    }

    fn field(correction: Correction, q: &QuestionDefinition) -> String {
        correction.apply_to(q).unwrap_err().field
    }

    #[test]
    fn a_correction_changes_only_what_it_names() {
        let c = Correction {
            answer: Some(AnswerKey::One("b".into())),
            ..Correction::default()
        };
        let q = c.apply_to(&single()).unwrap();
        assert_eq!(q.answer, Some(AnswerKey::One("b".into())));
        assert_eq!((q.points, &q.prompt), (1.0, &single().prompt));
        let c = Correction {
            points: Some(3.0),
            keywords: Some(vec!["x".into(), "y".into()]),
            ..Correction::default()
        };
        let q = c.apply_to(&free()).unwrap();
        assert_eq!((q.points, q.keywords.len()), (3.0, 2));
    }

    #[test]
    fn a_later_correction_wins_field_by_field() {
        let first = Correction {
            answer: Some(AnswerKey::One("b".into())),
            points: Some(2.0),
            ..Correction::default()
        };
        let later = Correction {
            points: Some(3.0),
            ..Correction::default()
        };
        let merged = first.then(&later);
        assert_eq!(merged.answer, Some(AnswerKey::One("b".into())));
        assert_eq!(merged.points, Some(3.0));
        // The merge grades as the two applied one after the other.
        let one_by_one = later.apply_to(&first.apply_to(&single()).unwrap()).unwrap();
        assert_eq!(merged.overlay(&single()), one_by_one);
        assert_eq!(first.then(&first), first);
    }

    #[test]
    fn bad_corrections_name_their_field() {
        let key = |k: &str| Correction {
            answer: Some(AnswerKey::One(k.into())),
            ..Correction::default()
        };
        assert_eq!(field(key("z"), &single()), "answer");
        assert_eq!(field(key("a"), &free()), "answer");
        assert_eq!(field(Correction::default(), &single()), "answer");
        let points = |p: f64| Correction {
            points: Some(p),
            ..Correction::default()
        };
        assert_eq!(field(points(-1.0), &single()), "points");
        assert_eq!(field(points(0.0), &single()), "points");
        assert_eq!(field(points(f64::NAN), &single()), "points");
        let keywords = |k: Vec<&str>| Correction {
            keywords: Some(k.into_iter().map(String::from).collect()),
            ..Correction::default()
        };
        assert_eq!(field(keywords(vec!["a"]), &single()), "keywords");
        assert_eq!(field(keywords(vec![]), &free()), "keywords");
        assert_eq!(field(keywords(vec!["a", "A"]), &free()), "keywords[1]");
    }
}
