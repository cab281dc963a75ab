//! What an open socket is told when an admin changed its user's stream (PROTOCOL
//! section 6): `DEADLINE_CHANGED` for extra time, `SCORE_CHANGED` for a regraded answer
//! and for a correction of a question not answered yet (its points may move the maximum).
//! Pure: read from the state the stream leads to, so it works whichever node recorded the
//! change (the session only learns "your stream changed").

use domain::{grading, AttemptStatus, UserStream};

use super::protocol::{rfc3339, ServerMessage};
use super::replies::Reply;

/// The admin's changes recorded after sequence `seen`, in stream order. An attempt
/// extended twice since is reported once, with its latest deadline; likewise an answer
/// regraded twice.
pub fn since(state: &UserStream, seen: usize) -> Vec<Reply> {
    let mut out = Vec::new();
    for attempt in &state.attempts {
        if let (Some(extension), Some(deadline)) = (&attempt.extension, attempt.deadline) {
            if extension.seq > seen && attempt.is_in_progress() {
                out.push(Reply::new(
                    ServerMessage::DeadlineChanged {
                        assessment_id: attempt.assessment_id.clone(),
                        deadline: rfc3339(deadline),
                        extra_secs: extension.extra_secs,
                    },
                    Some(extension.seq),
                ));
            }
        }
        let passed = match &attempt.status {
            AttemptStatus::Completed { passed, .. } => *passed,
            // Not judged yet: as it would be judged now.
            AttemptStatus::InProgress => {
                grading::passed(attempt.score, attempt.max_score, attempt.pass_ratio)
            }
        };
        let regraded = attempt
            .answers
            .iter()
            .filter_map(|a| Some((&a.question_id, a.regraded_seq?)));
        // A correction of an answered question is reported by its regrade, if any.
        let ahead = attempt
            .corrections
            .iter()
            .filter(|(question_id, _)| attempt.answer_to(question_id).is_none())
            .map(|(question_id, c)| (question_id, c.seq));
        for (question_id, seq) in regraded.chain(ahead).filter(|(_, seq)| *seq > seen) {
            out.push(Reply::new(
                ServerMessage::ScoreChanged {
                    assessment_id: attempt.assessment_id.clone(),
                    question_id: question_id.clone(),
                    score: attempt.score,
                    max_score: attempt.max_score,
                    passed,
                },
                Some(seq),
            ));
        }
    }
    out.sort_by_key(|r| r.seq);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use chrono::{Duration, TimeZone, Utc};
    use domain::{Correction, Regrade, TestDefinition, UserCommand, VersionQuestion};

    use super::*;

    fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(secs)
    }

    fn run(state: &mut UserStream, command: UserCommand) {
        for event in state.decide(command).unwrap().events {
            cqrs_es::Aggregate::apply(state, event);
        }
    }

    #[test]
    fn extra_time_and_a_regrade_are_reported_once_each() {
        let mut test: TestDefinition = serde_json::from_str(
            r#"{"title":"T","time_limit_secs":60,"questions":[
            {"id":"q1","kind":"single_choice","prompt":"?","choices":[{"id":"a","text":"A"},{"id":"b","text":"B"}],"answer":"a"},
            {"id":"q2","kind":"free_text","prompt":"?","keywords":["k"]}]}"#,
        )
        .unwrap();
        test.id = "t".into();
        test.version = 1;
        let test = Arc::new(test);
        let mut state = UserStream::default();
        run(
            &mut state,
            UserCommand::StartAssessment {
                test: test.clone(),
                assessment_id: "a1".into(),
                question_order: vec!["q1".into(), "q2".into()],
                now: at(0),
            },
        );
        run(
            &mut state,
            UserCommand::SubmitAnswer {
                assessment_id: "a1".into(),
                question_id: "q1".into(),
                answer: domain::Answer::Text("b".into()),
                test: test.clone(),
                grading: None,
                now: at(1),
            },
        );
        let seen = state.sequence;
        assert!(since(&state, seen).is_empty());
        run(
            &mut state,
            UserCommand::ExtendDeadline {
                assessment_id: "a1".into(),
                extra_secs: 30,
                reason: "r".into(),
                actor: "admin:root".into(),
                now: at(2),
            },
        );
        let correction = Correction {
            answer: Some(domain::test_definition::AnswerKey::One("b".into())),
            ..Correction::default()
        };
        let regrade = |question_id: &str, correction: Correction| {
            let version = VersionQuestion {
                question: test.question(question_id).unwrap().clone(),
                adaptive: false,
            };
            UserCommand::Regrade(Box::new(Regrade {
                test_id: "t".into(),
                question_id: question_id.into(),
                versions: BTreeMap::from([(1, version)]),
                correction,
                corrected_version: Some(2),
                reason: "r".into(),
                actor: "admin:root".into(),
                now: at(3),
            }))
        };
        run(&mut state, regrade("q1", correction));
        // q2 is shown, not answered: its points change the maximum.
        let points = Correction {
            points: Some(3.0),
            ..Correction::default()
        };
        run(&mut state, regrade("q2", points));
        let replies = since(&state, seen);
        let kinds: Vec<_> = replies.iter().map(|r| r.message.kind()).collect();
        assert_eq!(
            kinds,
            ["DEADLINE_CHANGED", "SCORE_CHANGED", "SCORE_CHANGED"]
        );
        assert_eq!(replies[0].seq, Some(seen + 1));
        let changed: Vec<_> = replies[1..]
            .iter()
            .map(|r| match &r.message {
                ServerMessage::ScoreChanged {
                    question_id,
                    score,
                    max_score,
                    passed,
                    ..
                } => (question_id.as_str(), *score, *max_score, *passed),
                other => panic!("{other:?}"),
            })
            .collect();
        // Both report the attempt as it stands now.
        assert_eq!(changed, [("q1", 1.0, 4.0, false), ("q2", 1.0, 4.0, false)]);
        assert!(
            since(&state, state.sequence).is_empty(),
            "nothing new since"
        );
    }
}
