//! What each client message does: build the command (the time, the test version, a random
//! question order and the tutor's reply are decided here, outside the domain), run it
//! through the one command path, and turn the outcome into replies. No socket in sight:
//! the session queues whatever is returned, and starts the [`ChatJob`] an AI tutor reply
//! needs, the [`FeedbackJob`] a model's grade of a free-text answer needs, or the
//! [`QuestionJob`] that presents the next question of an adaptive test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::{
    AiGrading, AiVerdict, Attempt, DomainError, Outcome, QuestionKind, TestDefinition, UserCommand,
    UserStream,
};
use rand::seq::SliceRandom;
use uuid::Uuid;

use super::changes;
use super::chat::ChatJob;
use super::feedback::{self, FeedbackJob};
use super::protocol::{self, ClientMessage, ServerMessage};
use super::question::{self, QuestionJob};
use super::replies::{self, Reply};
use crate::commands::{self, CommandError, Origin};
use crate::error::{ClientError, ErrorCode};
use crate::state::AppState;
use crate::store::streams::Committed;

/// What `submit` does with an answer.
enum Graded {
    /// A model's grading was started; its task reports the outcome.
    Started,
    /// Run this command now.
    Offline(Box<UserCommand>),
}

/// One session's side of its user's stream.
pub struct Handler {
    state: AppState,
    user_id: String,
    session_id: Uuid,
    /// The user's state after the latest command; a cache, never the source of truth.
    view: UserStream,
    // The jobs are boxed: a handler lives inside its session's task for as long as the
    // socket is open, and the three jobs inline measured 1,056 of its 1,176 bytes, paid by
    // every idle socket for a job that exists only between a message and its reply.
    /// An AI tutor reply to start, set by `chat` for the session to run.
    chat_job: Option<Box<ChatJob>>,
    /// A model's grading to start, set by `submit` for the session to run.
    feedback_job: Option<Box<FeedbackJob>>,
    /// The next question of an adaptive attempt to generate, set for the session to run.
    question_job: Option<Box<QuestionJob>>,
    /// Set by a grading once it recorded: `view` is behind the stream.
    stale: Arc<AtomicBool>,
    /// The stream's sequence up to which admins' changes (extra time, regrades) were
    /// reported to this client: the greeting shows everything before it.
    admin_seen: usize,
}

impl Handler {
    pub fn new(state: AppState, user_id: String, session_id: Uuid) -> Self {
        Self {
            state,
            user_id,
            session_id,
            view: UserStream::default(),
            chat_job: None,
            feedback_job: None,
            question_job: None,
            stale: Arc::default(),
            admin_seen: 0,
        }
    }

    /// The generation of an adaptive attempt's next question the last message (or the
    /// greeting) asked for, if any: the session runs it in a task that outlives the socket.
    pub fn take_question(&mut self) -> Option<QuestionJob> {
        self.question_job.take().map(|job| *job)
    }

    /// [`Self::prepare_question`] after a command that was recorded: a failure here must not
    /// turn its replies into an error (the answer is recorded), so it is logged, and the
    /// next greeting, `START_ASSESSMENT` or `GET_QUESTION` tries again.
    async fn then_next_question(&mut self, request_id: Option<&str>) {
        if let Err(e) = self.prepare_question(request_id).await {
            tracing::error!(user_id = %self.user_id, error = %e.message, "the next question could not be prepared");
        }
    }

    /// Prepares the next question's generation when the attempt in progress waits for one
    /// (an adaptive attempt just started or answered, or one whose generation was cut off
    /// by a restart). Takes the user's turn first and decides on the stream as recorded,
    /// so a generation still running for an older connection is waited for, not repeated.
    async fn prepare_question(&mut self, request_id: Option<&str>) -> Result<(), ClientError> {
        if self.question_job.is_some()
            || !self
                .view
                .in_progress()
                .is_some_and(Attempt::awaits_question)
        {
            return Ok(());
        }
        let (job, view) = question::prepare(
            &self.state,
            &self.user_id,
            self.session_id,
            request_id,
            &self.stale,
        )
        .await?;
        self.view = view;
        self.question_job = job.map(Box::new);
        Ok(())
    }

    /// The model's grading the last message asked for, if any: the session runs it in a
    /// task that outlives the socket.
    pub fn take_feedback(&mut self) -> Option<FeedbackJob> {
        self.feedback_job.take().map(|job| *job)
    }

