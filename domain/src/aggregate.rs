//! [`UserStream`]: the per-user aggregate (id = the JWT `sub`). It owns every rule of
//! PROTOCOL section 2.2, so no path into the system can skip one.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::commands::{Regrade, UserCommand, VersionQuestion};
use crate::error::DomainError;
use crate::events::{
    AiGrading, AiProvenance, Answer, CompletionReason, GenerationOutcome, PresentedChoice,
    PresentedQuestion, QuestionGeneration, QuestionProvenance, UserEvent,
};
use crate::generated::{self, ADAPTIVE_POINTS};
use crate::grading;
use crate::regrade::Correction;
use crate::test_definition::{QuestionDefinition, TestDefinition, ValidationError};

/// Longest chat message accepted, in characters.
pub const MAX_CHAT_CHARS: usize = 2_000;
/// Where bank questions come from, recorded in `QuestionPresented::source`.
pub const QUESTION_BANK: &str = "question_bank";
/// Most extra time one extension grants (a day), and the least.
pub const MAX_EXTRA_SECS: u32 = 86_400;
/// Longest `reason` an admin may give, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;

/// Everything the rules need to know about one user, rebuilt from their events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserStream {
    /// The sequence number of the last event applied (streams number events 1, 2, 3, ...).
    pub sequence: usize,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// The user's own limits, by test id, while an admin's override is in force.
    /// Defaults to none, so older snapshots load.
    #[serde(default)]
    pub overrides: BTreeMap<String, Override>,
}

/// An admin's override of one test's limits for this user (`OverrideSet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// `None`: the test's own.
    pub max_attempts: Option<u32>,
    /// `None`: the test's own.
    pub time_limit_secs: Option<u32>,
    pub reason: String,
    pub actor: String,
    pub set_at: DateTime<Utc>,
    /// The sequence of the `OverrideSet` event.
    pub seq: usize,
}

/// The latest extension of an attempt's deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    pub extra_secs: u32,
    /// Every extension of the attempt added up.
    pub total_extra_secs: u32,
    /// The sequence of the `DeadlineExtended` event.
    pub seq: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub assessment_id: String,
    pub test_id: String,
    pub test_version: u32,
    pub title: String,
    pub attempt: u32,
    pub total_questions: u32,
    pub max_score: f64,
    pub pass_ratio: f64,
    pub time_limit_secs: Option<u32>,
    pub deadline: Option<DateTime<Utc>>,
    pub question_order: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub started_seq: usize,
    /// The question shown and not yet answered, with the sequence of its event.
    pub current_question: Option<(PresentedQuestion, usize)>,
    pub answers: Vec<RecordedAnswer>,
    pub score: f64,
    pub status: AttemptStatus,
    /// The questions a model wrote for this attempt, with the keys recorded on their
    /// `QuestionPresented`: they grade from the stream alone. Defaults to none, so older
    /// snapshots load.
    #[serde(default)]
    pub generated: Vec<QuestionDefinition>,
    /// The latest `DeadlineExtended`, if an admin gave extra time. Defaults to none, so
    /// older snapshots load.
    #[serde(default)]
    pub extension: Option<Extension>,
    /// The corrections of this attempt's questions it has seen (`QuestionCorrected`,
    /// `AnswerRegraded`), merged, by question id: a later answer or regrade grades with
    /// them. Defaults to none, so older snapshots load.
    #[serde(default)]
    pub corrections: BTreeMap<String, SeenCorrection>,
}

/// Every correction an attempt has seen of one question, merged in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenCorrection {
    pub correction: Correction,
    /// The sequence of the latest event that recorded one.
    pub seq: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttemptStatus {
    InProgress,
    Completed {
        reason: CompletionReason,
        passed: bool,
        completed_at: DateTime<Utc>,
        seq: usize,
    },
}

