//! # projections: read models fed by the event history
//!
//! Each read model is a subscriber: it reads events after its own checkpoint in commit
//! order ([`feed`]), applies them (pure code, no IO), and writes its rows and its new
//! checkpoint in one transaction ([`checkpoint`]). Nothing but events goes in, so a view
//! can always be rebuilt from the history.
//!
//! ## Layout
//! - [`db`]: the two supported backends.
//! - [`feed`]: events in commit order after a [`feed::Position`]; on PostgreSQL only
//!   below the oldest writer still running, so an event that commits late is never skipped.
//! - [`checkpoint`]: where each projection stands, moved in the same transaction as its
//!   rows, refusing a second runner that raced it.
//! - [`assessments`]: one row per attempt (the test-taker's own history).
//! - [`test_statistics`]: item analysis per test and version (facility, discrimination).
//! - [`rebuild`]: a projection rebuilt from the first event beside the live one, then
//!   swapped in within one transaction.
//! - `bulk`: many rows written at once, the fastest way each backend offers.
//! - [`runner`]: keeps every projection caught up, one runner per projection across
//!   processes, and lets a reader wait for its own writes.
#![forbid(unsafe_code)]

pub mod assessments;
mod bulk;
pub mod checkpoint;
pub mod db;
pub mod feed;
pub mod rebuild;
pub mod runner;
pub mod test_statistics;

pub use db::Db;
pub use feed::Position;
pub use runner::Projections;

use thiserror::Error;

/// A projection failure. The detail is for logs; clients see `internal`.
#[derive(Debug, Error)]
pub enum ProjectionError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// An event row that does not read as an event: the projection stops rather than skip it.
    #[error("event at position {position} of {user_id} could not be read: {reason}")]
    BadEvent {
        user_id: String,
        position: i64,
        reason: String,
    },
    /// Another runner moved the checkpoint first; this batch was rolled back.
    #[error("projection {0} was advanced by another runner")]
    Raced(String),
    /// A background part of the work ended without saying why.
    #[error("{0}")]
    Failed(String),
    /// A rebuild of this projection is already running.
    #[error("a rebuild of projection {0} is already running")]
    Busy(String),
    #[error("no projection named {0:?}")]
    Unknown(String),
}
