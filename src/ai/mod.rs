//! The AI provider behind the tutor, the free-text grader and the question writer of
//! adaptive tests: OpenAI-compatible servers through async-openai, one client per
//! configured profile, and the caps on concurrent model calls.
//!
//! - [`config`]: profiles from the environment (`OPENAI_*`, `ASSESSD_AI_*`).
//! - [`openai`]: the async-openai implementation of [`AiProvider`].
//! - [`guard`]: the check that a reply does not give the answer away.
//! - [`grader`]: the instructions and the strict reading of a free-text grade.
//! - [`inflight`]: the gradings (and question generations) in flight, which the user's
//!   other commands wait for.
//! - [`questions`]: the instructions and the strict reading of a generated question.
//!
//! The offline tutor ([`crate::tutor`]) stays the default and needs none of this. What a
//! model says is decided here, outside the domain, and recorded in the event
//! (`ChatExchanged` with profile, model and token usage), so replaying a stream never
//! calls a model.

pub mod config;
pub mod grader;
pub mod guard;
pub mod inflight;
pub mod openai;
pub mod questions;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::{PresentedQuestion, QuestionKind, TokenUsage};
use futures_util::Stream;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use config::{AiConfig, ProfileConfig, DEFAULT_PROFILE};

/// Why a model call failed. The detail is logged; a client only learns `ai_unavailable`.
#[derive(Debug, Error)]
pub enum AiError {
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the provider answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the provider's reply could not be read: {0}")]
    Malformed(String),
    #[error("the provider could not be reached: {0}")]
    Transport(String),
    #[error("the model's reply was empty")]
    Empty,
}

impl AiError {
    /// The outcome label of `/metrics`.
    pub fn outcome(&self) -> &'static str {
        match self {
            AiError::Timeout(_) => "timeout",
            _ => "error",
        }
    }
}

/// One piece of a streamed reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// New text, if the piece carries any.
    pub delta: Option<String>,
    /// Token usage, which providers send with the last piece.
    pub usage: Option<TokenUsage>,
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, AiError>> + Send>>;

/// The JSON a reply must be, asked of the provider as structured output
/// (`response_format: {"type": "json_schema", ...}`). The instructions say the same in
/// words, for a server that ignores it; the reply is checked either way.
#[derive(Debug, Clone)]
pub struct ReplySchema {
    /// The schema's name as the provider sees it (letters, digits, `_` and `-`).
    pub name: &'static str,
    pub schema: serde_json::Value,
}

/// A model that streams chat replies.
#[async_trait]
pub trait AiProvider: Send + Sync {
    /// The configured profile name, recorded with every reply.
    fn profile(&self) -> &str;
    /// The model asked, recorded with every reply.
    fn model(&self) -> &str;
    /// Starts a reply to `user` under the instructions `system`, shaped by `schema` when
    /// one is given.
    ///
    /// # Errors
    /// [`AiError`] when the call cannot start (after any retries).
    async fn stream_chat(
        &self,
        system: &str,
        user: &str,
        schema: Option<&ReplySchema>,
    ) -> Result<ChunkStream, AiError>;
}

/// The configured providers and the caps on calls in flight.
pub struct Ai {
    default: Option<Arc<dyn AiProvider>>,
    named: HashMap<String, Arc<dyn AiProvider>>,
    pub timeout: Duration,
    global: Arc<Semaphore>,
    max_per_user: usize,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    /// The free-text gradings and question generations running now, which the user's
    /// other commands wait for.
    pub gradings: inflight::Gradings,
}

/// Why a call may not start now.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Busy {
    #[error("your previous question to the tutor is still being answered; wait for its reply")]
    User,
    #[error("the tutor is busy with other questions; try again shortly")]
    Global,
}

/// Held while a model call runs; dropping it frees the user's and the global slot.
pub struct Permit {
    _global: OwnedSemaphorePermit,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    user_id: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user_id);
            }
        }
    }
}

impl Ai {
    /// A client per configured profile; none when the configuration is offline.
    pub fn new(config: &AiConfig) -> Self {
        let build = |p: &ProfileConfig| -> Arc<dyn AiProvider> {
            Arc::new(openai::OpenAiProvider::new(
                p,
                config.retries,
                config.retry_base,
            ))
        };
        Self {
            default: config.default.as_ref().map(build),
            named: config
                .profiles
                .iter()
                .map(|(name, p)| (name.clone(), build(p)))
                .collect(),
            timeout: config.timeout,
            global: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            max_per_user: config.max_per_user.max(1),
            per_user: Default::default(),
            gradings: Default::default(),
        }
    }

    /// Offline: no provider at all.
    pub fn offline() -> Self {
        Self::new(&AiConfig::default())
    }

