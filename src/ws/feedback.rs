//! A model grading one free-text answer, in a task of its own that outlives the socket,
//! then the answer and its grade recorded in one command.
//!
//! `AGENT_STARTED {task: "feedback"}`, then `AGENT_THINKING` while the model writes (the
//! reply is a JSON object, so the deltas are progress marks, not its text: `grading…`
//! once, then `.` at most once a second), then `AGENT_COMPLETED`, then the recorded
//! `ANSWER_FEEDBACK` and what follows it, exactly as for an offline grade; in an adaptive
//! attempt that is the next question's generation, run on in the same task.
//!
//! Nothing is recorded before the grade: `AnswerSubmitted` and `FeedbackGiven` are one
//! command, decided with the time the answer arrived (so an answer that arrived before the
//! deadline counts however long the model takes). The [`GradingTurn`] keeps every other
//! command of the user waiting until that command is recorded, so a reconnect, a re-sent
//! answer or the deadline timer sees it and no second feedback can be produced. A timeout,
//! a failed call or a reply that is unusable twice is graded by the offline grader and
//! recorded as a fallback: an AI outage never loses or blocks an answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::test_definition::QuestionDefinition;
use domain::{AiGrading, AiVerdict, Answer, TestDefinition, TokenUsage, UserCommand};
use futures_util::StreamExt;
use uuid::Uuid;

use super::outbox::WeakOutbox;
use super::protocol::{AgentTask, ServerMessage};
use super::question;
use super::replies::{self, Reply};
use crate::ai::grader;
use crate::ai::inflight::GradingTurn;
use crate::ai::{AiError, AiProvider, Permit, ReplySchema};
use crate::commands::{self, Origin};
use crate::state::AppState;

/// The task label of `/metrics` for grading.
pub const TASK: &str = "feedback";

/// Longest reply read from the model, in bytes: a grade is a short JSON object.
const MAX_REPLY_BYTES: usize = 16 * 1024;

/// How often, at most, a progress mark is sent while the model writes.
const THINKING_EVERY: Duration = Duration::from_secs(1);

/// Everything one grading needs, gathered by the handler before the task starts.
pub struct FeedbackJob {
    pub state: AppState,
    pub user_id: String,
    pub session_id: Uuid,
    pub request_id: Option<String>,
    pub provider: Arc<dyn AiProvider>,
    /// The user's and the node's slot for the model call.
    pub permit: Permit,
    /// Held until the grade is recorded: the user's other commands wait for it.
    pub turn: GradingTurn,
    pub assessment_id: String,
    pub question: QuestionDefinition,
    pub answer: Answer,
    pub test: Arc<TestDefinition>,
    /// When the answer arrived.
    pub now: DateTime<Utc>,
    /// Set once the grade is recorded: the session's cached view is behind.
    pub stale: Arc<AtomicBool>,
}

impl FeedbackJob {
    /// Grades and records. The client may be gone at any point: then nothing more is sent,
    /// but the answer is still graded and recorded.
    pub async fn run(self, outbox: WeakOutbox) {
        let mut client = Some(outbox);
        send(
            &mut client,
            vec![agent(ServerMessage::AgentStarted {
                task: AgentTask::Feedback,
            })],
        )
        .await;
        let grading = self.grade(&mut client).await;
        send(
            &mut client,
            vec![agent(ServerMessage::AgentCompleted {
                task: AgentTask::Feedback,
            })],
        )
        .await;

        let command = UserCommand::SubmitAnswer {
            assessment_id: self.assessment_id.clone(),
            question_id: self.question.id.clone(),
            answer: self.answer.clone(),
            test: self.test.clone(),
            grading: Some(grading),
            now: self.now,
        };
        let origin = Origin::Graded {
            session_id: self.session_id,
            request_id: self.request_id.clone(),
        };
        let result = commands::execute(&self.state, &self.user_id, command, &origin).await;
        self.stale.store(true, Ordering::Release);
        // Recorded (or refused): the user's other commands may go on.
        drop(self.turn);
        drop(self.permit);
        let (replies, awaits_question) = match result {
            Ok(committed) => (
                replies::for_outcome(&committed),
                committed
                    .state
                    .in_progress()
                    .is_some_and(|a| a.awaits_question()),
            ),
            Err(e) => {
                tracing::error!(user_id = %self.user_id, error = %e, "a graded answer could not be recorded");
                (vec![Reply::error(&e.into())], false)
            }
        };
        send(&mut client, replies).await;
        // An adaptive attempt goes on with its next question, as after an answer graded
        // offline. With the client gone, its next connection's greeting asks for it.
        let (true, Some(outbox)) = (awaits_question, client) else {
            return;
        };
        let prepared = question::prepare(
            &self.state,
            &self.user_id,
            self.session_id,
            self.request_id.as_deref(),
            &self.stale,
        )
        .await;
        match prepared {
            Ok((Some(job), _)) => job.run(outbox).await,
            Ok((None, _)) => {}
            Err(e) => {
                tracing::error!(user_id = %self.user_id, error = %e.message, "the next question could not be prepared");
            }
        }
    }

