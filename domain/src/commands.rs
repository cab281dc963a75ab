//! Commands to a user's stream. Whatever is not deterministic (the time, the random
//! question order, the tutor's reply, the test definition as stored) is decided by the
//! caller and carried in here, so the aggregate stays pure.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use std::collections::BTreeMap;

use crate::events::{AiGrading, AiProvenance, Answer, QuestionGeneration};
use crate::regrade::Correction;
use crate::test_definition::{QuestionDefinition, TestDefinition};

#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Start an attempt of `test` (its latest version), or resume it if it is in progress.
    StartAssessment {
        test: Arc<TestDefinition>,
        /// A fresh id for the attempt, used only if one is started.
        assessment_id: String,
        /// The question ids in presentation order: the test's order, or a shuffle of it.
        question_order: Vec<String>,
        now: DateTime<Utc>,
    },
    /// Answer the current question of an attempt.
    SubmitAnswer {
        assessment_id: String,
        question_id: String,
        answer: Answer,
        /// The definition at the version the attempt started with.
        test: Arc<TestDefinition>,
        /// What an AI grader decided for a free-text answer; `None` grades offline.
        grading: Option<AiGrading>,
        /// When the answer arrived (not when a model finished grading it): the deadline
        /// is checked against this.
        now: DateTime<Utc>,
    },
    /// Complete the attempt in progress if its deadline has passed; otherwise nothing.
    ExpireOverdue { now: DateTime<Utc> },
    /// Record one tutor exchange; `reply` was written by the tutor named in `tutor`.
    Chat {
        assessment_id: Option<String>,
        text: String,
        reply: String,
        tutor: String,
        /// Set when an AI model wrote (or was withheld from writing) the reply.
        ai: Option<AiProvenance>,
        now: DateTime<Utc>,
    },
    /// Present the next question of an adaptive attempt that waits for one: the model's
    /// question or, failing that, the next unused bank question. Nothing happens when the
    /// attempt already shows a question (a second generation for the same position).
    PresentQuestion {
        assessment_id: String,
        /// The definition at the version the attempt started with.
        test: Arc<TestDefinition>,
        /// Boxed: a question with its key is large, and every command is moved around.
        generation: Box<QuestionGeneration>,
        now: DateTime<Utc>,
    },
    /// An admin ends an attempt in progress.
    EndByAdmin {
        assessment_id: String,
        now: DateTime<Utc>,
    },
    /// An admin moves the deadline of a timed attempt in progress `extra_secs` later.
    ExtendDeadline {
        assessment_id: String,
        extra_secs: u32,
        reason: String,
        /// Who asks, recorded in the event (e.g. `admin:root`).
        actor: String,
        now: DateTime<Utc>,
    },
    /// An admin sets the user's own limits for `test_id` (attempts started afterwards).
    SetOverride {
        test_id: String,
        max_attempts: Option<u32>,
        time_limit_secs: Option<u32>,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    },
    /// An admin ends the user's override of `test_id`.
    ClearOverride {
        test_id: String,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Grade again, against the corrected question, every recorded answer to a question
    /// in the user's attempts of a test; boxed, as it is the largest command.
    Regrade(Box<Regrade>),
}

impl UserCommand {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            UserCommand::StartAssessment { now, .. }
            | UserCommand::SubmitAnswer { now, .. }
            | UserCommand::ExpireOverdue { now }
            | UserCommand::Chat { now, .. }
            | UserCommand::PresentQuestion { now, .. }
            | UserCommand::EndByAdmin { now, .. }
            | UserCommand::ExtendDeadline { now, .. }
            | UserCommand::SetOverride { now, .. }
            | UserCommand::ClearOverride { now, .. } => *now,
            UserCommand::Regrade(regrade) => regrade.now,
        }
    }
}

/// A regrade of one user's answers to one question (see [`UserCommand::Regrade`]): an
/// answer whose grade does not change records nothing.
#[derive(Debug, Clone)]
pub struct Regrade {
    pub test_id: String,
    pub question_id: String,
    /// Each version of the test that has the question, with the question as it stands
    /// there before any correction, by version. An attempt grades with this, corrected
    /// by the corrections it has seen and then this one.
    pub versions: BTreeMap<u32, VersionQuestion>,
    /// What is corrected, as the admin asked it (checked against every version's question).
    pub correction: Correction,
    /// The version that now holds the corrected question, if one was stored.
    pub corrected_version: Option<u32>,
    pub reason: String,
    /// Who asks, recorded in the events (e.g. `admin:root`).
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// One version's own question, as a regrade grades against it (see [`Regrade`]).
#[derive(Debug, Clone)]
pub struct VersionQuestion {
    pub question: QuestionDefinition,
    /// The version is an adaptive test: it grades a bank question at
    /// [`crate::generated::ADAPTIVE_POINTS`], whatever points a correction names.
    pub adaptive: bool,
}
