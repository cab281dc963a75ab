//! The rules a command can break, one variant each, so callers and tests match on them.

use thiserror::Error;

use crate::test_definition::ValidationError;

/// Why the aggregate refused a command. Nothing was recorded when this is returned.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DomainError {
    /// Another test's attempt is still in progress; only one runs at a time.
    #[error("test {test_id} is in progress; finish it before starting another")]
    AssessmentInProgress { test_id: String },
    /// Every allowed attempt of this test has been used.
    #[error("all {max_attempts} attempt(s) of test {test_id} are used")]
    AttemptsUsedUp { test_id: String, max_attempts: u32 },
    /// The attempt named in the command has already been completed.
    #[error("assessment {assessment_id} is completed")]
    AssessmentCompleted { assessment_id: String },
    /// The attempt's deadline passed before the command arrived.
    #[error("the time limit of assessment {assessment_id} has passed")]
    TimeExpired { assessment_id: String },
    /// The user has no attempt in progress (or the named one is not theirs).
    #[error("no assessment in progress")]
    NoActiveAssessment,
    /// No attempt with this id exists in the user's stream.
    #[error("assessment {assessment_id} not found")]
    AssessmentNotFound { assessment_id: String },
    /// The answer names a question that is not the current unanswered one.
    #[error("question {question_id} is not the current question")]
    WrongQuestion { question_id: String },
    /// The question was already answered, differently; a recorded answer never changes.
    #[error("question {question_id} is already answered; a recorded answer cannot be changed")]
    AnswerAlreadyRecorded { question_id: String },
    /// The answer does not fit the question (wrong type, unknown choice, too long).
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
    /// A chat message that is empty or too long.
    #[error("invalid chat message: {0}")]
    InvalidChat(String),
    /// An admin's command carried a bad value; `field` names it (e.g. `extra_secs`).
    #[error("{0}")]
    Invalid(ValidationError),
    /// The user has no override of this test in force.
    #[error("no override of test {test_id} is in force for this user")]
    NoOverride { test_id: String },
    /// The command carried input the caller should have checked (a bug in the caller).
    #[error("inconsistent command: {0}")]
    InconsistentCommand(String),
}
