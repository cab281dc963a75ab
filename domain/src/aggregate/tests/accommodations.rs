//! Given/when/then tests of the admin's changes to a user's stream (PROTOCOL section 6):
//! extra time, per-user overrides and regrading.

use std::collections::BTreeMap;

use super::*;
use crate::regrade::Correction;
use crate::test_definition::AnswerKey;

fn extend(id: &str, extra_secs: u32, now: DateTime<Utc>) -> UserCommand {
    UserCommand::ExtendDeadline {
        assessment_id: id.into(),
        extra_secs,
        reason: "documented accommodation".into(),
        actor: "admin:root".into(),
        now,
    }
}

fn state_of(events: &[UserEvent]) -> UserStream {
    let mut state = UserStream::default();
    for e in events {
        state.apply(e.clone());
    }
    state
}

fn invalid_field(given: &[UserEvent], command: UserCommand) -> String {
    match state_of(given).decide(command) {
        Err(DomainError::Invalid(e)) => e.field,
        other => panic!("expected a refused field, got {other:?}"),
    }
}

#[test]
fn extra_time_moves_the_deadline_and_a_late_answer_before_the_new_one_counts() {
    let events = events_of(&started("a1"), extend("a1", 120, at(500)));
    assert_eq!(
        events,
        [UserEvent::DeadlineExtended {
            assessment_id: "a1".into(),
            test_id: "rust".into(),
            extra_secs: 120,
            deadline: at(720),
            reason: "documented accommodation".into(),
            actor: "admin:root".into(),
            extended_at: at(500),
        }]
    );
    let mut given = started("a1");
    given.extend(events);
    let state = state_of(&given);
    let attempt = state.in_progress().unwrap();
    assert_eq!(attempt.deadline, Some(at(720)));
    assert_eq!(attempt.extension.as_ref().unwrap().seq, 3);
    // After the old deadline (600 s), before the new one: recorded and graded.
    let answer = events_of(&given, submit("a1", "q1", text("b"), at(650)));
    assert!(
        matches!(answer[0], UserEvent::AnswerSubmitted { .. }),
        "{answer:?}"
    );
    // After the new one: the expiry is recorded instead.
    let late = events_of(&given, submit("a1", "q1", text("b"), at(721)));
    assert!(matches!(
        &late[..],
        [UserEvent::AssessmentCompleted {
            reason: CompletionReason::TimeExpired,
            ..
        }]
    ));
    // Extensions add up.
    let again = events_of(&given, extend("a1", 60, at(501)));
    assert!(
        matches!(&again[..], [UserEvent::DeadlineExtended { deadline, .. }] if *deadline == at(780))
    );
}

#[test]
fn only_a_timed_attempt_in_progress_can_be_extended() {
    Given::with(())
        .given(completed("a1"))
        .when(extend("a1", 60, at(20)))
        .then_expect_error(DomainError::AssessmentCompleted {
            assessment_id: "a1".into(),
        });
    Given::with(())
        .given(started("a1"))
        .when(extend("nope", 60, at(20)))
        .then_expect_error(DomainError::AssessmentNotFound {
            assessment_id: "nope".into(),
        });
    // Past its deadline: the expiry is recorded, and the outcome says it came too late.
    assert_eq!(
        outcome_of(&started("a1"), extend("a1", 60, at(601))),
        Outcome::TooLate {
            assessment_id: "a1".into()
        }
    );
    let mut untimed = (*rust_test()).clone();
    untimed.time_limit_secs = None;
    let given = events_of(&[], start(&Arc::new(untimed), "u1", t0()));
    assert_eq!(invalid_field(&given, extend("u1", 60, at(5))), "extra_secs");
}

#[test]
fn extra_secs_and_reason_are_checked() {
    assert_eq!(
        invalid_field(&started("a1"), extend("a1", 0, at(5))),
        "extra_secs"
    );
    assert_eq!(
        invalid_field(&started("a1"), extend("a1", 86_401, at(5))),
        "extra_secs"
    );
    assert_eq!(
        outcome_of(&started("a1"), extend("a1", 86_400, at(5))),
        Outcome::Extended {
            assessment_id: "a1".into()
        }
    );
    let blank = UserCommand::ExtendDeadline {
        assessment_id: "a1".into(),
        extra_secs: 5,
        reason: "  ".into(),
        actor: "admin:root".into(),
        now: at(5),
    };
    assert_eq!(invalid_field(&started("a1"), blank), "reason");
}

