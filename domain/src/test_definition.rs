//! Test definitions (PROTOCOL section 5): their JSON shape and the validation that refuses a
//! bad one whole, naming the offending field.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use thiserror::Error;

/// Longest accepted test id; ids appear in URLs and events.
pub const MAX_TEST_ID_LEN: usize = 64;
/// Upper bound on questions per test, so one definition cannot exhaust memory.
pub const MAX_QUESTIONS: usize = 500;
const MAX_TEXT_LEN: usize = 10_000;
/// Upper bounds on a free-text rubric: each keyword is searched in every answer.
pub const MAX_KEYWORDS: usize = 50;
pub const MAX_KEYWORD_LEN: usize = 200;

/// A test as an admin defines it. `id` and `version` are assigned by the server (the path
/// and the store), not trusted from the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestDefinition {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub version: u32,
    pub title: String,
    #[serde(default = "one")]
    pub max_attempts: u32,
    #[serde(default)]
    pub time_limit_secs: Option<u32>,
    #[serde(default = "default_pass_ratio")]
    pub pass_ratio: f64,
    #[serde(default)]
    pub shuffle: bool,
    pub questions: Vec<QuestionDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiSettings>,
}

fn one() -> u32 {
    1
}

fn default_pass_ratio() -> f64 {
    0.6
}

/// One question with its answer key (never sent to a test-taker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionDefinition {
    pub id: String,
    pub kind: QuestionKind,
    pub prompt: String,
    #[serde(default)]
    pub choices: Vec<ChoiceDefinition>,
    /// A choice id (`single_choice`) or a list of them (`multiple_choice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerKey>,
    /// The rubric of a `free_text` question.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    #[serde(default = "one_point")]
    pub points: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

fn one_point() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionKind {
    SingleChoice,
    MultipleChoice,
    FreeText,
}

