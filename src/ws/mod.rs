//! The WebSocket side (PROTOCOL section 2): the wire messages, the registry of live
//! sessions (one per user), and the session that turns a socket into commands and events.

pub mod protocol;
pub mod registry;
pub mod session;