fn set_override(
    test: &str,
    max_attempts: Option<u32>,
    time_limit_secs: Option<u32>,
) -> UserCommand {
    UserCommand::SetOverride {
        test_id: test.into(),
        max_attempts,
        time_limit_secs,
        reason: "second sitting".into(),
        actor: "admin:root".into(),
        now: at(0),
    }
}

#[test]
fn an_override_changes_the_limits_of_later_attempts_of_that_test_only() {
    // Two attempts used (rust_test allows 2): a third is refused...
    let mut given = completed("a1");
    let second = events_of(&given, start(&rust_test(), "a2", at(100)));
    given.extend(second);
    given.extend(events_of(
        &given,
        UserCommand::EndByAdmin {
            assessment_id: "a2".into(),
            now: at(101),
        },
    ));
    Given::with(())
        .given(given.clone())
        .when(start(&rust_test(), "a3", at(200)))
        .then_expect_error(DomainError::AttemptsUsedUp {
            test_id: "rust".into(),
            max_attempts: 2,
        });
    // ...until an override grants three, with a shorter time limit.
    let set = events_of(&given, set_override("rust", Some(3), Some(60)));
    assert!(matches!(
        &set[..],
        [UserEvent::OverrideSet {
            max_attempts: Some(3),
            ..
        }]
    ));
    given.extend(set);
    let third = events_of(&given, start(&rust_test(), "a3", at(200)));
    assert!(matches!(
        &third[0],
        UserEvent::AssessmentStarted { attempt: 3, time_limit_secs: Some(60), deadline: Some(d), .. } if *d == at(260)
    ));
    // Another test keeps its own limits.
    let other = events_of(&given, start(&other_test(), "o1", at(200)));
    assert!(matches!(
        &other[0],
        UserEvent::AssessmentStarted {
            time_limit_secs: Some(600),
            ..
        }
    ));
    // The override does not touch the attempts already started.
    let state = state_of(&given);
    assert_eq!(state.attempt("a1").unwrap().time_limit_secs, Some(600));
    assert_eq!(state.effective_limits(&rust_test()), (3, Some(60)));
    assert_eq!(state.effective_limits(&other_test()), (2, Some(600)));
}

#[test]
fn a_cleared_override_gives_the_test_its_own_limits_back() {
    let set = events_of(&[], set_override("rust", None, Some(1200)));
    let clear = UserCommand::ClearOverride {
        test_id: "rust".into(),
        reason: String::new(),
        actor: "admin:root".into(),
        now: at(1),
    };
    let cleared = events_of(&set, clear.clone());
    assert!(matches!(&cleared[..], [UserEvent::OverrideCleared { .. }]));
    let mut given = set.clone();
    given.extend(cleared);
    assert_eq!(
        state_of(&set).effective_limits(&rust_test()),
        (2, Some(1200))
    );
    assert_eq!(
        state_of(&given).effective_limits(&rust_test()),
        (2, Some(600))
    );
    Given::with(())
        .given(given)
        .when(clear)
        .then_expect_error(DomainError::NoOverride {
            test_id: "rust".into(),
        });
}

#[test]
fn an_override_must_set_a_positive_limit_and_give_a_reason() {
    assert_eq!(
        invalid_field(&[], set_override("rust", None, None)),
        "max_attempts"
    );
    assert_eq!(
        invalid_field(&[], set_override("rust", Some(0), None)),
        "max_attempts"
    );
    assert_eq!(
        invalid_field(&[], set_override("rust", None, Some(0))),
        "time_limit_secs"
    );
    let UserCommand::SetOverride { test_id, .. } = set_override("rust", Some(2), None) else {
        unreachable!()
    };
    let no_reason = UserCommand::SetOverride {
        test_id,
        max_attempts: Some(2),
        time_limit_secs: None,
        reason: String::new(),
        actor: "admin:root".into(),
        now: at(0),
    };
    assert_eq!(invalid_field(&[], no_reason), "reason");
}