/// An answer and, once graded, the feedback it got (with the feedback event's sequence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedAnswer {
    pub question_id: String,
    pub answer: Answer,
    pub feedback: Option<RecordedFeedback>,
    /// The sequence of the latest `AnswerRegraded` of this answer, if it was regraded.
    /// Defaults to none, so older snapshots load.
    #[serde(default)]
    pub regraded_seq: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedFeedback {
    pub correct: bool,
    pub score: f64,
    pub max_score: f64,
    pub feedback: String,
    pub seq: usize,
    /// The model whose grade this is; `None`: the offline grader's. Defaults to none, so
    /// older snapshots load (a regrade then grades such an answer offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Attempt {
    pub fn is_in_progress(&self) -> bool {
        self.status == AttemptStatus::InProgress
    }

    pub fn answered(&self) -> u32 {
        self.answers.len() as u32
    }

    pub fn answer_to(&self, question_id: &str) -> Option<&RecordedAnswer> {
        self.answers.iter().find(|a| a.question_id == question_id)
    }

    /// In progress with no question shown: an adaptive attempt waiting for its next
    /// question (an ordinary attempt always shows one until it completes).
    pub fn awaits_question(&self) -> bool {
        self.is_in_progress() && self.current_question.is_none()
    }

    /// In progress, but its deadline has passed: the next command will complete it.
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        self.is_in_progress() && self.deadline.is_some_and(|d| now >= d)
    }

    /// Records that `correction` reached `question_id` (event `seq`), after those before.
    fn see_correction(&mut self, question_id: &str, correction: &Correction, seq: usize) {
        let merged = match self.corrections.get(question_id) {
            Some(seen) => seen.correction.then(correction),
            None => correction.clone(),
        };
        self.corrections.insert(
            question_id.to_string(),
            SeenCorrection {
                correction: merged,
                seq,
            },
        );
    }

    /// The definition an answer to `question_id` is graded with: a generated question's
    /// recorded key, or the bank's (as presented), as corrected since the attempt began.
    /// `None` for a question not in the test.
    pub fn question_to_grade(
        &self,
        test: &TestDefinition,
        question_id: &str,
    ) -> Option<QuestionDefinition> {
        question_to_grade(self, test, question_id).ok()
    }
}

impl UserStream {
    /// The attempt in progress, if any (there is at most one).
    pub fn in_progress(&self) -> Option<&Attempt> {
        self.attempts.iter().find(|a| a.is_in_progress())
    }

    pub fn attempt(&self, assessment_id: &str) -> Option<&Attempt> {
        self.attempts
            .iter()
            .find(|a| a.assessment_id == assessment_id)
    }

    fn attempt_mut(&mut self, assessment_id: &str) -> Option<&mut Attempt> {
        self.attempts
            .iter_mut()
            .find(|a| a.assessment_id == assessment_id)
    }

    /// The limits that apply to this user's next attempt of `test`: the test's own, or
    /// the admin's override in force, as `(max_attempts, time_limit_secs)`.
    pub fn effective_limits(&self, test: &TestDefinition) -> (u32, Option<u32>) {
        match self.overrides.get(&test.id) {
            Some(o) => (
                o.max_attempts.unwrap_or(test.max_attempts),
                o.time_limit_secs.or(test.time_limit_secs),
            ),
            None => (test.max_attempts, test.time_limit_secs),
        }
    }

    pub fn attempts_used(&self, test_id: &str) -> u32 {
        self.attempts
            .iter()
            .filter(|a| a.test_id == test_id)
            .count() as u32
    }

    /// Decides what `command` does: which events it records and what that means.
    ///
    /// # Errors
    /// The [`DomainError`] of the first rule the command breaks; then nothing is recorded.
    pub fn decide(&self, command: UserCommand) -> Result<Decision, DomainError> {
        let mut decision = Deciding {
            state: self.clone(),
            events: Vec::new(),
        };
        decision.expire_overdue(command.now());
        let outcome = match command {
            UserCommand::StartAssessment {
                test,
                assessment_id,
                question_order,
                now,
            } => decision.start(&test, assessment_id, question_order, now)?,
            UserCommand::SubmitAnswer {
                assessment_id,
                question_id,
                answer,
                test,
                grading,
                now,
            } => decision.submit(assessment_id, question_id, answer, &test, grading, now)?,
            UserCommand::ExpireOverdue { .. } => Outcome::Checked,
            UserCommand::Chat {
                assessment_id,
                text,
                reply,
                tutor,
                ai,
                now,
            } => decision.chat(assessment_id, text, reply, tutor, ai, now)?,
            UserCommand::EndByAdmin { assessment_id, now } => {
                decision.end_by_admin(assessment_id, now)?
            }
            UserCommand::ExtendDeadline {
                assessment_id,
                extra_secs,
                reason,
                actor,
                now,
            } => decision.extend(assessment_id, extra_secs, reason, actor, now)?,
            UserCommand::SetOverride {
                test_id,
                max_attempts,
                time_limit_secs,
                reason,
                actor,
                now,
            } => {
                decision.set_override(test_id, max_attempts, time_limit_secs, reason, actor, now)?
            }
            UserCommand::ClearOverride {
                test_id,
                reason,
                actor,
                now,
            } => decision.clear_override(test_id, reason, actor, now)?,
            UserCommand::Regrade(regrade) => decision.regrade(*regrade)?,
            UserCommand::PresentQuestion {
                assessment_id,
                test,
                generation,
                now,
            } => decision.present_question(assessment_id, &test, *generation, now)?,
        };
        Ok(decision.finish(outcome))
    }
}

