//! Resume after a disconnect, eviction, completed attempts blocked, deadlines.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{demo_answer, small_test, spawn_app, Backend};

async fn a_reconnect_resumes_where_the_user_stood(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut first = app.connect("carol").await;
    let (started, q1) = first.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    let (_, _, q2) = first.answer(&id, "q1", demo_answer("q1")).await;
    assert_eq!(q2["question_id"], "q2");
    drop(first);

    let mut second = app.connect("carol").await;
    let resumed = second.recv_type("ASSESSMENT_RESUMED").await;
    assert_eq!(resumed["assessment_id"], id);
    assert_eq!(resumed["answered"], 1);
    assert_eq!(resumed["score"], 1.0);
    assert_eq!(resumed["seq"], started["seq"]);
    let question = second.recv_type("QUESTION").await;
    assert_eq!(question["question_id"], "q2");
    assert_eq!(question["seq"], q2["seq"]);

    // The answer given before the disconnect, sent again, changes nothing.
    let before = app.stream_of("carol").await.len();
    let (feedback, progress, current) = second.answer(&id, "q1", demo_answer("q1")).await;
    assert_eq!(feedback["correct"], true);
    assert_eq!(
        feedback["seq"].as_u64().unwrap(),
        q1["seq"].as_u64().unwrap() + 2
    );
    assert_eq!(progress["answered"], 1);
    assert_eq!(current["question_id"], "q2");
    assert_eq!(
        app.stream_of("carol").await.len(),
        before,
        "a re-sent answer appends nothing"
    );

    // A different answer to it is refused; the recorded one stands.
    second
        .send(json!({"type":"SUBMIT_ANSWER","assessment_id":id,"question_id":"q1","answer":"a"}))
        .await;
    assert_eq!(second.recv_type("ERROR").await["code"], "conflict");

    // START_ASSESSMENT of the test in progress resumes it, never a second attempt.
    second
        .send(json!({"type": "START_ASSESSMENT", "test_id": "demo"}))
        .await;
    let again = second.recv_type("ASSESSMENT_RESUMED").await;
    assert_eq!(again["assessment_id"], id);
    assert_eq!(second.recv_type("QUESTION").await["question_id"], "q2");
    app.stop().await;
}

async fn a_second_connection_evicts_the_first(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut old = app.connect("dave").await;
    let (started, _) = old.start("demo").await;
    old.assert_alive().await; // the old session last answered a message with a request_id
    let mut new = app.connect("dave").await;
    let replaced = old.recv_type("SESSION_REPLACED").await;
    assert!(replaced["message"].is_string());
    assert!(
        replaced.get("request_id").is_none(),
        "the eviction answers no message of the old client: {replaced}"
    );
    assert_eq!(old.recv_close().await, Some(4001));

    // The new connection resumes and keeps working.
    assert_eq!(
        new.recv_type("ASSESSMENT_RESUMED").await["assessment_id"],
        started["assessment_id"]
    );
    new.recv_type("QUESTION").await;
    new.assert_alive().await;

    // Another user is untouched by dave's eviction.
    let mut erin = app.connect("erin").await;
    let mut dave3 = app.connect("dave").await;
    assert_eq!(
        new.recv_type("SESSION_REPLACED").await["type"],
        "SESSION_REPLACED"
    );
    assert_eq!(new.recv_close().await, Some(4001));
    erin.assert_alive().await;
    dave3.recv_type("ASSESSMENT_RESUMED").await;
    dave3.recv_type("QUESTION").await;
    dave3.assert_alive().await;
    app.stop().await;
}

