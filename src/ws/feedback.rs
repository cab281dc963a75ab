//! A model grading one free-text answer, in a task of its own that outlives the socket,
//! then the answer and its grade recorded in one command.
//!
//! `AGENT_STARTED {task: "feedback"}`, then `AGENT_THINKING` while the model writes (the
//! reply is a JSON object, so the deltas are progress marks, not its text: `grading…`
//! once, then `.` at most once a second), then `AGENT_COMPLETED`, then the recorded
//! `ANSWER_FEEDBACK` and what follows it, exactly as for an offline grade; in an adaptive
//! attempt that is the next question's generation, run on in the same task.
//!
//! Nothing is recorded before the grade: `AnswerSubmitted` and `FeedbackGiven` are one
//! command, decided with the time the answer arrived (so an answer that arrived before the
//! deadline counts however long the model takes). The [`GradingTurn`] keeps every other
//! command of the user waiting until that command is recorded, so a reconnect, a re-sent
//! answer or the deadline timer sees it and no second feedback can be produced. A timeout,
//! a failed call or a reply that is unusable twice is graded by the offline grader and
//! recorded as a fallback: an AI outage never loses or blocks an answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::test_definition::QuestionDefinition;
use domain::{AiGrading, AiVerdict, Answer, TestDefinition, UserCommand};
use uuid::Uuid;

use super::agent::{agent, ask_json, send};
use super::outbox::WeakOutbox;
use super::protocol::{AgentTask, ServerMessage};
use super::question;
use super::replies::{self, Reply};
use crate::ai::grader;
use crate::ai::inflight::GradingTurn;
use crate::ai::{AiProvider, Permit};
use crate::commands::{self, Origin};
use crate::state::AppState;

/// The task label of `/metrics` for grading.
pub const TASK: &str = "feedback";

/// Everything one grading needs, gathered by the handler before the task starts.
pub struct FeedbackJob {
    pub state: AppState,
    pub user_id: String,
    pub session_id: Uuid,
    pub request_id: Option<String>,
    pub provider: Arc<dyn AiProvider>,
    /// The user's and the node's slot for the model call.
    pub permit: Permit,
    /// Held until the grade is recorded: the user's other commands wait for it.
    pub turn: GradingTurn,
    pub assessment_id: String,
    pub question: QuestionDefinition,
    pub answer: Answer,
    pub test: Arc<TestDefinition>,
    /// When the answer arrived.
    pub now: DateTime<Utc>,
    /// Set once the grade is recorded: the session's cached view is behind.
    pub stale: Arc<AtomicBool>,
}

impl FeedbackJob {
    /// Grades and records. The client may be gone at any point: then nothing more is sent,
    /// but the answer is still graded and recorded.
    pub async fn run(self, outbox: WeakOutbox) {
        let mut client = Some(outbox);
        send(
            &mut client,
            vec![agent(ServerMessage::AgentStarted {
                task: AgentTask::Feedback,
            })],
        )
        .await;
        let grading = self.grade(&mut client).await;
        send(
            &mut client,
            vec![agent(ServerMessage::AgentCompleted {
                task: AgentTask::Feedback,
            })],
        )
        .await;

        let command = UserCommand::SubmitAnswer {
            assessment_id: self.assessment_id.clone(),
            question_id: self.question.id.clone(),
            answer: self.answer.clone(),
            test: self.test.clone(),
            grading: Some(grading),
            now: self.now,
        };
        let origin = Origin::Graded {
            session_id: self.session_id,
            request_id: self.request_id.clone(),
        };
        let result = commands::execute(&self.state, &self.user_id, command, &origin).await;
        self.stale.store(true, Ordering::Release);
        // Recorded (or refused): the user's other commands may go on.
        drop(self.turn);
        drop(self.permit);
        let (replies, awaits_question) = match result {
            Ok(committed) => (
                replies::for_outcome(&committed),
                committed
                    .state
                    .in_progress()
                    .is_some_and(|a| a.awaits_question()),
            ),
            Err(e) => {
                tracing::error!(user_id = %self.user_id, error = %e, "a graded answer could not be recorded");
                (vec![Reply::error(&e.into())], false)
            }
        };
        send(&mut client, replies).await;
        // An adaptive attempt goes on with its next question, as after an answer graded
        // offline. With the client gone, its next connection's greeting asks for it.
        let (true, Some(outbox)) = (awaits_question, client) else {
            return;
        };
        let prepared = question::prepare(
            &self.state,
            &self.user_id,
            self.session_id,
            self.request_id.as_deref(),
            &self.stale,
        )
        .await;
        match prepared {
            Ok((Some(job), _)) => job.run(outbox).await,
            Ok((None, _)) => {}
            Err(e) => {
                tracing::error!(user_id = %self.user_id, error = %e.message, "the next question could not be prepared");
            }
        }
    }

    /// Asks the model, once more if its reply is unusable; what to record either way.
    async fn grade(&self, client: &mut Option<WeakOutbox>) -> AiGrading {
        let profile = self.provider.profile().to_string();
        let system = grader::prompt(&self.question);
        let user = match &self.answer {
            Answer::Text(text) => text.clone(),
            Answer::Choices(ids) => ids.join(", "),
        };
        let (read, usage) = ask_json(
            &self.state,
            &*self.provider,
            &self.user_id,
            (&system, &user, &grader::schema()),
            (AgentTask::Feedback, TASK, "grading…"),
            client,
            grader::parse,
        )
        .await;
        let verdict = match read {
            Ok(v) => AiVerdict::Graded {
                score: v.score,
                feedback: v.feedback,
            },
            Err(reason) => AiVerdict::Fallback { reason },
        };
        AiGrading {
            provider_profile: profile,
            model: self.provider.model().to_string(),
            usage,
            verdict,
        }
    }
}
