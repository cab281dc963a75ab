//! The events of a user's stream (PROTOCOL sections 4 and 6): a stored public format.
//!
//! Each event holds everything an auditor needs to see what happened without any other
//! table: the question as presented, the answer as given, the feedback as given, and who or
//! what produced it. Names and `event_type` strings are never changed; a new shape gets a
//! new `event_version` and an upcaster.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::test_definition::{AnswerKey, QuestionKind};

pub use crate::regrade::Correction;

/// The version every event is written with today.
pub const EVENT_VERSION: &str = "1.0";

/// Why an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionReason {
    AllAnswered,
    TimeExpired,
    EndedByAdmin,
}

impl CompletionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CompletionReason::AllAnswered => "all_answered",
            CompletionReason::TimeExpired => "time_expired",
            CompletionReason::EndedByAdmin => "ended_by_admin",
        }
    }
}

/// An answer as the test-taker gave it: a choice id or free text, or a set of choice ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    Text(String),
    Choices(Vec<String>),
}

impl Answer {
    /// Two answers are the same answer when they are the same text, or the same set of
    /// choices in any order.
    pub fn same_as(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Text(a), Answer::Text(b)) => a == b,
            (Answer::Choices(a), Answer::Choices(b)) => {
                let mut a = a.clone();
                let mut b = b.clone();
                a.sort();
                b.sort();
                a == b
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresentedChoice {
    pub id: String,
    pub text: String,
}

/// A question exactly as it was shown: enough to render it again and to audit it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresentedQuestion {
    pub question_id: String,
    /// 1-based position within the attempt.
    pub position: u32,
    pub kind: QuestionKind,
    pub prompt: String,
    pub choices: Vec<PresentedChoice>,
    pub points: f64,
}

/// Tokens a model call used, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// Where an AI tutor reply came from, recorded with it. Absent for the offline tutor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AiProvenance {
    /// The configured provider profile (`default` or a named one), never its key.
    pub provider_profile: String,
    pub model: String,
    /// `None` when the provider reported none (e.g. the reply was cut off).
    pub usage: Option<TokenUsage>,
    /// The model's reply gave the answer away and a fixed safe reply was recorded instead.
    pub withheld: bool,
    /// What the model wrote of a withheld reply, for auditors (never sent to the user).
    pub withheld_text: Option<String>,
}

/// Who graded an answer, as recorded in `FeedbackGiven`. The AI fields were added later:
/// absent in older events and in plain offline grades, so those load, replay and hash
/// exactly as they were written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradedBy {
    /// `offline`, or the AI model's name when the model's grade was recorded.
    pub graded_by: String,
    /// The AI provider profile that was asked, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_profile: Option<String>,
    /// The model that was asked, as configured for the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens used by every call made for this answer (a retry included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// Why the offline grader stood in for the model (`timeout`, `error`,
    /// `invalid_output`, `busy`); absent when the model's grade was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl From<&str> for GradedBy {
    /// A grader without an AI provenance (the offline grader).
    fn from(name: &str) -> Self {
        Self {
            graded_by: name.to_string(),
            ..Self::default()
        }
    }
}

impl PartialEq<str> for GradedBy {
    fn eq(&self, other: &str) -> bool {
        self.graded_by == other
    }
}

/// What the AI grader decided for one answer, outside the domain, carried in
/// `SubmitAnswer`.
#[derive(Debug, Clone, PartialEq)]
pub struct AiGrading {
    /// The configured provider profile (`default` or a named one), never its key.
    pub provider_profile: String,
    pub model: String,
    pub usage: Option<TokenUsage>,
    pub verdict: AiVerdict,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AiVerdict {
    /// The model's score (clamped to the question's points by the domain) and feedback.
    Graded { score: f64, feedback: String },
    /// The model failed for `reason`; the offline grader grades instead.
    Fallback { reason: String },
}

/// Where a question of an adaptive test came from, recorded on its `QuestionPresented`.
/// Every field was added later and is absent for a plain bank question, so older events
/// (and bank questions of ordinary tests) load, replay and hash exactly as they were
/// written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuestionProvenance {
    /// The AI provider profile that was asked, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_profile: Option<String>,
    /// The model that was asked, as configured for the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens used by every call made for this question (a retry included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// Why the next bank question stood in for a generated one (`timeout`, `error`,
    /// `invalid_output`, `busy`, `offline`); absent when the model's question was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// A generated question's answer key: what grades it, from this event alone. Never
    /// sent to a test-taker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<GeneratedKey>,
}