    /// True when a test definition may name `profile`.
    pub fn knows(&self, profile: &str) -> bool {
        (profile == DEFAULT_PROFILE && self.default.is_some()) || self.named.contains_key(profile)
    }

    /// The names of the configured profiles, for error messages.
    pub fn profile_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.named.keys().cloned().collect();
        names.sort();
        if self.default.is_some() {
            names.insert(0, DEFAULT_PROFILE.to_string());
        }
        names
    }

    /// The provider for a test that names `profile` (or none): that profile when it is
    /// configured, else the default profile, else `None` (the offline tutor).
    pub fn provider(&self, profile: Option<&str>) -> Option<Arc<dyn AiProvider>> {
        if let Some(name) = profile.filter(|n| *n != DEFAULT_PROFILE) {
            match self.named.get(name) {
                Some(provider) => return Some(provider.clone()),
                None => tracing::warn!(
                    profile = name,
                    "a test names an AI profile this server does not configure; using the default"
                ),
            }
        }
        self.default.clone()
    }

    /// A slot for one model call of `user_id`, or why there is none now.
    ///
    /// # Errors
    /// [`Busy`] when the user's or the node's cap is reached.
    pub fn try_acquire(&self, user_id: &str) -> Result<Permit, Busy> {
        let mut counts = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let mine = counts.get(user_id).copied().unwrap_or(0);
        if mine >= self.max_per_user {
            return Err(Busy::User);
        }
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy::Global)?;
        counts.insert(user_id.to_string(), mine + 1);
        Ok(Permit {
            _global: global,
            per_user: self.per_user.clone(),
            user_id: user_id.to_string(),
        })
    }
}

/// The tutor's instructions. It gets the question as presented (never the key: the
/// caller has none to give), so it cannot quote the key, only guess it; the guard checks
/// the reply for that.
pub fn tutor_prompt(question: Option<&PresentedQuestion>) -> String {
    let mut prompt = String::from(
        "You are a patient tutor beside a student who is taking a test. Help them think: \
         explain the ideas and terms the question uses, ask a guiding question, suggest how \
         to approach it. Never give the answer away: do not say or hint which choice is \
         correct, do not name a choice as the answer, and do not list the key points a good \
         free-text answer must contain. If they ask for the answer, kindly refuse and offer \
         a hint about the method instead. Reply in at most 120 words, in plain text.",
    );
    match question {
        None => prompt.push_str("\n\nThe student has no question on screen right now."),
        Some(q) => {
            let kind = match q.kind {
                QuestionKind::SingleChoice => "single choice (exactly one choice is right)",
                QuestionKind::MultipleChoice => "multiple choice (one or more choices are right)",
                QuestionKind::FreeText => "free text (answered in the student's own words)",
            };
            prompt.push_str(&format!(
                "\n\nThe question on screen (question {}, {kind}):\n{}",
                q.position, q.prompt
            ));
            if !q.choices.is_empty() {
                prompt.push_str("\nChoices:");
                for choice in &q.choices {
                    prompt.push_str(&format!("\n{}) {}", choice.id, choice.text));
                }
            }
        }
    }
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ai(max_concurrent: usize, max_per_user: usize) -> Ai {
        Ai::new(&AiConfig {
            max_concurrent,
            max_per_user,
            ..AiConfig::default()
        })
    }

    #[test]
    fn each_user_and_the_node_have_a_cap() {
        let ai = ai(2, 1);
        let alice = ai.try_acquire("alice").unwrap();
        assert_eq!(ai.try_acquire("alice").err(), Some(Busy::User));
        let bob = ai.try_acquire("bob").unwrap();
        assert_eq!(ai.try_acquire("carol").err(), Some(Busy::Global));
        drop(alice);
        let _alice_again = ai.try_acquire("alice").unwrap();
        drop(bob);
        assert!(ai.per_user.lock().unwrap().get("bob").is_none());
    }

    #[test]
    fn an_offline_server_has_no_provider() {
        let ai = Ai::offline();
        assert!(ai.provider(None).is_none());
        assert!(ai.provider(Some("course-a")).is_none());
        assert!(!ai.knows("default"));
    }

    #[test]
    fn the_prompt_has_the_question_as_presented_and_the_rule() {
        let question = PresentedQuestion {
            question_id: "q1".into(),
            position: 2,
            kind: QuestionKind::SingleChoice,
            prompt: "Which keyword declares a constant?".into(),
            choices: vec![domain::PresentedChoice {
                id: "a".into(),
                text: "let".into(),
            }],
            points: 1.0,
        };
        let prompt = tutor_prompt(Some(&question));
        assert!(prompt.contains("Never give the answer away"));
        assert!(prompt.contains("question 2"));
        assert!(prompt.contains("a) let"));
    }
}
