//! The event store's guarantees: a lost race is recognised on both backends, concurrent writers to one stream are retried and never both stored, and
//! snapshots mean a long stream is not read whole.

use std::sync::Arc;

use assessd::commands::{self, CommandError, Origin};
use assessd::store::chain::ChainedRepository;
use assessd::store::streams::{EventMetadata, Known, Streams};
use assessd::store::{Database, StoreError};
use chrono::Utc;
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use domain::{UserCommand, UserStream};

use crate::helpers::{spawn_app_with, Backend};

fn chat(text: &str) -> UserCommand {
    UserCommand::Chat {
        assessment_id: None,
        text: text.into(),
        reply: "reply".into(),
        tutor: "offline_tutor".into(),
        ai: None,
        now: Utc::now(),
    }
}

fn metadata() -> EventMetadata {
    EventMetadata {
        node_id: "test".into(),
        actor: "user:test".into(),
        ..Default::default()
    }
}

/// Two writers that read the same version: the second append at the same sequence, through
/// the repository the command path appends through, is refused as a lost race on both
/// stores (never an unexpected error), and only the first is stored.
async fn a_stale_writer_gets_a_conflict(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let repo = ChainedRepository::new(app.state.db.clone());
    let event = |text: &str| SerializedEvent {
        aggregate_id: "racer".into(),
        sequence: 1,
        aggregate_type: UserStream::TYPE.into(),
        event_type: "ChatExchanged".into(),
        event_version: "1.0".into(),
        payload: serde_json::json!({"ChatExchanged": {
            "assessment_id": null, "test_id": null, "question_id": null,
            "user_text": text, "reply_text": "r", "tutor": "offline_tutor",
            "exchanged_at": Utc::now(),
        }}),
        metadata: serde_json::json!({}),
    };
    repo.append::<UserStream>(vec![event("first")], None, None, None)
        .await
        .expect("first append");
    let err = repo
        .append::<UserStream>(vec![event("second")], None, None, None)
        .await
        .expect_err("stale append");
    assert!(
        matches!(err, PersistenceError::OptimisticLockError),
        "not recognised as a lost race: {err:?}"
    );
    let stored = app.state.streams.load("racer").await.unwrap();
    assert_eq!(stored.sequence, 1);
    app.stop().await;
}

/// Writers racing on one stream through `Streams` all succeed, each exactly once.
async fn concurrent_writers_are_retried_not_lost(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.snapshot_every = 3).await else {
        return;
    };
    let streams = Arc::new(Streams::new(&app.state.db, 3));
    let writers = 4;
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let streams = streams.clone();
            tokio::spawn(async move {
                // Each writer knows the stream as it last saw it, as sessions on two
                // nodes would: the others' appends make that stale.
                let mut known = Known::default();
                streams
                    .execute("shared", chat(&format!("w{i}")), &metadata(), &mut known)
                    .await?;
                streams
                    .execute("shared", chat(&format!("w{i}'")), &metadata(), &mut known)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("every writer eventually commits");
    }
    let state = streams.load("shared").await.unwrap();
    assert_eq!(state.sequence, 2 * writers);
    app.stop().await;
}

/// Twelve chat messages in `user`'s stream; the state they lead to.
async fn twelve_chats(streams: &Streams, user: &str) -> UserStream {
    let mut known = Known::default();
    for i in 0..12 {
        streams
            .execute(user, chat(&format!("m{i}")), &metadata(), &mut known)
            .await
            .unwrap();
    }
    let state = streams.load(user).await.unwrap();
    assert_eq!(state.sequence, 12);
    state
}

