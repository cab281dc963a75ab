//! The queue between a connection's producers (its session, and the model tasks that
//! belong to its user's stream) and its writer: server messages go in as frames echoing
//! the `request_id` of the message they answer, in order, waiting for room.

use tokio::sync::mpsc;

use super::protocol::{Outgoing, ServerMessage};
use super::replies::Reply;
use crate::state::AppState;

/// What the reader hands the writer: one pointer.
///
/// tokio's bounded queue allocates its slots 32 at a time when it is created, so every
/// open socket pays 32 of these whether or not anything is queued: 48 bytes each as a
/// `Message` (1,568 bytes a socket, measured with heaptrack), 24 as a `String`, 8 as a
/// box. A queued message costs one more small allocation; an idle socket 512 bytes less.
#[derive(Debug)]
pub(super) struct Outbound(pub(super) Box<Frame>);

/// One frame for the writer.
#[derive(Debug)]
pub(super) enum Frame {
    /// A server message, encoded.
    Text(String),
    /// A keep-alive ping.
    Ping,
    /// Send this close frame (code, reason), then stop.
    Close(u16, &'static str),
}

const _: () = assert!(std::mem::size_of::<Outbound>() <= 8);

impl Outbound {
    pub(super) fn text(text: String) -> Self {
        Outbound(Box::new(Frame::Text(text)))
    }

    pub(super) fn ping() -> Self {
        Outbound(Box::new(Frame::Ping))
    }

    pub(super) fn close(code: u16, reason: &'static str) -> Self {
        Outbound(Box::new(Frame::Close(code, reason)))
    }
}

/// Queues server messages for one client, echoing one `request_id`: what the session and
/// its model tasks share.
#[derive(Clone)]
pub struct Outbox {
    out: mpsc::Sender<Outbound>,
    state: AppState,
    request_id: Option<String>,
}

/// An [`Outbox`] that does not keep the connection's queue open: a task that outlives
/// the session (a grading) reaches the client while the session lives, and lets its writer
/// finish as soon as the session ends.
pub struct WeakOutbox {
    out: mpsc::WeakSender<Outbound>,
    state: AppState,
    request_id: Option<String>,
}

impl WeakOutbox {
    /// The outbox, while the session that owns the queue lives.
    pub fn upgrade(&self) -> Option<Outbox> {
        Some(Outbox {
            out: self.out.upgrade()?,
            state: self.state.clone(),
            request_id: self.request_id.clone(),
        })
    }
}

/// The client is gone: nothing more can reach it.
#[derive(Debug)]
pub struct Gone;

impl Outbox {
    pub(super) fn new(
        out: mpsc::Sender<Outbound>,
        state: AppState,
        request_id: Option<String>,
    ) -> Self {
        Outbox {
            out,
            state,
            request_id,
        }
    }

    /// This outbox without a hold on the queue (see [`WeakOutbox`]).
    pub fn downgrade(&self) -> WeakOutbox {
        WeakOutbox {
            out: self.out.downgrade(),
            state: self.state.clone(),
            request_id: self.request_id.clone(),
        }
    }

    /// Queues `replies` in order, waiting for room.
    pub async fn send(&self, replies: Vec<Reply>) -> Result<(), Gone> {
        for Reply { message, seq } in replies {
            if let ServerMessage::Error { code, .. } = &message {
                self.state.metrics.error(code.as_str());
            }
            let frame = Outgoing {
                message: &message,
                seq,
                request_id: self.request_id.as_deref(),
            };
            let text = match serde_json::to_string(&frame) {
                Ok(text) => text,
                Err(e) => {
                    tracing::error!(error = %e, "failed to encode a server message");
                    continue;
                }
            };
            self.state.metrics.message_out(message.kind());
            self.out
                .send(Outbound::text(text))
                .await
                .map_err(|_| Gone)?;
        }
        Ok(())
    }
}
