//! Snapshots never skip events. cqrs-es 0.5 hands the repository a snapshot of the state
//! after the events up to the snapshot boundary, which sqlite-es / postgres-es label with
//! the commit's last sequence; a multi-event commit that crosses the boundary then made
//! every later load skip events. These tests hold the store to: the loaded aggregate equals
//! a replay from sequence 1, and a stored snapshot is exactly the state at its label.

use std::sync::Arc;

use assessd::store::streams::{EventMetadata, Known, Streams};
use assessd::store::Database;
use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, EventStore};
use domain::{Answer, TestDefinition, UserCommand, UserStream};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::helpers::{spawn_app, Backend};

fn metadata() -> EventMetadata {
    EventMetadata {
        node_id: "test".into(),
        actor: "user:test".into(),
        ..Default::default()
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap()
}

fn definition(id: &str, json: &str) -> Arc<TestDefinition> {
    let mut test: TestDefinition = serde_json::from_str(json).expect("test definition");
    test.id = id.into();
    test.version = 1;
    test.validate().expect("valid test");
    Arc::new(test)
}

/// Three questions, a 100 s limit, three attempts.
fn timed() -> Arc<TestDefinition> {
    definition(
        "timed",
        r#"{"title":"Timed","max_attempts":3,"time_limit_secs":100,"pass_ratio":0.5,"questions":[
        {"id":"a","kind":"single_choice","prompt":"A?","choices":[{"id":"x","text":"x"},{"id":"y","text":"y"}],"answer":"x"},
        {"id":"b","kind":"multiple_choice","prompt":"B?","choices":[{"id":"x","text":"x"},{"id":"y","text":"y"}],"answer":["x","y"],"points":2},
        {"id":"c","kind":"free_text","prompt":"C?","keywords":["red","blue"],"points":2}]}"#,
    )
}

/// Two questions, no limit, two attempts.
fn untimed() -> Arc<TestDefinition> {
    definition(
        "untimed",
        r#"{"title":"Untimed","max_attempts":2,"questions":[
        {"id":"p","kind":"single_choice","prompt":"P?","choices":[{"id":"x","text":"x"},{"id":"y","text":"y"}],"answer":"y"},
        {"id":"q","kind":"free_text","prompt":"Q?","keywords":["green"]}]}"#,
    )
}

fn tests() -> [Arc<TestDefinition>; 2] {
    [timed(), untimed()]
}

/// The user's state folded from every event, ignoring snapshots.
async fn replay(db: &Database, user: &str) -> UserStream {
    macro_rules! fold {
        ($repo:expr) => {{
            let store = PersistedEventStore::<_, UserStream>::new_event_store($repo);
            let mut state = UserStream::default();
            for envelope in store.load_events(user).await.expect("events load") {
                state.apply(envelope.payload);
            }
            state
        }};
    }
    match db {
        Database::Sqlite(pool) => fold!(sqlite_es::SqliteEventRepository::new(pool.clone())),
        Database::Postgres(pool) => fold!(postgres_es::PostgresEventRepository::new(pool.clone())),
    }
}

/// The user's state after exactly the first `sequence` events, ignoring snapshots.
async fn replay_to(db: &Database, user: &str, sequence: usize) -> UserStream {
    macro_rules! fold {
        ($repo:expr) => {{
            let store = PersistedEventStore::<_, UserStream>::new_event_store($repo);
            let mut state = UserStream::default();
            for envelope in store.load_events(user).await.expect("events load") {
                if envelope.sequence <= sequence {
                    state.apply(envelope.payload);
                }
            }
            state
        }};
    }
    match db {
        Database::Sqlite(pool) => fold!(sqlite_es::SqliteEventRepository::new(pool.clone())),
        Database::Postgres(pool) => fold!(postgres_es::PostgresEventRepository::new(pool.clone())),
    }
}