/// With a snapshot every 5 events, a 12-event stream is loaded from its snapshot: deleting
/// the events the snapshot covers does not change the loaded state.
async fn a_long_stream_loads_from_its_snapshot(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.snapshot_every = 5).await else {
        return;
    };
    let streams = Streams::new(&app.state.db, 5);
    let before = twelve_chats(&streams, "long").await;

    let snapshots: Vec<(i64,)> = match &app.state.db {
        Database::Sqlite(pool) => {
            sqlx::query_as("select last_sequence from snapshots where aggregate_id = 'long'")
                .fetch_all(pool)
                .await
                .unwrap()
        }
        Database::Postgres(pool) => {
            sqlx::query_as("select last_sequence from snapshots where aggregate_id = 'long'")
                .fetch_all(pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        snapshots,
        vec![(10,)],
        "one snapshot row per stream, at the last multiple of 5"
    );

    let delete = "delete from events where aggregate_id = 'long' and sequence <= 10";
    match &app.state.db {
        Database::Sqlite(pool) => sqlx::query(delete)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Database::Postgres(pool) => sqlx::query(delete)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
    .unwrap();
    let after = streams.load("long").await.unwrap();
    assert_eq!(after, before);
    app.stop().await;
}

async fn exec(db: &Database, sql: &str) {
    match db {
        Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
    }
    .unwrap();
}

/// A load reads the snapshot and the newer events in one statement: a snapshot that no
/// longer reads as the stream, or holds another sequence than its label, is passed over
/// and the stream replayed from its first event; a missing event is reported, never
/// skipped.
async fn a_snapshot_that_does_not_fit_is_replayed_past(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.snapshot_every = 5).await else {
        return;
    };
    let streams = Streams::new(&app.state.db, 5);
    let before = twelve_chats(&streams, "odd").await;
    let db = &app.state.db;
    exec(
        db,
        "update snapshots set last_sequence = 9 where aggregate_id = 'odd'",
    )
    .await;
    assert_eq!(streams.load("odd").await.unwrap(), before, "mislabelled");
    exec(
        db,
        "update snapshots set payload = '{\"not\": \"a stream\"}', last_sequence = 10 \
         where aggregate_id = 'odd'",
    )
    .await;
    assert_eq!(streams.load("odd").await.unwrap(), before, "unreadable");
    exec(
        db,
        "delete from events where aggregate_id = 'odd' and sequence = 11",
    )
    .await;
    let gap = streams.load("odd").await;
    assert!(
        matches!(&gap, Err(StoreError::Corrupt(m)) if m.contains("event 12 follows 10")),
        "{gap:?}"
    );
    app.stop().await;
}

/// The one command path refuses a session that a newer connection replaced, under the
/// user's command lock: it records nothing, while the live session records as usual.
async fn a_replaced_session_records_nothing(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let (old, new) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let _old = assessd::ownership::take(&app.state, "rita", old)
        .await
        .unwrap();
    let _new = assessd::ownership::take(&app.state, "rita", new)
        .await
        .unwrap();
    let as_session = |session_id| Origin::Session {
        session_id,
        request_id: None,
    };
    let refused = commands::execute(&app.state, "rita", chat("from old"), &as_session(old)).await;
    assert!(
        matches!(refused, Err(CommandError::Replaced)),
        "{refused:?}"
    );
    assert_eq!(app.state.streams.load("rita").await.unwrap().sequence, 0);
    let recorded = commands::execute(&app.state, "rita", chat("from new"), &as_session(new))
        .await
        .expect("the live session records");
    assert_eq!(recorded.events.len(), 1);
    app.stop().await;
}

/// What a writer keeps in memory between commands is never trusted past another writer's
/// append (as with sessions on two nodes): an append from stale memory is decided again on
/// the stream, an answer that records nothing is checked against the stream's head, and
/// the hash chain stays whole across both.
async fn memory_made_stale_by_another_writer_is_caught(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let streams = Streams::new(&app.state.db, 3);
    let (mut a, mut b) = (Known::default(), Known::default());
    async fn run(
        streams: &Streams,
        command: UserCommand,
        known: &mut Known,
    ) -> Result<assessd::store::streams::Committed, assessd::store::streams::AppendError> {
        streams.execute("twice", command, &metadata(), known).await
    }

    assert_eq!(
        run(&streams, chat("a1"), &mut a)
            .await
            .unwrap()
            .state
            .sequence,
        1
    );
    assert_eq!(
        run(&streams, chat("b1"), &mut b)
            .await
            .unwrap()
            .state
            .sequence,
        2
    );
    // Nothing to append, so no conflict would show that a's memory ends at event 1.
    let expire = UserCommand::ExpireOverdue { now: Utc::now() };
    let answered = run(&streams, expire, &mut a).await.unwrap();
    assert!(answered.events.is_empty());
    assert_eq!(answered.state.sequence, 2, "answered from stale memory");
    assert_eq!(
        run(&streams, chat("b2"), &mut b)
            .await
            .unwrap()
            .state
            .sequence,
        3
    );
    let appended = run(&streams, chat("a2"), &mut a).await.unwrap();
    assert_eq!(
        appended
            .events
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        [4]
    );
    assert_eq!(appended.state, streams.load("twice").await.unwrap());
    let verified = assessd::store::chain::verify(&app.state.db, "user", "twice")
        .await
        .unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.events_checked, 4);
    app.stop().await;
}

crate::on_both_backends!(
    a_replaced_session_records_nothing,
    a_stale_writer_gets_a_conflict,
    concurrent_writers_are_retried_not_lost,
    a_long_stream_loads_from_its_snapshot,
    a_snapshot_that_does_not_fit_is_replayed_past,
    memory_made_stale_by_another_writer_is_caught,
);