/// The key of a generated question, as the model wrote it and the server validated it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedKey {
    /// The correct choice id (`single_choice`) or ids (`multiple_choice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerKey>,
    /// The rubric of a `free_text` question.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

/// A question the model wrote for an adaptive test, before it has an id or a position.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedQuestion {
    pub kind: QuestionKind,
    pub prompt: String,
    pub choices: Vec<PresentedChoice>,
    pub key: GeneratedKey,
}

/// What the server decided, outside the domain, for the next question of an adaptive
/// test; carried in `PresentQuestion`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionGeneration {
    /// The profile asked (`None` when no AI provider is configured for the test).
    pub provider_profile: Option<String>,
    pub model: Option<String>,
    pub usage: Option<TokenUsage>,
    pub outcome: GenerationOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationOutcome {
    /// The model's question, validated.
    Generated(GeneratedQuestion),
    /// No usable question for `reason`: the next unused bank question is presented.
    Fallback { reason: String },
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    AssessmentStarted {
        assessment_id: String,
        test_id: String,
        test_version: u32,
        title: String,
        /// 1-based attempt number for this test.
        attempt: u32,
        total_questions: u32,
        max_score: f64,
        pass_ratio: f64,
        time_limit_secs: Option<u32>,
        deadline: Option<DateTime<Utc>>,
        /// The order the questions are presented in, chosen once per attempt.
        question_order: Vec<String>,
        started_at: DateTime<Utc>,
    },
    QuestionPresented {
        assessment_id: String,
        test_id: String,
        question: PresentedQuestion,
        /// What produced the question: `question_bank`, or an AI model's name.
        source: String,
        presented_at: DateTime<Utc>,
        /// For adaptive tests: the model asked, its usage, the fallback reason, and a
        /// generated question's key. Flattened and empty for bank questions, so those are
        /// written exactly as before.
        #[serde(flatten)]
        generated: QuestionProvenance,
    },
    AnswerSubmitted {
        assessment_id: String,
        test_id: String,
        question_id: String,
        answer: Answer,
        submitted_at: DateTime<Utc>,
    },
    FeedbackGiven {
        assessment_id: String,
        test_id: String,
        question_id: String,
        correct: bool,
        score: f64,
        max_score: f64,
        feedback: String,
        /// What graded the answer (`graded_by`: `offline` or an AI model's name) and,
        /// when a model was asked, its provenance. Flattened, so the stored payload stays
        /// flat and an offline grade is written exactly as before.
        #[serde(flatten)]
        graded_by: GradedBy,
        given_at: DateTime<Utc>,
    },
    AssessmentCompleted {
        assessment_id: String,
        test_id: String,
        score: f64,
        max_score: f64,
        passed: bool,
        reason: CompletionReason,
        completed_at: DateTime<Utc>,
    },
    ChatExchanged {
        assessment_id: Option<String>,
        test_id: Option<String>,
        /// The question on screen when the user asked, if any.
        question_id: Option<String>,
        user_text: String,
        reply_text: String,
        /// What wrote the reply: `offline_tutor`, or `ai` for a model (named below).
        tutor: String,
        exchanged_at: DateTime<Utc>,
        // The fields below were added later: absent in older events and in the offline
        // tutor's, so those load, replay and hash exactly as they were written.
        /// The AI provider profile that answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_profile: Option<String>,
        /// The model that answered, as configured for the profile.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<TokenUsage>,
        /// The model's reply gave the answer away: `reply_text` is the fixed safe reply
        /// that was sent instead.
        #[serde(default, skip_serializing_if = "is_false")]
        withheld: bool,
        /// What the model wrote of a withheld reply, up to where the guard stopped reading
        /// it: kept for auditors, never sent to the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        withheld_text: Option<String>,
    },
    /// An admin moved an in-progress attempt's deadline later (PROTOCOL section 6).
    DeadlineExtended {
        assessment_id: String,
        test_id: String,
        extra_secs: u32,
        /// The new deadline: the previous one plus `extra_secs`.
        deadline: DateTime<Utc>,
        reason: String,
        /// Who granted it, e.g. `admin:root`.
        actor: String,
        extended_at: DateTime<Utc>,
    },
    /// An admin set this user's own limits for a test, for attempts started afterwards.
    /// A limit left out is the test's own.
    OverrideSet {
        test_id: String,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        time_limit_secs: Option<u32>,
        reason: String,
        actor: String,
        set_at: DateTime<Utc>,
    },
    /// An admin ended this user's override of a test: the test's own limits apply again.
    OverrideCleared {
        test_id: String,
        #[serde(default)]
        reason: String,
        actor: String,
        cleared_at: DateTime<Utc>,
    },
    /// A recorded answer graded again against a corrected question (its key or points):
    /// the answer's new score and, so that views stay trivial, the attempt's new totals.
    AnswerRegraded {
        assessment_id: String,
        test_id: String,
        question_id: String,
        old_score: f64,
        new_score: f64,
        /// The question's points after the correction.
        max_score: f64,
        /// Full marks after the correction.
        correct: bool,
        /// The feedback the answer now gets.
        feedback: String,
        /// The attempt's total score, maximum and pass after this answer's new grade.
        attempt_score: f64,
        attempt_max_score: f64,
        passed: bool,
        /// What was corrected, as the admin asked it.
        correction: Correction,
        /// The test version that holds the corrected question (new attempts use it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        corrected_version: Option<u32>,
        /// The model whose grade stands, scaled to the corrected points (only the points
        /// of a model-graded answer changed). Absent: graded again offline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        graded_by: Option<String>,
        reason: String,
        actor: String,
        regraded_at: DateTime<Utc>,
    },
    /// A question of an attempt in progress was corrected before the attempt answered it:
    /// the answer, when it comes, is graded with the correction (merged with any earlier
    /// one), not with the key of the version the attempt started with.
    QuestionCorrected {
        assessment_id: String,
        test_id: String,
        question_id: String,
        /// The question's points after the correction, as this attempt grades it.
        points: f64,
        /// The attempt's maximum score after it.
        attempt_max_score: f64,
        /// What was corrected, as the admin asked it.
        correction: Correction,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        corrected_version: Option<u32>,
        reason: String,
        actor: String,
        corrected_at: DateTime<Utc>,
    },
}

