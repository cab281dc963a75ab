//! What a client is told: the replies to one message, built from what the domain decided
//! and the events it recorded. Pure (no IO, no clock), so what is sent when is testable on
//! its own; the session only queues the result.

use domain::{Attempt, Outcome, UserEvent};

use super::protocol::ServerMessage;
use crate::error::{ClientError, ErrorCode};
use crate::store::streams::{Committed, Recorded};

/// One server message and, when it reports a recorded event, that event's `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message: ServerMessage,
    pub seq: Option<usize>,
}

impl Reply {
    pub fn new(message: ServerMessage, seq: Option<usize>) -> Self {
        Self { message, seq }
    }

    pub fn error(error: &ClientError) -> Self {
        Self::new(ServerMessage::error(error), None)
    }
}

/// The replies to a command of the user's own session, by what the domain decided.
pub fn for_outcome(committed: &Committed) -> Vec<Reply> {
    let state = &committed.state;
    let mut replies = Vec::new();
    match &committed.outcome {
        Outcome::Resumed { assessment_id } => {
            replies.extend(for_events(committed));
            if let Some(attempt) = state.attempt(assessment_id) {
                replies.extend(resumed(attempt));
            }
        }
        Outcome::AlreadyAnswered {
            assessment_id,
            question_id,
        } => {
            // A retry: the recorded feedback again, anything the clock just recorded, and
            // where the attempt stands now.
            if let Some(attempt) = state.attempt(assessment_id) {
                replies.extend(recorded_feedback(attempt, question_id));
                replies.extend(for_events(committed));
                replies.extend(where_it_stands(attempt));
            }
        }
        Outcome::TooLate { assessment_id } => {
            replies.push(Reply::error(&ClientError::new(
                ErrorCode::TimeExpired,
                format!("the time limit of assessment {assessment_id} has passed"),
            )));
            replies.extend(for_events(committed));
        }
        Outcome::Started { .. }
        | Outcome::Answered { .. }
        | Outcome::Chatted
        | Outcome::Ended { .. }
        | Outcome::Presented { .. }
        | Outcome::Checked
        | Outcome::Extended { .. }
        | Outcome::OverrideSet { .. }
        | Outcome::OverrideCleared { .. }
        | Outcome::Regraded { .. } => replies.extend(for_events(committed)),
    }
    once_per_event(replies)
}

/// The messages that report newly recorded events, in order.
pub fn for_events(committed: &Committed) -> Vec<Reply> {
    let mut replies = Vec::new();
    for Recorded { sequence, event } in &committed.events {
        let seq = Some(*sequence);
        let attempt = event
            .assessment_id()
            .and_then(|id| committed.state.attempt(id));
        match (event, attempt) {
            (UserEvent::AssessmentStarted { .. }, Some(a)) => replies.push(Reply::new(
                ServerMessage::AssessmentStarted(ServerMessage::info(a)),
                seq,
            )),
            (UserEvent::QuestionPresented { question, .. }, Some(a)) => {
                replies.push(Reply::new(ServerMessage::question(a, question), seq))
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
                replies.push(Reply::new(
                    ServerMessage::AnswerFeedback {
                        assessment_id: assessment_id.clone(),
                        question_id: question_id.clone(),
                        correct: *correct,
                        score: *score,
                        max_score: *max_score,
                        feedback: feedback.clone(),
                    },
                    seq,
                ));
                replies.push(Reply::new(ServerMessage::progress(a, *sequence), seq));
            }
            (UserEvent::AssessmentCompleted { .. }, Some(a)) => {
                if let Some((message, _)) = ServerMessage::completed(a) {
                    replies.push(Reply::new(message, seq));
                }
            }
            (
                UserEvent::ChatExchanged {
                    reply_text,
                    assessment_id,
                    ..
                },
                _,
            ) => replies.push(Reply::new(
                ServerMessage::SystemMessage {
                    text: reply_text.clone(),
                    assessment_id: assessment_id.clone(),
                },
                seq,
            )),
            // AnswerSubmitted is reported by the feedback that follows it.
            _ => {}
        }
    }
    replies
}

/// ASSESSMENT_RESUMED and the current QUESTION of an attempt in progress.
pub fn resumed(attempt: &Attempt) -> Vec<Reply> {
    let mut replies = vec![Reply::new(
        ServerMessage::resumed(attempt),
        Some(attempt.started_seq),
    )];
    if let Some((question, seq)) = &attempt.current_question {
        replies.push(Reply::new(
            ServerMessage::question(attempt, question),
            Some(*seq),
        ));
    }
    replies
}

/// Where an attempt stands: its current QUESTION, or its ASSESSMENT_COMPLETED.
pub fn where_it_stands(attempt: &Attempt) -> Vec<Reply> {
    if let Some((question, seq)) = &attempt.current_question {
        vec![Reply::new(
            ServerMessage::question(attempt, question),
            Some(*seq),
        )]
    } else if let Some((message, seq)) = ServerMessage::completed(attempt) {
        vec![Reply::new(message, Some(seq))]
    } else {
        Vec::new()
    }
}

/// A recorded answer's feedback again, and the progress as it stood once it was graded.
pub fn recorded_feedback(attempt: &Attempt, question_id: &str) -> Vec<Reply> {
    let Some(feedback) = attempt
        .answer_to(question_id)
        .and_then(|a| a.feedback.as_ref())
    else {
        return Vec::new();
    };
    vec![
        Reply::new(
            ServerMessage::AnswerFeedback {
                assessment_id: attempt.assessment_id.clone(),
                question_id: question_id.to_string(),
                correct: feedback.correct,
                score: feedback.score,
                max_score: feedback.max_score,
                feedback: feedback.feedback.clone(),
            },
            Some(feedback.seq),
        ),
        Reply::new(
            ServerMessage::progress(attempt, feedback.seq),
            Some(feedback.seq),
        ),
    ]
}

