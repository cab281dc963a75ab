//! The OpenAI-compatible provider, through async-openai's streamed chat completions
//! (`POST {base_url}/chat/completions` with `stream: true`, read as server-sent events).
//!
//! A 429 or 5xx answer is retried with exponential backoff and jitter before anything has
//! streamed, waiting at least as long as the server's `Retry-After` (or OpenAI's
//! `retry-after-ms`) asks; once text is streaming a failure ends the call (the client
//! already saw part of a reply, and a second one would not match it). The caller bounds
//! the whole call with its timeout.
//!
//! A reply with a [`ReplySchema`] is asked for as structured output (`response_format`
//! `json_schema`). A server that answers that with 400 is asked again without it, and,
//! when that works, never asked with it again: the instructions describe the JSON too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    ResponseFormat, ResponseFormatJsonSchema,
};
use async_openai::Client;
use async_trait::async_trait;
use futures_util::StreamExt;
use rand::Rng;

use super::config::ProfileConfig;
use super::{AiError, AiProvider, Chunk, ChunkStream, ReplySchema};
use domain::TokenUsage;

/// Longest reply asked of the model, in tokens: a tutor's hint is short.
const MAX_REPLY_TOKENS: u32 = 400;

/// Longest `Retry-After` honoured; a longer one is cut to this (the caller's timeout
/// usually ends the call first anyway).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct OpenAiProvider {
    client: Client<OpenAIConfig>,
    profile: String,
    model: String,
    retries: u32,
    retry_base: Duration,
    /// Not before this instant may the next retry go: the server's last `Retry-After`.
    /// Shared by every call of the profile, since a rate limit is the server's, not one
    /// call's.
    retry_after: Arc<Mutex<Option<Instant>>>,
    /// Set once the server refused `response_format` and took the request without it.
    no_structured_output: AtomicBool,
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
        // It notes the `Retry-After` of a 429 or 503 for `backoff`: the crate's error for
        // such an answer drops the headers.
        let retry_after: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let noted = retry_after.clone();
        let plain = ReqwestService::default();
        let transport = tower::service_fn(move |request: HttpRequestFactory| {
            let mut plain = plain.clone();
            let noted = noted.clone();
            async move {
                let response = tower::Service::call(&mut plain, request).await?;
                let status = response.status().as_u16();
                if status == 429 || status == 503 {
                    if let Some(wait) = asked_wait(response.headers()) {
                        *noted.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now() + wait.min(MAX_RETRY_AFTER));
                    }
                }
                Ok::<_, OpenAIError>(response)
            }
        });
        let client = Client::with_config(config).with_http_service(transport);
        Self {
            client,
            profile: profile.name.clone(),
            model: profile.model.clone(),
            retries,
            retry_base,
            retry_after,
            no_structured_output: AtomicBool::new(false),
        }
    }

    fn request(
        &self,
        system: &str,
        user: &str,
        schema: Option<&ReplySchema>,
    ) -> CreateChatCompletionRequest {
        let response_format = schema.map(|s| ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: None,
                name: s.name.to_string(),
                schema: s.schema.clone(),
                // Strict mode allows only a subset of JSON Schema (no optional fields, no
                // `oneOf`); the reply is checked here in full anyway.
                strict: None,
            },
        });
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
            response_format,
            ..Default::default()
        }
    }

    /// Exponential backoff with full jitter (up to `base × 2^attempt`, at least half of
    /// it), and at least until the server's last `Retry-After` has passed.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.retry_base.saturating_mul(1 << attempt.min(10));
        let millis = ceiling.as_millis().max(2) as u64;
        let jittered = Duration::from_millis(rand::rng().random_range(millis / 2..=millis));
        let asked = self
            .retry_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        jittered.max(asked)
    }
}

/// How long a server asks to wait: OpenAI's `retry-after-ms`, else `Retry-After` in
/// seconds. (The HTTP-date form is not read: rate limiters send seconds.)
fn asked_wait(headers: &axum::http::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    header("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

#[async_trait]
impl AiProvider for OpenAiProvider {
    fn profile(&self) -> &str {
        &self.profile
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn stream_chat(
        &self,
        system: &str,
        user: &str,
        schema: Option<&ReplySchema>,
    ) -> Result<ChunkStream, AiError> {
        let mut schema = schema.filter(|_| !self.no_structured_output.load(Ordering::Relaxed));
        let mut request = self.request(system, user, schema);
        let mut attempt = 0;
        let mut refused_schema = false;
        let stream = loop {
            match self.client.chat().create_stream(request.clone()).await {
                Ok(stream) => {
                    if refused_schema {
                        tracing::warn!(profile = %self.profile, "the provider refuses response_format json_schema; asking for JSON in the instructions only");
                        self.no_structured_output.store(true, Ordering::Relaxed);
                    }
                    break stream;
                }
                Err(e) if schema.is_some() && status(&e) == Some(400) => {
                    schema = None;
                    refused_schema = true;
                    request = self.request(system, user, None);
                }
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

fn status(error: &OpenAIError) -> Option<u16> {
    match error {
        OpenAIError::ApiError(e) => Some(e.status_code.as_u16()),
        _ => None,
    }
}

/// 429 and 5xx are worth another try; anything else will fail the same way again.
fn retryable(error: &OpenAIError) -> bool {
    status(error).is_some_and(|s| s == 429 || s >= 500)
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
