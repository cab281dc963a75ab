//! The rules a question written by a model must keep before it is presented, and the
//! definition it is graded with. Pure: the server checks a reply with [`check`] before it
//! records it, and the aggregate checks again, so nothing unchecked reaches a stream.

use crate::events::{GeneratedQuestion, PresentedQuestion, QuestionProvenance};
use crate::test_definition::{
    is_valid_id, AnswerKey, ChoiceDefinition, QuestionDefinition, QuestionKind, MAX_KEYWORD_LEN,
};

/// Longest prompt accepted from the model, in characters.
pub const MAX_PROMPT_CHARS: usize = 2_000;
/// Longest choice text or explanation accepted from the model, in characters.
pub const MAX_TEXT_CHARS: usize = 500;
/// Choices a generated choice question may have.
pub const CHOICES: std::ops::RangeInclusive<usize> = 2..=6;
/// Keywords a generated free-text question's rubric may have.
pub const KEYWORDS: std::ops::RangeInclusive<usize> = 1..=10;
/// What every question of an adaptive test is worth (bank fallbacks included), so the
/// attempt's `max_score` is its question count and known when it starts.
pub const ADAPTIVE_POINTS: f64 = 1.0;

/// Checks a generated question: a known kind, a bounded non-empty prompt, 2 to 6 choices
/// with unique non-empty ids and texts and an answer among them (one for single choice,
/// at least one for multiple choice), or no choices and 1 to 10 keywords for free text.
///
/// # Errors
/// What is wrong, in words, for the log.
pub fn check(q: &GeneratedQuestion) -> Result<(), String> {
    let prompt = q.prompt.trim();
    if prompt.is_empty() || q.prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(format!("prompt must be 1 to {MAX_PROMPT_CHARS} characters"));
    }
    if q.key
        .explanation
        .as_ref()
        .is_some_and(|e| e.chars().count() > MAX_PROMPT_CHARS)
    {
        return Err("explanation is too long".into());
    }
    match q.kind {
        QuestionKind::FreeText => {
            if !q.choices.is_empty() || q.key.answer.is_some() {
                return Err("a free-text question has no choices and no answer".into());
            }
            if !KEYWORDS.contains(&q.key.keywords.len()) {
                return Err("a free-text question needs 1 to 10 keywords".into());
            }
            if q.key
                .keywords
                .iter()
                .any(|k| k.trim().is_empty() || k.chars().count() > MAX_KEYWORD_LEN)
            {
                return Err("a keyword is empty or too long".into());
            }
        }
        QuestionKind::SingleChoice | QuestionKind::MultipleChoice => {
            if !CHOICES.contains(&q.choices.len()) {
                return Err("a choice question needs 2 to 6 choices".into());
            }
            let mut ids: Vec<&str> = Vec::new();
            let mut texts: Vec<&str> = Vec::new();
            for c in &q.choices {
                let text = c.text.trim();
                if !is_valid_id(&c.id) || text.is_empty() || c.text.chars().count() > MAX_TEXT_CHARS
                {
                    return Err("a choice has a bad id or text".into());
                }
                if ids.contains(&c.id.as_str()) || texts.contains(&text) {
                    return Err("choice ids and texts must be unique".into());
                }
                ids.push(&c.id);
                texts.push(text);
            }
            let answer: Vec<&str> = match (&q.key.answer, q.kind) {
                (Some(AnswerKey::One(id)), QuestionKind::SingleChoice) => vec![id],
                (Some(AnswerKey::Many(many)), QuestionKind::MultipleChoice) => {
                    many.iter().map(String::as_str).collect()
                }
                _ => return Err("the answer does not fit the kind".into()),
            };
            let mut unique = answer.clone();
            unique.sort_unstable();
            unique.dedup();
            if answer.is_empty()
                || unique.len() != answer.len()
                || answer.iter().any(|a| !ids.contains(a))
            {
                return Err("the answer must name choices of the question, once each".into());
            }
        }
    }
    Ok(())
}

/// The definition a presented question is graded with: its recorded key for a generated
/// question, or `None` (then the test's bank holds it).
pub fn definition(
    question: &PresentedQuestion,
    generated: &QuestionProvenance,
) -> Option<QuestionDefinition> {
    let key = generated.key.as_ref()?;
    Some(QuestionDefinition {
        id: question.question_id.clone(),
        kind: question.kind,
        prompt: question.prompt.clone(),
        choices: question
            .choices
            .iter()
            .map(|c| ChoiceDefinition {
                id: c.id.clone(),
                text: c.text.clone(),
            })
            .collect(),
        answer: key.answer.clone(),
        keywords: key.keywords.clone(),
        points: question.points,
        explanation: key.explanation.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{GeneratedKey, PresentedChoice};

    fn choice(kind: QuestionKind, answer: AnswerKey) -> GeneratedQuestion {
        GeneratedQuestion {
            kind,
            prompt: "Which of these move?".into(),
            choices: ["String", "i32", "Vec<u8>"]
                .iter()
                .enumerate()
                .map(|(i, t)| PresentedChoice {
                    id: format!("c{i}"),
                    text: (*t).into(),
                })
                .collect(),
            key: GeneratedKey {
                answer: Some(answer),
                keywords: Vec::new(),
                explanation: None,
            },
        }
    }

    #[test]
    fn well_formed_questions_pass() {
        assert_eq!(
            check(&choice(
                QuestionKind::SingleChoice,
                AnswerKey::One("c1".into())
            )),
            Ok(())
        );
        let many = AnswerKey::Many(vec!["c0".into(), "c2".into()]);
        assert_eq!(check(&choice(QuestionKind::MultipleChoice, many)), Ok(()));
        let free = GeneratedQuestion {
            kind: QuestionKind::FreeText,
            prompt: "Why borrow?".into(),
            choices: Vec::new(),
            key: GeneratedKey {
                answer: None,
                keywords: vec!["alias".into()],
                explanation: Some("x".into()),
            },
        };
        assert_eq!(check(&free), Ok(()));
    }

    #[test]
    fn every_broken_rule_is_refused() {
        let one = |id: &str| AnswerKey::One(id.into());
        let single = QuestionKind::SingleChoice;
        let mut bad = vec![
            choice(single, one("zz")),
            choice(single, AnswerKey::Many(vec!["c0".into()])),
            choice(QuestionKind::MultipleChoice, AnswerKey::Many(vec![])),
            choice(
                QuestionKind::MultipleChoice,
                AnswerKey::Many(vec!["c0".into(), "c0".into()]),
            ),
            choice(QuestionKind::FreeText, one("c0")),
        ];
        let mut q = choice(single, one("c0"));
        q.prompt = "  ".into();
        bad.push(q);
        let mut q = choice(single, one("c0"));
        q.choices.truncate(1);
        bad.push(q);
        let mut q = choice(single, one("c0"));
        q.choices[1].id = "c0".into();
        bad.push(q);
        let mut q = choice(single, one("c0"));
        q.choices[1].text = " ".into();
        bad.push(q);
        let mut q = choice(single, one("c0"));
        q.prompt = "x".repeat(MAX_PROMPT_CHARS + 1);
        bad.push(q);
        let mut q = choice(QuestionKind::FreeText, one("c0"));
        q.choices.clear();
        q.key.answer = None;
        bad.push(q.clone()); // no keywords
        q.key.keywords = vec!["k".into(); 11];
        bad.push(q);
        for q in bad {
            assert!(check(&q).is_err(), "{q:?}");
        }
    }
}