impl QuestionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QuestionKind::SingleChoice => "single_choice",
            QuestionKind::MultipleChoice => "multiple_choice",
            QuestionKind::FreeText => "free_text",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceDefinition {
    pub id: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnswerKey {
    One(String),
    Many(Vec<String>),
}

/// Settings for AI-generated questions; kept and validated now, used by the AI issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    #[serde(default)]
    pub adaptive: bool,
    #[serde(default)]
    pub question_count: Option<u32>,
    #[serde(default)]
    pub topic: Option<String>,
    /// The server's AI provider profile this test uses (and is billed to); absent: the
    /// default profile. Only the name: keys live in the server's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Longest AI provider profile name.
pub const MAX_PROFILE_NAME_LEN: usize = 32;

/// True when `name` is usable as an AI provider profile name: 1 to 32 of `[a-z0-9_-]`,
/// starting with a letter or digit. The server reads a profile's settings from
/// `ASSESSD_AI_PROFILE_<NAME>_*`, with the name upper-cased and `-` as `_`.
pub fn is_valid_profile_name(name: &str) -> bool {
    name.len() <= MAX_PROFILE_NAME_LEN
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Why a definition was refused; `field` is a path such as `questions[1].answer`.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// True when `id` is usable as a test, question or choice id: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TEST_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl TestDefinition {
    /// Checks every field; the first problem found is returned with its field path.
    ///
    /// # Errors
    /// [`ValidationError`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !is_valid_id(&self.id) {
            return Err(invalid(
                "id",
                "must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
            ));
        }
        check_text("title", &self.title)?;
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        if self.time_limit_secs == Some(0) {
            return Err(invalid("time_limit_secs", "must be positive or null"));
        }
        if !(self.pass_ratio.is_finite() && (0.0..=1.0).contains(&self.pass_ratio)) {
            return Err(invalid("pass_ratio", "must be between 0 and 1"));
        }
        if self.questions.is_empty() {
            return Err(invalid("questions", "must hold at least one question"));
        }
        if self.questions.len() > MAX_QUESTIONS {
            return Err(invalid(
                "questions",
                format!("at most {MAX_QUESTIONS} questions"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, q) in self.questions.iter().enumerate() {
            let at = format!("questions[{i}]");
            if !seen.insert(q.id.as_str()) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("duplicate question id {:?}", q.id),
                ));
            }
            q.validate(&at)?;
        }
        if let Some(ai) = &self.ai {
            if ai.question_count == Some(0) {
                return Err(invalid("ai.question_count", "must be at least 1"));
            }
            if let Some(profile) = &ai.profile {
                if !is_valid_profile_name(profile) {
                    return Err(invalid(
                        "ai.profile",
                        "must be 1 to 32 characters of a-z 0-9 _ -, starting with a letter or digit",
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn question(&self, id: &str) -> Option<&QuestionDefinition> {
        self.questions.iter().find(|q| q.id == id)
    }

    /// The sum of every question's points.
    pub fn max_score(&self) -> f64 {
        self.questions.iter().map(|q| q.points).sum()
    }

    /// How many questions an attempt of an adaptive test asks (`ai.question_count`, or
    /// the bank's size); `None` for a test that is not adaptive.
    pub fn adaptive_count(&self) -> Option<u32> {
        let ai = self.ai.as_ref().filter(|ai| ai.adaptive)?;
        Some(
            ai.question_count
                .unwrap_or(self.questions.len() as u32)
                .max(1),
        )
    }
}

impl QuestionDefinition {
    /// Checks the question as [`TestDefinition::validate`] does, naming fields under `at`
    /// (e.g. `question.answer` for `at = "question"`).
    ///
    /// # Errors
    /// [`ValidationError`] naming the first offending field.
    pub fn validate_as(&self, at: &str) -> Result<(), ValidationError> {
        self.validate(at)
    }

    fn validate(&self, at: &str) -> Result<(), ValidationError> {
        if !is_valid_id(&self.id) {
            return Err(invalid(
                format!("{at}.id"),
                "must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
            ));
        }
        check_text(&format!("{at}.prompt"), &self.prompt)?;
        if !(self.points.is_finite() && self.points > 0.0) {
            return Err(invalid(format!("{at}.points"), "must be a positive number"));
        }
        if let Some(explanation) = &self.explanation {
            if explanation.len() > MAX_TEXT_LEN {
                return Err(invalid(format!("{at}.explanation"), "too long"));
            }
        }
        match self.kind {
            QuestionKind::FreeText => {
                if !self.choices.is_empty() {
                    return Err(invalid(
                        format!("{at}.choices"),
                        "free_text questions have no choices",
                    ));
                }
                if self.answer.is_some() {
                    return Err(invalid(
                        format!("{at}.answer"),
                        "free_text questions are graded by keywords, not answer",
                    ));
                }
                if self.keywords.is_empty() {
                    return Err(invalid(
                        format!("{at}.keywords"),
                        "free_text questions need at least one keyword",
                    ));
                }
                if self.keywords.len() > MAX_KEYWORDS {
                    return Err(invalid(
                        format!("{at}.keywords"),
                        format!("at most {MAX_KEYWORDS} keywords"),
                    ));
                }
                let mut seen = HashSet::new();
                for (k, keyword) in self.keywords.iter().enumerate() {
                    if keyword.trim().is_empty() {
                        return Err(invalid(format!("{at}.keywords[{k}]"), "must not be empty"));
                    }
                    if keyword.chars().count() > MAX_KEYWORD_LEN {
                        return Err(invalid(
                            format!("{at}.keywords[{k}]"),
                            format!("at most {MAX_KEYWORD_LEN} characters"),
                        ));
                    }
                    // Matching ignores case, so "Borrow" and "borrow" would count twice.
                    if !seen.insert(keyword.trim().to_lowercase()) {
                        return Err(invalid(
                            format!("{at}.keywords[{k}]"),
                            format!("duplicate keyword {keyword:?} (matching ignores case)"),
                        ));
                    }
                }
            }
            QuestionKind::SingleChoice | QuestionKind::MultipleChoice => {
                if self.choices.len() < 2 {
                    return Err(invalid(
                        format!("{at}.choices"),
                        "needs at least two choices",
                    ));
                }
                let mut ids = HashSet::new();
                for (c, choice) in self.choices.iter().enumerate() {
                    if !is_valid_id(&choice.id) {
                        return Err(invalid(
                            format!("{at}.choices[{c}].id"),
                            "must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
                        ));
                    }
                    if !ids.insert(choice.id.as_str()) {
                        return Err(invalid(
                            format!("{at}.choices[{c}].id"),
                            format!("duplicate choice id {:?}", choice.id),
                        ));
                    }
                    check_text(&format!("{at}.choices[{c}].text"), &choice.text)?;
                }
                if !self.keywords.is_empty() {
                    return Err(invalid(
                        format!("{at}.keywords"),
                        "only free_text questions have keywords",
                    ));
                }
                let field = format!("{at}.answer");
                match (&self.kind, &self.answer) {
                    (_, None) => return Err(invalid(field, "is required for choice questions")),
                    (QuestionKind::SingleChoice, Some(AnswerKey::One(id))) => {
                        if !ids.contains(id.as_str()) {
                            return Err(invalid(
                                field,
                                format!("{id:?} is not one of the choices"),
                            ));
                        }
                    }
                    (QuestionKind::SingleChoice, Some(AnswerKey::Many(_))) => {
                        return Err(invalid(field, "must be one choice id for single_choice"));
                    }
                    (_, Some(AnswerKey::One(_))) => {
                        return Err(invalid(
                            field,
                            "must be a list of choice ids for multiple_choice",
                        ));
                    }
                    (_, Some(AnswerKey::Many(list))) => {
                        if list.is_empty() {
                            return Err(invalid(field, "must name at least one choice"));
                        }
                        let mut chosen = HashSet::new();
                        for id in list {
                            if !ids.contains(id.as_str()) {
                                return Err(invalid(
                                    field,
                                    format!("{id:?} is not one of the choices"),
                                ));
                            }
                            if !chosen.insert(id.as_str()) {
                                return Err(invalid(field, format!("{id:?} is listed twice")));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_text(field: &str, text: &str) -> Result<(), ValidationError> {
    if text.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(invalid(field, format!("at most {MAX_TEXT_LEN} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> TestDefinition {
        serde_json::from_str(
            r#"{"id":"rust","title":"Rust basics","max_attempts":1,"time_limit_secs":600,
            "pass_ratio":0.6,"shuffle":false,"questions":[
            {"id":"q1","kind":"single_choice","prompt":"Which keyword declares a constant?",
             "choices":[{"id":"a","text":"let"},{"id":"b","text":"const"}],"answer":"b","points":1},
            {"id":"q2","kind":"multiple_choice","prompt":"Which are integer types?",
             "choices":[{"id":"a","text":"u8"},{"id":"b","text":"f32"},{"id":"c","text":"i64"}],
             "answer":["a","c"],"points":2},
            {"id":"q3","kind":"free_text","prompt":"What does the borrow checker enforce?",
             "keywords":["ownership","borrow","lifetime"],"points":2}],
            "ai":{"adaptive":false,"question_count":5,"topic":"Rust ownership"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_protocol_example_is_valid() {
        assert_eq!(sample().validate(), Ok(()));
        assert_eq!(sample().max_score(), 5.0);
    }

    fn field_of(edit: impl FnOnce(&mut TestDefinition)) -> String {
        let mut t = sample();
        edit(&mut t);
        t.validate().unwrap_err().field
    }

    #[test]
    fn an_ai_profile_name_is_checked() {
        let with = |name: &str| {
            let mut t = sample();
            t.ai.as_mut().unwrap().profile = Some(name.into());
            t.validate()
        };
        assert_eq!(with("course-a"), Ok(()));
        assert_eq!(with("c_2"), Ok(()));
        for bad in ["", "Course", "-a", "a.b", "a b", &"x".repeat(33)] {
            assert_eq!(with(bad).unwrap_err().field, "ai.profile", "{bad:?}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(|t| t.title = " ".into()), "title");
        assert_eq!(field_of(|t| t.id = "a b".into()), "id");
        assert_eq!(field_of(|t| t.max_attempts = 0), "max_attempts");
        assert_eq!(field_of(|t| t.time_limit_secs = Some(0)), "time_limit_secs");
        assert_eq!(field_of(|t| t.pass_ratio = 1.5), "pass_ratio");
        assert_eq!(field_of(|t| t.questions.clear()), "questions");
        assert_eq!(
            field_of(|t| t.questions[1].id = "q1".into()),
            "questions[1].id"
        );
        assert_eq!(
            field_of(|t| t.questions[0].answer = Some(AnswerKey::One("z".into()))),
            "questions[0].answer"
        );
        assert_eq!(
            field_of(|t| t.questions[0].answer = None),
            "questions[0].answer"
        );
        assert_eq!(
            field_of(|t| t.questions[1].answer = Some(AnswerKey::One("a".into()))),
            "questions[1].answer"
        );
        assert_eq!(
            field_of(|t| t.questions[1].choices[2].id = "a".into()),
            "questions[1].choices[2].id"
        );
        assert_eq!(
            field_of(|t| t.questions[1].choices.truncate(1)),
            "questions[1].choices"
        );
        assert_eq!(
            field_of(|t| t.questions[2].keywords.clear()),
            "questions[2].keywords"
        );
        assert_eq!(
            field_of(|t| t.questions[2].keywords.push(" Borrow ".into())),
            "questions[2].keywords[3]"
        );
        assert_eq!(
            field_of(|t| t.questions[2].keywords[1] = "x".repeat(MAX_KEYWORD_LEN + 1)),
            "questions[2].keywords[1]"
        );
        assert_eq!(
            field_of(
                |t| t.questions[2].keywords = (0..=MAX_KEYWORDS).map(|i| format!("k{i}")).collect()
            ),
            "questions[2].keywords"
        );
        assert_eq!(
            field_of(|t| t.questions[2].points = -1.0),
            "questions[2].points"
        );
        assert_eq!(
            field_of(|t| t.questions[2].prompt = String::new()),
            "questions[2].prompt"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err =
            serde_json::from_str::<TestDefinition>(r#"{"title":"x","questions":[],"bogus":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