/// What a command did, as the rules decided it, so no caller has to work it out again
/// from the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new attempt was started and its first question presented.
    Started { assessment_id: String },
    /// The test asked for is already in progress: nothing new was recorded.
    Resumed { assessment_id: String },
    /// The answer was recorded and graded; the next question or the completion follows.
    Answered {
        assessment_id: String,
        question_id: String,
    },
    /// This very answer was recorded before (a retry): nothing new was recorded.
    AlreadyAnswered {
        assessment_id: String,
        question_id: String,
    },
    /// The deadline passed before the answer arrived: the expiry was recorded instead.
    TooLate { assessment_id: String },
    /// A tutor exchange was recorded.
    Chatted,
    /// An admin ended the attempt.
    Ended { assessment_id: String },
    /// The next question of an adaptive attempt was presented (or, with no question left
    /// to present, the attempt completed).
    Presented { assessment_id: String },
    /// Nothing was asked but the clock: an overdue attempt, if any, was completed.
    Checked,
    /// An admin moved the attempt's deadline later.
    Extended { assessment_id: String },
    /// An admin set the user's override of a test.
    OverrideSet { test_id: String },
    /// An admin ended the user's override of a test.
    OverrideCleared { test_id: String },
    /// A regrade recorded `changed` new grades of recorded answers, and `corrected`
    /// corrections of a question an attempt in progress has not answered yet (none of
    /// either when every attempt already had the correction).
    Regraded { changed: u32, corrected: u32 },
}

fn invalid(field: &str, message: impl Into<String>) -> DomainError {
    DomainError::Invalid(ValidationError {
        field: field.to_string(),
        message: message.into(),
    })
}

