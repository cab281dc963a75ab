//! Given/when/then tests of every rule, with cqrs-es's `TestFramework`.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;

use super::*;
use crate::events::GradedBy;
use crate::test_definition::TestDefinition;

type Given = TestFramework<UserStream>;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

/// The protocol's example test: q1 single (1 pt), q2 multiple (2 pts), q3 free text (2 pts).
fn rust_test() -> Arc<TestDefinition> {
    let mut t: TestDefinition = serde_json::from_str(
        r#"{"title":"Rust basics","max_attempts":2,"time_limit_secs":600,"pass_ratio":0.6,
        "questions":[
        {"id":"q1","kind":"single_choice","prompt":"Which keyword declares a constant?",
         "choices":[{"id":"a","text":"let"},{"id":"b","text":"const"}],"answer":"b","points":1},
        {"id":"q2","kind":"multiple_choice","prompt":"Which are integer types?",
         "choices":[{"id":"a","text":"u8"},{"id":"b","text":"f32"},{"id":"c","text":"i64"}],
         "answer":["a","c"],"points":2},
        {"id":"q3","kind":"free_text","prompt":"What does the borrow checker enforce?",
         "keywords":["ownership","borrow","lifetime"],"points":2}]}"#,
    )
    .unwrap();
    t.id = "rust".into();
    t.version = 1;
    t.validate().unwrap();
    Arc::new(t)
}

fn other_test() -> Arc<TestDefinition> {
    let mut t = (*rust_test()).clone();
    t.id = "other".into();
    Arc::new(t)
}

fn start(test: &Arc<TestDefinition>, id: &str, now: DateTime<Utc>) -> UserCommand {
    UserCommand::StartAssessment {
        test: test.clone(),
        assessment_id: id.into(),
        question_order: test.questions.iter().map(|q| q.id.clone()).collect(),
        now,
    }
}

fn submit(id: &str, question: &str, answer: Answer, now: DateTime<Utc>) -> UserCommand {
    UserCommand::SubmitAnswer {
        assessment_id: id.into(),
        question_id: question.into(),
        answer,
        test: rust_test(),
        grading: None,
        now,
    }
}

fn text(s: &str) -> Answer {
    Answer::Text(s.into())
}

/// Runs `command` on the state `given` leads to and returns the events it produced.
fn events_of(given: &[UserEvent], command: UserCommand) -> Vec<UserEvent> {
    Given::with(())
        .given(given.to_vec())
        .when(command)
        .inspect_result()
        .expect("command accepted")
}

fn started(id: &str) -> Vec<UserEvent> {
    events_of(&[], start(&rust_test(), id, t0()))
}

/// The events of attempt `id` with every question answered correctly.
fn completed(id: &str) -> Vec<UserEvent> {
    let mut events = started(id);
    for (q, a) in [
        ("q1", text("b")),
        ("q2", Answer::Choices(vec!["c".into(), "a".into()])),
        ("q3", text("ownership borrow lifetime")),
    ] {
        let more = events_of(&events, submit(id, q, a, at(10)));
        events.extend(more);
    }
    events
}

#[test]
fn starting_records_the_attempt_and_presents_the_first_question() {
    let events = started("a1");
    assert_eq!(events.len(), 2);
    let UserEvent::AssessmentStarted {
        attempt,
        total_questions,
        deadline,
        max_score,
        ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*attempt, *total_questions, *max_score), (1, 3, 5.0));
    assert_eq!(*deadline, Some(at(600)));
    let UserEvent::QuestionPresented {
        question, source, ..
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (question.question_id.as_str(), question.position),
        ("q1", 1)
    );
    assert_eq!(question.choices.len(), 2);
    assert_eq!(source, QUESTION_BANK);
}

#[test]
fn starting_the_test_in_progress_again_resumes_it_and_records_nothing() {
    Given::with(())
        .given(started("a1"))
        .when(start(&rust_test(), "a2", at(5)))
        .then_expect_events(vec![]);
}

#[test]
fn only_one_attempt_is_in_progress_at_a_time() {
    Given::with(())
        .given(started("a1"))
        .when(start(&other_test(), "b1", at(5)))
        .then_expect_error(DomainError::AssessmentInProgress {
            test_id: "rust".into(),
        });
}