async fn a_completed_attempt_cannot_be_restarted(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("once", small_test(1, None)).await;
    let mut frank = app.connect("frank").await;
    let (started, _) = frank.start("once").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    frank.answer(&id, "s1", json!("a")).await;
    let (_, _, done) = frank.answer(&id, "s2", json!("Red")).await;
    assert_eq!(done["type"], "ASSESSMENT_COMPLETED");
    assert_eq!(done["score"], 2.0);

    frank
        .send(json!({"type": "START_ASSESSMENT", "test_id": "once"}))
        .await;
    assert_eq!(
        frank.recv_type("ERROR").await["code"],
        "assessment_completed"
    );
    // answering it again is refused too, and GET_QUESTION reports the completion
    frank
        .send(json!({"type":"SUBMIT_ANSWER","assessment_id":id,"question_id":"s9","answer":"a"}))
        .await;
    assert_eq!(
        frank.recv_type("ERROR").await["code"],
        "assessment_completed"
    );
    frank
        .send(json!({"type": "GET_QUESTION", "assessment_id": id}))
        .await;
    assert_eq!(
        frank.recv_type("ASSESSMENT_COMPLETED").await["assessment_id"],
        id
    );
    drop(frank);

    // A reconnect finds nothing to resume, and still cannot restart.
    let mut again = app.connect("frank").await;
    again
        .send(json!({"type": "START_ASSESSMENT", "test_id": "once"}))
        .await;
    assert_eq!(
        again.recv_type("ERROR").await["code"],
        "assessment_completed"
    );
    app.stop().await;
}

async fn one_test_at_a_time(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("other", small_test(1, None)).await;
    let mut gina = app.connect("gina").await;
    gina.start("demo").await;
    gina.send(json!({"type": "START_ASSESSMENT", "test_id": "other"}))
        .await;
    assert_eq!(
        gina.recv_type("ERROR").await["code"],
        "assessment_in_progress"
    );
    gina.send(json!({"type": "START_ASSESSMENT", "test_id": "no-such-test"}))
        .await;
    assert_eq!(gina.recv_type("ERROR").await["code"], "not_found");
    app.stop().await;
}

async fn a_deadline_is_pushed_to_the_client(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("quick", small_test(2, Some(1))).await;
    let mut hank = app.connect("hank").await;
    let (started, _) = hank.start("quick").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    assert_eq!(started["time_limit_secs"], 1);
    // No message is sent: the server itself reports the deadline as it passes.
    let completed = hank.recv_type("ASSESSMENT_COMPLETED").await;
    assert_eq!(completed["reason"], "time_expired");
    assert_eq!(completed["assessment_id"], id);

    // An answer after it: ERROR time_expired, then the completion again.
    hank.send(json!({"type":"SUBMIT_ANSWER","assessment_id":id,"question_id":"s1","answer":"a"}))
        .await;
    assert_eq!(hank.recv_type("ERROR").await["code"], "time_expired");
    assert_eq!(
        hank.recv_type("ASSESSMENT_COMPLETED").await["reason"],
        "time_expired"
    );
    app.stop().await;
}

async fn a_deadline_that_passed_offline_is_found_on_reconnect(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("quick", small_test(1, Some(1))).await;
    let mut ivy = app.connect("ivy").await;
    ivy.start("quick").await;
    drop(ivy);
    // Wait until the deadline has certainly passed (a condition on the clock, not a race).
    let deadline = std::time::Instant::now() + Duration::from_millis(1200);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = app.connect("ivy").await;
    let completed = again.recv_type("ASSESSMENT_COMPLETED").await;
    assert_eq!(completed["reason"], "time_expired");
    again.assert_alive().await; // and no ASSESSMENT_RESUMED came before the PONG
    app.stop().await;
}

