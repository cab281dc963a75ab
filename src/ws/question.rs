//! A model writing the next question of an adaptive test, in a task of its own that
//! belongs to the user's stream, not to the socket that asked for it.
//!
//! `AGENT_STARTED {task: "question"}`, then `AGENT_THINKING` progress marks (`writing…`,
//! then `.` at most once a second: the reply is JSON, not text for the page), then
//! `AGENT_COMPLETED`, then the recorded `QUESTION`. The job holds the user's turn of
//! [`crate::ai::inflight`] from before it was decided until the question is recorded, so
//! every other command of the user (a reconnect's greeting, GET_QUESTION, the deadline
//! timer) waits for it and sees the question; and `PresentQuestion` presents nothing when
//! the position already has its question, so no path produces a second one. A timeout, a
//! failed call, a reply unusable twice, no free slot or no configured provider present
//! the next bank question instead, with the reason recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use domain::{
    Answer, Attempt, GenerationOutcome, QuestionGeneration, TestDefinition, UserCommand, UserStream,
};
use uuid::Uuid;

use super::agent::{agent, ask_json, send};
use super::outbox::WeakOutbox;
use super::protocol::{AgentTask, ServerMessage};
use super::replies::{self, Reply};
use crate::ai::inflight::GradingTurn;
use crate::ai::questions::{self, Asked};
use crate::ai::{AiProvider, Permit};
use crate::commands::{self, Origin};
use crate::error::ClientError;
use crate::state::AppState;

/// The task label of `/metrics` for question generation.
pub const TASK: &str = "question";

/// Who writes the next question.
pub enum Writer {
    /// The model, in the slot `permit`.
    Model {
        provider: Arc<dyn AiProvider>,
        permit: Permit,
    },
    /// Nobody: the bank stands in at once, for `reason` (`offline` when the test has no
    /// provider, `busy` when no slot is free), recorded with the profile if there is one.
    Bank {
        provider: Option<Arc<dyn AiProvider>>,
        reason: &'static str,
    },
}

/// Everything one generation needs, gathered by the handler before the task starts.
pub struct QuestionJob {
    pub state: AppState,
    pub user_id: String,
    pub session_id: Uuid,
    pub request_id: Option<String>,
    pub writer: Writer,
    /// Held until the question is recorded: the user's other commands wait for it.
    pub turn: GradingTurn,
    pub assessment_id: String,
    pub test: Arc<TestDefinition>,
    /// The instructions' user message: topic, position and the answers so far.
    pub history: String,
    /// Set once the question is recorded: the session's cached view is behind.
    pub stale: Arc<AtomicBool>,
}

impl QuestionJob {
    /// Generates and records. The client may be gone at any point: then nothing more is
    /// sent, but the question is still recorded for the next connection.
    pub async fn run(mut self, outbox: WeakOutbox) {
        let mut client = Some(outbox);
        let writer = std::mem::replace(
            &mut self.writer,
            Writer::Bank {
                provider: None,
                reason: "offline",
            },
        );
        let (generation, permit) = match writer {
            Writer::Model { provider, permit } => {
                send(
                    &mut client,
                    vec![agent(ServerMessage::AgentStarted {
                        task: AgentTask::Question,
                    })],
                )
                .await;
                let generation = self.generate(&*provider, &mut client).await;
                send(
                    &mut client,
                    vec![agent(ServerMessage::AgentCompleted {
                        task: AgentTask::Question,
                    })],
                )
                .await;
                (generation, Some(permit))
            }
            Writer::Bank { provider, reason } => {
                if let Some(p) = &provider {
                    self.state.metrics.ai_fallback(p.profile(), TASK);
                }
                let generation = QuestionGeneration {
                    provider_profile: provider.as_ref().map(|p| p.profile().to_string()),
                    model: provider.as_ref().map(|p| p.model().to_string()),
                    usage: None,
                    outcome: GenerationOutcome::Fallback {
                        reason: reason.to_string(),
                    },
                };
                (generation, None)
            }
        };
        let command = UserCommand::PresentQuestion {
            assessment_id: self.assessment_id.clone(),
            test: self.test.clone(),
            generation: Box::new(generation),
            now: Utc::now(),
        };
        let origin = Origin::Graded {
            session_id: self.session_id,
            request_id: self.request_id.clone(),
        };
        let result = commands::execute(&self.state, &self.user_id, command, &origin).await;
        self.stale.store(true, Ordering::Release);
        // Recorded (or refused): the user's other commands may go on.
        drop(self.turn);
        drop(permit);
        let replies = match result {
            Ok(committed) => replies::for_outcome(&committed),
            Err(e) => {
                tracing::error!(user_id = %self.user_id, error = %e, "a generated question could not be recorded");
                vec![Reply::error(&e.into())]
            }
        };
        send(&mut client, replies).await;
    }