#[test]
fn a_completed_attempt_is_not_restarted_when_attempts_are_used_up() {
    let mut once = (*rust_test()).clone();
    once.max_attempts = 1;
    Given::with(())
        .given(completed("a1"))
        .when(start(&Arc::new(once), "a2", at(20)))
        .then_expect_error(DomainError::AttemptsUsedUp {
            test_id: "rust".into(),
            max_attempts: 1,
        });
}

#[test]
fn max_attempts_allows_a_second_attempt_and_numbers_it() {
    let events = events_of(&completed("a1"), start(&rust_test(), "a2", at(20)));
    assert!(matches!(
        events[0],
        UserEvent::AssessmentStarted { attempt: 2, .. }
    ));
    let mut all = completed("a1");
    all.extend(events);
    let done = completed("a2")
        .into_iter()
        .skip(2) // a2's start was already taken from `events`
        .collect::<Vec<_>>();
    all.extend(done);
    Given::with(())
        .given(all)
        .when(start(&rust_test(), "a3", at(30)))
        .then_expect_error(DomainError::AttemptsUsedUp {
            test_id: "rust".into(),
            max_attempts: 2,
        });
}

#[test]
fn answering_records_answer_feedback_and_the_next_question() {
    let events = events_of(&started("a1"), submit("a1", "q1", text("b"), at(10)));
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        matches!(&events[0], UserEvent::AnswerSubmitted { question_id, .. } if question_id == "q1")
    );
    assert!(matches!(
        &events[1],
        UserEvent::FeedbackGiven { correct: true, score, graded_by, .. } if *score == 1.0 && graded_by == "offline"
    ));
    assert!(matches!(
        &events[2],
        UserEvent::QuestionPresented { question, .. } if question.question_id == "q2" && question.position == 2
    ));
}

#[test]
fn the_last_answer_completes_the_attempt_with_score_and_pass() {
    let events = completed("a1");
    let last = events.last().unwrap();
    assert_eq!(
        last,
        &UserEvent::AssessmentCompleted {
            assessment_id: "a1".into(),
            test_id: "rust".into(),
            score: 5.0,
            max_score: 5.0,
            passed: true,
            reason: CompletionReason::AllAnswered,
            completed_at: at(10),
        }
    );
}

#[test]
fn a_low_score_fails() {
    let mut events = started("a1");
    for (q, a) in [
        ("q1", text("a")),
        ("q2", Answer::Choices(vec!["a".into()])),
        ("q3", text("ownership")),
    ] {
        let more = events_of(&events, submit("a1", q, a, at(10)));
        events.extend(more);
    }
    assert!(matches!(
        events.last().unwrap(),
        UserEvent::AssessmentCompleted { passed: false, score, .. } if (*score - 2.0 / 3.0).abs() < 1e-9
    ));
}

#[test]
fn a_resent_answer_appends_nothing() {
    let mut given = started("a1");
    given.extend(events_of(&given, submit("a1", "q1", text("b"), at(10))));
    Given::with(())
        .given(given.clone())
        .when(submit("a1", "q1", text("b"), at(11)))
        .then_expect_events(vec![]);
    // and the recorded feedback is there for the caller to send again
    let mut state = UserStream::default();
    for e in given {
        state.apply(e);
    }
    let feedback = state
        .attempt("a1")
        .unwrap()
        .answer_to("q1")
        .unwrap()
        .feedback
        .clone();
    assert!(matches!(
        feedback,
        Some(RecordedFeedback {
            correct: true,
            seq: 4,
            ..
        })
    ));
}

#[test]
fn a_resent_answer_after_completion_appends_nothing() {
    Given::with(())
        .given(completed("a1"))
        .when(submit(
            "a1",
            "q3",
            text("ownership borrow lifetime"),
            at(30),
        ))
        .then_expect_events(vec![]);
}

#[test]
fn a_different_answer_to_an_answered_question_is_refused() {
    let mut given = started("a1");
    given.extend(events_of(&given, submit("a1", "q1", text("b"), at(10))));
    Given::with(())
        .given(given)
        .when(submit("a1", "q1", text("a"), at(11)))
        .then_expect_error(DomainError::AnswerAlreadyRecorded {
            question_id: "q1".into(),
        });
}

#[test]
fn answering_a_question_that_is_not_current_is_refused() {
    Given::with(())
        .given(started("a1"))
        .when(submit(
            "a1",
            "q2",
            Answer::Choices(vec!["a".into()]),
            at(10),
        ))
        .then_expect_error(DomainError::WrongQuestion {
            question_id: "q2".into(),
        });
}

