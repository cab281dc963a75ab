//! # assessd
//!
//! An event-sourced assessment server: test-takers answer tests over a WebSocket, every
//! action is an event in the test-taker's own stream, auditors read that history.
//!
//! ## Layout
//! - [`app`]: [`Application`] (build, then run until a shutdown future resolves) and the
//!   router. `main.rs` and the integration tests use only this.
//! - [`state`]: [`state::AppState`], what every request and session shares.
//! - [`commands`]: the one command path every change to a user's stream goes through.
//! - [`config`]: the command line and environment, and the typed [`Settings`].
//! - [`auth`]: JWT verification and minting, roles, secrets that never print.
//! - [`ws`]: the WebSocket protocol: wire messages, the session that turns frames into
//!   commands, and the replies it sends.
//! - [`http`]: the HTTP API, one module per feature (health, the socket upgrade, tests,
//!   admin, audit), and the browser pages with their development sign-in.
//! - [`rate_limit`]: each user's message budget.
//! - [`jobs`]: background jobs an admin follows (projection rebuilds, regrades).
//! - [`regrade`]: a question's key or points corrected for every attempt, as a job.
//! - [`registry`]: the live sessions of this node, one per user, their command locks, and
//!   the connection cap.
//! - [`ownership`]: which session owns each user across every node (PostgreSQL), checked
//!   in the transaction of every append; [`cluster`]: the nodes' LISTEN/NOTIFY channel
//!   (cross-node eviction, "stream changed").
//! - [`store`]: the event store (cqrs-es on SQLite or PostgreSQL), test definitions, audit
//!   queries.
//! - [`tutor`]: the tutor behind `CHAT_MESSAGE` (offline by default).
//! - [`ai`]: the OpenAI-compatible provider (async-openai), its profiles, caps and the
//!   answer-key guard; the AI tutor's reply streams from [`ws::chat`].
//! - [`definitions`]: reading test definitions, and the demo test.
//! - [`dev`]: `assessd dev seed`, synthetic attempts through the command path.
//! - [`error`]: every client-visible error, mapped to HTTP statuses and protocol codes.
//! - [`metrics`]: Prometheus metrics.
//! - [`memory`]: the allocator, jemalloc, set to give freed memory back (the one unsafe item).
//!
//! The rules themselves live in the `domain` crate, which does no IO.
#![deny(unsafe_code)]

pub mod ai;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod definitions;
pub mod dev;
pub mod error;
pub mod http;
pub mod jobs;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod ownership;
pub mod rate_limit;
pub mod registry;
pub mod regrade;
pub mod state;
pub mod store;
pub mod tutor;
pub mod ws;

pub use app::Application;
pub use config::Settings;