    /// The AI tutor reply the last message asked for, if any: the session runs it in a
    /// task of its own.
    pub fn take_chat(&mut self) -> Option<ChatJob> {
        self.chat_job.take().map(|job| *job)
    }

    /// Whether the greeting must wait for a grading or generation still in flight.
    pub fn greeting_waits(&self) -> bool {
        self.state.ai.gradings.is_grading(&self.user_id)
    }

    /// Reads the stream as recorded so far.
    pub async fn load(&mut self) -> Result<(), ClientError> {
        self.view = self.state.streams.load(&self.user_id).await?;
        Ok(())
    }

    /// CONNECTED, said once the stream is loaded.
    pub fn connected(&self) -> Reply {
        Reply::new(
            ServerMessage::Connected {
                connection_id: self.session_id.to_string(),
                user_id: self.user_id.clone(),
                server_time: protocol::rfc3339(Utc::now()),
            },
            None,
        )
    }

    /// What follows CONNECTED: any expiry that happened while the user was away, then the
    /// attempt in progress (ASSESSMENT_RESUMED and its QUESTION). Waits for a grading or
    /// question generation still in flight, so it resumes where that left the attempt.
    pub async fn greet(&mut self) -> Result<Vec<Reply>, ClientError> {
        let committed = self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() }, None)
            .await?;
        let mut out = replies::for_events(&committed);
        if let Some(attempt) = committed.state.in_progress() {
            out.extend(replies::resumed(attempt));
        }
        self.admin_seen = committed.state.sequence;
        self.then_next_question(None).await;
        Ok(out)
    }

    /// The replies to one client message.
    pub async fn handle(
        &mut self,
        message: ClientMessage,
        request_id: Option<&str>,
    ) -> Result<Vec<Reply>, ClientError> {
        if self.stale.swap(false, Ordering::AcqRel) {
            self.view = self.state.streams.load(&self.user_id).await?;
        }
        match message {
            ClientMessage::Heartbeat => Ok(vec![Reply::new(
                ServerMessage::Pong {
                    timestamp: protocol::rfc3339(Utc::now()),
                },
                None,
            )]),
            ClientMessage::StartAssessment { test_id } => self.start(&test_id, request_id).await,
            ClientMessage::SubmitAnswer {
                assessment_id,
                question_id,
                answer,
            } => {
                self.submit(assessment_id, question_id, answer, request_id)
                    .await
            }
            ClientMessage::GetQuestion { assessment_id } => {
                self.get_question(&assessment_id, request_id).await
            }
            ClientMessage::ChatMessage {
                text,
                assessment_id,
            } => self.chat(text, assessment_id, request_id).await,
        }
    }

    /// When the deadline of the attempt in progress falls, if it has one.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.view.in_progress()?.deadline
    }

    /// The deadline passed: record and report the completion.
    pub async fn expire(&mut self) -> Result<Vec<Reply>, ClientError> {
        let committed = self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() }, None)
            .await?;
        Ok(replies::for_events(&committed))
    }

    /// Someone else changed the stream (an admin ended an attempt, gave extra time or
    /// regraded an answer): report what is new.
    pub async fn refresh(&mut self) -> Result<Vec<Reply>, ClientError> {
        let before = self.view.clone();
        let committed = self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() }, None)
            .await?;
        let mut out = replies::for_events(&committed);
        out.extend(replies::newly_completed(&before, &committed.state));
        // Extra time and regrades; the deadline timer follows the view by itself.
        out.extend(changes::since(&committed.state, self.admin_seen));
        self.admin_seen = committed.state.sequence;
        Ok(replies::once_per_event(out))
    }

    async fn start(
        &mut self,
        test_id: &str,
        request_id: Option<&str>,
    ) -> Result<Vec<Reply>, ClientError> {
        let test =
            self.state.catalog.latest(test_id).await?.ok_or_else(|| {
                ClientError::new(ErrorCode::NotFound, format!("no test {test_id:?}"))
            })?;
        let mut order: Vec<String> = test.questions.iter().map(|q| q.id.clone()).collect();
        if test.shuffle {
            order.shuffle(&mut rand::rng());
        }
        let command = UserCommand::StartAssessment {
            test,
            assessment_id: Uuid::now_v7().to_string(),
            question_order: order,
            now: Utc::now(),
        };
        let committed = self.execute(command, request_id).await?;
        self.then_next_question(request_id).await;
        Ok(replies::for_outcome(&committed))
    }

    async fn submit(
        &mut self,
        assessment_id: String,
        question_id: String,
        answer: domain::Answer,
        request_id: Option<&str>,
    ) -> Result<Vec<Reply>, ClientError> {
        // The attempt's test version never changes, so the cached view can name it.
        if self.view.attempt(&assessment_id).is_none() {
            self.view = self.state.streams.load(&self.user_id).await?;
        }
        let attempt = self.find_attempt(&assessment_id)?;
        let (test_id, version) = (attempt.test_id.clone(), attempt.test_version);
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
        let command = UserCommand::SubmitAnswer {
            assessment_id: assessment_id.clone(),
            question_id,
            answer,
            test: test.clone(),
            grading: None,
            now: Utc::now(),
        };
        let command = match self.ai_grading(command, &test, request_id).await? {
            Graded::Started => return Ok(Vec::new()),
            Graded::Offline(command) => *command,
        };
        match self.execute(command, request_id).await {
            Ok(committed) => {
                self.then_next_question(request_id).await;
                Ok(replies::for_outcome(&committed))
            }
            // Expired earlier: say so, and how the attempt ended.
            Err(e) if e.code == ErrorCode::TimeExpired => {
                let mut out = vec![Reply::error(&e)];
                if let Some(attempt) = self.view.attempt(&assessment_id) {
                    out.extend(replies::where_it_stands(attempt));
                }
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts a model's grading when `command` answers a free-text question of a test with
    /// an AI provider and would be recorded; otherwise gives the command back to be run
    /// as it is (graded offline, or answered from the record, or refused).
    async fn ai_grading(
        &mut self,
        command: UserCommand,
        test: &Arc<TestDefinition>,
        request_id: Option<&str>,
    ) -> Result<Graded, ClientError> {
        let UserCommand::SubmitAnswer {
            assessment_id,
            question_id,
            answer,
            now,
            ..
        } = &command
        else {
            return Ok(Graded::Offline(Box::new(command)));
        };
        // The definition the domain grades with: in an adaptive test, a generated
        // question's recorded key (the view is fresh: `handle` reloads a stale one).
        let Some(question) = self
            .view
            .attempt(assessment_id)
            .and_then(|a| a.question_to_grade(test, question_id))
            .filter(|q| q.kind == QuestionKind::FreeText)
        else {
            return Ok(Graded::Offline(Box::new(command)));
        };
        let profile = test.ai.as_ref().and_then(|ai| ai.profile.as_deref());
        let Some(provider) = self.state.ai.provider(profile) else {
            return Ok(Graded::Offline(Box::new(command)));
        };
        // Wait for any grading of this user still in flight (say, of an older
        // connection), then decide on the stream as recorded: only an answer that would be
        // recorded is worth a model call.
        let turn = self.state.ai.gradings.begin(&self.user_id).await;
        let stream = self.state.streams.load(&self.user_id).await?;
        let would_record = matches!(
            stream.decide(command.clone()),
            Ok(domain::Decision {
                outcome: Outcome::Answered { .. },
                ..
            })
        );
        self.view = stream;
        if !would_record {
            drop(turn);
            return Ok(Graded::Offline(Box::new(command)));
        }
        let permit = match self.state.ai.try_acquire(&self.user_id) {
            Ok(permit) => permit,
            Err(busy) => {
                // Never block an answer on a cap: grade it offline, and say why.
                tracing::info!(user_id = %self.user_id, error = %busy, "no slot for the AI grader; grading offline");
                self.state.metrics.ai_call(
                    provider.profile(),
                    feedback::TASK,
                    "refused",
                    None,
                    None,
                );
                self.state
                    .metrics
                    .ai_fallback(provider.profile(), feedback::TASK);
                drop(turn);
                let grading = AiGrading {
                    provider_profile: provider.profile().to_string(),
                    model: provider.model().to_string(),
                    usage: None,
                    verdict: AiVerdict::Fallback {
                        reason: "busy".into(),
                    },
                };
                let mut command = command;
                if let UserCommand::SubmitAnswer { grading: g, .. } = &mut command {
                    *g = Some(grading);
                }
                return Ok(Graded::Offline(Box::new(command)));
            }
        };
        self.feedback_job = Some(Box::new(FeedbackJob {
            state: self.state.clone(),
            user_id: self.user_id.clone(),
            session_id: self.session_id,
            request_id: request_id.map(str::to_string),
            provider,
            permit,
            turn,
            assessment_id: assessment_id.clone(),
            question,
            answer: answer.clone(),
            test: test.clone(),
            now: *now,
            stale: self.stale.clone(),
        }));
        Ok(Graded::Started)
    }

    async fn get_question(
        &mut self,
        assessment_id: &str,
        request_id: Option<&str>,
    ) -> Result<Vec<Reply>, ClientError> {
        let committed = self
            .execute(UserCommand::ExpireOverdue { now: Utc::now() }, request_id)
            .await?;
        let attempt = self.find_attempt(assessment_id)?;
        let mut out = replies::for_events(&committed);
        out.extend(replies::where_it_stands(attempt));
        // An adaptive attempt whose generation was cut off (a restart) gets it again.
        self.then_next_question(request_id).await;
        Ok(replies::once_per_event(out))
    }

    async fn chat(
        &mut self,
        text: String,
        assessment_id: Option<String>,
        request_id: Option<&str>,
    ) -> Result<Vec<Reply>, ClientError> {
        // The attempt the user is looking at, named or not, so the record says what the
        // tutor was asked about.
        let assessment_id = match assessment_id {
            Some(id) => Some(self.find_attempt(&id)?.assessment_id.clone()),
            None => self.view.in_progress().map(|a| a.assessment_id.clone()),
        };
        let question = assessment_id
            .as_deref()
            .and_then(|id| self.view.attempt(id))
            .and_then(|a| a.current_question.clone());
        // Refuse bad input before asking the tutor (which may be a paid AI call).
        if text.trim().is_empty() || text.chars().count() > domain::aggregate::MAX_CHAT_CHARS {
            return Err(DomainError::InvalidChat(format!(
                "text must be 1 to {} characters",
                domain::aggregate::MAX_CHAT_CHARS
            ))
            .into());
        }
        // The test in progress names its AI profile and holds the question's key.
        let test = match assessment_id
            .as_deref()
            .and_then(|id| self.view.attempt(id))
        {
            Some(attempt) => {
                let (test_id, version) = (attempt.test_id.clone(), attempt.test_version);
                self.state.catalog.version(&test_id, version).await?
            }
            None => None,
        };
        let profile = test
            .as_ref()
            .and_then(|t| t.ai.as_ref())
            .and_then(|ai| ai.profile.as_deref());
        if let Some(provider) = self.state.ai.provider(profile) {
            let permit = self.state.ai.try_acquire(&self.user_id).map_err(|busy| {
                self.state
                    .metrics
                    .ai_call(provider.profile(), "chat", "refused", None, None);
                ClientError::from(busy)
            })?;
            // A generated question's key is the attempt's, recorded with it.
            let generated = assessment_id
                .as_deref()
                .and_then(|id| self.view.attempt(id))
                .map(|a| a.generated.as_slice())
                .unwrap_or_default();
            let key = question.as_ref().and_then(|(q, _)| {
                generated
                    .iter()
                    .find(|g| g.id == q.question_id)
                    .or_else(|| test.as_ref().and_then(|t| t.question(&q.question_id)))
                    .map(crate::ai::guard::AnswerKey::of)
            });
            self.chat_job = Some(Box::new(ChatJob {
                state: self.state.clone(),
                user_id: self.user_id.clone(),
                session_id: self.session_id,
                request_id: request_id.map(str::to_string),
                provider,
                permit,
                assessment_id,
                question: question.map(|(q, _)| q),
                key,
                text,
            }));
            return Ok(Vec::new());
        }
        let tutor = self.state.tutor.clone();
        let reply = tutor
            .reply(question.as_ref().map(|(q, _)| q), &text)
            .await
            .map_err(|e| ClientError::new(ErrorCode::AiUnavailable, e.to_string()))?;
        let command = UserCommand::Chat {
            assessment_id,
            text,
            reply,
            tutor: tutor.name().to_string(),
            ai: None,
            now: Utc::now(),
        };
        let committed = self.execute(command, request_id).await?;
        Ok(replies::for_outcome(&committed))
    }

    /// Runs a command through the one command path and keeps the state it leads to.
    async fn execute(
        &mut self,
        command: UserCommand,
        request_id: Option<&str>,
    ) -> Result<Committed, ClientError> {
        let origin = Origin::Session {
            session_id: self.session_id,
            request_id: request_id.map(str::to_string),
        };
        match commands::execute(&self.state, &self.user_id, command, &origin).await {
            Ok(committed) => {
                self.view = committed.state.clone();
                Ok(committed)
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
}