#[test]
fn an_answer_of_the_wrong_shape_is_refused() {
    let result = Given::with(())
        .given(started("a1"))
        .when(submit("a1", "q1", text("zzz"), at(10)))
        .inspect_result();
    assert!(
        matches!(result, Err(DomainError::InvalidAnswer(_))),
        "{result:?}"
    );
}

#[test]
fn answering_an_unknown_attempt_is_not_found() {
    Given::with(())
        .given(started("a1"))
        .when(submit("nope", "q1", text("b"), at(10)))
        .then_expect_error(DomainError::AssessmentNotFound {
            assessment_id: "nope".into(),
        });
}

#[test]
fn answering_a_completed_attempt_is_refused() {
    Given::with(())
        .given(completed("a1"))
        .when(submit("a1", "q9", text("b"), at(30)))
        .then_expect_error(DomainError::AssessmentCompleted {
            assessment_id: "a1".into(),
        });
}

#[test]
fn an_answer_after_the_deadline_records_the_expiry_instead() {
    Given::with(())
        .given(started("a1"))
        .when(submit("a1", "q1", text("b"), at(600)))
        .then_expect_events(vec![UserEvent::AssessmentCompleted {
            assessment_id: "a1".into(),
            test_id: "rust".into(),
            score: 0.0,
            max_score: 5.0,
            passed: false,
            reason: CompletionReason::TimeExpired,
            completed_at: at(600),
        }]);
}

#[test]
fn an_answer_to_an_expired_attempt_is_time_expired() {
    let mut given = started("a1");
    given.extend(events_of(
        &given,
        UserCommand::ExpireOverdue { now: at(700) },
    ));
    Given::with(())
        .given(given)
        .when(submit("a1", "q1", text("b"), at(701)))
        .then_expect_error(DomainError::TimeExpired {
            assessment_id: "a1".into(),
        });
}

#[test]
fn expiry_before_the_deadline_records_nothing() {
    Given::with(())
        .given(started("a1"))
        .when(UserCommand::ExpireOverdue { now: at(599) })
        .then_expect_events(vec![]);
}

#[test]
fn an_expired_attempt_frees_the_user_for_another_test() {
    let events = events_of(&started("a1"), start(&other_test(), "b1", at(601)));
    assert!(matches!(
        &events[0],
        UserEvent::AssessmentCompleted {
            reason: CompletionReason::TimeExpired,
            ..
        }
    ));
    assert!(
        matches!(&events[1], UserEvent::AssessmentStarted { test_id, .. } if test_id == "other")
    );
}

#[test]
fn a_shuffled_order_is_followed_and_a_bad_one_refused() {
    let test = rust_test();
    let events = events_of(
        &[],
        UserCommand::StartAssessment {
            test: test.clone(),
            assessment_id: "a1".into(),
            question_order: vec!["q3".into(), "q1".into(), "q2".into()],
            now: t0(),
        },
    );
    assert!(
        matches!(&events[1], UserEvent::QuestionPresented { question, .. } if question.question_id == "q3")
    );
    let result = Given::with(())
        .given_no_previous_events()
        .when(UserCommand::StartAssessment {
            test,
            assessment_id: "a1".into(),
            question_order: vec!["q1".into(), "q1".into(), "q2".into()],
            now: t0(),
        })
        .inspect_result();
    assert!(matches!(result, Err(DomainError::InconsistentCommand(_))));
}

#[test]
fn an_attempt_keeps_the_test_version_it_started_with() {
    let mut v2 = (*rust_test()).clone();
    v2.version = 2;
    let result = Given::with(())
        .given(started("a1"))
        .when(UserCommand::SubmitAnswer {
            assessment_id: "a1".into(),
            question_id: "q1".into(),
            answer: text("b"),
            test: Arc::new(v2),
            grading: None,
            now: at(1),
        })
        .inspect_result();
    assert!(
        matches!(result, Err(DomainError::InconsistentCommand(_))),
        "{result:?}"
    );
}