/// An admin's reason is required (it is what the audit history shows) and bounded.
fn check_reason(reason: &str) -> Result<(), DomainError> {
    if reason.trim().is_empty() {
        return Err(invalid("reason", "must not be empty"));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(invalid(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Two scores are the same score (they are sums of a few products of small numbers).
fn same_score(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A decided command: what it means and the events that record it (in order). Any attempt
/// whose deadline had passed is completed first, whatever the command.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub events: Vec<UserEvent>,
}

/// A command being decided: the events so far, and the state they lead to.
struct Deciding {
    state: UserStream,
    events: Vec<UserEvent>,
}

impl Deciding {
    fn finish(self, outcome: Outcome) -> Decision {
        Decision {
            outcome,
            events: self.events,
        }
    }

    fn emit(&mut self, event: UserEvent) {
        self.state.apply(event.clone());
        self.events.push(event);
    }

    fn expire_overdue(&mut self, now: DateTime<Utc>) {
        let overdue = self
            .state
            .in_progress()
            .filter(|a| a.is_overdue(now))
            .map(|a| completion(a, CompletionReason::TimeExpired, now));
        if let Some(event) = overdue {
            self.emit(event);
        }
    }

    fn start(
        &mut self,
        test: &TestDefinition,
        assessment_id: String,
        question_order: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        if let Some(current) = self.state.in_progress() {
            if current.test_id == test.id {
                return Ok(Outcome::Resumed {
                    assessment_id: current.assessment_id.clone(),
                });
            }
            return Err(DomainError::AssessmentInProgress {
                test_id: current.test_id.clone(),
            });
        }
        let used = self.state.attempts_used(&test.id);
        let (max_attempts, time_limit_secs) = self.state.effective_limits(test);
        if used >= max_attempts {
            return Err(DomainError::AttemptsUsedUp {
                test_id: test.id.clone(),
                max_attempts,
            });
        }
        let mut sorted_order = question_order.clone();
        sorted_order.sort();
        let mut ids: Vec<String> = test.questions.iter().map(|q| q.id.clone()).collect();
        ids.sort();
        if sorted_order != ids {
            return Err(DomainError::InconsistentCommand(
                "question_order is not a permutation of the test's questions".into(),
            ));
        }
        if self.state.attempt(&assessment_id).is_some() {
            return Err(DomainError::InconsistentCommand(format!(
                "assessment id {assessment_id} is already used"
            )));
        }
        self.emit(UserEvent::AssessmentStarted {
            assessment_id: assessment_id.clone(),
            test_id: test.id.clone(),
            test_version: test.version,
            title: test.title.clone(),
            attempt: used + 1,
            total_questions: test.adaptive_count().unwrap_or(test.questions.len() as u32),
            max_score: test
                .adaptive_count()
                .map_or_else(|| test.max_score(), |n| f64::from(n) * ADAPTIVE_POINTS),
            pass_ratio: test.pass_ratio,
            time_limit_secs,
            deadline: time_limit_secs.map(|secs| now + Duration::seconds(i64::from(secs))),
            question_order,
            started_at: now,
        });
        self.present_next(&assessment_id, test, now)?;
        Ok(Outcome::Started { assessment_id })
    }

    fn submit(
        &mut self,
        assessment_id: String,
        question_id: String,
        answer: Answer,
        test: &TestDefinition,
        grading: Option<AiGrading>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        let attempt =
            self.state
                .attempt(&assessment_id)
                .ok_or_else(|| DomainError::AssessmentNotFound {
                    assessment_id: assessment_id.clone(),
                })?;
        // A retry of a recorded answer is answered from the record, whatever came since.
        if let Some(recorded) = attempt.answer_to(&question_id) {
            if recorded.answer.same_as(&answer) {
                return Ok(Outcome::AlreadyAnswered {
                    assessment_id,
                    question_id,
                });
            }
            return Err(DomainError::AnswerAlreadyRecorded {
                question_id: question_id.to_string(),
            });
        }
        if let AttemptStatus::Completed { reason, .. } = &attempt.status {
            let just_expired = self.events.iter().any(|e| {
                matches!(e, UserEvent::AssessmentCompleted { assessment_id: id, .. } if *id == assessment_id)
            });
            if just_expired {
                // Record the expiry; the caller reports time_expired for the late answer.
                return Ok(Outcome::TooLate { assessment_id });
            }
            return Err(if *reason == CompletionReason::TimeExpired {
                DomainError::TimeExpired {
                    assessment_id: assessment_id.clone(),
                }
            } else {
                DomainError::AssessmentCompleted {
                    assessment_id: assessment_id.clone(),
                }
            });
        }
        if attempt.test_id != test.id || attempt.test_version != test.version {
            return Err(DomainError::InconsistentCommand(format!(
                "attempt is of {} v{}, command carries {} v{}",
                attempt.test_id, attempt.test_version, test.id, test.version
            )));
        }
        let is_current = attempt
            .current_question
            .as_ref()
            .is_some_and(|(q, _)| q.question_id == question_id);
        if !is_current {
            return Err(DomainError::WrongQuestion {
                question_id: question_id.clone(),
            });
        }
        let question = question_to_grade(attempt, test, &question_id)?;
        let question = &question;
        grading::check_answer_shape(question, &answer).map_err(DomainError::InvalidAnswer)?;
        let (grade, graded_by) = grading::grade_with(question, &answer, grading);
        self.emit(UserEvent::AnswerSubmitted {
            assessment_id: assessment_id.clone(),
            test_id: test.id.clone(),
            question_id: question_id.clone(),
            answer,
            submitted_at: now,
        });
        self.emit(UserEvent::FeedbackGiven {
            assessment_id: assessment_id.clone(),
            test_id: test.id.clone(),
            question_id: question_id.clone(),
            correct: grade.correct,
            score: grade.score,
            max_score: grade.max_score,
            feedback: grade.feedback,
            graded_by,
            given_at: now,
        });
        self.present_next(&assessment_id, test, now)?;
        Ok(Outcome::Answered {
            assessment_id,
            question_id,
        })
    }

    /// Presents the next question of the order, or completes the attempt after the last.
    fn present_next(
        &mut self,
        assessment_id: &str,
        test: &TestDefinition,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let Some(attempt) = self.state.attempt(assessment_id) else {
            return Err(DomainError::AssessmentNotFound {
                assessment_id: assessment_id.to_string(),
            });
        };
        let answered = attempt.answers.len();
        if test.adaptive_count().is_some() {
            // The next question is generated outside the domain and presented by
            // `PresentQuestion`; only the completion is decided here.
            if answered as u32 >= attempt.total_questions {
                let event = completion(attempt, CompletionReason::AllAnswered, now);
                self.emit(event);
            }
            return Ok(());
        }
        let Some(next_id) = attempt.question_order.get(answered) else {
            let event = completion(attempt, CompletionReason::AllAnswered, now);
            self.emit(event);
            return Ok(());
        };
        // As corrected since the attempt began (a regrade may have changed its points).
        let question = &question_to_grade(attempt, test, next_id)?;
        self.emit(UserEvent::QuestionPresented {
            assessment_id: assessment_id.to_string(),
            test_id: test.id.clone(),
            question: PresentedQuestion {
                question_id: question.id.clone(),
                position: answered as u32 + 1,
                kind: question.kind,
                prompt: question.prompt.clone(),
                choices: question
                    .choices
                    .iter()
                    .map(|c| PresentedChoice {
                        id: c.id.clone(),
                        text: c.text.clone(),
                    })
                    .collect(),
                points: question.points,
            },
            source: QUESTION_BANK.to_string(),
            presented_at: now,
            generated: QuestionProvenance::default(),
        });
        Ok(())
    }

    /// Presents the next question of an adaptive attempt: the generated one, or the next
    /// bank question not asked yet (the attempt completes when the bank has none left).
    fn present_question(
        &mut self,
        assessment_id: String,
        test: &TestDefinition,
        generation: QuestionGeneration,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        let attempt =
            self.state
                .attempt(&assessment_id)
                .ok_or_else(|| DomainError::AssessmentNotFound {
                    assessment_id: assessment_id.clone(),
                })?;
        if attempt.test_id != test.id
            || attempt.test_version != test.version
            || test.adaptive_count().is_none()
        {
            return Err(DomainError::InconsistentCommand(format!(
                "attempt is of {} v{}, command carries {} v{} (adaptive or not)",
                attempt.test_id, attempt.test_version, test.id, test.version
            )));
        }
        // Completed meanwhile, or this position already has its question: nothing more,
        // so a second generation for the same position never shows a second question.
        if !attempt.awaits_question() || attempt.answered() >= attempt.total_questions {
            return Ok(Outcome::Checked);
        }
        let position = attempt.answered() + 1;
        let mut provenance = QuestionProvenance {
            provider_profile: generation.provider_profile,
            model: generation.model.clone(),
            usage: generation.usage,
            fallback: None,
            key: None,
        };
        let (question, source) = match generation.outcome {
            GenerationOutcome::Generated(q) => {
                generated::check(&q).map_err(|e| {
                    DomainError::InconsistentCommand(format!("generated question: {e}"))
                })?;
                let mut id = format!("ai-{position}");
                // Bank ids may look like ours; never present one id for two questions.
                while test.question(&id).is_some() || attempt.answer_to(&id).is_some() {
                    id.push('x');
                }
                provenance.key = Some(q.key);
                let question = PresentedQuestion {
                    question_id: id,
                    position,
                    kind: q.kind,
                    prompt: q.prompt,
                    choices: q.choices,
                    points: ADAPTIVE_POINTS,
                };
                let source = generation.model.unwrap_or_else(|| "ai".to_string());
                (question, source)
            }
            GenerationOutcome::Fallback { reason } => {
                provenance.fallback = Some(reason);
                let next = attempt
                    .question_order
                    .iter()
                    .find(|id| attempt.answer_to(id).is_none())
                    .and_then(|id| test.question(id));
                let Some(q) = next else {
                    // The bank is used up: the attempt ends with the questions it had.
                    let event = completion(attempt, CompletionReason::AllAnswered, now);
                    self.emit(event);
                    return Ok(Outcome::Presented { assessment_id });
                };
                let question = PresentedQuestion {
                    question_id: q.id.clone(),
                    position,
                    kind: q.kind,
                    prompt: q.prompt.clone(),
                    choices: q
                        .choices
                        .iter()
                        .map(|c| PresentedChoice {
                            id: c.id.clone(),
                            text: c.text.clone(),
                        })
                        .collect(),
                    points: ADAPTIVE_POINTS,
                };
                (question, QUESTION_BANK.to_string())
            }
        };
        self.emit(UserEvent::QuestionPresented {
            assessment_id: assessment_id.clone(),
            test_id: test.id.clone(),
            question,
            source,
            presented_at: now,
            generated: provenance,
        });
        Ok(Outcome::Presented { assessment_id })
    }

    fn chat(
        &mut self,
        assessment_id: Option<String>,
        text: String,
        reply: String,
        tutor: String,
        ai: Option<AiProvenance>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        if text.trim().is_empty() {
            return Err(DomainError::InvalidChat("text must not be empty".into()));
        }
        if text.chars().count() > MAX_CHAT_CHARS {
            return Err(DomainError::InvalidChat(format!(
                "text is longer than {MAX_CHAT_CHARS} characters"
            )));
        }
        let (test_id, question_id) = match &assessment_id {
            None => (None, None),
            Some(id) => {
                let attempt =
                    self.state
                        .attempt(id)
                        .ok_or_else(|| DomainError::AssessmentNotFound {
                            assessment_id: id.clone(),
                        })?;
                let question_id = attempt
                    .current_question
                    .as_ref()
                    .map(|(q, _)| q.question_id.clone());
                (Some(attempt.test_id.clone()), question_id)
            }
        };
        self.emit(UserEvent::ChatExchanged {
            assessment_id,
            test_id,
            question_id,
            user_text: text,
            reply_text: reply,
            tutor,
            exchanged_at: now,
            provider_profile: ai.as_ref().map(|a| a.provider_profile.clone()),
            model: ai.as_ref().map(|a| a.model.clone()),
            usage: ai.as_ref().and_then(|a| a.usage),
            withheld: ai.as_ref().is_some_and(|a| a.withheld),
            withheld_text: ai.and_then(|a| a.withheld_text),
        });
        Ok(Outcome::Chatted)
    }

    fn end_by_admin(
        &mut self,
        assessment_id: String,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        let attempt =
            self.state
                .attempt(&assessment_id)
                .ok_or_else(|| DomainError::AssessmentNotFound {
                    assessment_id: assessment_id.clone(),
                })?;
        if !attempt.is_in_progress() {
            let just_expired = self.events.iter().any(|e| {
                matches!(e, UserEvent::AssessmentCompleted { assessment_id: id, .. } if *id == assessment_id)
            });
            if just_expired {
                // The clock ended it first; that is recorded, and the caller says so.
                return Ok(Outcome::TooLate { assessment_id });
            }
            return Err(DomainError::AssessmentCompleted { assessment_id });
        }
        let event = completion(attempt, CompletionReason::EndedByAdmin, now);
        self.emit(event);
        Ok(Outcome::Ended { assessment_id })
    }
}

impl Deciding {
    fn extend(
        &mut self,
        assessment_id: String,
        extra_secs: u32,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        if !(1..=MAX_EXTRA_SECS).contains(&extra_secs) {
            return Err(invalid(
                "extra_secs",
                format!("must be from 1 to {MAX_EXTRA_SECS}"),
            ));
        }
        check_reason(&reason)?;
        let attempt =
            self.state
                .attempt(&assessment_id)
                .ok_or_else(|| DomainError::AssessmentNotFound {
                    assessment_id: assessment_id.clone(),
                })?;
        if !attempt.is_in_progress() {
            if self.just_completed(&assessment_id) {
                // The clock ended it first; that is recorded, and the caller says so.
                return Ok(Outcome::TooLate { assessment_id });
            }
            return Err(DomainError::AssessmentCompleted { assessment_id });
        }
        let Some(deadline) = attempt.deadline else {
            return Err(invalid(
                "extra_secs",
                format!("assessment {assessment_id} has no time limit to extend"),
            ));
        };
        self.emit(UserEvent::DeadlineExtended {
            assessment_id: assessment_id.clone(),
            test_id: attempt.test_id.clone(),
            extra_secs,
            deadline: deadline + Duration::seconds(i64::from(extra_secs)),
            reason,
            actor,
            extended_at: now,
        });
        Ok(Outcome::Extended { assessment_id })
    }

    fn just_completed(&self, assessment_id: &str) -> bool {
        self.events.iter().any(|e| {
            matches!(e, UserEvent::AssessmentCompleted { assessment_id: id, .. } if id == assessment_id)
        })
    }

    fn set_override(
        &mut self,
        test_id: String,
        max_attempts: Option<u32>,
        time_limit_secs: Option<u32>,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        if max_attempts.is_none() && time_limit_secs.is_none() {
            return Err(invalid(
                "max_attempts",
                "give max_attempts or time_limit_secs (or both)",
            ));
        }
        if max_attempts == Some(0) {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        if time_limit_secs == Some(0) {
            return Err(invalid("time_limit_secs", "must be at least 1"));
        }
        check_reason(&reason)?;
        self.emit(UserEvent::OverrideSet {
            test_id: test_id.clone(),
            max_attempts,
            time_limit_secs,
            reason,
            actor,
            set_at: now,
        });
        Ok(Outcome::OverrideSet { test_id })
    }

    fn clear_override(
        &mut self,
        test_id: String,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        if !self.state.overrides.contains_key(&test_id) {
            return Err(DomainError::NoOverride { test_id });
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(invalid(
                "reason",
                format!("at most {MAX_REASON_CHARS} characters"),
            ));
        }
        self.emit(UserEvent::OverrideCleared {
            test_id: test_id.clone(),
            reason,
            actor,
            cleared_at: now,
        });
        Ok(Outcome::OverrideCleared { test_id })
    }

    /// Grades every recorded answer to the question again, with the domain's own grading
    /// and the question of the version the attempt started with, corrected by what the
    /// attempt has seen and then by this correction; records one `AnswerRegraded` per
    /// answer whose grade changes. An attempt in progress that has not answered the
    /// question yet records `QuestionCorrected`, so its answer is graded with the
    /// correction. The same correction twice records nothing the second time.
    fn regrade(&mut self, r: Regrade) -> Result<Outcome, DomainError> {
        check_reason(&r.reason)?;
        let ids: Vec<String> = self
            .state
            .attempts
            .iter()
            .filter(|a| a.test_id == r.test_id)
            .map(|a| a.assessment_id.clone())
            .collect();
        let (mut changed, mut corrected_ahead) = (0, 0);
        for id in ids {
            let Some(event) = self.regrade_attempt(&r, &id) else {
                continue;
            };
            if matches!(event, UserEvent::QuestionCorrected { .. }) {
                corrected_ahead += 1;
            } else {
                changed += 1;
            }
            self.emit(event);
        }
        Ok(Outcome::Regraded {
            changed,
            corrected: corrected_ahead,
        })
    }

    /// What `r` records in one attempt, if anything.
    fn regrade_attempt(&self, r: &Regrade, assessment_id: &str) -> Option<UserEvent> {
        let attempt = self.state.attempt(assessment_id)?;
        let version = r.versions.get(&attempt.test_version)?;
        // A question the model wrote is graded by its own recorded key, never the bank's.
        if attempt.generated.iter().any(|q| q.id == r.question_id) {
            return None;
        }
        let seen = attempt
            .corrections
            .get(&r.question_id)
            .map(|c| &c.correction);
        let merged = seen.map_or_else(|| r.correction.clone(), |c| c.then(&r.correction));
        // The question as this attempt grades it now, and with this correction.
        let (was, question) = (corrected(version, seen), corrected(version, Some(&merged)));
        let Some(recorded) = attempt.answer_to(&r.question_id) else {
            if !attempt.is_in_progress() || seen == Some(&merged) {
                return None;
            }
            let attempt_max_score = attempt.max_score - was.points + question.points;
            return Some(UserEvent::QuestionCorrected {
                assessment_id: assessment_id.to_string(),
                test_id: r.test_id.clone(),
                question_id: r.question_id.clone(),
                points: question.points,
                attempt_max_score,
                correction: r.correction.clone(),
                corrected_version: r.corrected_version,
                reason: r.reason.clone(),
                actor: r.actor.clone(),
                corrected_at: r.now,
            });
        };
        // Not graded yet (a model's grading in flight): it will be graded as recorded.
        let before = recorded.feedback.as_ref()?;
        grading::check_answer_shape(&question, &recorded.answer).ok()?;
        let (grade, graded_by) = match &before.model {
            // Only the points of a model's grade changed: its judgement stands, scaled.
            Some(model) if was.answer == question.answer && was.keywords == question.keywords => {
                let share = if before.max_score > 0.0 {
                    before.score / before.max_score
                } else {
                    0.0
                };
                let grade = grading::Grade {
                    correct: before.correct,
                    score: share * question.points,
                    max_score: question.points,
                    feedback: before.feedback.clone(),
                };
                (grade, Some(model.clone()))
            }
            _ => (grading::grade(&question, &recorded.answer), None),
        };
        if same_score(grade.score, before.score)
            && same_score(grade.max_score, before.max_score)
            && grade.correct == before.correct
        {
            return None;
        }
        let attempt_score = attempt.score - before.score + grade.score;
        let attempt_max_score = attempt.max_score - before.max_score + grade.max_score;
        Some(UserEvent::AnswerRegraded {
            assessment_id: assessment_id.to_string(),
            test_id: r.test_id.clone(),
            question_id: r.question_id.clone(),
            old_score: before.score,
            new_score: grade.score,
            max_score: grade.max_score,
            correct: grade.correct,
            feedback: grade.feedback,
            attempt_score,
            attempt_max_score,
            passed: grading::passed(attempt_score, attempt_max_score, attempt.pass_ratio),
            correction: r.correction.clone(),
            corrected_version: r.corrected_version,
            graded_by,
            reason: r.reason.clone(),
            actor: r.actor.clone(),
            regraded_at: r.now,
        })
    }
}

/// The definition `question_id` is graded with: a generated question's recorded key, or
/// the bank's (worth [`ADAPTIVE_POINTS`] in an adaptive test, as it was presented).
fn question_to_grade(
    attempt: &Attempt,
    test: &TestDefinition,
    question_id: &str,
) -> Result<QuestionDefinition, DomainError> {
    if let Some(q) = attempt.generated.iter().find(|q| q.id == question_id) {
        return Ok(q.clone());
    }
    let question = test.question(question_id).ok_or_else(|| {
        DomainError::InconsistentCommand(format!("question {question_id} is not in the test"))
    })?;
    let version = VersionQuestion {
        question: question.clone(),
        adaptive: test.adaptive_count().is_some(),
    };
    Ok(corrected(
        &version,
        attempt.corrections.get(question_id).map(|c| &c.correction),
    ))
}

/// A version's question as an attempt grades it after `correction` (the merged
/// corrections it has seen): an adaptive test's bank question is worth
/// [`ADAPTIVE_POINTS`] whatever the points say.
fn corrected(version: &VersionQuestion, correction: Option<&Correction>) -> QuestionDefinition {
    let mut question = match correction {
        Some(c) => c.overlay(&version.question),
        None => version.question.clone(),
    };
    if version.adaptive {
        question.points = ADAPTIVE_POINTS;
    }
    question
}

fn completion(attempt: &Attempt, reason: CompletionReason, now: DateTime<Utc>) -> UserEvent {
    UserEvent::AssessmentCompleted {
        assessment_id: attempt.assessment_id.clone(),
        test_id: attempt.test_id.clone(),
        score: attempt.score,
        max_score: attempt.max_score,
        passed: grading::passed(attempt.score, attempt.max_score, attempt.pass_ratio),
        reason,
        completed_at: now,
    }
}

impl Aggregate for UserStream {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)?.events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.sequence += 1;
        let seq = self.sequence;
        match event {
            UserEvent::AssessmentStarted {
                assessment_id,
                test_id,
                test_version,
                title,
                attempt,
                total_questions,
                max_score,
                pass_ratio,
                time_limit_secs,
                deadline,
                question_order,
                started_at,
            } => self.attempts.push(Attempt {
                assessment_id,
                test_id,
                test_version,
                title,
                attempt,
                total_questions,
                max_score,
                pass_ratio,
                time_limit_secs,
                deadline,
                question_order,
                started_at,
                started_seq: seq,
                current_question: None,
                answers: Vec::new(),
                score: 0.0,
                status: AttemptStatus::InProgress,
                generated: Vec::new(),
                extension: None,
                corrections: BTreeMap::new(),
            }),
            UserEvent::QuestionPresented {
                assessment_id,
                question,
                generated: provenance,
                ..
            } => {
                if let Some(a) = self.attempt_mut(&assessment_id) {
                    if let Some(definition) = generated::definition(&question, &provenance) {
                        a.generated.push(definition);
                    }
                    a.current_question = Some((question, seq));
                }
            }
            UserEvent::AnswerSubmitted {
                assessment_id,
                question_id,
                answer,
                ..
            } => {
                if let Some(a) = self.attempt_mut(&assessment_id) {
                    if a.current_question
                        .as_ref()
                        .is_some_and(|(q, _)| q.question_id == question_id)
                    {
                        a.current_question = None;
                    }
                    a.answers.push(RecordedAnswer {
                        question_id,
                        answer,
                        feedback: None,
                        regraded_seq: None,
                    });
                }
            }
            UserEvent::FeedbackGiven {
                assessment_id,
                question_id,
                correct,
                score,
                max_score,
                feedback,
                graded_by,
                ..
            } => {
                if let Some(a) = self.attempt_mut(&assessment_id) {
                    a.score += score;
                    let model = (graded_by.graded_by != grading::OFFLINE_GRADER)
                        .then_some(graded_by.graded_by);
                    if let Some(recorded) =
                        a.answers.iter_mut().find(|r| r.question_id == question_id)
                    {
                        recorded.feedback = Some(RecordedFeedback {
                            correct,
                            score,
                            max_score,
                            feedback,
                            seq,
                            model,
                        });
                    }
                }
            }
            UserEvent::AssessmentCompleted {
                assessment_id,
                passed,
                reason,
                completed_at,
                ..
            } => {
                if let Some(a) = self.attempt_mut(&assessment_id) {
                    a.current_question = None;
                    a.status = AttemptStatus::Completed {
                        reason,
                        passed,
                        completed_at,
                        seq,
                    };
                }
            }
            UserEvent::ChatExchanged { .. } => {}
            UserEvent::DeadlineExtended {
                assessment_id,
                extra_secs,
                deadline,
                ..
            } => {
                if let Some(a) = self.attempt_mut(&assessment_id) {
                    a.deadline = Some(deadline);
                    let total = a.extension.as_ref().map_or(0, |e| e.total_extra_secs);
                    a.extension = Some(Extension {
                        extra_secs,
                        total_extra_secs: total.saturating_add(extra_secs),
                        seq,
                    });
                }
            }
            UserEvent::OverrideSet {
                test_id,
                max_attempts,
                time_limit_secs,
                reason,
                actor,
                set_at,
            } => {
                self.overrides.insert(
                    test_id,
                    Override {
                        max_attempts,
                        time_limit_secs,
                        reason,
                        actor,
                        set_at,
                        seq,
                    },
                );
            }
            UserEvent::OverrideCleared { test_id, .. } => {
                self.overrides.remove(&test_id);
            }
            UserEvent::AnswerRegraded {
                assessment_id,
                question_id,
                new_score,
                max_score,
                correct,
                feedback,
                attempt_score,
                attempt_max_score,
                passed,
                correction,
                graded_by,
                ..
            } => {
                if let Some(a) = self.attempt_mut(&assessment_id) {
                    a.see_correction(&question_id, &correction, seq);
                    a.score = attempt_score;
                    a.max_score = attempt_max_score;
                    if let Some(recorded) =
                        a.answers.iter_mut().find(|r| r.question_id == question_id)
                    {
                        recorded.regraded_seq = Some(seq);
                        if let Some(f) = recorded.feedback.as_mut() {
                            f.score = new_score;
                            f.max_score = max_score;
                            f.correct = correct;
                            f.feedback = feedback;
                            f.model = graded_by;
                        }
                    }
                    if let AttemptStatus::Completed { passed: p, .. } = &mut a.status {
                        *p = passed;
                    }
                }
            }
            UserEvent::QuestionCorrected {
                assessment_id,
                question_id,
                points,
                attempt_max_score,
                correction,
                ..
            } => {
                if let Some(a) = self.attempt_mut(&assessment_id) {
                    a.see_correction(&question_id, &correction, seq);
                    a.max_score = attempt_max_score;
                    if let Some((shown, _)) = a.current_question.as_mut() {
                        if shown.question_id == question_id {
                            shown.points = points;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