/// A regrade of `question` in every version of the rust test with `correction`.
fn regrade(question: &str, correction: Correction) -> UserCommand {
    regrade_at(question, correction, at(1000))
}

fn regrade_at(question: &str, correction: Correction, now: DateTime<Utc>) -> UserCommand {
    let q = rust_test().question(question).unwrap().clone();
    // As the server checks it before it runs.
    correction.apply_to(&q).unwrap();
    let version = crate::commands::VersionQuestion {
        question: q,
        adaptive: false,
    };
    UserCommand::Regrade(Box::new(crate::commands::Regrade {
        test_id: "rust".into(),
        question_id: question.into(),
        versions: BTreeMap::from([(1, version)]),
        correction,
        corrected_version: Some(2),
        reason: "the key was wrong".into(),
        actor: "admin:root".into(),
        now,
    }))
}

fn key(answer: &str) -> Correction {
    Correction {
        answer: Some(AnswerKey::One(answer.into())),
        ..Correction::default()
    }
}

#[test]
fn a_regrade_grades_the_recorded_answer_again_and_moves_the_totals() {
    // Every answer right: 5 of 5, passed. The key of q1 is corrected to "a".
    let given = completed("a1");
    let events = events_of(&given, regrade("q1", key("a")));
    let [UserEvent::AnswerRegraded {
        old_score,
        new_score,
        max_score,
        correct,
        attempt_score,
        attempt_max_score,
        passed,
        ..
    }] = &events[..]
    else {
        panic!("one regrade expected: {events:?}");
    };
    assert_eq!(
        (*old_score, *new_score, *max_score, *correct),
        (1.0, 0.0, 1.0, false)
    );
    assert_eq!(
        (*attempt_score, *attempt_max_score, *passed),
        (4.0, 5.0, true)
    );
    let mut after = given.clone();
    after.extend(events);
    let state = state_of(&after);
    let attempt = state.attempt("a1").unwrap();
    assert_eq!(attempt.score, 4.0);
    let feedback = attempt.answer_to("q1").unwrap().feedback.as_ref().unwrap();
    assert_eq!((feedback.score, feedback.correct), (0.0, false));
    assert_eq!(
        attempt.answer_to("q1").unwrap().regraded_seq,
        Some(state.sequence)
    );
    // The same correction again records nothing.
    assert_eq!(events_of(&after, regrade("q1", key("a"))), []);
    assert_eq!(
        outcome_of(&after, regrade("q1", key("a"))),
        Outcome::Regraded {
            changed: 0,
            corrected: 0
        }
    );
}

#[test]
fn a_regrade_of_points_can_turn_a_pass_into_a_fail() {
    // q1 and q2 right (3 of 5), q3 wrong: 0.6 of 5 needed is 3: passed.
    let mut given = started("a1");
    for (q, a) in [
        ("q1", text("b")),
        ("q2", Answer::Choices(vec!["a".into(), "c".into()])),
        ("q3", text("nothing relevant")),
    ] {
        let more = events_of(&given, submit("a1", q, a, at(10)));
        given.extend(more);
    }
    assert!(matches!(
        state_of(&given).attempt("a1").unwrap().status,
        AttemptStatus::Completed { passed: true, .. }
    ));
    // q3 is now worth 6 points: 3 of 9 is below 0.6.
    let points = Correction {
        points: Some(6.0),
        ..Correction::default()
    };
    let events = events_of(&given, regrade("q3", points.clone()));
    assert!(matches!(
        &events[..],
        [UserEvent::AnswerRegraded { old_score, new_score, max_score, attempt_max_score, passed: false, .. }]
            if *old_score == 0.0 && *new_score == 0.0 && *max_score == 6.0 && *attempt_max_score == 9.0
    ));
    given.extend(events);
    let state = state_of(&given);
    assert!(matches!(
        state.attempt("a1").unwrap().status,
        AttemptStatus::Completed { passed: false, .. }
    ));
    assert_eq!(events_of(&given, regrade("q3", points)), []);
}