#[test]
fn chat_is_recorded_with_the_question_on_screen() {
    let events = events_of(
        &started("a1"),
        UserCommand::Chat {
            assessment_id: Some("a1".into()),
            text: "hint?".into(),
            reply: "Think about mutability.".into(),
            tutor: "offline_tutor".into(),
            ai: None,
            now: at(3),
        },
    );
    assert!(matches!(
        &events[..],
        [UserEvent::ChatExchanged { question_id: Some(q), .. }] if q == "q1"
    ));
}

#[test]
fn an_ai_reply_is_recorded_with_its_provenance() {
    let events = events_of(
        &started("a1"),
        UserCommand::Chat {
            assessment_id: Some("a1".into()),
            text: "hint?".into(),
            reply: "I can't say.".into(),
            tutor: "ai".into(),
            ai: Some(crate::AiProvenance {
                provider_profile: "course-a".into(),
                model: "m1".into(),
                usage: Some(crate::TokenUsage {
                    prompt_tokens: 5,
                    completion_tokens: 3,
                    total_tokens: 8,
                }),
                withheld: true,
                withheld_text: Some("It is b.".into()),
            }),
            now: at(3),
        },
    );
    assert!(matches!(
        &events[..],
        [UserEvent::ChatExchanged { provider_profile: Some(p), model: Some(m), usage: Some(u), withheld: true, withheld_text: Some(w), .. }]
            if p == "course-a" && m == "m1" && u.total_tokens == 8 && w == "It is b."
    ));
}

fn graded(score: f64, feedback: &str) -> Option<AiGrading> {
    Some(AiGrading {
        provider_profile: "course-a".into(),
        model: "m1".into(),
        usage: Some(crate::events::TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
        }),
        verdict: crate::events::AiVerdict::Graded {
            score,
            feedback: feedback.into(),
        },
    })
}

/// The events of attempt a1 up to its free-text question q3.
fn at_q3() -> Vec<UserEvent> {
    let mut events = started("a1");
    let more = events_of(&events, submit("a1", "q1", text("b"), at(5)));
    events.extend(more);
    let more = events_of(
        &events,
        submit(
            "a1",
            "q2",
            Answer::Choices(vec!["a".into(), "c".into()]),
            at(6),
        ),
    );
    events.extend(more);
    events
}

#[test]
fn a_model_grade_is_recorded_clamped_with_its_provenance_at_the_time_of_the_answer() {
    let mut command = submit("a1", "q3", text("it checks references"), at(599));
    if let UserCommand::SubmitAnswer { grading, .. } = &mut command {
        *grading = graded(9.0, "Good: think about how long a reference lives.");
    }
    let events = events_of(&at_q3(), command);
    let UserEvent::FeedbackGiven {
        correct,
        score,
        graded_by,
        given_at,
        ..
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*correct, *score, *given_at), (true, 2.0, at(599)));
    assert_eq!(graded_by.graded_by, "m1");
    assert_eq!(graded_by.provider_profile.as_deref(), Some("course-a"));
    assert_eq!(graded_by.usage.map(|u| u.total_tokens), Some(15));
    assert_eq!(graded_by.fallback, None);
    assert!(matches!(
        &events[2],
        UserEvent::AssessmentCompleted { score, passed: true, .. } if *score == 5.0
    ));
}

