//! One WebSocket connection: a disposable view of its user's stream.
//!
//! Two tasks joined by a bounded queue: this reader, which turns frames into replies (via
//! [`Handler`]) and queues them, and a writer, which drains the queue into the socket.
//!
//! Flow control, so that no reply is ever dropped and no client can grow the server's
//! memory or slow another user:
//! - while the queue is full the reader waits for room, and so stops reading its client
//!   (backpressure through TCP);
//! - a socket that accepts no write for `write_timeout` is disconnected by the writer;
//! - messages over the user's budget are not processed; the first of each budget window
//!   gets `ERROR rate_limited`, the rest of that window get nothing, so a flood does not
//!   turn into an equal flood of errors.
//!
//! An AI tutor reply streams from a task of its own ([`super::chat`]), which queues its
//! messages on the same queue: the session keeps reading its client meanwhile (a
//! `HEARTBEAT` still gets its `PONG`), and the task ends with the session.
//!
//! The socket is any `Stream + Sink` of axum messages, so tests can drive it with channels.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use chrono::Utc;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::handlers::Handler;
use super::outbox::{Frame, Outbound, Outbox};
use super::protocol::{self, ServerMessage};
use super::replies::Reply;
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};
use crate::registry::Slot;
use crate::state::AppState;

/// Close codes of PROTOCOL section 2.1.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const REPLACED: u16 = 4001;
    pub const IDLE: u16 = 4008;
}

/// Why the reader loop ended.
enum End {
    /// The client went away, the socket failed, or the writer gave up on it.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Runs one connection of `identity` until it ends; `slot` holds its place under the cap.
///
/// Not an `async fn`: the memory of an idle session is its task, and an `async fn` keeps
/// its arguments there for as long as it runs (the unsplit socket alone is 368 bytes),
/// and copies them again into its locals. The socket is split and its writer started
/// here; the future returned holds only what the session goes on using.
pub fn run<S>(
    socket: S,
    state: AppState,
    identity: Identity,
    slot: Slot,
) -> impl Future<Output = ()> + Send + 'static
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Send
        + 'static,
{
    let session_id = Uuid::new_v4();
    let user_id = identity.user_id;
    let (sink, stream) = socket.split();
    // hyper hands the upgraded socket over with the HTTP request's read buffer still
    // attached (12 KiB a connection, heaptrack) and frees it only at the socket's first
    // read, which used to wait for the claim and the greeting: under a burst of connects
    // thousands of them were held at once, and the holes they left kept the heap resident.
    // One read now, before the claim; a frame that is already there waits in `stream`.
    let mut stream = stream.peekable();
    let _ = Pin::new(&mut stream).peek().now_or_never();
    let (out_tx, out_rx) = mpsc::channel(state.limits.outbound_queue);
    let mut writer = tokio::spawn(write_loop(sink, out_rx, state.limits.write_timeout));
    async move {
        // Counted here, not above: a future dropped before it ran is not a connection.
        state.metrics.connections.inc();
        // The claim commits (and the older socket, on any node, is told) before the stream
        // is read, so this session sees everything the older one recorded.
        // Boxed here and below: an awaited future is stored inside its caller's, so every
        // large step that runs only now and then (the claim, the greeting, a command)
        // would otherwise size the memory of every idle session's task.
        let registration =
            match Box::pin(crate::ownership::take(&state, &user_id, session_id)).await {
                Ok(registration) => registration,
                Err(e) => {
                    tracing::error!(%user_id, error = %e, "could not claim the user's stream");
                    let refusal = Reply::error(&ClientError::from(e));
                    let outbox = Outbox::new(out_tx.clone(), state.clone(), None);
                    let _ = Box::pin(outbox.send(vec![refusal])).await;
                    let _ = out_tx.try_send(Outbound::close(
                        close::TRY_AGAIN_LATER,
                        "could not load your stream; reconnect",
                    ));
                    drop(out_tx);
                    finish(&state, &mut writer).await;
                    drop(slot);
                    return;
                }
            };
        if registration.evicted_other {
            state.metrics.evictions.inc();
        }
        let mut session = Session {
            handler: Handler::new(state.clone(), user_id.clone(), session_id),
            state: state.clone(),
            user_id,
            out: out_tx,
            chats: Vec::new(),
            evicted: registration.evicted,
            changed: registration.changed,
            request_id: None,
            refused_until: None,
        };
        tracing::info!(user_id = %session.user_id, %session_id, "connected");

        let end = session.serve(&mut stream).await;
        // A reply still streaming is for a client that is gone (or replaced): stop the
        // model call, record nothing.
        for chat in session.chats.drain(..) {
            chat.abort();
        }
        state.registry.unregister(&session.user_id, session_id);
        if let End::Close(code, reason) = end {
            // The writer may be stuck on a client that does not read; then no goodbye.
            let _ = session.out.try_send(Outbound::close(code, reason));
        }
        let user_id = std::mem::take(&mut session.user_id);
        drop(session);
        finish(&state, &mut writer).await;
        drop(slot);
        tracing::info!(%user_id, %session_id, "disconnected");
    }
}

/// Waits for the writer to drain the queue (its write timeout bounds each write, and a
/// second more the whole), then counts the connection gone.
async fn finish(state: &AppState, writer: &mut tokio::task::JoinHandle<()>) {
    let grace = state.limits.write_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, &mut *writer).await.is_err() {
        writer.abort();
    }
    state.metrics.connections.dec();
}

