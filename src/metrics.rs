//! Prometheus metrics (`GET /metrics`): live connections, messages in and out by type,
//! command latency, evictions and errors by code, and model calls (by profile and outcome,
//! their latency and the tokens they used).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AiCallLabel {
    pub profile: String,
    /// `chat` (the tutor) or `feedback` (grading a free-text answer).
    pub task: String,
    /// `ok`, `withheld`, `timeout`, `error`, `invalid_output` (a grade that could not be
    /// read) or `refused` (over a cap, never sent).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AiTaskLabel {
    pub profile: String,
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabel {
    pub profile: String,
    pub task: String,
    /// `prompt` or `completion`.
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub messages_in: Family<TypeLabel, Counter<u64, AtomicU64>>,
    pub messages_out: Family<TypeLabel, Counter<u64, AtomicU64>>,
    pub command_seconds: Family<CommandLabel, Histogram>,
    pub evictions: Counter<u64, AtomicU64>,
    pub errors: Family<CodeLabel, Counter<u64, AtomicU64>>,
    pub refused_connections: Counter<u64, AtomicU64>,
    pub ai_calls: Family<AiCallLabel, Counter<u64, AtomicU64>>,
    pub ai_call_seconds: Family<AiTaskLabel, Histogram>,
    pub ai_tokens: Family<TokenLabel, Counter<u64, AtomicU64>>,
    pub ai_fallbacks: Family<AiTaskLabel, Counter<u64, AtomicU64>>,
    /// 1 while this node listens for the other nodes (PostgreSQL), else 0.
    pub cluster_listener_up: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("assessd");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Live WebSocket connections",
            connections.clone(),
        );
        let messages_in = Family::<TypeLabel, Counter>::default();
        registry.register(
            "messages_in",
            "Client messages received, by type",
            messages_in.clone(),
        );
        let messages_out = Family::<TypeLabel, Counter>::default();
        registry.register(
            "messages_out",
            "Server messages sent, by type",
            messages_out.clone(),
        );
        let command_seconds = Family::<CommandLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "command_duration_seconds",
            "Time to decide and record one command",
            command_seconds.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "evictions",
            "Connections replaced by a newer one of the same user",
            evictions.clone(),
        );
        let errors = Family::<CodeLabel, Counter>::default();
        registry.register("errors", "ERROR messages sent, by code", errors.clone());
        let refused_connections = Counter::default();
        registry.register(
            "refused_connections",
            "Upgrades refused because the server was full",
            refused_connections.clone(),
        );
        let ai_calls = Family::<AiCallLabel, Counter>::default();
        registry.register(
            "ai_calls",
            "Model calls, by provider profile, task and outcome",
            ai_calls.clone(),
        );
        let ai_call_seconds = Family::<AiTaskLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 12))
        });
        registry.register(
            "ai_call_duration_seconds",
            "Time from asking a model to its last word (or failure)",
            ai_call_seconds.clone(),
        );
        let ai_tokens = Family::<TokenLabel, Counter>::default();
        registry.register(
            "ai_tokens",
            "Tokens used by model calls, as the provider reported them",
            ai_tokens.clone(),
        );
        let ai_fallbacks = Family::<AiTaskLabel, Counter>::default();
        registry.register(
            "ai_fallbacks",
            "Answers the offline grader graded because the model failed, by profile and task",
            ai_fallbacks.clone(),
        );
        let cluster_listener_up = Gauge::default();
        registry.register(
            "cluster_listener_up",
            "1 while this node listens for the other nodes' notifications (PostgreSQL)",
            cluster_listener_up.clone(),
        );
        Self {
            registry,
            connections,
            messages_in,
            messages_out,
            command_seconds,
            evictions,
            errors,
            refused_connections,
            ai_calls,
            ai_call_seconds,
            ai_tokens,
            ai_fallbacks,
            cluster_listener_up,
        }
    }

    /// One model call that ended with `outcome` after `took` (none when it never started).
    pub fn ai_call(
        &self,
        profile: &str,
        task: &str,
        outcome: &str,
        took: Option<Duration>,
        usage: Option<domain::TokenUsage>,
    ) {
        self.ai_calls
            .get_or_create(&AiCallLabel {
                profile: profile.to_string(),
                task: task.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(took) = took {
            self.ai_call_seconds
                .get_or_create(&AiTaskLabel {
                    profile: profile.to_string(),
                    task: task.to_string(),
                })
                .observe(took.as_secs_f64());
        }
        if let Some(usage) = usage {
            for (kind, tokens) in [
                ("prompt", usage.prompt_tokens),
                ("completion", usage.completion_tokens),
            ] {
                self.ai_tokens
                    .get_or_create(&TokenLabel {
                        profile: profile.to_string(),
                        task: task.to_string(),
                        kind: kind.to_string(),
                    })
                    .inc_by(u64::from(tokens));
            }
        }
    }

    /// An answer the offline grader graded because the model of `profile` failed.
    pub fn ai_fallback(&self, profile: &str, task: &str) {
        self.ai_fallbacks
            .get_or_create(&AiTaskLabel {
                profile: profile.to_string(),
                task: task.to_string(),
            })
            .inc();
    }

    pub fn message_in(&self, kind: &str) {
        self.messages_in
            .get_or_create(&TypeLabel {
                r#type: kind.to_string(),
            })
            .inc();
    }

    pub fn message_out(&self, kind: &str) {
        self.messages_out
            .get_or_create(&TypeLabel {
                r#type: kind.to_string(),
            })
            .inc();
    }

    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    pub fn command(&self, name: &str, took: Duration) {
        self.command_seconds
            .get_or_create(&CommandLabel {
                command: name.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "failed to encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
