//! Read models: a test-taker sees the attempt they finished a moment ago, the view agrees
//! with the events, and on PostgreSQL an event that commits late is not passed over.

use std::time::Duration;

use assessd::auth::Role;
use assessd::store::streams::EventMetadata;
use assessd::store::Database;
use chrono::Utc;
use domain::{UserCommand, UserEvent};
use projections::assessments::AssessmentRow;
use serde_json::json;
use sqlx::Connection;

use crate::helpers::{demo_answer, spawn_app, Backend};

/// Finishing an attempt and asking for one's attempts at once shows it finished; so does
/// the test list's count.
async fn my_assessments_show_an_attempt_finished_a_moment_ago(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut ada = app.connect("ada").await;
    let (started, mut question) = ada.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    let token = app.token("ada", Role::Taker);
    let (status, mine) = app.get("/api/me/assessments", &token).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["items"][0]["status"], "in_progress", "{mine}");
    loop {
        let q = question["question_id"].as_str().unwrap().to_string();
        let (_, _, next) = ada.answer(&id, &q, demo_answer(&q)).await;
        if next["type"] == "ASSESSMENT_COMPLETED" {
            break;
        }
        question = next;
    }
    // No waiting here: the read waits for the view to pass ada's own last event.
    let (status, mine) = app.get("/api/me/assessments", &token).await;
    assert_eq!(status, 200);
    let items = mine["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{mine}");
    let attempt = &items[0];
    assert_eq!(attempt["assessment_id"], id.as_str());
    assert_eq!(attempt["status"], "completed");
    assert_eq!(attempt["answered"], 4);
    assert_eq!(attempt["total_questions"], 4);
    assert_eq!(attempt["passed"], true);
    assert_eq!(attempt["reason"], "all_answered");
    assert_eq!(attempt["score"], attempt["max_score"]);
    assert!(attempt["completed_at"].is_string() && attempt["duration_secs"].is_number());
    assert!(mine["next_cursor"].is_null());

    let (_, tests) = app.get("/api/tests", &token).await;
    let demo = tests["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "demo")
        .unwrap();
    assert_eq!(demo["attempts_used"], 1, "{demo}");
    assert_eq!(demo["status"], "available", "{demo}");

    // Another user sees none of it.
    let (_, theirs) = app
        .get("/api/me/assessments", &app.token("bob", Role::Taker))
        .await;
    assert_eq!(theirs["items"], json!([]));
    // Auditors and admins have no "own attempts" here.
    let (status, _) = app
        .get("/api/me/assessments", &app.token("a", Role::Auditor))
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.get("/api/me/assessments?limit=0", &token).await;
    assert_eq!(status, 400);
    app.stop().await;
}

/// Pages of one: the cursor walks every attempt once, oldest first.
async fn my_assessments_page(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let metadata = EventMetadata {
        node_id: "test".into(),
        actor: "user:pat".into(),
        ..Default::default()
    };
    let demo = app.state.catalog.latest("demo").await.unwrap().unwrap();
    for i in 0..3 {
        let start = UserCommand::StartAssessment {
            test: demo.clone(),
            assessment_id: format!("a{i}"),
            question_order: demo.questions.iter().map(|q| q.id.clone()).collect(),
            now: Utc::now(),
        };
        app.state
            .streams
            .execute("pat", start, &metadata, &mut Default::default())
            .await
            .unwrap();
        let end = UserCommand::EndByAdmin {
            assessment_id: format!("a{i}"),
            now: Utc::now(),
        };
        app.state
            .streams
            .execute("pat", end, &metadata, &mut Default::default())
            .await
            .unwrap();
    }
    app.state.projections.nudge();
    let token = app.token("pat", Role::Taker);
    let mut seen = Vec::new();
    let mut path = "/api/me/assessments?limit=1".to_string();
    loop {
        let (status, page) = app.get(&path, &token).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["assessment_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/me/assessments?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["a0", "a1", "a2"]);
    app.stop().await;
}

crate::on_both_backends!(
    my_assessments_show_an_attempt_finished_a_moment_ago,
    my_assessments_page,
);

/// PostgreSQL numbers events at insert, not at commit. A transaction that inserted first
/// and commits last must still be applied: the runner reads only below the oldest running
/// writer, so it waits for it instead of passing it by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_commits_late_is_not_skipped() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let Database::Postgres(pool) = &app.state.db else {
        unreachable!("a PostgreSQL test");
    };
    let started = |id: &str| UserEvent::AssessmentStarted {
        assessment_id: id.into(),
        test_id: "demo".into(),
        test_version: 1,
        title: "Demo".into(),
        attempt: 1,
        total_questions: 4,
        max_score: 5.0,
        pass_ratio: 0.6,
        time_limit_secs: None,
        deadline: None,
        question_order: vec!["q1".into()],
        started_at: Utc::now(),
    };
    // The slow writer inserts first (so it has the lower global position) and holds on.
    let mut slow = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut held = slow.begin().await.unwrap();
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata) values ('user', 'slow', 1, 'AssessmentStarted', \
         '1.0', $1, '{}')",
    )
    .bind(serde_json::to_value(started("s1")).unwrap())
    .execute(&mut *held)
    .await
    .unwrap();
    // A fast writer commits after it.
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata) values ('user', 'fast', 1, 'AssessmentStarted', \
         '1.0', $1, '{}')",
    )
    .bind(serde_json::to_value(started("f1")).unwrap())
    .execute(pool)
    .await
    .unwrap();
    let (slow_pos, fast_pos): (i64, i64) = sqlx::query_as(
        "select (select global_position from events where aggregate_id = 'slow'), \
                (select global_position from events where aggregate_id = 'fast')",
    )
    .fetch_one(&mut *held)
    .await
    .unwrap();
    assert!(slow_pos < fast_pos, "the held event has the lower position");

    // While the slow writer runs, the runner may not pass it: not even the fast event,
    // which is newer in commit order but would move the checkpoint past the slow one.
    let projections = app.state.projections.clone();
    projections.catch_up("assessments").await.unwrap();
    let rows = |user: &'static str| {
        let db = projections.db();
        async move {
            projections::assessments::of_user(&db, user)
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(rows("slow").await, 0);
    assert_eq!(
        rows("fast").await,
        0,
        "the fast event waits behind the running writer"
    );

    held.commit().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        projections.catch_up("assessments").await.unwrap();
        if rows("slow").await == 1 && rows("fast").await == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both events are applied once the slow writer commits"
        );
        tokio::task::yield_now().await;
    }
    app.stop().await;
}

