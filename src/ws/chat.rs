//! One AI tutor reply, streamed and then recorded, in a task of its own so the session keeps
//! serving its client meanwhile.
//!
//! `AGENT_STARTED`, then the reply as `AGENT_THINKING` deltas while the answer-key guard
//! passes them, then `AGENT_COMPLETED`, then the recorded `SYSTEM_MESSAGE` (with `seq`)
//! holding the whole reply, or the fixed safe reply when the guard tripped
//! (`withheld: true` in the event). A timeout, a failed call or an unreadable reply end with
//! `AGENT_COMPLETED` and `ERROR ai_unavailable`, and nothing is recorded.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use domain::{AiProvenance, PresentedQuestion, TokenUsage, UserCommand};
use futures_util::StreamExt;
use uuid::Uuid;

use super::outbox::{Gone, Outbox};
use super::protocol::{AgentTask, ServerMessage};
use super::replies::{self, Reply};
use crate::ai::guard::{AnswerKey, Step, StreamGuard, SAFE_REPLY};
use crate::ai::{self, AiError, AiProvider, Permit};
use crate::commands::{self, Origin};
use crate::error::ClientError;
use crate::state::AppState;

/// What `tutor` is recorded as for a model's reply; the event names the model beside it.
pub const AI_TUTOR: &str = "ai";

/// Longest reply kept, in bytes; a model that rambles past it is cut off there.
const MAX_REPLY_BYTES: usize = 8 * 1024;

/// Everything one reply needs, gathered by the handler before the task starts.
pub struct ChatJob {
    pub state: AppState,
    pub user_id: String,
    pub session_id: Uuid,
    pub request_id: Option<String>,
    pub provider: Arc<dyn AiProvider>,
    /// Held until the reply is recorded: the user's and the node's slot.
    pub permit: Permit,
    pub assessment_id: Option<String>,
    pub question: Option<PresentedQuestion>,
    /// The current question's key, from the test definition; `None` without a question.
    pub key: Option<AnswerKey>,
    pub text: String,
}

/// What the model produced, as far as it got.
#[derive(Default)]
struct Progress {
    usage: Option<TokenUsage>,
    tripped: bool,
    text: String,
}

impl ChatJob {
    pub async fn run(self, outbox: Outbox) {
        // Any error here means the client is gone; its session aborts this task anyway.
        let _ = self.stream_and_record(&outbox).await;
    }

    async fn stream_and_record(self, outbox: &Outbox) -> Result<(), Gone> {
        let profile = self.provider.profile().to_string();
        let started = Instant::now();
        outbox
            .send(vec![agent(ServerMessage::AgentStarted {
                task: AgentTask::Chat,
            })])
            .await?;

        let mut progress = Progress::default();
        let system = ai::tutor_prompt(self.question.as_ref());
        let result = tokio::time::timeout(
            self.state.ai.timeout,
            stream(
                &*self.provider,
                &system,
                &self.text,
                self.key.as_ref(),
                &mut progress,
                outbox,
            ),
        )
        .await
        .unwrap_or(Err(Streamed::Failed(AiError::Timeout(
            self.state.ai.timeout,
        ))));
        let took = Some(started.elapsed());
        // A reply that already gave the answer away is withheld whatever happened after
        // (the rest was only being read for its token usage).
        let withheld = progress.tripped;
        let reply = match result {
            Err(Streamed::Gone) => return Err(Gone),
            Err(Streamed::Failed(e)) if !withheld => {
                tracing::warn!(user_id = %self.user_id, %profile, error = %e, "the AI tutor failed");
                self.state
                    .metrics
                    .ai_call(&profile, "chat", e.outcome(), took, progress.usage);
                outbox
                    .send(vec![
                        agent(ServerMessage::AgentCompleted {
                            task: AgentTask::Chat,
                        }),
                        Reply::error(&ClientError::from(&e)),
                    ])
                    .await?;
                return Ok(());
            }
            _ if withheld => SAFE_REPLY.to_string(),
            _ => progress.text.clone(),
        };
        let outcome = if withheld { "withheld" } else { "ok" };
        self.state
            .metrics
            .ai_call(&profile, "chat", outcome, took, progress.usage);
        if withheld {
            tracing::info!(user_id = %self.user_id, %profile, "the AI tutor's reply gave the answer away; withheld");
        }
        outbox
            .send(vec![agent(ServerMessage::AgentCompleted {
                task: AgentTask::Chat,
            })])
            .await?;

        let command = UserCommand::Chat {
            assessment_id: self.assessment_id.clone(),
            text: self.text.clone(),
            reply,
            tutor: AI_TUTOR.to_string(),
            ai: Some(AiProvenance {
                provider_profile: profile,
                model: self.provider.model().to_string(),
                usage: progress.usage,
                withheld,
                withheld_text: withheld.then(|| progress.text.clone()),
            }),
            now: Utc::now(),
        };
        let origin = Origin::Session {
            session_id: self.session_id,
            request_id: self.request_id.clone(),
        };
        let replies = match commands::execute(&self.state, &self.user_id, command, &origin).await {
            Ok(committed) => replies::for_outcome(&committed),
            Err(e) => vec![Reply::error(&e.into())],
        };
        drop(self.permit);
        outbox.send(replies).await
    }
}

enum Streamed {
    Failed(AiError),
    Gone,
}

/// Reads the reply into `progress`, passing what the guard lets through to the client.
/// After the guard trips, the rest is read without being sent, for its token usage.
async fn stream(
    provider: &dyn AiProvider,
    system: &str,
    user: &str,
    key: Option<&AnswerKey>,
    progress: &mut Progress,
    outbox: &Outbox,
) -> Result<(), Streamed> {
    let mut chunks = provider
        .stream_chat(system, user, None)
        .await
        .map_err(Streamed::Failed)?;
    let mut guard = StreamGuard::new(key);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(Streamed::Failed)?;
        if chunk.usage.is_some() {
            progress.usage = chunk.usage;
        }
        let Some(delta) = chunk.delta else { continue };
        if progress.tripped || guard.text().len() >= MAX_REPLY_BYTES {
            continue;
        }
        match guard.push(&delta) {
            Step::Send(text) => send_delta(outbox, text).await?,
            Step::Tripped => {
                progress.tripped = true;
                // Kept for the record even if the call fails before its end.
                progress.text = guard.text().trim().to_string();
            }
        }
    }
    if !progress.tripped {
        match guard.finish() {
            Step::Send(text) => send_delta(outbox, text).await?,
            Step::Tripped => {
                progress.tripped = true;
                // Kept for the record even if the call fails before its end.
                progress.text = guard.text().trim().to_string();
            }
        }
    }
    progress.text = guard.text().trim().to_string();
    if progress.text.is_empty() && !progress.tripped {
        return Err(Streamed::Failed(AiError::Empty));
    }
    Ok(())
}

async fn send_delta(outbox: &Outbox, delta: String) -> Result<(), Streamed> {
    if delta.is_empty() {
        return Ok(());
    }
    outbox
        .send(vec![agent(ServerMessage::AgentThinking {
            task: AgentTask::Chat,
            delta,
        })])
        .await
        .map_err(|_| Streamed::Gone)
}

fn agent(message: ServerMessage) -> Reply {
    Reply::new(message, None)
}
