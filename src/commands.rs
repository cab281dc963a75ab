//! The one command path. Every caller that changes a user's stream (their own socket, an
//! admin endpoint, and later regrade jobs and timers) goes through [`execute`]: take the
//! user's command lock, which keeps their stream as last seen (read when it is not
//! known), let the domain decide, append under optimistic
//! concurrency (a lost race is decided again), wake the read models, and tell the user's
//! live session when someone else changed its stream. The domain's [`domain::Outcome`] says what happened, so
//! no caller works it out again from the events.
//!
//! **Invariant:** a session that has been replaced by a newer connection of its user
//! records nothing more, except the model's grade of an answer it accepted before
//! ([`Origin::Graded`]), which every other command of the user waits for. The check runs under the user's command lock, and the newer
//! session reads the stream under the same lock, so it sees every command the old one
//! recorded.

use domain::{DomainError, UserCommand};
use thiserror::Error;
use uuid::Uuid;

use crate::state::Shared;
use crate::store::streams::{AppendError, Committed, EventMetadata};
use crate::store::StoreError;

/// Who asks for a command: recorded in the events' metadata.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The user's own live session, answering the client message `request_id`.
    Session {
        session_id: Uuid,
        request_id: Option<String>,
    },
    /// A model's grade of an answer that the session `session_id` accepted: recorded even
    /// when that session has since been replaced (the grading belongs to the stream, not
    /// the socket), and the one command that does not wait for gradings in flight (it is
    /// the grading).
    Graded {
        session_id: Uuid,
        request_id: Option<String>,
    },
    /// An admin acting on the user's stream.
    Admin { admin_id: String },
}

#[derive(Debug, Error)]
pub enum CommandError {
    /// The domain refused the command; nothing was recorded.
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// Other writers kept appending to the stream; the caller may try again.
    #[error("the stream kept changing while the command was decided")]
    Conflict,
    /// The asking session was replaced by a newer connection; nothing was recorded.
    #[error("this connection was replaced by a newer one")]
    Replaced,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AppendError> for CommandError {
    fn from(err: AppendError) -> Self {
        match err {
            AppendError::Rule(e) => CommandError::Rule(e),
            AppendError::Conflict => CommandError::Conflict,
            AppendError::Store(e) => CommandError::Store(e),
            AppendError::Replaced(_) => CommandError::Replaced,
        }
    }
}

/// Runs `command` on `user_id`'s stream for `origin`.
///
/// # Errors
/// [`CommandError`]; in every case nothing was recorded.
pub async fn execute(
    state: &Shared,
    user_id: &str,
    command: UserCommand,
    origin: &Origin,
) -> Result<Committed, CommandError> {
    let metadata = metadata(state, user_id, origin);
    if !matches!(origin, Origin::Graded { .. }) {
        // An answer being graded is recorded before anything else of the user's.
        state.ai.gradings.wait(user_id).await;
    }
    let lock = state.registry.user_lock(user_id);
    let committed = {
        let mut known = lock.lock().await;
        if let Origin::Session { session_id, .. } = origin {
            if !state.registry.is_live(user_id, *session_id) {
                return Err(CommandError::Replaced);
            }
        }
        match state
            .streams
            .execute(user_id, command, &metadata, &mut known)
            .await
        {
            Ok(committed) => committed,
            Err(AppendError::Replaced(_)) => {
                // The database says another session owns the user, maybe on a node whose
                // notice has not arrived (or never will): this socket closes with 4001 now.
                if let Origin::Session { session_id, .. } = origin {
                    state.registry.evict(user_id, *session_id);
                }
                return Err(CommandError::Replaced);
            }
            Err(e) => return Err(e.into()),
        }
    };
    if !committed.events.is_empty() {
        state.projections.nudge();
        // The user's own session (and its grading) reports the outcome itself; anyone
        // else's change is pushed.
        if matches!(origin, Origin::Admin { .. }) {
            state.registry.notify(user_id);
        }
        // The user's socket may be on another node: an admin's change, or a grade recorded
        // after the user moved away from the session that accepted the answer.
        let moved = match origin {
            Origin::Graded { session_id, .. } => !state.registry.is_live(user_id, *session_id),
            _ => false,
        };
        if matches!(origin, Origin::Admin { .. }) || moved {
            crate::cluster::publish_changed(state, user_id).await;
        }
    }
    Ok(committed)
}

fn metadata(state: &Shared, user_id: &str, origin: &Origin) -> EventMetadata {
    match origin {
        Origin::Session {
            session_id,
            request_id,
        }
        | Origin::Graded {
            session_id,
            request_id,
        } => EventMetadata {
            connection_id: Some(session_id.to_string()),
            request_id: request_id.clone(),
            node_id: state.node_id.clone(),
            actor: format!("user:{user_id}"),
            // The session's own commands append only while it owns the user (on every
            // node); a grade belongs to the stream and is recorded regardless.
            must_own: match origin {
                Origin::Session { session_id, .. } => Some(*session_id),
                _ => None,
            },
        },
        Origin::Admin { admin_id } => EventMetadata {
            connection_id: None,
            request_id: None,
            node_id: state.node_id.clone(),
            actor: format!("admin:{admin_id}"),
            must_own: None,
        },
    }
}