async fn an_admin_ends_an_attempt_and_the_socket_sees_it(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut jo = app.connect("jo").await;
    let (started, _) = jo.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap();
    let admin = app.token("root", assessd::auth::Role::Admin);
    let url = app.url(&format!("/api/admin/users/jo/assessments/{id}/end"));
    let response = app
        .http
        .post(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let completed = jo.recv_type("ASSESSMENT_COMPLETED").await;
    assert_eq!(completed["reason"], "ended_by_admin");
    // A second end is a conflict; an unknown attempt is 404.
    assert_eq!(
        app.http
            .post(&url)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    let unknown = app.url("/api/admin/users/jo/assessments/nope/end");
    assert_eq!(
        app.http
            .post(&unknown)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.stop().await;
}

/// An admin ending an attempt whose time ran out while nobody looked: 409, and the expiry
/// is recorded (not lost with the refusal).
async fn ending_an_overdue_attempt_records_its_expiry(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("quick", small_test(1, Some(1))).await;
    let mut lee = app.connect("lee").await;
    let (started, _) = lee.start("quick").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    drop(lee);
    // Wait until the deadline has certainly passed (a condition on the clock, not a race).
    let deadline = std::time::Instant::now() + Duration::from_millis(1200);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The test list already counts it as over.
    let (status, tests) = app
        .get("/api/tests", &app.token("lee", assessd::auth::Role::Taker))
        .await;
    assert_eq!(status, 200);
    let quick = tests["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "quick")
        .unwrap();
    assert_eq!(quick["status"], "completed", "{quick}");
    let response = app
        .http
        .post(app.url(&format!("/api/admin/users/lee/assessments/{id}/end")))
        .bearer_auth(app.token("root", assessd::auth::Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "assessment_completed");
    let stream = app.stream_of("lee").await;
    let last = stream.last().expect("events");
    assert_eq!(last["event_type"], "AssessmentCompleted");
    assert_eq!(last["payload"]["reason"], "time_expired");
    assert!(last["metadata"]["actor"]
        .as_str()
        .is_some_and(|a| a.starts_with("admin:")));
    app.stop().await;
}

/// A user with a long history (8 attempts, reconnecting after every answer) always
/// resumes exactly where the events say, and a finished attempt never comes back. The
/// stream crosses the snapshot boundary many times, in the middle of multi-event commits.
async fn a_long_history_resumes_exactly_where_the_events_say(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut test = small_test(8, None);
    test["questions"].as_array_mut().unwrap().push(json!(
        {"id": "s3", "kind": "single_choice", "prompt": "3 + 3?",
         "choices": [{"id": "a", "text": "6"}, {"id": "b", "text": "7"}], "answer": "a", "points": 2}
    ));
    app.put_test("long", test).await;
    let right = |q: &str| match q {
        "s1" | "s3" => json!("a"),
        _ => json!("red"),
    };
    let points = |q: &str| if q == "s3" { 2.0 } else { 1.0 };
    for attempt in 1..=8u64 {
        let mut client = app.connect("lena").await;
        let (started, mut question) = client.start("long").await;
        assert_eq!(started["attempt"], attempt);
        let id = started["assessment_id"].as_str().unwrap().to_string();
        let (mut answered, mut score) = (0u64, 0.0);
        loop {
            let q = question["question_id"].as_str().unwrap().to_string();
            // Every other attempt answers the middle question wrong.
            let answer = if attempt % 2 == 0 && q == "s2" {
                json!("blue")
            } else {
                right(&q)
            };
            let (feedback, progress, next) = client.answer(&id, &q, answer).await;
            answered += 1;
            score += feedback["score"].as_f64().unwrap();
            assert_eq!(progress["answered"], answered);
            drop(client);
            client = app.connect("lena").await;
            if next["type"] == "ASSESSMENT_COMPLETED" {
                let expected = if attempt % 2 == 0 { 3.0 } else { 4.0 };
                assert_eq!(next["score"].as_f64(), Some(expected), "attempt {attempt}");
                // Finished: the reconnect resumes nothing (PONG is the next message).
                client.assert_alive().await;
                break;
            }
            let resumed = client.recv_type("ASSESSMENT_RESUMED").await;
            assert_eq!(resumed["assessment_id"], id.as_str(), "attempt {attempt}");
            assert_eq!(resumed["answered"], answered, "attempt {attempt}");
            assert_eq!(resumed["score"].as_f64(), Some(score), "attempt {attempt}");
            question = client.recv_type("QUESTION").await;
            assert_eq!(question["question_id"], next["question_id"]);
            assert_eq!(
                points(question["question_id"].as_str().unwrap()),
                question["points"].as_f64().unwrap()
            );
        }
    }
    // All eight are used: a ninth is refused, and the history is intact.
    let mut client = app.connect("lena").await;
    client
        .send(json!({"type": "START_ASSESSMENT", "test_id": "long"}))
        .await;
    assert_eq!(
        client.recv_type("ERROR").await["code"],
        "assessment_completed"
    );
    assert_eq!(app.stream_of("lena").await.len(), 8 * (2 + 3 * 3));
    app.stop().await;
}

crate::on_both_backends!(
    a_long_history_resumes_exactly_where_the_events_say,
    ending_an_overdue_attempt_records_its_expiry,
    a_reconnect_resumes_where_the_user_stood,
    a_second_connection_evicts_the_first,
    a_completed_attempt_cannot_be_restarted,
    one_test_at_a_time,
    a_deadline_is_pushed_to_the_client,
    a_deadline_that_passed_offline_is_found_on_reconnect,
    an_admin_ends_an_attempt_and_the_socket_sees_it,
);