/// The stored snapshot row of `user`: (last_sequence, the state it holds).
async fn snapshot_row(db: &Database, user: &str) -> Option<(usize, UserStream)> {
    let row: Option<(i64, serde_json::Value)> = match db {
        Database::Sqlite(pool) => {
            sqlx::query_as("select last_sequence, payload from snapshots where aggregate_id = ?")
                .bind(user)
                .fetch_optional(pool)
                .await
        }
        Database::Postgres(pool) => {
            sqlx::query_as("select last_sequence, payload from snapshots where aggregate_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await
        }
    }
    .expect("snapshot query");
    row.map(|(label, payload)| {
        (
            label as usize,
            serde_json::from_value(payload).expect("snapshot deserializes"),
        )
    })
}

/// What must hold after every command: the snapshot holds exactly the state at its label,
/// and the loaded state (snapshot + newer events) equals a full replay.
async fn check_consistent(db: &Database, streams: &Streams, user: &str) -> Result<(), String> {
    if let Some((label, held)) = snapshot_row(db, user).await {
        let expected = replay_to(db, user, label).await;
        if held != expected {
            return Err(format!(
                "the snapshot labelled {label} holds the state after event {}",
                held.sequence
            ));
        }
    }
    let loaded = streams.load(user).await.map_err(|e| e.to_string())?;
    let replayed = replay(db, user).await;
    if loaded != replayed {
        return Err(format!(
            "loaded state (sequence {}) differs from the replay (sequence {})",
            loaded.sequence, replayed.sequence
        ));
    }
    Ok(())
}

/// The answer that earns full marks on the current question of the attempt in progress,
/// or a wrong one.
fn answer_for(state: &UserStream, right: bool) -> Option<UserCommand> {
    let attempt = state.in_progress()?;
    let (question, _) = attempt.current_question.as_ref()?;
    let test = tests().into_iter().find(|t| t.id == attempt.test_id)?;
    let answer = match (question.question_id.as_str(), right) {
        ("a", true) => Answer::Text("x".into()),
        ("b", true) => Answer::Choices(vec!["y".into(), "x".into()]),
        ("c", true) => Answer::Text("red and blue".into()),
        ("p", true) => Answer::Text("y".into()),
        ("q", true) => Answer::Text("green".into()),
        ("b", false) => Answer::Choices(vec!["x".into()]),
        (_, false) if question.choices.is_empty() => Answer::Text("no idea".into()),
        (_, _) => Answer::Text("z".into()),
    };
    Some(UserCommand::SubmitAnswer {
        assessment_id: attempt.assessment_id.clone(),
        question_id: question.question_id.clone(),
        answer,
        test,
        grading: None,
        now: t0(),
    })
}

/// One step of a random session.
#[derive(Debug, Clone)]
pub enum Step {
    Start { test: usize, reversed: bool },
    Answer { right: bool },
    WrongQuestion,
    Chat,
    Wait { secs: i64 },
    EndByAdmin,
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..2usize, any::<bool>()).prop_map(|(test, reversed)| Step::Start { test, reversed }),
        6 => any::<bool>().prop_map(|right| Step::Answer { right }),
        1 => Just(Step::WrongQuestion),
        2 => Just(Step::Chat),
        2 => (1..150i64).prop_map(|secs| Step::Wait { secs }),
        1 => Just(Step::EndByAdmin),
    ]
}

/// Runs `steps` as `user` on `streams`, without checks: a random but valid-looking history.
pub async fn drive(streams: &Streams, user: &str, steps: &[Step]) -> Result<(), String> {
    run(None, streams, user, steps).await
}

/// Runs `steps` against a fresh user on `streams`, checking consistency after each.
async fn run_steps(
    db: &Database,
    streams: &Streams,
    user: &str,
    steps: &[Step],
) -> Result<(), String> {
    run(Some(db), streams, user, steps).await
}