#[test]
fn a_regrade_touches_only_that_test() {
    // a1 answered q1 only and is in progress; an attempt of another test is untouched.
    let mut given = started("a1");
    let more = events_of(&given, submit("a1", "q1", text("a"), at(10)));
    given.extend(more);
    let events = events_of(&given, regrade_at("q1", key("a"), at(20)));
    assert!(
        matches!(&events[..], [UserEvent::AnswerRegraded { new_score, .. }] if *new_score == 1.0)
    );
    let other = events_of(&[], start(&other_test(), "o1", t0()));
    let mut other_given = other.clone();
    let answered = events_of(
        &other_given,
        UserCommand::SubmitAnswer {
            assessment_id: "o1".into(),
            question_id: "q1".into(),
            answer: text("a"),
            test: other_test(),
            grading: None,
            now: at(3),
        },
    );
    other_given.extend(answered);
    assert_eq!(
        events_of(&other_given, regrade_at("q1", key("a"), at(20))),
        []
    );
}

#[test]
fn new_events_are_stored_flat_and_load_again() {
    let events = events_of(&completed("a1"), regrade("q1", key("a")));
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(
        json["AnswerRegraded"]["correction"],
        serde_json::json!({"answer": "a"})
    );
    assert_eq!(json["AnswerRegraded"]["corrected_version"], 2);
    let back: UserEvent = serde_json::from_value(json).unwrap();
    assert_eq!(back, events[0]);
    // A snapshot written before these fields existed still loads.
    let mut state = state_of(&completed("a1"));
    let mut old = serde_json::to_value(&state).unwrap();
    old.as_object_mut().unwrap().remove("overrides");
    for a in old["attempts"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("extension");
        for r in a["answers"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("regraded_seq");
        }
    }
    let loaded: UserStream = serde_json::from_value(old).unwrap();
    state.overrides.clear();
    assert_eq!(loaded, state);
}

#[test]
fn an_attempt_in_progress_answers_a_corrected_question_with_the_correction() {
    // a1 has answered q1 and shows q2 (key a, c; 2 points); the key is corrected to a
    // alone, and q3 (not shown yet) becomes worth 4 points.
    let mut given = started("a1");
    let more = events_of(&given, submit("a1", "q1", text("b"), at(10)));
    given.extend(more);
    let only_a = Correction {
        answer: Some(AnswerKey::Many(vec!["a".into()])),
        ..Correction::default()
    };
    let events = events_of(&given, regrade_at("q2", only_a.clone(), at(20)));
    let [UserEvent::QuestionCorrected {
        question_id,
        points,
        attempt_max_score,
        correction,
        ..
    }] = &events[..]
    else {
        panic!("one correction expected: {events:?}");
    };
    assert_eq!(
        (
            question_id.as_str(),
            *points,
            *attempt_max_score,
            correction
        ),
        ("q2", 2.0, 5.0, &only_a)
    );
    assert_eq!(
        outcome_of(&given, regrade_at("q2", only_a.clone(), at(20))),
        Outcome::Regraded {
            changed: 0,
            corrected: 1
        }
    );
    given.extend(events);
    // The same correction again records nothing.
    assert_eq!(events_of(&given, regrade_at("q2", only_a, at(21))), []);
    let four = Correction {
        points: Some(4.0),
        ..Correction::default()
    };
    let events = events_of(&given, regrade_at("q3", four, at(22)));
    assert!(
        matches!(&events[..], [UserEvent::QuestionCorrected { points, attempt_max_score, .. }]
            if *points == 4.0 && *attempt_max_score == 7.0),
        "{events:?}"
    );
    given.extend(events);
    // The old key's answer now earns nothing; the corrected one full marks.
    let old_key = events_of(
        &given,
        submit(
            "a1",
            "q2",
            Answer::Choices(vec!["a".into(), "c".into()]),
            at(30),
        ),
    );
    assert!(
        matches!(&old_key[1], UserEvent::FeedbackGiven { score, correct: false, .. } if *score == 0.0),
        "{old_key:?}"
    );
    let new_key = events_of(
        &given,
        submit("a1", "q2", Answer::Choices(vec!["a".into()]), at(30)),
    );
    assert!(
        matches!(&new_key[1], UserEvent::FeedbackGiven { score, max_score, correct: true, .. }
            if *score == 2.0 && *max_score == 2.0),
        "{new_key:?}"
    );
    given.extend(new_key);
    // q3 is presented at its corrected points and graded out of them.
    assert!(matches!(
        state_of(&given).attempt("a1").unwrap().current_question.as_ref(),
        Some((q, _)) if q.question_id == "q3" && q.points == 4.0
    ));
    let last = events_of(
        &given,
        submit("a1", "q3", text("ownership borrow lifetime"), at(40)),
    );
    assert!(
        matches!(&last[..], [_, UserEvent::FeedbackGiven { score, .. }, UserEvent::AssessmentCompleted { score: total, max_score, passed: true, .. }]
            if *score == 4.0 && *total == 7.0 && *max_score == 7.0),
        "{last:?}"
    );
}