    /// Asks the model, once more if its reply is unusable; what to record either way.
    async fn grade(&self, client: &mut Option<WeakOutbox>) -> AiGrading {
        let profile = self.provider.profile().to_string();
        let system = grader::prompt(&self.question);
        let user = match &self.answer {
            Answer::Text(text) => text.clone(),
            Answer::Choices(ids) => ids.join(", "),
        };
        let (read, usage) = ask_json(
            &self.state,
            &*self.provider,
            &self.user_id,
            (&system, &user, &grader::schema()),
            (AgentTask::Feedback, TASK, "grading…"),
            client,
            grader::parse,
        )
        .await;
        let verdict = match read {
            Ok(v) => AiVerdict::Graded {
                score: v.score,
                feedback: v.feedback,
            },
            Err(reason) => AiVerdict::Fallback { reason },
        };
        AiGrading {
            provider_profile: profile,
            model: self.provider.model().to_string(),
            usage,
            verdict,
        }
    }
}

/// Asks the model for a JSON reply (shaped by the prompt's schema) read by `parse`, once more if a reply cannot be read,
/// counting each call in `/metrics` under `task` (`(agent task, metrics label, first
/// progress mark)`). Gives the value read, or the reason (`invalid_output`, `timeout`,
/// `error`) the offline path stands in for the model, counted as a fallback; and the
/// tokens every call used.
pub(super) async fn ask_json<T, E: std::fmt::Display>(
    state: &AppState,
    provider: &dyn AiProvider,
    user_id: &str,
    prompt: (&str, &str, &ReplySchema),
    (task, label, first): (AgentTask, &str, &str),
    client: &mut Option<WeakOutbox>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> (Result<T, String>, Option<TokenUsage>) {
    let profile = provider.profile();
    let mut usage = None;
    let mut read = Err("error".to_string());
    for attempt in 0..2 {
        let started = Instant::now();
        let mut call_usage = None;
        let call = tokio::time::timeout(
            state.ai.timeout,
            ask(provider, prompt, (task, first), &mut call_usage, client),
        )
        .await
        .unwrap_or(Err(AiError::Timeout(state.ai.timeout)));
        usage = add(usage, call_usage);
        let took = Some(started.elapsed());
        let outcome = match call.map(|text| parse(&text)) {
            Ok(Ok(value)) => {
                read = Ok(value);
                "ok"
            }
            Ok(Err(e)) => {
                tracing::warn!(user_id, profile, attempt, task = label, error = %e, "the model's reply was unusable");
                read = Err("invalid_output".into());
                "invalid_output"
            }
            Err(e) => {
                // The provider already retried 429 and 5xx; a timeout used the budget.
                tracing::warn!(user_id, profile, task = label, error = %e, "the model call failed");
                read = Err(e.outcome().into());
                e.outcome()
            }
        };
        state
            .metrics
            .ai_call(profile, label, outcome, took, call_usage);
        if outcome != "invalid_output" {
            break;
        }
    }
    if read.is_err() {
        state.metrics.ai_fallback(profile, label);
    }
    (read, usage)
}

/// One model call for a JSON reply: its whole reply, with progress marks (`first`, then
/// `.` at most once a second) to the client meanwhile as `AGENT_THINKING` of `task`.
pub(super) async fn ask(
    provider: &dyn AiProvider,
    (system, user, schema): (&str, &str, &ReplySchema),
    (task, first): (AgentTask, &str),
    usage: &mut Option<TokenUsage>,
    client: &mut Option<WeakOutbox>,
) -> Result<String, AiError> {
    let mut chunks = provider.stream_chat(system, user, Some(schema)).await?;
    let mut text = String::new();
    let mut marked: Option<Instant> = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if chunk.usage.is_some() {
            *usage = chunk.usage;
        }
        let Some(delta) = chunk.delta else { continue };
        if text.len() < MAX_REPLY_BYTES {
            text.push_str(&delta);
        }
        let mark = match marked {
            None => Some(first),
            Some(at) if at.elapsed() >= THINKING_EVERY => Some("."),
            Some(_) => None,
        };
        if let Some(mark) = mark {
            marked = Some(Instant::now());
            let thinking = ServerMessage::AgentThinking {
                task,
                delta: mark.to_string(),
            };
            send(client, vec![agent(thinking)]).await;
        }
    }
    if text.trim().is_empty() {
        return Err(AiError::Empty);
    }
    Ok(text)
}

pub(super) fn add(total: Option<TokenUsage>, more: Option<TokenUsage>) -> Option<TokenUsage> {
    match (total, more) {
        (Some(a), Some(b)) => Some(TokenUsage {
            prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
            completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
            total_tokens: a.total_tokens.saturating_add(b.total_tokens),
        }),
        (a, b) => a.or(b),
    }
}

/// Sends to the client while its session is there; once it is gone, stops trying.
pub(super) async fn send(client: &mut Option<WeakOutbox>, replies: Vec<Reply>) {
    let Some(outbox) = client.as_ref().and_then(WeakOutbox::upgrade) else {
        *client = None;
        return;
    };
    if outbox.send(replies).await.is_err() {
        *client = None;
    }
}

pub(super) fn agent(message: ServerMessage) -> Reply {
    Reply::new(message, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_up_over_calls_and_survives_a_call_without_it() {
        let u = |p, c| TokenUsage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p + c,
        };
        assert_eq!(add(None, None), None);
        assert_eq!(add(Some(u(1, 2)), None), Some(u(1, 2)));
        assert_eq!(add(None, Some(u(1, 2))), Some(u(1, 2)));
        assert_eq!(add(Some(u(1, 2)), Some(u(3, 4))), Some(u(4, 6)));
    }
}
