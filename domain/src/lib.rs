//! # domain: the pure core of assessd
//!
//! Everything that decides what may happen in an assessment lives here, and nothing else
//! does. The crate has no IO, no clock, no randomness, no database and no network.
//!
//! **Architecture Invariant:** the current time, the test definition, a random question
//! order and any AI output reach the aggregate *inside the command*; the aggregate checks
//! them, decides, and returns events or a typed [`DomainError`]. Applying an event is pure
//! and never fails, so replaying a stream never calls out of the process.
//!
//! ## Layout
//! - [`test_definition`]: the shape of a test (PROTOCOL section 5) and its validation.
//! - [`grading`]: offline grading of one answer against the answer key or keywords.
//! - [`events`]: the versioned events of one user's stream (PROTOCOL sections 4 and 6).
//! - [`regrade`]: a correction of one question's key or points, checked.
//! - [`commands`]: what a session (or an admin) asks the aggregate to do.
//! - [`aggregate`]: [`UserStream`], the per-user aggregate that owns every rule.
//! - [`error`]: one variant per broken rule.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod commands;
pub mod error;
pub mod events;
pub mod generated;
pub mod grading;
pub mod regrade;
pub mod test_definition;

pub use aggregate::{Attempt, AttemptStatus, Decision, Outcome, RecordedAnswer, UserStream};
pub use commands::{Regrade, UserCommand, VersionQuestion};
pub use error::DomainError;
pub use events::{
    AiGrading, AiProvenance, AiVerdict, Answer, CompletionReason, GeneratedKey, GeneratedQuestion,
    GenerationOutcome, GradedBy, PresentedChoice, PresentedQuestion, QuestionGeneration,
    QuestionProvenance, TokenUsage, UserEvent,
};
pub use regrade::Correction;
pub use test_definition::{QuestionKind, TestDefinition, ValidationError};
