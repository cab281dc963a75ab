//! The WebSocket side (PROTOCOL section 2).
//!
//! - [`protocol`]: the wire messages, parsed strictly enough to name what is wrong.
//! - [`session`]: one socket: the reader and writer tasks, flow control, timers.
//! - [`outbox`]: the queue into a socket's writer, shared by its session and model tasks.
//! - [`handlers`]: what each client message does, through the one command path.
//! - [`replies`]: the messages a client is told, built from outcomes and events.
//! - [`changes`]: what a client is told of an admin's change: extra time, a regrade.
//! - [`agent`]: one model call for a JSON reply, with progress marks, retried once when
//!   unusable and counted in `/metrics`.
//! - [`chat`]: an AI tutor reply, streamed (`AGENT_*`), guarded and recorded.
//! - [`feedback`]: a model grading a free-text answer, streamed (`AGENT_*`) and recorded
//!   with the answer, or graded offline when the model fails.
//! - [`question`]: a model writing the next question of an adaptive test, streamed
//!   (`AGENT_*`) and recorded with its key, or the next bank question when it fails.

pub mod agent;
pub mod changes;
pub mod chat;
pub mod feedback;
pub mod handlers;
pub mod outbox;
pub mod protocol;
pub mod question;
pub mod replies;
pub mod session;
