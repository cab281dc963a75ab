//! The OpenAI-compatible provider, through async-openai's streamed chat completions
//! (`POST {base_url}/chat/completions` with `stream: true`, read as server-sent events).
//!
//! A 429 or 5xx answer is retried with exponential backoff and jitter before anything has
//! streamed; once text is streaming a failure ends the call (the client already saw part
//! of a reply, and a second one would not match it). The caller bounds the whole call with
//! its timeout.

use std::sync::Once;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, CreateChatCompletionRequest,
};
use async_openai::Client;
use async_trait::async_trait;
use futures_util::StreamExt;
use rand::Rng;

use super::config::ProfileConfig;
use super::{AiError, AiProvider, Chunk, ChunkStream};
use domain::TokenUsage;

/// Longest reply asked of the model, in tokens: a tutor's hint is short.
const MAX_REPLY_TOKENS: u32 = 400;

pub struct OpenAiProvider {
    client: Client<OpenAIConfig>,
    profile: String,
    model: String,
    retries: u32,
    retry_base: Duration,
}

/// rustls is built without a default crypto provider (see Cargo.toml): install ring once,
/// before the first HTTP client is built. Losing the race to another installer is fine.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl OpenAiProvider {
    pub fn new(profile: &ProfileConfig, retries: u32, retry_base: Duration) -> Self {
        install_crypto_provider();
        // Everything set explicitly: async-openai's defaults read OPENAI_* from the process
        // environment, which must not override a named profile.
        let config = OpenAIConfig::new()
            .with_api_base(profile.base_url.clone())
            .with_api_key(
                profile
                    .api_key
                    .as_ref()
                    .map(|k| k.expose().to_string())
                    .unwrap_or_default(),
            )
            .with_org_id("")
            .with_project_id("");
        // The plain transport, without async-openai's built-in retry layer: retries are
        // ours (counted from ASSESSD_AI_RETRIES, with jitter), and both would multiply.
        let client = Client::with_config(config).with_http_service(ReqwestService::default());
        Self {
            client,
            profile: profile.name.clone(),
            model: profile.model.clone(),
            retries,
            retry_base,
        }
    }

    fn request(&self, system: &str, user: &str) -> CreateChatCompletionRequest {
        CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: vec![
                ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage::from(
                    system,
                )),
                ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage::from(user)),
            ],
            stream: Some(true),
            stream_options: Some(ChatCompletionStreamOptions {
                include_usage: Some(true),
                ..Default::default()
            }),
            max_completion_tokens: Some(MAX_REPLY_TOKENS),
            ..Default::default()
        }
    }

    /// Exponential backoff with full jitter: up to `base × 2^attempt`, at least half of it.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.retry_base.saturating_mul(1 << attempt.min(10));
        let millis = ceiling.as_millis().max(2) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }
}

#[async_trait]
impl AiProvider for OpenAiProvider {
    fn profile(&self) -> &str {
        &self.profile
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn stream_chat(&self, system: &str, user: &str) -> Result<ChunkStream, AiError> {
        let request = self.request(system, user);
        let mut attempt = 0;
        let stream = loop {
            match self.client.chat().create_stream(request.clone()).await {
                Ok(stream) => break stream,
                Err(e) if retryable(&e) && attempt < self.retries => {
                    let wait = self.backoff(attempt);
                    tracing::info!(profile = %self.profile, error = %e, ?wait, "model call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(classify(e)),
            }
        };
        Ok(stream
            .map(|item| match item {
                Ok(chunk) => Ok(Chunk {
                    delta: Some(
                        chunk
                            .choices
                            .into_iter()
                            .filter_map(|c| c.delta.content)
                            .collect::<String>(),
                    )
                    .filter(|d| !d.is_empty()),
                    usage: chunk.usage.map(|u| TokenUsage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                        total_tokens: u.total_tokens,
                    }),
                }),
                Err(e) => Err(classify(e)),
            })
            .boxed())
    }
}

/// 429 and 5xx are worth another try; anything else will fail the same way again.
fn retryable(error: &OpenAIError) -> bool {
    match error {
        OpenAIError::ApiError(e) => {
            e.status_code.as_u16() == 429 || e.status_code.is_server_error()
        }
        _ => false,
    }
}

fn classify(error: OpenAIError) -> AiError {
    match error {
        OpenAIError::ApiError(e) => AiError::Status {
            status: e.status_code.as_u16(),
            message: e.api_error.message,
        },
        OpenAIError::JSONDeserialize(e, _) => AiError::Malformed(e.to_string()),
        OpenAIError::StreamError(e) => AiError::Malformed(e.to_string()),
        other => AiError::Transport(other.to_string()),
    }
}