#[test]
fn a_finished_attempt_without_the_answer_records_nothing() {
    // The clock ended a1 before q2 was answered.
    let mut given = started("a1");
    let more = events_of(&given, submit("a1", "q1", text("b"), at(10)));
    given.extend(more);
    let expired = events_of(&given, UserCommand::ExpireOverdue { now: at(601) });
    given.extend(expired);
    assert_eq!(
        events_of(&given, regrade_at("q2", key_many("a"), at(700))),
        []
    );
}

fn key_many(answer: &str) -> Correction {
    Correction {
        answer: Some(AnswerKey::Many(vec![answer.into()])),
        ..Correction::default()
    }
}

#[test]
fn a_later_correction_keeps_the_earlier_one() {
    // Every answer right (q1: b). The key becomes a, then q1's points become 3: the
    // second regrade grades with key a and 3 points, not the version's key b.
    let mut given = completed("a1");
    let first = events_of(&given, regrade("q1", key("a")));
    given.extend(first);
    let points = Correction {
        points: Some(3.0),
        ..Correction::default()
    };
    let second = events_of(&given, regrade_at("q1", points.clone(), at(2000)));
    assert!(
        matches!(&second[..], [UserEvent::AnswerRegraded { new_score, max_score, correct: false, attempt_score, attempt_max_score, .. }]
            if *new_score == 0.0 && *max_score == 3.0 && *attempt_score == 4.0 && *attempt_max_score == 7.0),
        "{second:?}"
    );
    given.extend(second);
    let state = state_of(&given);
    let seen = &state.attempt("a1").unwrap().corrections["q1"];
    assert_eq!(seen.correction, key("a").then(&points));
    assert_eq!(events_of(&given, regrade_at("q1", points, at(2001))), []);
}

#[test]
fn a_model_grade_keeps_its_judgement_when_only_the_points_change() {
    // The model gave q3 (2 points) 1.5; the offline grader would give this answer 0.
    let mut command = submit("a1", "q3", text("it checks references"), at(20));
    if let UserCommand::SubmitAnswer { grading, .. } = &mut command {
        *grading = graded(1.5, "Partly: say what it checks.");
    }
    let mut given = at_q3();
    let more = events_of(&given, command);
    given.extend(more);
    let points = Correction {
        points: Some(4.0),
        ..Correction::default()
    };
    let scaled = events_of(&given, regrade("q3", points));
    let [UserEvent::AnswerRegraded {
        new_score,
        max_score,
        feedback,
        graded_by,
        ..
    }] = &scaled[..]
    else {
        panic!("{scaled:?}");
    };
    assert_eq!((*new_score, *max_score), (3.0, 4.0));
    assert_eq!(
        (feedback.as_str(), graded_by.as_deref()),
        ("Partly: say what it checks.", Some("m1"))
    );
    given.extend(scaled);
    // New keywords change the rubric: the offline grader grades it again.
    let keywords = Correction {
        keywords: Some(vec!["references".into()]),
        ..Correction::default()
    };
    let offline = events_of(&given, regrade_at("q3", keywords, at(2000)));
    assert!(
        matches!(&offline[..], [UserEvent::AnswerRegraded { new_score, max_score, graded_by: None, .. }]
            if *new_score == 4.0 && *max_score == 4.0),
        "{offline:?}"
    );
}
