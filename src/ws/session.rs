//! One WebSocket connection: a disposable view of its user's stream.
//!
//! The session is two tasks joined by a bounded queue: this reader, which turns frames into
//! commands and recorded events into replies, and a writer, which drains the queue into the
//! socket. A client that stops reading fills the queue and is disconnected, so it cannot
//! grow the server's memory. The session keeps no state that is not in the stream: its
//! cached [`UserStream`] is only the latest command's result, used for timers and lookups.
//!
//! The socket is any `Stream + Sink` of axum messages, so tests can drive it with channels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use chrono::Utc;
use domain::{Attempt, DomainError, UserCommand, UserEvent, UserStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use uuid::Uuid;

use super::protocol::{self, ClientMessage, Outgoing, ServerMessage};
use super::registry::Control;
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};
use crate::store::streams::{CommandError, EventMetadata, Outcome, Recorded};

/// Close codes of PROTOCOL section 2.1.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const REPLACED: u16 = 4001;
    pub const IDLE: u16 = 4008;
}

/// What the reader hands the writer.
#[derive(Debug)]
enum Outbound {
    Frame(Message),
    /// Send this close frame, then stop.
    Close(u16, &'static str),
}

/// Why the reader loop ended.
enum End {
    /// The client went away or the socket failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client does not read: drop the connection without a goodbye.
    Overflow,
}

/// Runs one connection of `identity` until it ends; `slot` holds its place under the cap.
pub async fn run<S>(socket: S, state: AppState, identity: Identity, slot: crate::ws::registry::Slot)
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Send
        + 'static,
{
    let session_id = Uuid::new_v4();
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(state.limits.outbound_queue);
    let mut writer = tokio::spawn(write_loop(sink, out_rx));
    state.metrics.connections.inc();

    let registration = state.registry.register(&identity.user_id, session_id);
    if registration.evicted_other {
        state.metrics.evictions.inc();
    }
    let mut session = Session {
        state: state.clone(),
        user_id: identity.user_id.clone(),
        session_id,
        out: out_tx,
        lock: registration.lock,
        view: UserStream::default(),
        request_id: None,
        overflowed: false,
    };
    tracing::info!(user_id = %session.user_id, %session_id, "connected");

    let end = session.serve(stream, registration.control).await;
    state.registry.unregister(&session.user_id, session_id);
    match end {
        End::Close(code, reason) => {
            let _ = session.out.try_send(Outbound::Close(code, reason));
        }
        End::Overflow => writer.abort(),
        End::Gone => {}
    }
    drop(session.out);
    // Give the writer a moment to flush the goodbye; a client that does not read gets none.
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    state.metrics.connections.dec();
    drop(slot);
    tracing::info!(user_id = %identity.user_id, %session_id, "disconnected");
}

async fn write_loop<K>(mut sink: K, mut queue: mpsc::Receiver<Outbound>)
where
    K: Sink<Message, Error = axum::Error> + Unpin,
{
    while let Some(item) = queue.recv().await {
        match item {
            Outbound::Frame(message) => {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
            Outbound::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                break;
            }
        }
    }
    let _ = sink.close().await;
}

struct Session {
    state: AppState,
    user_id: String,
    session_id: Uuid,
    out: mpsc::Sender<Outbound>,
    lock: Arc<tokio::sync::Mutex<()>>,
    /// The user's state after the latest command; a cache, never the source of truth.
    view: UserStream,
    /// The `request_id` of the message being answered.
    request_id: Option<String>,
    overflowed: bool,
}

impl Session {
    async fn serve<R>(
        &mut self,
        mut stream: R,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> End
    where
        R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        if let Err(e) = self.greet().await {
            self.send_error(&e);
            return End::Close(
                close::TRY_AGAIN_LATER,
                "could not load your stream; reconnect",
            );
        }
        let limits = self.state.limits.clone();
        let mut last_seen = Instant::now();
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + limits.ping_interval,
            limits.ping_interval,
        );
        let shutdown = self.state.shutdown.clone();
        loop {
            if self.overflowed {
                return End::Overflow;
            }
            let deadline = self.deadline();
            let idle_at = tokio::time::Instant::from_std(last_seen + limits.idle_timeout);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(close::GOING_AWAY, "server shutting down"),
                signal = control.recv() => match signal {
                    Some(Control::StreamChanged) => self.refresh().await,
                    Some(Control::Evict) | None => {
                        self.send(ServerMessage::SessionReplaced {
                            message: "this session was replaced by a newer connection".into(),
                        }, None);
                        return End::Close(close::REPLACED, "session replaced");
                    }
                },
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return End::Gone,
                        Some(Err(e)) => return end_for_error(e),
                        Some(Ok(Message::Text(text))) => {
                            if text.len() > limits.max_message_bytes {
                                return End::Close(close::TOO_BIG, "message too big");
                            }
                            self.on_text(text.as_str()).await;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.request_id = None;
                            self.state.metrics.message_in("binary");
                            if self.rate_limited() { continue; }
                            self.send_error(&ClientError::new(
                                ErrorCode::BadRequest,
                                "binary frames are not accepted; send JSON text frames",
                            ));
                        }
                        // axum answers pings itself; a pong only proves the client is alive.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                _ = sleep_until(idle_at) => return End::Close(close::IDLE, "idle timeout"),
                _ = ping.tick() => self.queue(Outbound::Frame(Message::Ping(Default::default()))),
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    self.request_id = None;
                    self.expire().await;
                }
            }
        }
    }

    /// CONNECTED, then the attempt in progress (ASSESSMENT_RESUMED and its QUESTION).
    async fn greet(&mut self) -> Result<(), ClientError> {
        let outcome = self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() })
            .await?;
        self.send(
            ServerMessage::Connected {
                connection_id: self.session_id.to_string(),
                user_id: self.user_id.clone(),
                server_time: protocol::rfc3339(Utc::now()),
            },
            None,
        );
        // A deadline that passed while the user was away is reported now.
        self.send_events(&outcome);
        if let Some(attempt) = outcome.state.in_progress() {
            self.send_resumed(attempt);
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) {
        let incoming = protocol::parse(text);
        self.request_id = incoming.request_id;
        self.state.metrics.message_in(&incoming.kind);
        if self.rate_limited() {
            return;
        }
        match incoming.message {
            Err(e) => self.send_error(&e),
            Ok(message) => {
                let started = Instant::now();
                let name = incoming.kind.clone();
                if let Err(e) = self.dispatch(message).await {
                    self.send_error(&e);
                }
                self.state.metrics.command(&name, started.elapsed());
            }
        }
    }

    /// True (and the client told so) when the user is over their message budget.
    fn rate_limited(&mut self) -> bool {
        match self.state.rate.check(&self.user_id) {
            Ok(()) => false,
            Err(wait) => {
                let retry_after_ms = wait.as_millis().max(1) as u64;
                self.state.metrics.error(ErrorCode::RateLimited.as_str());
                self.send(
                    ServerMessage::Error {
                        code: ErrorCode::RateLimited,
                        message: "too many messages; slow down".into(),
                        retry_after_ms: Some(retry_after_ms),
                    },
                    None,
                );
                true
            }
        }
    }

    async fn dispatch(&mut self, message: ClientMessage) -> Result<(), ClientError> {
        match message {
            ClientMessage::Heartbeat => {
                self.send(
                    ServerMessage::Pong {
                        timestamp: protocol::rfc3339(Utc::now()),
                    },
                    None,
                );
                Ok(())
            }
            ClientMessage::StartAssessment { test_id } => self.start(&test_id).await,
            ClientMessage::SubmitAnswer {
                assessment_id,
                question_id,
                answer,
            } => self.submit(assessment_id, question_id, answer).await,
            ClientMessage::GetQuestion { assessment_id } => self.get_question(&assessment_id).await,
            ClientMessage::ChatMessage {
                text,
                assessment_id,
            } => self.chat(text, assessment_id).await,
        }
    }

    async fn start(&mut self, test_id: &str) -> Result<(), ClientError> {
        let test =
            self.state.catalog.latest(test_id).await?.ok_or_else(|| {
                ClientError::new(ErrorCode::NotFound, format!("no test {test_id:?}"))
            })?;
        let mut order: Vec<String> = test.questions.iter().map(|q| q.id.clone()).collect();
        if test.shuffle {
            order.shuffle(&mut rand::rng());
        }
        let outcome = self
            .execute(UserCommand::StartAssessment {
                test,
                assessment_id: Uuid::now_v7().to_string(),
                question_order: order,
                now: Utc::now(),
            })
            .await?;
        if outcome
            .events
            .iter()
            .any(|r| matches!(r.event, UserEvent::AssessmentStarted { .. }))
        {
            self.send_events(&outcome);
        } else if let Some(attempt) = outcome.state.in_progress() {
            self.send_events(&outcome);
            self.send_resumed(attempt);
        }
        Ok(())
    }

    async fn submit(
        &mut self,
        assessment_id: String,
        question_id: String,
        answer: domain::Answer,
    ) -> Result<(), ClientError> {
        // The attempt's test version never changes, so the cached view can name it.
        let (test_id, version) = match self.view.attempt(&assessment_id) {
            Some(a) => (a.test_id.clone(), a.test_version),
            None => {
                self.view = self.state.streams.load(&self.user_id).await?;
                let attempt = self.find_attempt(&assessment_id)?;
                (attempt.test_id.clone(), attempt.test_version)
            }
        };
        let test = self
            .state
            .catalog
            .version(&test_id, version)
            .await?
            .ok_or_else(|| {
                ClientError::internal(&format!(
                    "test {test_id} v{version} is missing from the catalog"
                ))
            })?;
        let result = self
            .execute(UserCommand::SubmitAnswer {
                assessment_id: assessment_id.clone(),
                question_id: question_id.clone(),
                answer,
                test,
                now: Utc::now(),
            })
            .await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(
                e @ ClientError {
                    code: ErrorCode::TimeExpired,
                    ..
                },
            ) => {
                self.send_error(&e);
                if let Some((message, seq)) = self
                    .view
                    .attempt(&assessment_id)
                    .and_then(ServerMessage::completed)
                {
                    self.send(message, Some(seq));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let answered_now = outcome
            .events
            .iter()
            .any(|r| matches!(r.event, UserEvent::AnswerSubmitted { .. }));
        if answered_now {
            self.send_events(&outcome);
            return Ok(());
        }
        let attempt = outcome
            .state
            .attempt(&assessment_id)
            .ok_or_else(|| ClientError::internal(&"attempt vanished after a command"))?;
        match attempt
            .answer_to(&question_id)
            .and_then(|a| a.feedback.as_ref())
        {
            // A retry of a recorded answer: the recorded feedback again, and where things stand.
            Some(feedback) if outcome.events.is_empty() => {
                self.send(
                    ServerMessage::AnswerFeedback {
                        assessment_id: assessment_id.clone(),
                        question_id,
                        correct: feedback.correct,
                        score: feedback.score,
                        max_score: feedback.max_score,
                        feedback: feedback.feedback.clone(),
                    },
                    Some(feedback.seq),
                );
                self.send(
                    ServerMessage::progress(attempt, feedback.seq),
                    Some(feedback.seq),
                );
                self.send_where(attempt);
            }
            // The deadline passed before the answer arrived: the expiry was recorded instead.
            _ => {
                self.send_error(&ClientError::from(DomainError::TimeExpired {
                    assessment_id: assessment_id.clone(),
                }));
                self.send_events(&outcome);
            }
        }
        Ok(())
    }

    async fn get_question(&mut self, assessment_id: &str) -> Result<(), ClientError> {
        let outcome = self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() })
            .await?;
        let attempt = self.find_attempt(assessment_id)?.clone();
        if outcome.events.is_empty() {
            self.send_where(&attempt);
        } else {
            self.send_events(&outcome);
        }
        Ok(())
    }

    async fn chat(
        &mut self,
        text: String,
        assessment_id: Option<String>,
    ) -> Result<(), ClientError> {
        let question = match &assessment_id {
            Some(id) => self.find_attempt(id)?.current_question.clone(),
            None => self
                .view
                .in_progress()
                .and_then(|a| a.current_question.clone()),
        };
        // Refuse bad input before asking the tutor (which may be a paid AI call).
        if text.trim().is_empty() || text.chars().count() > domain::aggregate::MAX_CHAT_CHARS {
            return Err(DomainError::InvalidChat(format!(
                "text must be 1 to {} characters",
                domain::aggregate::MAX_CHAT_CHARS
            ))
            .into());
        }
        let tutor = self.state.tutor.clone();
        let reply = tutor
            .reply(question.as_ref().map(|(q, _)| q), &text)
            .await
            .map_err(|e| ClientError::new(ErrorCode::AiUnavailable, e.to_string()))?;
        let outcome = self
            .execute(UserCommand::Chat {
                assessment_id,
                text,
                reply,
                tutor: tutor.name().to_string(),
                now: Utc::now(),
            })
            .await?;
        self.send_events(&outcome);
        Ok(())
    }

    /// The deadline of the attempt in progress passed: record and report its completion.
    async fn expire(&mut self) {
        match self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() })
            .await
        {
            Ok(outcome) => self.send_events(&outcome),
            Err(e) => {
                self.send_error(&e);
                // Try again later rather than spinning on a failing database.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Someone else changed the stream (an admin ended an attempt): report what is new.
    async fn refresh(&mut self) {
        self.request_id = None;
        let before = self.view.clone();
        match self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() })
            .await
        {
            Ok(outcome) => {
                self.send_events(&outcome);
                for attempt in &outcome.state.attempts {
                    let was_open = before
                        .attempt(&attempt.assessment_id)
                        .is_some_and(Attempt::is_in_progress);
                    if was_open && !attempt.is_in_progress() {
                        if let Some((message, seq)) = ServerMessage::completed(attempt) {
                            if !outcome.events.iter().any(|r| r.sequence == seq) {
                                self.send(message, Some(seq));
                            }
                        }
                    }
                }
            }
            Err(e) => self.send_error(&e),
        }
    }

    /// Runs a command on the user's stream, one at a time per user.
    async fn execute(&mut self, command: UserCommand) -> Result<Outcome, ClientError> {
        let metadata = EventMetadata {
            connection_id: Some(self.session_id.to_string()),
            request_id: self.request_id.clone(),
            node_id: self.state.node_id.clone(),
            actor: format!("user:{}", self.user_id),
        };
        let _turn = self.lock.lock().await;
        let result = self
            .state
            .streams
            .execute(&self.user_id, command, &metadata)
            .await;
        match result {
            Ok(outcome) => {
                self.view = outcome.state.clone();
                Ok(outcome)
            }
            Err(CommandError::Rule(e)) => {
                // The refusal may be due to a stale view (e.g. an expiry); refresh it.
                if let Ok(state) = self.state.streams.load(&self.user_id).await {
                    self.view = state;
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn find_attempt(&self, assessment_id: &str) -> Result<&Attempt, ClientError> {
        self.view.attempt(assessment_id).ok_or_else(|| {
            if self.view.in_progress().is_none() {
                ClientError::new(
                    ErrorCode::NoActiveAssessment,
                    "you have no assessment in progress",
                )
            } else {
                ClientError::new(
                    ErrorCode::NotFound,
                    format!("no assessment {assessment_id:?}"),
                )
            }
        })
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        let deadline = self.view.in_progress()?.deadline?;
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        // A few ms past the deadline, so the wall clock agrees it passed when we wake.
        Some(tokio::time::Instant::now() + wait + Duration::from_millis(5))
    }

    fn send_resumed(&mut self, attempt: &Attempt) {
        self.send(ServerMessage::resumed(attempt), Some(attempt.started_seq));
        if let Some((question, seq)) = &attempt.current_question {
            self.send(ServerMessage::question(attempt, question), Some(*seq));
        }
    }

    /// Where an attempt stands: its current QUESTION, or its ASSESSMENT_COMPLETED.
    fn send_where(&mut self, attempt: &Attempt) {
        if let Some((question, seq)) = &attempt.current_question {
            self.send(ServerMessage::question(attempt, question), Some(*seq));
        } else if let Some((message, seq)) = ServerMessage::completed(attempt) {
            self.send(message, Some(seq));
        }
    }

    /// The messages that report a command's new events, in order.
    fn send_events(&mut self, outcome: &Outcome) {
        for Recorded { sequence, event } in &outcome.events {
            let seq = Some(*sequence);
            let attempt = event
                .assessment_id()
                .and_then(|id| outcome.state.attempt(id));
            match (event, attempt) {
                (UserEvent::AssessmentStarted { .. }, Some(a)) => self.send(
                    ServerMessage::AssessmentStarted(ServerMessage::info(a)),
                    seq,
                ),
                (UserEvent::QuestionPresented { question, .. }, Some(a)) => {
                    self.send(ServerMessage::question(a, question), seq)
                }
                (
                    UserEvent::FeedbackGiven {
                        assessment_id,
                        question_id,
                        correct,
                        score,
                        max_score,
                        feedback,
                        ..
                    },
                    Some(a),
                ) => {
                    self.send(
                        ServerMessage::AnswerFeedback {
                            assessment_id: assessment_id.clone(),
                            question_id: question_id.clone(),
                            correct: *correct,
                            score: *score,
                            max_score: *max_score,
                            feedback: feedback.clone(),
                        },
                        seq,
                    );
                    self.send(ServerMessage::progress(a, *sequence), seq);
                }
                (UserEvent::AssessmentCompleted { .. }, Some(a)) => {
                    if let Some((message, _)) = ServerMessage::completed(a) {
                        self.send(message, seq);
                    }
                }
                (
                    UserEvent::ChatExchanged {
                        reply_text,
                        assessment_id,
                        ..
                    },
                    _,
                ) => self.send(
                    ServerMessage::SystemMessage {
                        text: reply_text.clone(),
                        assessment_id: assessment_id.clone(),
                    },
                    seq,
                ),
                // AnswerSubmitted is reported by the feedback that follows it.
                _ => {}
            }
        }
    }

    fn send_error(&mut self, error: &ClientError) {
        self.state.metrics.error(error.code.as_str());
        self.send(ServerMessage::error(error), None);
    }

    fn send(&mut self, message: ServerMessage, seq: Option<usize>) {
        let frame = Outgoing {
            message: &message,
            seq,
            request_id: self.request_id.as_deref(),
        };
        match serde_json::to_string(&frame) {
            Ok(text) => {
                self.state.metrics.message_out(message.kind());
                self.queue(Outbound::Frame(Message::Text(text.into())));
            }
            Err(e) => tracing::error!(error = %e, "failed to encode a server message"),
        }
    }

    fn queue(&mut self, item: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.out.try_send(item) {
            if !self.overflowed {
                tracing::warn!(user_id = %self.user_id, "client is not reading; disconnecting it");
            }
            self.overflowed = true;
        }
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

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}
