//! The wire format: client messages parsed strictly enough to name what is wrong, server
//! messages built from the recorded events and the state they lead to.

use chrono::{DateTime, SecondsFormat, Utc};
use domain::{
    Answer, Attempt, AttemptStatus, CompletionReason, PresentedChoice, PresentedQuestion,
    QuestionKind,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ClientError, ErrorCode};

/// Longest `request_id` accepted (PROTOCOL section 2).
pub const MAX_REQUEST_ID_LEN: usize = 128;

const CLIENT_TYPES: [&str; 5] = [
    "START_ASSESSMENT",
    "SUBMIT_ANSWER",
    "GET_QUESTION",
    "CHAT_MESSAGE",
    "HEARTBEAT",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientMessage {
    StartAssessment {
        test_id: String,
    },
    SubmitAnswer {
        assessment_id: String,
        question_id: String,
        answer: Answer,
    },
    GetQuestion {
        assessment_id: String,
    },
    ChatMessage {
        text: String,
        #[serde(default)]
        assessment_id: Option<String>,
    },
    Heartbeat,
}

/// A parsed text frame: the `request_id` to echo (when there is one) and the message or
/// what was wrong with it. `kind` is the message type for metrics (`invalid` if none).
#[derive(Debug)]
pub struct Incoming {
    pub request_id: Option<String>,
    pub kind: String,
    pub message: Result<ClientMessage, ClientError>,
}

pub fn parse(text: &str) -> Incoming {
    let bad = |message: String| ClientError::new(ErrorCode::BadRequest, message);
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Incoming {
                request_id: None,
                kind: "invalid".into(),
                message: Err(bad(format!("not valid JSON: {e}"))),
            }
        }
    };
    let Value::Object(object) = &value else {
        return Incoming {
            request_id: None,
            kind: "invalid".into(),
            message: Err(bad("a message must be a JSON object".into())),
        };
    };
    let request_id = match object.get("request_id") {
        Some(Value::String(id)) => Some(id.clone()),
        _ => None,
    };
    let fail = |kind: &str, error: ClientError| Incoming {
        request_id: request_id.clone(),
        kind: kind.to_string(),
        message: Err(error),
    };
    match object.get("request_id") {
        None | Some(Value::String(_)) => {}
        Some(_) => return fail("invalid", bad("request_id must be a string".into())),
    }
    if request_id
        .as_ref()
        .is_some_and(|id| id.chars().count() > MAX_REQUEST_ID_LEN)
    {
        return fail(
            "invalid",
            bad(format!(
                "request_id is longer than {MAX_REQUEST_ID_LEN} characters"
            )),
        );
    }
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return fail("invalid", bad("type must be a string".into())),
        None => return fail("invalid", bad("missing field `type`".into())),
    };
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        return fail(
            "unknown",
            ClientError::new(
                ErrorCode::UnknownType,
                format!("unknown message type {kind:?}"),
            ),
        );
    }
    match serde_json::from_value::<ClientMessage>(value) {
        Ok(message) => Incoming {
            request_id,
            kind,
            message: Ok(message),
        },
        Err(e) => {
            let kind_label = kind.clone();
            fail(&kind_label, bad(format!("{kind}: {e}")))
        }
    }
}