/// Every event carries a hash chained to the one before; altering, removing or reordering
/// a recorded event is found by `verify`.
async fn tampering_is_detected(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let mut victim = app.connect("victim").await;
    let (started, _) = victim.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    victim.answer(&id, "q1", serde_json::json!("a")).await;
    victim
        .answer(&id, "q2", serde_json::json!(["a", "c"]))
        .await;
    let auditor = app.token("aud", assessd::auth::Role::Auditor);
    let (status, report) = app.get("/api/audit/users/victim/verify", &auditor).await;
    assert_eq!(status, 200);
    assert_eq!(
        report,
        serde_json::json!({"ok": true, "events_checked": 8, "first_bad_sequence": null})
    );
    let (_, stream) = app.get("/api/audit/users/victim/events", &auditor).await;
    assert!(stream["items"][0]["metadata"]["hash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));

    // Someone with database access turns the wrong first answer into the right one.
    let tamper = match backend {
        Backend::Sqlite => "update events set payload = json_set(payload, '$.AnswerSubmitted.answer', 'b') where aggregate_id = 'victim' and sequence = 3",
        Backend::Postgres => "update events set payload = jsonb_set(payload, '{AnswerSubmitted,answer}', '\"b\"') where aggregate_id = 'victim' and sequence = 3",
    };
    execute(&app.state.db, tamper).await;
    let (_, report) = app.get("/api/audit/users/victim/verify", &auditor).await;
    assert_eq!(
        report,
        serde_json::json!({"ok": false, "events_checked": 3, "first_bad_sequence": 3})
    );

    // Removing an event breaks the chain too, even with the edit undone.
    let undo = match backend {
        Backend::Sqlite => "update events set payload = json_set(payload, '$.AnswerSubmitted.answer', 'a') where aggregate_id = 'victim' and sequence = 3",
        Backend::Postgres => "update events set payload = jsonb_set(payload, '{AnswerSubmitted,answer}', '\"a\"') where aggregate_id = 'victim' and sequence = 3",
    };
    execute(&app.state.db, undo).await;
    let (_, report) = app.get("/api/audit/users/victim/verify", &auditor).await;
    assert_eq!(report["ok"], true, "{report}");
    execute(
        &app.state.db,
        "delete from events where aggregate_id = 'victim' and sequence = 5",
    )
    .await;
    let (_, report) = app.get("/api/audit/users/victim/verify", &auditor).await;
    assert_eq!(report["first_bad_sequence"], 6);
    app.stop().await;
}

async fn execute(db: &Database, sql: &str) {
    match db {
        Database::Sqlite(pool) => sqlx::query(sql)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Database::Postgres(pool) => sqlx::query(sql)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
    .unwrap();
}

/// A snapshot written by an older shape of the aggregate is replaced, not a dead end.
async fn a_snapshot_that_no_longer_fits_is_rebuilt(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.snapshot_every = 3).await else {
        return;
    };
    let streams = Streams::new(&app.state.db, 3);
    for i in 0..4 {
        streams
            .execute(
                "reshaped",
                chat(&format!("m{i}")),
                &metadata(),
                &mut Known::default(),
            )
            .await
            .unwrap();
    }
    let before = streams.load("reshaped").await.unwrap();
    execute(&app.state.db, "update snapshots set payload = '{\"from_an_old_version\": true}' where aggregate_id = 'reshaped'").await;
    assert_eq!(
        streams.load("reshaped").await.unwrap(),
        before,
        "replayed from the events"
    );
    for i in 4..8 {
        streams
            .execute(
                "reshaped",
                chat(&format!("m{i}")),
                &metadata(),
                &mut Known::default(),
            )
            .await
            .expect("no lasting conflict");
    }
    assert_eq!(streams.load("reshaped").await.unwrap().sequence, 8);
    app.stop().await;
}

crate::on_both_backends!(
    tampering_is_detected,
    a_snapshot_that_no_longer_fits_is_rebuilt
);

/// Every connect reads its user's stream, and a pooled connection caches a generic plan
/// of that read after five of them: one cached while the events table was young (no
/// statistics yet, as on a new database) must still read by the primary key. With an
/// index that led with the aggregate type alone (20261202000001), the planner found it as
/// cheap on an empty table, and every connect then read every stream's events: 468 to 508
/// connects/s after 19,000 users with empty streams connected, 3,920/s with this index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_planned_on_a_young_table_uses_the_primary_key() {
    let Some(app) = crate::helpers::spawn_app(Backend::Postgres).await else {
        return;
    };
    let Database::Postgres(pool) = &app.state.db else {
        unreachable!("a PostgreSQL test");
    };
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let read = assessd::store::read_stream::READ;
    sqlx::query(&format!("prepare young_read(text, text) as {read}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar("explain execute young_read('user', 'someone')")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using events_pkey on events")
            && !plan.contains("using events_by_commit"),
        "the events are not read by their primary key:\n{plan}"
    );
    drop(conn);
    app.stop().await;
}