/// Returns once the live view has applied every recorded event. On PostgreSQL the feed
/// stops below the oldest transaction running anywhere on the server (other tests' too),
/// so one catch-up may apply less than everything: look again until nothing is left.
pub(crate) async fn caught_up(state: &assessd::state::AppState) {
    let db = state.projections.db();
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    loop {
        let mut left = 0;
        for name in projections::runner::ALL {
            state.projections.catch_up(name).await.unwrap();
            let checkpoint = projections::checkpoint::read(&db, name).await.unwrap();
            left += projections::feed::count_after(&db, checkpoint.position)
                .await
                .unwrap();
        }
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the view never caught up"
        );
        tokio::task::yield_now().await;
    }
}

/// The rows of the live view once it has applied every event.
async fn caught_up_rows(app: &crate::helpers::TestApp) -> Vec<AssessmentRow> {
    caught_up(&app.state).await;
    projections::assessments::all(&app.state.projections.db())
        .await
        .unwrap()
}

/// A rebuild started while test-takers answer ends with the view a quiet rebuild from
/// scratch gives, and no answer recorded meanwhile is missing.
async fn a_rebuild_during_live_answering_equals_a_quiet_one(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.token("root", Role::Admin);
    // Some history before the rebuild starts.
    let takers: Vec<_> = (0..6)
        .map(|i| {
            let addr = app.addr;
            let token = app.token(&format!("live{i}"), Role::Taker);
            tokio::spawn(async move {
                let mut client = crate::helpers::ws_connect(addr, &token).await.unwrap();
                client.recv_type("CONNECTED").await;
                for _ in 0..3 {
                    let (started, mut question) = client.start("demo").await;
                    let id = started["assessment_id"].as_str().unwrap().to_string();
                    loop {
                        let q = question["question_id"].as_str().unwrap().to_string();
                        let (_, _, next) = client.answer(&id, &q, demo_answer(&q)).await;
                        if next["type"] == "ASSESSMENT_COMPLETED" {
                            break;
                        }
                        question = next;
                    }
                }
            })
        })
        .collect();
    let response = app
        .http
        .post(app.url("/api/admin/projections/assessments/rebuild"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: serde_json::Value = response.json().await.unwrap();
    let job_id = job["job_id"].as_str().unwrap().to_string();
    // Follow the job to its end, as an admin would.
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    let finished = loop {
        let (status, job) = app.get(&format!("/api/admin/jobs/{job_id}"), &admin).await;
        assert_eq!(status, 200, "{job}");
        if job["status"] != "running" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuild never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(finished["status"], "done", "{finished}");
    for taker in takers {
        taker.await.expect("taker finished");
    }
    let live = caught_up_rows(&app).await;
    assert_eq!(live.len(), 6 * 3, "every attempt is in the view");
    let history = projections::feed::count_all(&app.state.projections.db())
        .await
        .unwrap();
    assert!(
        finished["events_total"].as_i64().unwrap() < history,
        "answers were recorded while the rebuild ran: {finished}, {history} events now"
    );
    assert!(live
        .iter()
        .all(|r| r.status == "completed" && r.answered == 4));

    // A quiet rebuild from scratch gives the same rows.
    projections::rebuild::rebuild(&app.state.projections.db(), "assessments", |_| {})
        .await
        .unwrap();
    let quiet = projections::assessments::all(&app.state.projections.db())
        .await
        .unwrap();
    assert_eq!(live, quiet);

    let (status, list) = app.get("/api/admin/projections", &admin).await;
    assert_eq!(status, 200, "{list}");
    let view = &list["items"][0];
    assert_eq!(view["name"], "assessments");
    assert_eq!(view["lag"], 0, "{view}");
    assert!(view["last_rebuilt_at"].is_string(), "{view}");
    app.stop().await;
}

/// Unknown projections and jobs are 404; only admins see any of it.
async fn projection_admin_endpoints_refuse_what_they_must(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.token("root", Role::Admin);
    assert_eq!(
        app.post("/api/admin/projections/nope/rebuild", &admin)
            .await
            .0,
        404
    );
    assert_eq!(app.get("/api/admin/jobs/nope", &admin).await.0, 404);
    let auditor = app.token("a", Role::Auditor);
    assert_eq!(app.get("/api/admin/projections", &auditor).await.0, 403);
    assert_eq!(
        app.post("/api/admin/projections/assessments/rebuild", &auditor)
            .await
            .0,
        403
    );
    app.stop().await;
}

/// Three finished attempts and one under way: the figures an admin gets follow from the
/// answers, and a rebuild of the statistics gives the same.
async fn test_statistics_follow_from_the_answers(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let wrong = |q: &str| match q {
        "q1" => json!("a"),
        "q2" => json!(["b"]),
        "q3" => json!("b"),
        _ => json!("no idea"),
    };
    // u1 all right (6 points), u2 all but q1 (5), u3 nothing (0); u4 only starts.
    for (user, right) in [("u1", 4), ("u2", 3), ("u3", 0)] {
        let mut client = app.connect(user).await;
        let (started, mut question) = client.start("demo").await;
        let id = started["assessment_id"].as_str().unwrap().to_string();
        loop {
            let q = question["question_id"].as_str().unwrap().to_string();
            let good = match right {
                4 => true,
                3 => q != "q1",
                _ => false,
            };
            let answer = if good { demo_answer(&q) } else { wrong(&q) };
            let (_, _, next) = client.answer(&id, &q, answer).await;
            if next["type"] == "ASSESSMENT_COMPLETED" {
                break;
            }
            question = next;
        }
    }
    app.connect("u4").await.start("demo").await;
    caught_up(&app.state).await;
    let admin = app.token("root", Role::Admin);
    let (status, stats) = app.get("/api/admin/tests/demo/statistics", &admin).await;
    assert_eq!(status, 200, "{stats}");
    let v = &stats["versions"][0];
    assert_eq!(v["version"], 1);
    assert_eq!(
        (
            v["attempts_started"].as_u64(),
            v["attempts_completed"].as_u64()
        ),
        (Some(4), Some(3))
    );
    assert!(
        (v["mean_score"].as_f64().unwrap() - 11.0 / 3.0).abs() < 1e-9,
        "{v}"
    );
    assert!(
        (v["pass_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{v}"
    );
    let q = |id: &str| {
        v["questions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["question_id"] == id)
            .cloned()
            .unwrap()
    };
    let close = |value: &serde_json::Value, expected: f64| {
        (value.as_f64().unwrap() - expected).abs() < 1e-9
    };
    assert!(close(&q("q1")["facility"], 1.0 / 3.0), "{}", q("q1"));
    assert!(close(&q("q1")["discrimination"], 1.0), "{}", q("q1"));
    assert!(close(&q("q2")["facility"], 2.0 / 3.0), "{}", q("q2"));
    assert_eq!(q("q4")["answered"], 3);
    let ids: Vec<_> = v["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question_id"].clone())
        .collect();
    assert_eq!(ids, [json!("q1"), json!("q2"), json!("q3"), json!("q4")]);

    projections::rebuild::rebuild(&app.state.projections.db(), "test_statistics", |_| {})
        .await
        .unwrap();
    let (_, rebuilt) = app.get("/api/admin/tests/demo/statistics", &admin).await;
    assert_eq!(stats, rebuilt);
    assert_eq!(
        app.get("/api/admin/tests/nope/statistics", &admin).await.0,
        404
    );
    app.stop().await;
}

crate::on_both_backends!(
    test_statistics_follow_from_the_answers,
    a_rebuild_during_live_answering_equals_a_quiet_one,
    projection_admin_endpoints_refuse_what_they_must,
);

/// For random histories of a few users, the view kept up to date event by event equals
/// the view rebuilt from scratch. `PROPTEST_CASES` sets the number of cases.
async fn the_live_view_equals_the_rebuilt_one(backend: Backend) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let handle = tokio::runtime::Handle::current();
    let state = app.state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let histories =
            prop::collection::vec(prop::collection::vec(crate::snapshots::step(), 1..25), 1..4);
        runner.run(&histories, |histories| {
            handle.block_on(async {
                let case = uuid::Uuid::new_v4().simple().to_string();
                for (i, steps) in histories.iter().enumerate() {
                    crate::snapshots::drive(&state.streams, &format!("{case}-{i}"), steps)
                        .await
                        .map_err(TestCaseError::fail)?;
                    // Apply as it goes, so the live view is built in many small batches.
                    caught_up(&state).await;
                }
                let db = state.projections.db();
                let live = projections::assessments::all(&db)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                projections::rebuild::rebuild(&db, "assessments", |_| {})
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let rebuilt = projections::assessments::all(&db)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(live, rebuilt);
                // The statistics too, for both tests the histories use.
                let facts = || async {
                    let mut all = Vec::new();
                    for test in ["timed", "untimed"] {
                        let (mut attempts, mut answers) =
                            projections::test_statistics::facts_of(&db, test)
                                .await
                                .unwrap();
                        attempts.sort_by(|a, b| a.assessment_id.cmp(&b.assessment_id));
                        answers.sort_by(|a, b| {
                            (&a.assessment_id, &a.question_id)
                                .cmp(&(&b.assessment_id, &b.question_id))
                        });
                        all.push(format!("{attempts:?}{answers:?}"));
                    }
                    all
                };
                let live = facts().await;
                projections::rebuild::rebuild(&db, "test_statistics", |_| {})
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(live, facts().await);
                Ok(())
            })
        })
    })
    .await
    .expect("proptest task");
    if let Err(failure) = result {
        panic!("{failure}");
    }
    app.stop().await;
}

crate::on_both_backends!(the_live_view_equals_the_rebuilt_one);

/// Two server processes on one PostgreSQL database: each projection is run by one of them
/// only (one holder of its advisory lock), and the view is still complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_run_each_projection_once() {
    let Some(first) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let mut settings = assessd::config::Settings::new(
        "127.0.0.1:0".parse().unwrap(),
        first.db.url.clone(),
        assessd::auth::Secret::new(crate::helpers::SECRET),
    );
    settings.db_pool = 4;
    settings.node_id = "second".into();
    let second = assessd::Application::build(settings).await.unwrap();
    let second_state = second.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(second.run_until(async move {
        let _ = stopped.await;
    }));
    // Users on both nodes.
    for (i, state) in [&first.state, &second_state].into_iter().enumerate() {
        let demo = state.catalog.latest("demo").await.unwrap().unwrap();
        let start = UserCommand::StartAssessment {
            test: demo.clone(),
            assessment_id: format!("n{i}"),
            question_order: demo.questions.iter().map(|q| q.id.clone()).collect(),
            now: Utc::now(),
        };
        let origin = assessd::commands::Origin::Admin {
            admin_id: "seed".into(),
        };
        assessd::commands::execute(state, &format!("node-user-{i}"), start, &origin)
            .await
            .unwrap();
    }
    // Both nodes try to catch up; only the holder of a projection's lock applies events.
    second_state
        .projections
        .catch_up("assessments")
        .await
        .unwrap();
    caught_up(&first.state).await;
    second_state
        .projections
        .catch_up("assessments")
        .await
        .unwrap();
    let rows = projections::assessments::all(&first.state.projections.db())
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "every attempt once: {rows:?}");
    let Database::Postgres(pool) = &first.state.db else {
        unreachable!("a PostgreSQL test");
    };
    for name in projections::runner::ALL {
        let holders: i64 = sqlx::query_scalar(
            "select count(distinct pid) from pg_locks where locktype = 'advisory' \
             and granted and classid::int = hashtext('assessd.projection') \
             and objid::int = hashtext($1) and database = (select oid from pg_database \
             where datname = current_database())",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(holders, 1, "{name} is run by exactly one node");
    }
    let _ = stop.send(());
    second.await.unwrap().unwrap();
    first.stop().await;
}