/// Drains the queue into the socket. A write that the client does not accept within
/// `write_timeout` ends the connection: such a client cannot hold the server's memory.
/// Not an `async fn`, for the reason [`run`] gives.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its task"
)]
fn write_loop<K>(
    mut sink: K,
    mut queue: mpsc::Receiver<Outbound>,
    write_timeout: Duration,
) -> impl Future<Output = ()> + Send
where
    K: Sink<Message, Error = axum::Error> + Unpin + Send,
{
    async move {
        while let Some(item) = queue.recv().await {
            let (message, last) = match *item.0 {
                Frame::Text(text) => (Message::Text(text.into()), false),
                Frame::Ping => (Message::Ping(Default::default()), false),
                Frame::Close(code, reason) => {
                    let frame = CloseFrame {
                        code,
                        reason: Utf8Bytes::from_static(reason),
                    };
                    (Message::Close(Some(frame)), true)
                }
            };
            // Boxed while they run: an idle writer then waits on its queue alone, and its
            // task is not sized by a write, its message and its timer (about 200 bytes).
            match Box::pin(tokio::time::timeout(write_timeout, sink.send(message))).await {
                Ok(Ok(())) if !last => {}
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        timeout = ?write_timeout,
                        "client accepted no write within the write timeout; disconnecting it"
                    );
                    return;
                }
            }
        }
        let _ = Box::pin(tokio::time::timeout(write_timeout, sink.close())).await;
    }
}

struct Session {
    handler: Handler,
    state: AppState,
    user_id: String,
    out: mpsc::Sender<Outbound>,
    /// The AI tutor replies being streamed (at most the per-user cap).
    chats: Vec<tokio::task::JoinHandle<()>>,
    evicted: CancellationToken,
    changed: Arc<Notify>,
    /// The `request_id` of the message being answered.
    request_id: Option<String>,
    /// Over budget until then: messages are discarded without a reply.
    refused_until: Option<Instant>,
}