impl UserEvent {
    /// The attempt the event belongs to, if any.
    pub fn assessment_id(&self) -> Option<&str> {
        match self {
            UserEvent::AssessmentStarted { assessment_id, .. }
            | UserEvent::QuestionPresented { assessment_id, .. }
            | UserEvent::AnswerSubmitted { assessment_id, .. }
            | UserEvent::FeedbackGiven { assessment_id, .. }
            | UserEvent::AssessmentCompleted { assessment_id, .. }
            | UserEvent::DeadlineExtended { assessment_id, .. }
            | UserEvent::AnswerRegraded { assessment_id, .. }
            | UserEvent::QuestionCorrected { assessment_id, .. } => Some(assessment_id),
            UserEvent::ChatExchanged { assessment_id, .. } => assessment_id.as_deref(),
            UserEvent::OverrideSet { .. } | UserEvent::OverrideCleared { .. } => None,
        }
    }
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::AssessmentStarted { .. } => "AssessmentStarted",
            UserEvent::QuestionPresented { .. } => "QuestionPresented",
            UserEvent::AnswerSubmitted { .. } => "AnswerSubmitted",
            UserEvent::FeedbackGiven { .. } => "FeedbackGiven",
            UserEvent::AssessmentCompleted { .. } => "AssessmentCompleted",
            UserEvent::ChatExchanged { .. } => "ChatExchanged",
            UserEvent::DeadlineExtended { .. } => "DeadlineExtended",
            UserEvent::OverrideSet { .. } => "OverrideSet",
            UserEvent::OverrideCleared { .. } => "OverrideCleared",
            UserEvent::AnswerRegraded { .. } => "AnswerRegraded",
            UserEvent::QuestionCorrected { .. } => "QuestionCorrected",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_string()
    }
}
