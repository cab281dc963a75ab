//! One model call for a JSON reply, as the grader and the question writer make it: asked
//! for with a JSON schema, its progress shown to the client as `AGENT_THINKING` marks
//! (the reply is JSON, not text for the page), read by a strict parser, asked for once
//! more when unusable, and counted in `/metrics`.

use std::time::{Duration, Instant};

use domain::TokenUsage;
use futures_util::StreamExt;

use super::outbox::WeakOutbox;
use super::protocol::{AgentTask, ServerMessage};
use super::replies::Reply;
use crate::ai::{AiError, AiProvider, ReplySchema};
use crate::state::AppState;

/// Longest reply read from the model, in bytes: a grade or a question is a short JSON
/// object.
const MAX_REPLY_BYTES: usize = 16 * 1024;

/// How often, at most, a progress mark is sent while the model writes.
const THINKING_EVERY: Duration = Duration::from_secs(1);

/// Asks the model for a JSON reply (shaped by the prompt's schema) read by `parse`, once more if a reply cannot be read,
/// counting each call in `/metrics` under `task` (`(agent task, metrics label, first
/// progress mark)`). Gives the value read, or the reason (`invalid_output`, `timeout`,
/// `error`) the offline path stands in for the model, counted as a fallback; and the
/// tokens every call used.
pub async fn ask_json<T, E: std::fmt::Display>(
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
pub async fn ask(
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

pub fn add(total: Option<TokenUsage>, more: Option<TokenUsage>) -> Option<TokenUsage> {
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
pub async fn send(client: &mut Option<WeakOutbox>, replies: Vec<Reply>) {
    let Some(outbox) = client.as_ref().and_then(WeakOutbox::upgrade) else {
        *client = None;
        return;
    };
    if outbox.send(replies).await.is_err() {
        *client = None;
    }
}

pub fn agent(message: ServerMessage) -> Reply {
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