async fn run(
    db: Option<&Database>,
    streams: &Streams,
    user: &str,
    steps: &[Step],
) -> Result<(), String> {
    let mut now = t0();
    // Kept across the steps, as a live session's command lock keeps it.
    let mut known = Known::default();
    for (i, step) in steps.iter().enumerate() {
        let state = streams.load(user).await.map_err(|e| e.to_string())?;
        let command = match step {
            Step::Start { test, reversed } => {
                let test = tests()[*test].clone();
                let mut order: Vec<String> = test.questions.iter().map(|q| q.id.clone()).collect();
                if *reversed {
                    order.reverse();
                }
                Some(UserCommand::StartAssessment {
                    test,
                    assessment_id: format!("{user}-{i}"),
                    question_order: order,
                    now,
                })
            }
            Step::Answer { right } => answer_for(&state, *right).map(|mut c| {
                if let UserCommand::SubmitAnswer { now: at, .. } = &mut c {
                    *at = now;
                }
                c
            }),
            Step::WrongQuestion => state.in_progress().map(|a| UserCommand::SubmitAnswer {
                assessment_id: a.assessment_id.clone(),
                question_id: "nope".into(),
                answer: Answer::Text("x".into()),
                test: tests()
                    .into_iter()
                    .find(|t| t.id == a.test_id)
                    .unwrap_or_else(timed),
                grading: None,
                now,
            }),
            Step::Chat => Some(UserCommand::Chat {
                assessment_id: state.in_progress().map(|a| a.assessment_id.clone()),
                text: format!("hint {i}?"),
                reply: "think again".into(),
                tutor: "offline_tutor".into(),
                ai: None,
                now,
            }),
            Step::Wait { secs } => {
                now += Duration::seconds(*secs);
                Some(UserCommand::ExpireOverdue { now })
            }
            Step::EndByAdmin => state.in_progress().map(|a| UserCommand::EndByAdmin {
                assessment_id: a.assessment_id.clone(),
                now,
            }),
        };
        // A refused command records nothing; that is part of what is being exercised.
        let committed = match command {
            Some(command) => streams
                .execute(user, command, &metadata(), &mut known)
                .await
                .ok(),
            None => None,
        };
        if let Some(db) = db {
            check_consistent(db, streams, user)
                .await
                .map_err(|e| format!("after step {i} ({step:?}): {e}"))?;
            // The state decided from memory is the state the stream replays to.
            if let Some(committed) = committed {
                let replayed = replay(db, user).await;
                if committed.state != replayed {
                    return Err(format!(
                        "after step {i} ({step:?}): the state in memory (sequence {}) differs from the replay (sequence {})",
                        committed.state.sequence, replayed.sequence
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Every offset of a multi-event command around the boundary: a stream of `offset` single
/// events, then a whole attempt (a start appends 2 events, each answer 3).
async fn a_multi_event_command_at_every_offset_never_skips_events(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let db = &app.state.db;
    for every in [3, 20] {
        let streams = Streams::new(db, every);
        for offset in 0..every + 3 {
            let user = format!("offset-{every}-{offset}");
            let mut known = Known::default();
            for i in 0..offset {
                let chat = UserCommand::Chat {
                    assessment_id: None,
                    text: format!("m{i}"),
                    reply: "r".into(),
                    tutor: "offline_tutor".into(),
                    ai: None,
                    now: t0(),
                };
                streams
                    .execute(&user, chat, &metadata(), &mut known)
                    .await
                    .unwrap();
            }
            let steps = [
                Step::Start {
                    test: 0,
                    reversed: false,
                },
                Step::Answer { right: true },
                Step::Answer { right: false },
                Step::Answer { right: true },
                Step::Start {
                    test: 0,
                    reversed: true,
                },
                Step::Answer { right: true },
            ];
            if let Err(e) = run_steps(db, &streams, &user, &steps).await {
                panic!("interval {every}, offset {offset}: {e}");
            }
            let state = streams.load(&user).await.unwrap();
            assert_eq!(state.sequence, offset + 2 + 3 * 3 + 2 + 3);
            let finished = &state.attempts[0];
            assert!(!finished.is_in_progress());
            assert_eq!(finished.answered(), 3, "interval {every}, offset {offset}");
            assert_eq!(finished.score, 3.0, "interval {every}, offset {offset}");
        }
    }
    app.stop().await;
}

/// Random command sequences, any snapshot interval from 1 to 30: the loaded aggregate
/// always equals a replay from sequence 1. `PROPTEST_CASES` sets the number of cases.
async fn random_sessions_load_as_they_replay(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let db = app.state.db.clone();
    let handle = tokio::runtime::Handle::current();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let result = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = (1..=30usize, prop::collection::vec(step(), 1..40));
        runner.run(&strategy, |(every, steps)| {
            let streams = Streams::new(&db, every);
            let user = format!("prop-{}", uuid::Uuid::new_v4().simple());
            handle
                .block_on(run_steps(&db, &streams, &user, &steps))
                .map_err(|e| TestCaseError::fail(format!("interval {every}: {e}")))
        })
    })
    .await
    .expect("proptest task");
    if let Err(failure) = result {
        panic!("{failure}");
    }
    app.stop().await;
}

crate::on_both_backends!(
    a_multi_event_command_at_every_offset_never_skips_events,
    random_sessions_load_as_they_replay,
);