impl Session {
    async fn serve<R>(&mut self, stream: &mut R) -> End
    where
        R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        match Box::pin(self.greet()).await {
            Ok(Ok(())) => self.spawn_question(),
            Ok(Err(end)) => return end,
            Err(e) => {
                let _ = self.send_all(vec![Reply::error(&e)]).await;
                return End::Close(
                    close::TRY_AGAIN_LATER,
                    "could not load your stream; reconnect",
                );
            }
        }
        let limits = &self.state.limits;
        let (idle_timeout, ping_interval) = (limits.idle_timeout, limits.ping_interval);
        let max_message_bytes = limits.max_message_bytes;
        let mut last_seen = Instant::now();
        let mut next_ping = last_seen + ping_interval;
        // One timer for the idle timeout, the next ping and the attempt's deadline, set
        // each turn to the earliest of them: it lives in every idle session's task, and a
        // timer is 112 bytes (three of them before, the ping's boxed in its interval).
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        let shutdown = self.state.shutdown.clone();
        let evicted = self.evicted.clone();
        let changed = self.changed.clone();
        let writer = self.out.clone();
        loop {
            let deadline = self.deadline();
            let idle_at = last_seen + idle_timeout;
            let wake = idle_at.min(next_ping);
            let wake = deadline.map_or(wake, |d| d.min(wake));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(End::Close(close::GOING_AWAY, "server shutting down")),
                _ = evicted.cancelled() => Err(Box::pin(self.replaced()).await),
                // The writer gave up on the socket: nothing more can reach the client.
                _ = writer.closed() => Err(End::Gone),
                _ = changed.notified() => {
                    self.request_id = None;
                    let replies = Box::pin(self.handler.refresh()).await;
                    self.send_result(replies).await
                }
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        None | Some(Ok(Message::Close(_))) => Err(End::Gone),
                        Some(Err(e)) => Err(end_for_error(e)),
                        Some(Ok(Message::Text(text))) => {
                            if text.len() > max_message_bytes {
                                Err(End::Close(close::TOO_BIG, "message too big"))
                            } else {
                                Box::pin(self.on_text(text.as_str())).await
                            }
                        }
                        Some(Ok(Message::Binary(_))) => Box::pin(self.on_binary()).await,
                        // axum answers pings itself; a pong only proves the client is alive.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= idle_at {
                        Err(End::Close(close::IDLE, "idle timeout"))
                    } else if deadline.is_some_and(|d| now >= d) {
                        self.request_id = None;
                        Box::pin(self.expire()).await
                    } else {
                        // A ping is not a reply: when the queue is full the client is busy
                        // enough, and the write timeout watches it.
                        if now >= next_ping {
                            let _ = self.out.try_send(Outbound::ping());
                            next_ping = now + ping_interval;
                        }
                        Ok(())
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// The attempt's deadline passed: record its expiry and tell the client.
    async fn expire(&mut self) -> Result<(), End> {
        match Box::pin(self.handler.expire()).await {
            Ok(replies) => self.send_all(replies).await,
            Err(e) => {
                let sent = self.send_all(vec![Reply::error(&e)]).await;
                // Try again later rather than spinning on a failing database.
                tokio::time::sleep(Duration::from_secs(1)).await;
                sent
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let incoming = protocol::parse(text);
        self.request_id = incoming.request_id;
        self.state.metrics.message_in(&incoming.kind);
        if let Some(refusal) = self.over_budget() {
            return self.send_all(refusal).await;
        }
        let message = match incoming.message {
            Ok(message) => message,
            Err(e) => return self.send_all(vec![Reply::error(&e)]).await,
        };
        let started = Instant::now();
        let replies = self
            .handler
            .handle(message, self.request_id.as_deref())
            .await;
        self.state
            .metrics
            .command(&incoming.kind, started.elapsed());
        let sent = self.send_result(replies).await;
        if let Some(job) = self.handler.take_chat() {
            self.chats.retain(|chat| !chat.is_finished());
            self.chats.push(tokio::spawn(job.run(self.outbox())));
        }
        if let Some(job) = self.handler.take_feedback() {
            // Not aborted with the socket: the answer is graded and recorded whoever is
            // connected, and shutdown waits for it like for a session.
            self.state
                .sessions
                .spawn(job.run(self.outbox().downgrade()));
        }
        self.spawn_question();
        sent
    }

    /// Runs the next question's generation the handler prepared, if any: like a grading,
    /// not aborted with the socket (it belongs to the stream), and waited for at shutdown.
    fn spawn_question(&mut self) {
        if let Some(job) = self.handler.take_question() {
            self.state
                .sessions
                .spawn(job.run(self.outbox().downgrade()));
        }
    }

    fn outbox(&self) -> Outbox {
        Outbox::new(
            self.out.clone(),
            self.state.clone(),
            self.request_id.clone(),
        )
    }

    async fn on_binary(&mut self) -> Result<(), End> {
        self.request_id = None;
        self.state.metrics.message_in("binary");
        if let Some(refusal) = self.over_budget() {
            return self.send_all(refusal).await;
        }
        self.send_all(vec![Reply::error(&ClientError::new(
            ErrorCode::BadRequest,
            "binary frames are not accepted; send JSON text frames",
        ))])
        .await
    }

    /// `None` when the message may be processed; otherwise the replies to send instead:
    /// one `rate_limited` per budget window, then nothing until the window is over.
    fn over_budget(&mut self) -> Option<Vec<Reply>> {
        let wait = match self.state.rate.check(&self.user_id) {
            Ok(()) => return None,
            Err(wait) => wait,
        };
        let now = Instant::now();
        if self.refused_until.is_some_and(|until| now < until) {
            return Some(Vec::new());
        }
        self.refused_until = Some(now + wait);
        let refusal = ServerMessage::Error {
            code: ErrorCode::RateLimited,
            message: "too many messages; slow down".into(),
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
        };
        Some(vec![Reply::new(refusal, None)])
    }

    /// SESSION_REPLACED, then close 4001. Nothing is recorded for this session any more.
    async fn replaced(&mut self) -> End {
        self.request_id = None;
        let notice = ServerMessage::SessionReplaced {
            message: "this session was replaced by a newer connection".into(),
        };
        let _ = self.send_all(vec![Reply::new(notice, None)]).await;
        End::Close(close::REPLACED, "session replaced")
    }

    fn deadline(&self) -> Option<Instant> {
        let deadline = self.handler.deadline()?;
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        // A few ms past the deadline, so the wall clock agrees it passed when we wake.
        Some(Instant::now() + wait + Duration::from_millis(5))
    }

    async fn send_result(&mut self, replies: Result<Vec<Reply>, ClientError>) -> Result<(), End> {
        match replies {
            Ok(replies) => self.send_all(replies).await,
            Err(e) => self.send_all(vec![Reply::error(&e)]).await,
        }
    }

    /// CONNECTED, then where the user stands. A grading or question generation of the
    /// previous connection holds the rest of the greeting until it is recorded (up to two
    /// model timeouts), so then the stream as recorded so far is loaded and CONNECTED sent
    /// at once, the rest when it is done.
    async fn greet(&mut self) -> Result<Result<(), End>, ClientError> {
        let early = self.handler.greeting_waits();
        if early {
            self.handler.load().await?;
            if let Err(end) = self.send_all(vec![self.handler.connected()]).await {
                return Ok(Err(end));
            }
        }
        let mut replies = self.handler.greet().await?;
        if !early {
            replies.insert(0, self.handler.connected());
        }
        Ok(self.send_all(replies).await)
    }

    /// Queues `replies` in order, waiting for room: while the client does not read, this
    /// session does not read it either. Fails only when the writer is gone.
    async fn send_all(&mut self, replies: Vec<Reply>) -> Result<(), End> {
        // Boxed: the session's loop awaits this, and would otherwise be sized by it.
        Box::pin(self.outbox().send(replies))
            .await
            .map_err(|_| End::Gone)
    }
}

/// A frame over the size limit surfaces as a read error; anything else means the socket
/// is gone. Either way the session ends, so a dead socket can never spin.
fn end_for_error(error: axum::Error) -> End {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close::TOO_BIG, "message too big"),
        _ => {
            tracing::debug!(error = %inner, "socket read failed");
            End::Gone
        }
    }
}