#[test]
fn a_fallback_is_graded_offline_and_says_why() {
    let mut command = submit("a1", "q3", text("ownership"), at(20));
    if let UserCommand::SubmitAnswer { grading, .. } = &mut command {
        *grading = Some(AiGrading {
            provider_profile: "default".into(),
            model: "m1".into(),
            usage: None,
            verdict: crate::events::AiVerdict::Fallback {
                reason: "timeout".into(),
            },
        });
    }
    let events = events_of(&at_q3(), command);
    let UserEvent::FeedbackGiven {
        score, graded_by, ..
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert!((*score - 2.0 / 3.0).abs() < 1e-12, "{score}");
    assert_eq!(graded_by.graded_by, "offline");
    assert_eq!(graded_by.fallback.as_deref(), Some("timeout"));
    assert_eq!(graded_by.model.as_deref(), Some("m1"));
}

#[test]
fn an_offline_feedback_event_is_stored_as_before_and_a_graded_one_flat() {
    // Written byte for byte as before the AI fields existed, so old hash chains verify.
    let json = r#"{"FeedbackGiven":{"assessment_id":"a1","test_id":"rust","question_id":"q1","correct":true,"score":1.0,"max_score":1.0,"feedback":"Correct.","graded_by":"offline","given_at":"2026-01-05T10:00:00Z"}}"#;
    let event: UserEvent = serde_json::from_str(json).unwrap();
    let UserEvent::FeedbackGiven { graded_by, .. } = &event else {
        panic!("{event:?}")
    };
    assert_eq!(graded_by, &GradedBy::from("offline"));
    assert_eq!(serde_json::to_string(&event).unwrap(), json);

    let mut command = submit("a1", "q3", text("x"), at(20));
    if let UserCommand::SubmitAnswer { grading, .. } = &mut command {
        *grading = graded(1.0, "Half way.");
    }
    let feedback = events_of(&at_q3(), command).remove(1);
    let value = serde_json::to_value(&feedback).unwrap();
    let payload = &value["FeedbackGiven"];
    assert_eq!(payload["graded_by"], "m1");
    assert_eq!(payload["provider_profile"], "course-a");
    assert_eq!(payload["usage"]["total_tokens"], 15);
    assert!(payload.get("fallback").is_none(), "{payload}");
    let back: UserEvent = serde_json::from_value(value).unwrap();
    assert_eq!(back, feedback);
}

#[test]
fn an_offline_chat_event_is_stored_as_before_and_old_events_load() {
    // The stored form of an offline exchange has no AI fields, so the hash chains of
    // streams written before they existed still verify and replay unchanged.
    let json = r#"{"ChatExchanged":{"assessment_id":null,"test_id":null,"question_id":null,"user_text":"hello","reply_text":"hi","tutor":"offline_tutor","exchanged_at":"2026-01-05T10:00:00Z"}}"#;
    let event: UserEvent = serde_json::from_str(json).unwrap();
    assert!(matches!(
        &event,
        UserEvent::ChatExchanged {
            provider_profile: None,
            model: None,
            usage: None,
            withheld: false,
            withheld_text: None,
            ..
        }
    ));
    let again: serde_json::Value = serde_json::to_value(&event).unwrap();
    assert_eq!(
        again,
        serde_json::from_str::<serde_json::Value>(json).unwrap()
    );
}

#[test]
fn empty_chat_and_chat_about_a_stranger_attempt_are_refused() {
    let chat = |assessment_id: Option<&str>, text: &str| UserCommand::Chat {
        assessment_id: assessment_id.map(String::from),
        text: text.into(),
        reply: "r".into(),
        tutor: "offline_tutor".into(),
        ai: None,
        now: at(3),
    };
    assert!(matches!(
        Given::with(())
            .given(started("a1"))
            .when(chat(None, "  "))
            .inspect_result(),
        Err(DomainError::InvalidChat(_))
    ));
    Given::with(())
        .given(started("a1"))
        .when(chat(Some("x"), "hi"))
        .then_expect_error(DomainError::AssessmentNotFound {
            assessment_id: "x".into(),
        });
}

#[test]
fn an_admin_ends_an_attempt_once() {
    let events = events_of(
        &started("a1"),
        UserCommand::EndByAdmin {
            assessment_id: "a1".into(),
            now: at(5),
        },
    );
    assert!(matches!(
        &events[..],
        [UserEvent::AssessmentCompleted {
            reason: CompletionReason::EndedByAdmin,
            ..
        }]
    ));
    let mut given = started("a1");
    given.extend(events);
    Given::with(())
        .given(given)
        .when(UserCommand::EndByAdmin {
            assessment_id: "a1".into(),
            now: at(6),
        })
        .then_expect_error(DomainError::AssessmentCompleted {
            assessment_id: "a1".into(),
        });
}

#[test]
fn applying_counts_sequences_and_tracks_the_current_question() {
    let mut state = UserStream::default();
    for e in started("a1") {
        state.apply(e);
    }
    assert_eq!(state.sequence, 2);
    let attempt = state.in_progress().unwrap();
    assert_eq!(attempt.current_question.as_ref().unwrap().1, 2);
    assert_eq!(state.attempts_used("rust"), 1);
}

/// What `command` means on the state `given` leads to, as `decide` reports it.
fn outcome_of(given: &[UserEvent], command: UserCommand) -> Outcome {
    let mut state = UserStream::default();
    for event in given {
        state.apply(event.clone());
    }
    state.decide(command).expect("command accepted").outcome
}

fn answered(id: &str, q: &str) -> Outcome {
    Outcome::Answered {
        assessment_id: id.into(),
        question_id: q.into(),
    }
}

#[test]
fn the_decision_says_what_happened() {
    assert_eq!(
        outcome_of(&[], start(&rust_test(), "a1", t0())),
        Outcome::Started {
            assessment_id: "a1".into()
        }
    );
    // The test in progress is resumed under its own id, not the fresh one offered.
    assert_eq!(
        outcome_of(&started("a1"), start(&rust_test(), "a2", at(5))),
        Outcome::Resumed {
            assessment_id: "a1".into()
        }
    );
    assert_eq!(
        outcome_of(&started("a1"), submit("a1", "q1", text("a"), at(5))),
        answered("a1", "q1")
    );
    let mut given = started("a1");
    given.extend(events_of(&given, submit("a1", "q1", text("b"), at(5))));
    assert_eq!(
        outcome_of(&given, submit("a1", "q1", text("b"), at(6))),
        Outcome::AlreadyAnswered {
            assessment_id: "a1".into(),
            question_id: "q1".into()
        }
    );
    assert_eq!(
        outcome_of(&started("a1"), submit("a1", "q1", text("b"), at(600))),
        Outcome::TooLate {
            assessment_id: "a1".into()
        }
    );
    assert_eq!(
        outcome_of(
            &started("a1"),
            UserCommand::EndByAdmin {
                assessment_id: "a1".into(),
                now: at(5)
            }
        ),
        Outcome::Ended {
            assessment_id: "a1".into()
        }
    );
    assert_eq!(
        outcome_of(&started("a1"), UserCommand::ExpireOverdue { now: at(5) }),
        Outcome::Checked
    );
}

#[test]
fn a_retry_of_a_recorded_answer_is_already_answered_even_when_the_deadline_passed() {
    let mut given = started("a1");
    given.extend(events_of(&given, submit("a1", "q1", text("b"), at(5))));
    let mut state = UserStream::default();
    for event in &given {
        state.apply(event.clone());
    }
    let decision = state
        .decide(submit("a1", "q1", text("b"), at(601)))
        .unwrap();
    assert_eq!(
        decision.outcome,
        Outcome::AlreadyAnswered {
            assessment_id: "a1".into(),
            question_id: "q1".into()
        }
    );
    // The expiry the clock brought is recorded all the same.
    assert!(matches!(
        decision.events.as_slice(),
        [UserEvent::AssessmentCompleted {
            reason: CompletionReason::TimeExpired,
            ..
        }]
    ));
}

#[test]
fn ending_an_overdue_attempt_records_the_expiry_and_says_it_was_too_late() {
    let mut state = UserStream::default();
    for event in started("a1") {
        state.apply(event);
    }
    let decision = state
        .decide(UserCommand::EndByAdmin {
            assessment_id: "a1".into(),
            now: at(700),
        })
        .unwrap();
    assert_eq!(
        decision.outcome,
        Outcome::TooLate {
            assessment_id: "a1".into()
        }
    );
    assert!(matches!(
        decision.events.as_slice(),
        [UserEvent::AssessmentCompleted {
            reason: CompletionReason::TimeExpired,
            ..
        }]
    ));
}

// ---- adaptive tests -------------------------------------------------------------------

/// The Rust test made adaptive: three questions, each worth one point.
fn adaptive_test() -> Arc<TestDefinition> {
    let mut t = (*rust_test()).clone();
    t.ai = serde_json::from_str(r#"{"adaptive":true,"question_count":3,"topic":"Rust"}"#).unwrap();
    Arc::new(t)
}

fn generated_q(answer: &str) -> crate::events::GeneratedQuestion {
    crate::events::GeneratedQuestion {
        kind: crate::test_definition::QuestionKind::SingleChoice,
        prompt: "Which type is moved, not copied?".into(),
        choices: vec![
            PresentedChoice {
                id: "a".into(),
                text: "String".into(),
            },
            PresentedChoice {
                id: "b".into(),
                text: "i32".into(),
            },
        ],
        key: crate::events::GeneratedKey {
            answer: Some(crate::test_definition::AnswerKey::One(answer.into())),
            keywords: Vec::new(),
            explanation: Some("Heap data moves.".into()),
        },
    }
}

fn present(outcome: GenerationOutcome, now: DateTime<Utc>) -> UserCommand {
    UserCommand::PresentQuestion {
        assessment_id: "a1".into(),
        test: adaptive_test(),
        generation: Box::new(QuestionGeneration {
            provider_profile: Some("default".into()),
            model: Some("m1".into()),
            usage: None,
            outcome,
        }),
        now,
    }
}

fn adaptive_submit(question: &str, answer: Answer, now: DateTime<Utc>) -> UserCommand {
    UserCommand::SubmitAnswer {
        assessment_id: "a1".into(),
        question_id: question.into(),
        answer,
        test: adaptive_test(),
        grading: None,
        now,
    }
}

fn fallback(reason: &str) -> GenerationOutcome {
    GenerationOutcome::Fallback {
        reason: reason.into(),
    }
}

#[test]
fn an_adaptive_attempt_counts_its_questions_and_waits_for_the_first() {
    let events = events_of(&[], start(&adaptive_test(), "a1", t0()));
    assert_eq!(events.len(), 1, "{events:?}");
    let UserEvent::AssessmentStarted {
        total_questions,
        max_score,
        ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*total_questions, *max_score), (3, 3.0));
    let mut state = UserStream::default();
    state.apply(events[0].clone());
    assert!(state.in_progress().unwrap().awaits_question());
}

#[test]
fn a_generated_question_is_recorded_with_its_key_once_and_graded_by_it() {
    let given = events_of(&[], start(&adaptive_test(), "a1", t0()));
    let presented = events_of(
        &given,
        present(GenerationOutcome::Generated(generated_q("a")), at(1)),
    );
    let UserEvent::QuestionPresented {
        question,
        source,
        generated,
        ..
    } = &presented[0]
    else {
        panic!("{presented:?}")
    };
    assert_eq!(
        (question.question_id.as_str(), question.position),
        ("ai-1", 1)
    );
    assert_eq!((source.as_str(), question.points), ("m1", 1.0));
    assert!(generated.key.is_some() && generated.fallback.is_none());

    let mut given = given;
    given.extend(presented.clone());
    // A second generation for the same position presents nothing.
    assert!(events_of(
        &given,
        present(GenerationOutcome::Generated(generated_q("b")), at(2))
    )
    .is_empty());

    // Graded from the recorded key alone.
    let answered = events_of(&given, adaptive_submit("ai-1", text("a"), at(3)));
    assert!(
        matches!(&answered[1], UserEvent::FeedbackGiven { correct: true, score, .. } if *score == 1.0),
        "{answered:?}"
    );
    assert_eq!(
        answered.len(),
        2,
        "waits for the next question: {answered:?}"
    );
}

#[test]
fn a_fallback_presents_the_next_unused_bank_question_then_the_bank_runs_out() {
    let mut given = events_of(&[], start(&adaptive_test(), "a1", t0()));
    // Questions 1 and 2 from the bank (q1 worth 1 point here, q2 too), q3 is generated.
    let first = events_of(&given, present(fallback("timeout"), at(1)));
    let UserEvent::QuestionPresented {
        question,
        generated,
        source,
        ..
    } = &first[0]
    else {
        panic!("{first:?}")
    };
    assert_eq!(
        (question.question_id.as_str(), source.as_str()),
        ("q1", QUESTION_BANK)
    );
    assert_eq!(generated.fallback.as_deref(), Some("timeout"));
    given.extend(first);
    given.extend(events_of(&given, adaptive_submit("q1", text("b"), at(2))));
    given.extend(events_of(
        &given,
        present(fallback("invalid_output"), at(3)),
    ));
    let answered = events_of(
        &given,
        adaptive_submit("q2", Answer::Choices(vec!["a".into(), "c".into()]), at(4)),
    );
    assert!(
        matches!(&answered[1], UserEvent::FeedbackGiven { max_score, .. } if *max_score == 1.0)
    );
    given.extend(answered);

    // A bank with one question to go, and one question to ask: q3; with none left the
    // attempt completes.
    let mut short = (*adaptive_test()).clone();
    short.questions.truncate(2);
    let command = UserCommand::PresentQuestion {
        assessment_id: "a1".into(),
        test: Arc::new(short),
        generation: Box::new(QuestionGeneration {
            provider_profile: None,
            model: None,
            usage: None,
            outcome: fallback("offline"),
        }),
        now: at(5),
    };
    // The short test is another definition than the attempt's: refused as inconsistent.
    assert!(UserStream::default().decide(command).is_err());
    let last = events_of(&given, present(fallback("error"), at(5)));
    let UserEvent::QuestionPresented { question, .. } = &last[0] else {
        panic!("{last:?}")
    };
    assert_eq!(question.question_id, "q3");
    given.extend(last);
    let done = events_of(
        &given,
        adaptive_submit("q3", text("ownership and borrow"), at(6)),
    );
    assert!(
        matches!(done.last(), Some(UserEvent::AssessmentCompleted { max_score, .. }) if *max_score == 3.0),
        "{done:?}"
    );
}

#[test]
fn an_adaptive_attempt_completes_when_its_bank_is_used_up() {
    let mut t = (*adaptive_test()).clone();
    t.questions.truncate(1);
    let t = Arc::new(t);
    let mut given = events_of(&[], start(&t, "a1", t0()));
    let with = |outcome| UserCommand::PresentQuestion {
        assessment_id: "a1".into(),
        test: t.clone(),
        generation: Box::new(QuestionGeneration {
            provider_profile: None,
            model: None,
            usage: None,
            outcome,
        }),
        now: at(1),
    };
    given.extend(events_of(&given, with(fallback("offline"))));
    given.extend(events_of(
        &given,
        UserCommand::SubmitAnswer {
            assessment_id: "a1".into(),
            question_id: "q1".into(),
            answer: text("b"),
            test: t.clone(),
            grading: None,
            now: at(2),
        },
    ));
    let done = events_of(&given, with(fallback("offline")));
    assert!(
        matches!(
            done.as_slice(),
            [UserEvent::AssessmentCompleted {
                reason: CompletionReason::AllAnswered,
                ..
            }]
        ),
        "{done:?}"
    );
}

#[test]
fn a_generated_question_never_takes_a_bank_id() {
    let mut t = (*adaptive_test()).clone();
    t.questions[0].id = "ai-1".into();
    let t = Arc::new(t);
    let given = events_of(&[], start(&t, "a1", t0()));
    let command = UserCommand::PresentQuestion {
        assessment_id: "a1".into(),
        test: t.clone(),
        generation: Box::new(QuestionGeneration {
            provider_profile: None,
            model: Some("m1".into()),
            usage: None,
            outcome: GenerationOutcome::Generated(generated_q("a")),
        }),
        now: at(1),
    };
    let presented = events_of(&given, command);
    let UserEvent::QuestionPresented { question, .. } = &presented[0] else {
        panic!("{presented:?}")
    };
    assert_eq!(question.question_id, "ai-1x");
}

#[test]
fn a_bank_question_event_is_stored_as_before_and_a_generated_one_carries_its_key() {
    // Written byte for byte as before the AI fields existed, so old hash chains verify.
    let json = r#"{"QuestionPresented":{"assessment_id":"a1","test_id":"rust","question":{"question_id":"q1","position":1,"kind":"single_choice","prompt":"Which keyword declares a constant?","choices":[{"id":"a","text":"let"},{"id":"b","text":"const"}],"points":1.0},"source":"question_bank","presented_at":"2026-01-01T09:00:00Z"}}"#;
    let event: UserEvent = serde_json::from_str(json).unwrap();
    assert!(
        matches!(&event, UserEvent::QuestionPresented { generated, .. } if *generated == QuestionProvenance::default())
    );
    assert_eq!(serde_json::to_string(&event).unwrap(), json);
    // And an ordinary test still writes exactly that.
    let started = events_of(&[], start(&rust_test(), "a1", t0()));
    assert_eq!(serde_json::to_string(&started[1]).unwrap(), json);

    let given = events_of(&[], start(&adaptive_test(), "a1", t0()));
    let presented = events_of(
        &given,
        present(GenerationOutcome::Generated(generated_q("a")), at(1)),
    )
    .remove(0);
    let value = serde_json::to_value(&presented).unwrap();
    let payload = &value["QuestionPresented"];
    assert_eq!(payload["key"]["answer"], "a");
    assert_eq!(payload["model"], "m1");
    assert!(payload.get("fallback").is_none(), "{payload}");
    assert!(payload["question"].get("answer").is_none(), "{payload}");
    let back: UserEvent = serde_json::from_value(value).unwrap();
    assert_eq!(back, presented);
}

mod accommodations;