/// What the server sends. `seq` (the event's position in the user's stream) and the echoed
/// `request_id` are added by [`Outgoing`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMessage {
    Connected {
        connection_id: String,
        user_id: String,
        server_time: String,
    },
    AssessmentStarted(AssessmentInfo),
    AssessmentResumed {
        #[serde(flatten)]
        info: AssessmentInfo,
        answered: u32,
        score: f64,
        max_score: f64,
    },
    Question {
        assessment_id: String,
        question_id: String,
        position: u32,
        total_questions: u32,
        kind: QuestionKind,
        prompt: String,
        choices: Vec<PresentedChoice>,
        points: f64,
    },
    AnswerFeedback {
        assessment_id: String,
        question_id: String,
        correct: bool,
        score: f64,
        max_score: f64,
        feedback: String,
    },
    ProgressUpdate {
        assessment_id: String,
        answered: u32,
        total_questions: u32,
        score: f64,
        max_score: f64,
    },
    AssessmentCompleted {
        assessment_id: String,
        test_id: String,
        score: f64,
        max_score: f64,
        passed: bool,
        reason: CompletionReason,
        completed_at: String,
    },
    SystemMessage {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        assessment_id: Option<String>,
    },
    /// Slow AI work began; `AGENT_THINKING` deltas follow, then `AGENT_COMPLETED`.
    AgentStarted {
        task: AgentTask,
    },
    /// The next piece of the text being written, to append to what came before.
    AgentThinking {
        task: AgentTask,
        delta: String,
    },
    /// No more deltas; the recorded result (or an `ERROR`) follows.
    AgentCompleted {
        task: AgentTask,
    },
    Pong {
        timestamp: String,
    },
    /// An admin moved the attempt's deadline (PROTOCOL section 6).
    DeadlineChanged {
        assessment_id: String,
        deadline: String,
        extra_secs: u32,
    },
    /// A regrade changed an answer's score: the attempt's new totals.
    ScoreChanged {
        assessment_id: String,
        question_id: String,
        score: f64,
        max_score: f64,
        passed: bool,
    },
    SessionReplaced {
        message: String,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// What slow AI work an `AGENT_*` message is about (PROTOCOL section 2.3): the tutor's
/// chat reply, a model grading a free-text answer, or a model writing the next question of
/// an adaptive test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentTask {
    Chat,
    Feedback,
    Question,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssessmentInfo {
    pub assessment_id: String,
    pub test_id: String,
    pub title: String,
    pub attempt: u32,
    pub total_questions: u32,
    pub time_limit_secs: Option<u32>,
    pub deadline: Option<String>,
}

impl ServerMessage {
    /// The `type` string, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Connected { .. } => "CONNECTED",
            ServerMessage::AssessmentStarted(_) => "ASSESSMENT_STARTED",
            ServerMessage::AssessmentResumed { .. } => "ASSESSMENT_RESUMED",
            ServerMessage::Question { .. } => "QUESTION",
            ServerMessage::AnswerFeedback { .. } => "ANSWER_FEEDBACK",
            ServerMessage::ProgressUpdate { .. } => "PROGRESS_UPDATE",
            ServerMessage::AssessmentCompleted { .. } => "ASSESSMENT_COMPLETED",
            ServerMessage::SystemMessage { .. } => "SYSTEM_MESSAGE",
            ServerMessage::AgentStarted { .. } => "AGENT_STARTED",
            ServerMessage::AgentThinking { .. } => "AGENT_THINKING",
            ServerMessage::AgentCompleted { .. } => "AGENT_COMPLETED",
            ServerMessage::Pong { .. } => "PONG",
            ServerMessage::DeadlineChanged { .. } => "DEADLINE_CHANGED",
            ServerMessage::ScoreChanged { .. } => "SCORE_CHANGED",
            ServerMessage::SessionReplaced { .. } => "SESSION_REPLACED",
            ServerMessage::Error { .. } => "ERROR",
        }
    }

    pub fn error(error: &ClientError) -> Self {
        ServerMessage::Error {
            code: error.code,
            message: error.message.clone(),
            retry_after_ms: None,
        }
    }

    pub fn info(attempt: &Attempt) -> AssessmentInfo {
        AssessmentInfo {
            assessment_id: attempt.assessment_id.clone(),
            test_id: attempt.test_id.clone(),
            title: attempt.title.clone(),
            attempt: attempt.attempt,
            total_questions: attempt.total_questions,
            time_limit_secs: attempt.time_limit_secs,
            deadline: attempt.deadline.map(rfc3339),
        }
    }

    pub fn resumed(attempt: &Attempt) -> Self {
        ServerMessage::AssessmentResumed {
            info: Self::info(attempt),
            answered: attempt.answered(),
            score: attempt.score,
            max_score: attempt.max_score,
        }
    }

    pub fn question(attempt: &Attempt, question: &PresentedQuestion) -> Self {
        ServerMessage::Question {
            assessment_id: attempt.assessment_id.clone(),
            question_id: question.question_id.clone(),
            position: question.position,
            total_questions: attempt.total_questions,
            kind: question.kind,
            prompt: question.prompt.clone(),
            choices: question.choices.clone(),
            points: question.points,
        }
    }

    /// Progress as it stood once the feedback at `upto_seq` was recorded.
    pub fn progress(attempt: &Attempt, upto_seq: usize) -> Self {
        let graded: Vec<_> = attempt
            .answers
            .iter()
            .filter_map(|a| a.feedback.as_ref())
            .filter(|f| f.seq <= upto_seq)
            .collect();
        ServerMessage::ProgressUpdate {
            assessment_id: attempt.assessment_id.clone(),
            answered: graded.len() as u32,
            total_questions: attempt.total_questions,
            score: graded.iter().map(|f| f.score).sum(),
            max_score: attempt.max_score,
        }
    }

    /// The completion of `attempt` with its sequence, if it is completed.
    pub fn completed(attempt: &Attempt) -> Option<(Self, usize)> {
        match &attempt.status {
            AttemptStatus::InProgress => None,
            AttemptStatus::Completed {
                reason,
                passed,
                completed_at,
                seq,
            } => Some((
                ServerMessage::AssessmentCompleted {
                    assessment_id: attempt.assessment_id.clone(),
                    test_id: attempt.test_id.clone(),
                    score: attempt.score,
                    max_score: attempt.max_score,
                    passed: *passed,
                    reason: *reason,
                    completed_at: rfc3339(*completed_at),
                },
                *seq,
            )),
        }
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One frame as sent: the message, its event's `seq` when it reports one, the echoed
/// `request_id` when it answers one.
#[derive(Debug, Serialize)]
pub struct Outgoing<'a> {
    #[serde(flatten)]
    pub message: &'a ServerMessage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> (Option<String>, ErrorCode) {
        let incoming = parse(text);
        (incoming.request_id, incoming.message.unwrap_err().code)
    }

    #[test]
    fn valid_messages_parse_and_extra_fields_are_ignored() {
        let m = parse(
            r#"{"type":"SUBMIT_ANSWER","assessment_id":"a","question_id":"q","answer":["x","y"],"user_id":"mallory","request_id":"r1"}"#,
        );
        assert_eq!(m.request_id.as_deref(), Some("r1"));
        assert_eq!(
            m.message.unwrap(),
            ClientMessage::SubmitAnswer {
                assessment_id: "a".into(),
                question_id: "q".into(),
                answer: Answer::Choices(vec!["x".into(), "y".into()]),
            }
        );
        assert_eq!(
            parse(r#"{"type":"HEARTBEAT"}"#).message.unwrap(),
            ClientMessage::Heartbeat
        );
    }

    #[test]
    fn each_bad_input_has_its_code_and_echoes_the_request_id() {
        assert_eq!(code("not json"), (None, ErrorCode::BadRequest));
        assert_eq!(code("[1,2]"), (None, ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"request_id":"r"}"#),
            (Some("r".into()), ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":7,"request_id":"r"}"#),
            (Some("r".into()), ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"NOPE","request_id":"r"}"#),
            (Some("r".into()), ErrorCode::UnknownType)
        );
        assert_eq!(
            code(r#"{"type":"START_ASSESSMENT","request_id":"r"}"#),
            (Some("r".into()), ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"START_ASSESSMENT","test_id":5}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"SUBMIT_ANSWER","assessment_id":"a","question_id":"q","answer":3}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"HEARTBEAT","request_id":5}"#),
            (None, ErrorCode::BadRequest)
        );
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        let (echo, c) = code(&format!(r#"{{"type":"HEARTBEAT","request_id":"{long}"}}"#));
        assert_eq!(
            (echo.map(|s| s.len()), c),
            (Some(MAX_REQUEST_ID_LEN + 1), ErrorCode::BadRequest)
        );
    }

    #[test]
    fn agent_messages_name_their_task() {
        let m = ServerMessage::AgentThinking {
            task: AgentTask::Chat,
            delta: "Think ".into(),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"type":"AGENT_THINKING","task":"chat","delta":"Think "})
        );
        assert_eq!(m.kind(), "AGENT_THINKING");
    }

    #[test]
    fn outgoing_frames_carry_type_seq_and_request_id() {
        let m = ServerMessage::Pong {
            timestamp: "t".into(),
        };
        let json = serde_json::to_value(Outgoing {
            message: &m,
            seq: Some(3),
            request_id: Some("r"),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"PONG","timestamp":"t","seq":3,"request_id":"r"})
        );
    }
}