    /// Asks the model, once more if its reply is unusable; what to record either way.
    async fn generate(
        &self,
        provider: &dyn AiProvider,
        client: &mut Option<WeakOutbox>,
    ) -> QuestionGeneration {
        let profile = provider.profile().to_string();
        let system = questions::system_prompt();
        let (read, usage) = ask_json(
            &self.state,
            provider,
            &self.user_id,
            (&system, &self.history, &questions::schema()),
            (AgentTask::Question, TASK, "writing…"),
            client,
            questions::parse,
        )
        .await;
        let outcome = match read {
            Ok(q) => GenerationOutcome::Generated(q),
            Err(reason) => GenerationOutcome::Fallback { reason },
        };
        QuestionGeneration {
            provider_profile: Some(profile),
            model: Some(provider.model().to_string()),
            usage,
            outcome,
        }
    }
}

/// The next question's generation when the attempt in progress waits for one (an adaptive
/// attempt just started or answered, or one whose generation was cut off by a restart),
/// with the stream as it was decided on. Takes the user's turn first and decides on the
/// stream as recorded, so a generation still running for an older connection is waited
/// for, not repeated.
///
/// # Errors
/// A store error, or the attempt's test version missing from the catalog.
pub async fn prepare(
    state: &AppState,
    user_id: &str,
    session_id: Uuid,
    request_id: Option<&str>,
    stale: &Arc<AtomicBool>,
) -> Result<(Option<QuestionJob>, UserStream), ClientError> {
    let turn = state.ai.gradings.begin(user_id).await;
    let view = state.streams.load(user_id).await?;
    let Some(attempt) = view.in_progress().filter(|a| a.awaits_question()) else {
        return Ok((None, view));
    };
    let (test_id, version) = (attempt.test_id.clone(), attempt.test_version);
    let test = state
        .catalog
        .version(&test_id, version)
        .await?
        .ok_or_else(|| {
            ClientError::internal(&format!(
                "test {test_id} v{version} is missing from the catalog"
            ))
        })?;
    if test.adaptive_count().is_none() {
        // Only an adaptive attempt waits for a question between commands.
        return Ok((None, view));
    }
    let history = history(attempt, &test);
    let assessment_id = attempt.assessment_id.clone();
    let profile = test.ai.as_ref().and_then(|ai| ai.profile.as_deref());
    let writer = match state.ai.provider(profile) {
        None => Writer::Bank {
            provider: None,
            reason: "offline",
        },
        Some(provider) => match state.ai.try_acquire(user_id) {
            Ok(permit) => Writer::Model { provider, permit },
            Err(busy) => {
                // Never hold an attempt up on a cap: the bank stands in, and says why.
                tracing::info!(user_id, error = %busy, "no slot for the question writer; using the bank");
                state
                    .metrics
                    .ai_call(provider.profile(), TASK, "refused", None, None);
                Writer::Bank {
                    provider: Some(provider),
                    reason: "busy",
                }
            }
        },
    };
    let job = QuestionJob {
        state: state.clone(),
        user_id: user_id.to_string(),
        session_id,
        request_id: request_id.map(str::to_string),
        writer,
        turn,
        assessment_id,
        test,
        history,
        stale: stale.clone(),
    };
    Ok((Some(job), view))
}

/// The model's user message for the next question of `attempt`: the test's topic (its
/// title when it names none), the position, and each earlier question with the user's
/// answer and how it was graded.
pub fn history(attempt: &Attempt, test: &TestDefinition) -> String {
    let topic = test
        .ai
        .as_ref()
        .and_then(|ai| ai.topic.as_deref())
        .unwrap_or(&test.title);
    let asked: Vec<Asked> = attempt
        .answers
        .iter()
        .map(|a| {
            let prompt = attempt
                .generated
                .iter()
                .find(|q| q.id == a.question_id)
                .or_else(|| test.question(&a.question_id))
                .map(|q| q.prompt.clone())
                .unwrap_or_default();
            let answer = match &a.answer {
                Answer::Text(text) => text.clone(),
                Answer::Choices(ids) => ids.join(", "),
            };
            let result = match &a.feedback {
                Some(f) if f.correct => "correct",
                Some(f) if f.score > 0.0 => "partly correct",
                _ => "wrong",
            };
            Asked {
                prompt,
                answer,
                result,
            }
        })
        .collect();
    questions::history(
        topic,
        attempt.answered() + 1,
        attempt.total_questions,
        &asked,
    )
}