/// The completions of attempts that were in progress in `before` and are not in `after`,
/// e.g. an attempt an admin ended while this session looked at it.
pub fn newly_completed(before: &domain::UserStream, after: &domain::UserStream) -> Vec<Reply> {
    after
        .attempts
        .iter()
        .filter(|a| {
            !a.is_in_progress()
                && before
                    .attempt(&a.assessment_id)
                    .is_some_and(Attempt::is_in_progress)
        })
        .filter_map(ServerMessage::completed)
        .map(|(message, seq)| Reply::new(message, Some(seq)))
        .collect()
}

/// Drops a repeat of a message already in the batch for the same event, so a completion
/// reported by the events is not reported again by "where it stands".
pub fn once_per_event(replies: Vec<Reply>) -> Vec<Reply> {
    let mut seen: Vec<(&'static str, usize)> = Vec::new();
    replies
        .into_iter()
        .filter(|reply| match reply.seq {
            Some(seq) => {
                let key = (reply.message.kind(), seq);
                let first = !seen.contains(&key);
                seen.push(key);
                first
            }
            None => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use domain::{Answer, TestDefinition, UserCommand, UserStream};

    use super::*;

    fn test() -> Arc<TestDefinition> {
        let mut t: TestDefinition = serde_json::from_str(
            r#"{"title":"T","time_limit_secs":60,"questions":[
            {"id":"q1","kind":"single_choice","prompt":"?","choices":[{"id":"a","text":"A"},{"id":"b","text":"B"}],"answer":"a"},
            {"id":"q2","kind":"free_text","prompt":"?","keywords":["k"]}]}"#,
        )
        .unwrap();
        t.id = "t".into();
        t.version = 1;
        Arc::new(t)
    }

    /// Decides and applies `command` as the store would, numbering events from `state`.
    fn run(state: &UserStream, command: UserCommand) -> Committed {
        let decision = state.decide(command).unwrap();
        let mut after = state.clone();
        let mut events = Vec::new();
        for event in decision.events {
            cqrs_es::Aggregate::apply(&mut after, event.clone());
            events.push(Recorded {
                sequence: after.sequence,
                event,
            });
        }
        Committed {
            outcome: decision.outcome,
            events,
            state: after,
        }
    }

    fn kinds(replies: &[Reply]) -> Vec<&'static str> {
        replies.iter().map(|r| r.message.kind()).collect()
    }

    fn at(secs: i64) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn started() -> UserStream {
        let start = UserCommand::StartAssessment {
            test: test(),
            assessment_id: "a1".into(),
            question_order: vec!["q1".into(), "q2".into()],
            now: at(0),
        };
        run(&UserStream::default(), start).state
    }

    fn answer(now: i64) -> UserCommand {
        UserCommand::SubmitAnswer {
            assessment_id: "a1".into(),
            question_id: "q1".into(),
            answer: Answer::Text("a".into()),
            test: test(),
            grading: None,
            now: at(now),
        }
    }

    #[test]
    fn an_answer_is_fed_back_with_progress_and_the_next_question() {
        let replies = for_outcome(&run(&started(), answer(5)));
        assert_eq!(
            kinds(&replies),
            ["ANSWER_FEEDBACK", "PROGRESS_UPDATE", "QUESTION"]
        );
        assert_eq!(replies[0].seq, replies[1].seq);
    }

    #[test]
    fn a_retry_gets_the_recorded_feedback_and_the_current_question() {
        let answered = run(&started(), answer(5)).state;
        let replies = for_outcome(&run(&answered, answer(6)));
        assert_eq!(
            kinds(&replies),
            ["ANSWER_FEEDBACK", "PROGRESS_UPDATE", "QUESTION"]
        );
        assert_eq!(replies[0].seq, Some(4), "the feedback's own seq");
    }

    #[test]
    fn a_retry_after_the_deadline_reports_the_completion_once() {
        let answered = run(&started(), answer(5)).state;
        let replies = for_outcome(&run(&answered, answer(61)));
        assert_eq!(
            kinds(&replies),
            ["ANSWER_FEEDBACK", "PROGRESS_UPDATE", "ASSESSMENT_COMPLETED"]
        );
    }

    #[test]
    fn a_late_answer_is_time_expired_then_completed() {
        let replies = for_outcome(&run(&started(), answer(61)));
        assert_eq!(kinds(&replies), ["ERROR", "ASSESSMENT_COMPLETED"]);
        assert!(matches!(
            replies[0].message,
            ServerMessage::Error {
                code: ErrorCode::TimeExpired,
                ..
            }
        ));
    }

    #[test]
    fn starting_the_test_in_progress_resumes_it() {
        let again = UserCommand::StartAssessment {
            test: test(),
            assessment_id: "other".into(),
            question_order: vec!["q1".into(), "q2".into()],
            now: at(1),
        };
        let replies = for_outcome(&run(&started(), again));
        assert_eq!(kinds(&replies), ["ASSESSMENT_RESUMED", "QUESTION"]);
    }

    #[test]
    fn an_attempt_completed_elsewhere_is_reported() {
        let before = started();
        let end = UserCommand::EndByAdmin {
            assessment_id: "a1".into(),
            now: at(3),
        };
        let after = run(&before, end).state;
        assert_eq!(
            kinds(&newly_completed(&before, &after)),
            ["ASSESSMENT_COMPLETED"]
        );
        assert!(newly_completed(&after, &after).is_empty());
    }
}
