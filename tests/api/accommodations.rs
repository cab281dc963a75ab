//! Admin changes that reach an open attempt (PROTOCOL section 6): extra time, per-user
//! overrides and regrading, each through the real server and real sockets, checked in
//! what the open socket receives, in the user's stream and through the GET endpoints.

use assessd::auth::Role;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::helpers::{small_test, spawn_app, Backend, TestApp, WsClient, WAIT};

async fn send_json(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn admin(app: &TestApp) -> String {
    app.token("root", Role::Admin)
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(
        value
            .as_str()
            .unwrap_or_else(|| panic!("not a time: {value}")),
    )
    .unwrap()
    .with_timezone(&Utc)
}

fn event_types(stream: &[Value]) -> Vec<String> {
    stream
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the wall clock has passed `at` (the condition the test needs: a deadline
/// gone by), without reading the socket.
async fn until(at: DateTime<Utc>) {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    assert!(Utc::now() >= at);
}

/// Extra time reaches the open socket at once, an answer after the old deadline counts, a
/// reconnect shows the new deadline, and the session's timer ends the attempt at the new
/// deadline by itself.
async fn extra_time_reaches_the_open_attempt(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("timed", small_test(1, Some(2))).await;
    let mut first = app.connect("ada").await;
    let (started, question) = first.start("timed").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    let old_deadline = time(&started["deadline"]);

    let path = format!("/api/admin/users/ada/assessments/{id}/extend");
    let body = json!({"extra_secs": 3, "reason": "documented accommodation"});
    let (status, reply) = send_json(&app, "POST", &path, &admin(&app), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    let new_deadline = time(&reply["deadline"]);
    assert_eq!(new_deadline - old_deadline, chrono::Duration::seconds(3));
    assert_eq!(reply["assessment_id"], id.as_str());

    let changed = first.recv_type("DEADLINE_CHANGED").await;
    assert_eq!(changed["assessment_id"], id.as_str());
    assert_eq!(changed["extra_secs"], 3);
    assert_eq!(time(&changed["deadline"]), new_deadline);
    assert_eq!(changed["seq"], reply["seq"]);

    // A reconnect shows the new deadline.
    let mut second = app.connect("ada").await;
    let resumed = second.recv_type("ASSESSMENT_RESUMED").await;
    assert_eq!(time(&resumed["deadline"]), new_deadline);
    second.recv_type("QUESTION").await;

    // After the old deadline, before the new one: the answer is recorded.
    until(old_deadline + chrono::Duration::milliseconds(300)).await;
    assert!(
        Utc::now() < new_deadline,
        "the machine was too slow for this test"
    );
    let qid = question["question_id"].as_str().unwrap();
    let (feedback, _, next) = second.answer(&id, qid, json!("a")).await;
    assert_eq!(feedback["correct"], true);
    assert_eq!(next["type"], "QUESTION");

    // The session's timer fires at the new deadline, unasked.
    let completed = second.recv_type("ASSESSMENT_COMPLETED").await;
    assert_eq!(completed["reason"], "time_expired");
    assert!(
        time(&completed["completed_at"]) >= new_deadline,
        "{completed}"
    );

    let stream = app.stream_of("ada").await;
    let extended = stream
        .iter()
        .find(|e| e["event_type"] == "DeadlineExtended")
        .expect("recorded");
    let payload = &extended["payload"];
    assert_eq!(payload["extra_secs"], 3);
    assert_eq!(payload["actor"], "admin:root");
    assert_eq!(payload["reason"], "documented accommodation");
    // The wire says milliseconds; the event keeps the clock's precision.
    let stored = time(&payload["deadline"]);
    assert!(
        (stored - new_deadline).num_milliseconds() == 0,
        "{stored} vs {new_deadline}"
    );
    app.stop().await;
}

/// Every way to get extra time wrong is refused with its status and field, and records
/// nothing.
async fn extra_time_refuses_what_it_must(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("timed", small_test(1, Some(600))).await;
    app.put_test("untimed", small_test(2, None)).await;
    let admin = admin(&app);
    let mut ws = app.connect("bo").await;
    let (untimed, _) = ws.start("untimed").await;
    let untimed_id = untimed["assessment_id"].as_str().unwrap().to_string();
    let extend = |id: &str| format!("/api/admin/users/bo/assessments/{id}/extend");
    let before = app.stream_of("bo").await.len();

    let cases = [
        (
            extend(&untimed_id),
            json!({"extra_secs": 60, "reason": "r"}),
            422,
            Some("extra_secs"),
        ),
        (
            extend(&untimed_id),
            json!({"extra_secs": 0, "reason": "r"}),
            422,
            Some("extra_secs"),
        ),
        (
            extend(&untimed_id),
            json!({"extra_secs": 86401, "reason": "r"}),
            422,
            Some("extra_secs"),
        ),
        (
            extend(&untimed_id),
            json!({"extra_secs": -5, "reason": "r"}),
            422,
            Some("extra_secs"),
        ),
        (
            extend(&untimed_id),
            json!({"extra_secs": "ten", "reason": "r"}),
            422,
            Some("extra_secs"),
        ),
        (
            extend(&untimed_id),
            json!({"extra_secs": 60}),
            422,
            Some("reason"),
        ),
        (
            extend(&untimed_id),
            json!({"extra_secs": 60, "reason": " "}),
            422,
            Some("reason"),
        ),
        (
            extend(&untimed_id),
            json!({"extra_secs": 60, "reason": "r", "x": 1}),
            422,
            Some("x"),
        ),
        (
            extend("nope"),
            json!({"extra_secs": 60, "reason": "r"}),
            404,
            None,
        ),
        (
            "/api/admin/users/nobody/assessments/nope/extend".to_string(),
            json!({"extra_secs": 60, "reason": "r"}),
            404,
            None,
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, reply) = send_json(&app, "POST", &path, &admin, Some(body.clone())).await;
        assert_eq!(got, status, "{path} {body}: {reply}");
        if let Some(field) = field {
            assert_eq!(reply["error"]["field"], field, "{body}: {reply}");
        }
    }
    // Not an admin.
    for role in [Role::Taker, Role::Auditor] {
        let token = app.token("bo", role);
        let body = json!({"extra_secs": 60, "reason": "r"});
        let (got, _) = send_json(&app, "POST", &extend(&untimed_id), &token, Some(body)).await;
        assert_eq!(got, 403);
    }
    assert_eq!(app.stream_of("bo").await.len(), before, "nothing recorded");
    ws.assert_alive().await;

    // A completed attempt: 409.
    let path = format!("/api/admin/users/bo/assessments/{untimed_id}/end");
    assert_eq!(app.post(&path, &admin).await.0, 200);
    ws.recv_type("ASSESSMENT_COMPLETED").await;
    let body = json!({"extra_secs": 60, "reason": "r"});
    let (got, reply) = send_json(&app, "POST", &extend(&untimed_id), &admin, Some(body)).await;
    assert_eq!(
        (got, reply["error"]["code"].as_str()),
        (409, Some("assessment_completed"))
    );
    app.stop().await;
}

async fn tests_of(app: &TestApp, user: &str) -> Value {
    let (status, body) = app.get("/api/tests", &app.token(user, Role::Taker)).await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "once")
        .cloned()
        .unwrap()
}

async fn finish(ws: &mut WsClient, started: &Value, first: &Value) {
    let id = started["assessment_id"].as_str().unwrap();
    let (_, _, next) = ws
        .answer(id, first["question_id"].as_str().unwrap(), json!("a"))
        .await;
    let (_, _, done) = ws
        .answer(id, next["question_id"].as_str().unwrap(), json!("red"))
        .await;
    assert_eq!(done["type"], "ASSESSMENT_COMPLETED");
}

/// A second attempt and another time limit for one user of one test; others untouched.
async fn an_override_is_for_one_user_of_one_test(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("once", small_test(1, Some(600))).await;
    let admin = admin(&app);
    for user in ["cy", "di"] {
        let mut ws = app.connect(user).await;
        let (started, first) = ws.start("once").await;
        finish(&mut ws, &started, &first).await;
    }
    let path = "/api/admin/tests/once/overrides/cy";
    let body = json!({"max_attempts": 2, "time_limit_secs": 900, "reason": "illness"});
    let (status, set) = send_json(&app, "PUT", path, &admin, Some(body)).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        (
            set["max_attempts"].as_u64(),
            set["time_limit_secs"].as_u64()
        ),
        (Some(2), Some(900))
    );
    assert_eq!(set["actor"], "admin:root");

    let cy = tests_of(&app, "cy").await;
    assert_eq!(
        (cy["max_attempts"].as_u64(), cy["time_limit_secs"].as_u64()),
        (Some(2), Some(900))
    );
    assert_eq!(cy["status"], "available");
    let di = tests_of(&app, "di").await;
    assert_eq!(
        (di["max_attempts"].as_u64(), di["time_limit_secs"].as_u64()),
        (Some(1), Some(600))
    );
    assert_eq!(di["status"], "completed");

    let mut ws = app.connect("cy").await;
    let (started, _) = ws.start("once").await;
    assert_eq!(
        (
            started["attempt"].as_u64(),
            started["time_limit_secs"].as_u64()
        ),
        (Some(2), Some(900))
    );
    let mut other = app.connect("di").await;
    other
        .send(json!({"type": "START_ASSESSMENT", "test_id": "once"}))
        .await;
    let refused = other.recv_type("ERROR").await;
    assert_eq!(refused["code"], "assessment_completed");

    let (status, list) = app.get("/api/admin/tests/once/overrides", &admin).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["items"][0]["user_id"], "cy");
    assert_eq!(list["next_cursor"], Value::Null);

    // Ended: the test's own limits again; ending it twice is 404.
    let (status, cleared) = send_json(&app, "DELETE", path, &admin, None).await;
    assert_eq!(status, 200, "{cleared}");
    let (status, _) = send_json(
        &app,
        "DELETE",
        path,
        &admin,
        Some(json!({"reason": "again"})),
    )
    .await;
    assert_eq!(status, 404);
    let (_, list) = app.get("/api/admin/tests/once/overrides", &admin).await;
    assert_eq!(list["items"], json!([]));
    assert_eq!(tests_of(&app, "cy").await["max_attempts"], 1);
    let types = event_types(&app.stream_of("cy").await);
    assert!(
        types.contains(&"OverrideSet".to_string())
            && types.contains(&"OverrideCleared".to_string()),
        "{types:?}"
    );
    assert!(!event_types(&app.stream_of("di").await)
        .iter()
        .any(|t| t.starts_with("Override")));

    // Bad input changes nothing.
    let before = app.stream_of("di").await.len();
    let cases = [
        (
            "/api/admin/tests/once/overrides/di",
            json!({"reason": "r"}),
            422,
            Some("max_attempts"),
        ),
        (
            "/api/admin/tests/once/overrides/di",
            json!({"max_attempts": 0, "reason": "r"}),
            422,
            Some("max_attempts"),
        ),
        (
            "/api/admin/tests/once/overrides/di",
            json!({"time_limit_secs": 0, "reason": "r"}),
            422,
            Some("time_limit_secs"),
        ),
        (
            "/api/admin/tests/once/overrides/di",
            json!({"max_attempts": -1, "reason": "r"}),
            422,
            Some("max_attempts"),
        ),
        (
            "/api/admin/tests/once/overrides/di",
            json!({"max_attempts": 2}),
            422,
            Some("reason"),
        ),
        (
            "/api/admin/tests/nope/overrides/di",
            json!({"max_attempts": 2, "reason": "r"}),
            404,
            None,
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, reply) = send_json(&app, "PUT", path, &admin, Some(body.clone())).await;
        assert_eq!(got, status, "{path} {body}: {reply}");
        if let Some(field) = field {
            assert_eq!(reply["error"]["field"], field, "{body}: {reply}");
        }
    }
    let taker = app.token("di", Role::Taker);
    let body = json!({"max_attempts": 5, "reason": "r"});
    assert_eq!(
        send_json(
            &app,
            "PUT",
            "/api/admin/tests/once/overrides/di",
            &taker,
            Some(body)
        )
        .await
        .0,
        403
    );
    assert_eq!(
        app.get("/api/admin/tests/nope/overrides", &admin).await.0,
        404
    );
    assert_eq!(app.stream_of("di").await.len(), before, "nothing recorded");
    app.stop().await;
}

/// Polls `GET path` until `ok` holds for its body.
async fn poll(app: &TestApp, path: &str, token: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = app.get(path, token).await;
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never matched: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Answers the small test's two questions with `first` and `second`.
pub(crate) async fn take(app: &TestApp, user: &str, first: &str, second: &str) {
    let mut ws = app.connect(user).await;
    let (started, q1) = ws.start("exam").await;
    let id = started["assessment_id"].as_str().unwrap();
    let (_, _, q2) = ws
        .answer(id, q1["question_id"].as_str().unwrap(), json!(first))
        .await;
    let (_, _, done) = ws
        .answer(id, q2["question_id"].as_str().unwrap(), json!(second))
        .await;
    assert_eq!(done["type"], "ASSESSMENT_COMPLETED");
}

const USERS: [&str; 6] = ["u1", "u2", "u3", "u4", "u5", "u6"];

/// The latest definition of the test `exam`, as an admin sees it.
async fn exam(app: &TestApp) -> Value {
    let (status, tests) = app.get("/api/admin/tests", &admin(app)).await;
    assert_eq!(status, 200, "{tests}");
    tests["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "exam")
        .cloned()
        .unwrap()
}

fn facility(stats: &Value, question: &str) -> f64 {
    stats["versions"][0]["questions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["question_id"] == question)
        .and_then(|q| q["facility"].as_f64())
        .unwrap_or(-1.0)
}

async fn run_job(app: &TestApp, body: Value) -> Value {
    let admin = admin(app);
    let (status, started) = send_json(
        app,
        "POST",
        "/api/admin/tests/exam/regrade",
        &admin,
        Some(body),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let job = started["job_id"].as_str().unwrap();
    poll(app, &format!("/api/admin/jobs/{job}"), &admin, |j| {
        j["status"] != "running"
    })
    .await
}

/// A wrong key corrected after the exam changes exactly the affected scores: in the dry
/// run (which records nothing), in each stream, on an open socket, in the read models and
/// in the audit time travel; the same correction again changes nothing.
async fn a_regrade_changes_exactly_the_affected_scores(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // s1's key says "a" (it should be "b"); s2 is free text with the keyword "red".
    app.put_test("exam", small_test(1, None)).await;
    take(&app, "u1", "a", "red").await; // 2 of 2 -> 1 of 2, still passed (0.5)
    take(&app, "u2", "b", "blue").await; // 0 -> 1, fail -> pass
    take(&app, "u3", "b", "red").await; // 1 -> 2
    take(&app, "u5", "a", "blue").await; // 1 -> 0, pass -> fail
    take(&app, "u6", "b", "blue").await; // 0 -> 1
    let mut live = app.connect("u4").await; // in progress, s1 answered "b"
    let (started, q1) = live.start("exam").await;
    let live_id = started["assessment_id"].as_str().unwrap().to_string();
    let (_, _, q2) = live
        .answer(&live_id, q1["question_id"].as_str().unwrap(), json!("b"))
        .await;
    let admin = admin(&app);
    let stats_path = "/api/admin/tests/exam/statistics";
    let before_stats = poll(&app, stats_path, &admin, |s| {
        s["versions"][0]["attempts_started"] == 6
    })
    .await;
    assert!(
        (facility(&before_stats, "s1") - 0.4).abs() < 1e-9,
        "{before_stats}"
    );
    let lengths = |streams: Vec<Vec<Value>>| streams.iter().map(Vec::len).collect::<Vec<_>>();
    let mut streams = Vec::new();
    for u in USERS {
        streams.push(app.stream_of(u).await);
    }
    let before = lengths(streams);

    let correction =
        json!({"question_id": "s1", "answer": "b", "reason": "the key was wrong", "dry_run": true});
    let (status, preview) = send_json(
        &app,
        "POST",
        "/api/admin/tests/exam/regrade",
        &admin,
        Some(correction.clone()),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["attempts_affected"], 6, "{preview}");
    let change = |user: &str| {
        preview["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["user_id"] == user)
            .cloned()
            .unwrap_or_else(|| panic!("{user} missing from {preview}"))
    };
    let scores = |c: Value| {
        (
            c["old_score"].as_f64(),
            c["new_score"].as_f64(),
            c["old_passed"].as_bool(),
            c["new_passed"].as_bool(),
        )
    };
    assert_eq!(
        scores(change("u1")),
        (Some(2.0), Some(1.0), Some(true), Some(true))
    );
    assert_eq!(
        scores(change("u2")),
        (Some(0.0), Some(1.0), Some(false), Some(true))
    );
    assert_eq!(
        scores(change("u3")),
        (Some(1.0), Some(2.0), Some(true), Some(true))
    );
    assert_eq!(
        scores(change("u5")),
        (Some(1.0), Some(0.0), Some(true), Some(false))
    );
    assert_eq!(change("u4")["assessment_id"], live_id.as_str());
    let mut streams = Vec::new();
    for u in USERS {
        streams.push(app.stream_of(u).await);
    }
    assert_eq!(lengths(streams), before, "a dry run records nothing");
    assert_eq!(
        exam(&app).await["version"],
        1,
        "a dry run stores no version"
    );

    let mut real = correction.clone();
    real["dry_run"] = json!(false);
    let job = run_job(&app, real.clone()).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(
        (job["kind"].as_str(), job["answers_regraded"].as_u64()),
        (Some("regrade"), Some(6))
    );
    assert_eq!(
        (job["events_done"].as_u64(), job["events_total"].as_u64()),
        (Some(6), Some(6))
    );

    // The open socket is told.
    let changed = live.recv_type("SCORE_CHANGED").await;
    assert_eq!(changed["assessment_id"], live_id.as_str());
    assert_eq!(changed["question_id"], "s1");
    assert_eq!(
        (changed["score"].as_f64(), changed["max_score"].as_f64()),
        (Some(1.0), Some(2.0))
    );
    assert_eq!(changed["passed"], true);

    // Each stream holds one AnswerRegraded, with who and why.
    let u2 = app.stream_of("u2").await;
    let regraded: Vec<&Value> = u2
        .iter()
        .filter(|e| e["event_type"] == "AnswerRegraded")
        .collect();
    assert_eq!(regraded.len(), 1);
    let payload = &regraded[0]["payload"];
    assert_eq!(
        (payload["old_score"].as_f64(), payload["new_score"].as_f64()),
        (Some(0.0), Some(1.0))
    );
    assert_eq!(payload["actor"], "admin:root");
    assert_eq!(payload["reason"], "the key was wrong");
    assert_eq!(payload["correction"], json!({"answer": "b"}));
    assert_eq!(payload["corrected_version"], 2);

    // The new version holds the corrected key.
    let exam_now = exam(&app).await;
    assert_eq!(exam_now["version"], 2);
    assert_eq!(exam_now["questions"][0]["answer"], "b");

    // The test-taker, the statistics and the time travel see it.
    let mine = poll(
        &app,
        "/api/me/assessments",
        &app.token("u2", Role::Taker),
        |b| b["items"][0]["score"] == 1.0,
    )
    .await;
    assert_eq!(mine["items"][0]["passed"], true, "{mine}");
    let mine = poll(
        &app,
        "/api/me/assessments",
        &app.token("u5", Role::Taker),
        |b| b["items"][0]["score"] == 0.0,
    )
    .await;
    assert_eq!(mine["items"][0]["passed"], false, "{mine}");
    let stats = poll(&app, stats_path, &admin, |s| {
        (facility(s, "s1") - 0.6).abs() < 1e-9
    })
    .await;
    assert_eq!(stats["versions"][0]["attempts_completed"], 5, "{stats}");
    let auditor = app.token("ann", Role::Auditor);
    let seq = regraded[0]["sequence"].as_u64().unwrap();
    let (_, then) = app
        .get(
            &format!("/api/audit/users/u2/state?at_sequence={}", seq - 1),
            &auditor,
        )
        .await;
    let (_, now) = app
        .get(
            &format!("/api/audit/users/u2/state?at_sequence={seq}"),
            &auditor,
        )
        .await;
    assert_eq!(
        (
            then["assessments"][0]["score"].as_f64(),
            now["assessments"][0]["score"].as_f64()
        ),
        (Some(0.0), Some(1.0))
    );

    // A rebuild from the events gives the same statistics.
    projections::rebuild::rebuild(&app.state.projections.db(), "test_statistics", |_| {})
        .await
        .unwrap();
    let (_, rebuilt) = app.get(stats_path, &admin).await;
    assert_eq!(rebuilt, stats);

    // The same correction again changes nothing.
    let mut streams = Vec::new();
    for u in USERS {
        streams.push(app.stream_of(u).await);
    }
    let after = lengths(streams);
    let again = run_job(&app, real).await;
    assert_eq!(
        (again["status"].as_str(), again["answers_regraded"].as_u64()),
        (Some("done"), Some(0)),
        "{again}"
    );
    let mut streams = Vec::new();
    for u in USERS {
        streams.push(app.stream_of(u).await);
    }
    assert_eq!(lengths(streams), after);
    assert_eq!(exam(&app).await["version"], 2, "no third version");

    // The open attempt goes on with its regraded score.
    let (_, _, done) = live
        .answer(&live_id, q2["question_id"].as_str().unwrap(), json!("red"))
        .await;
    assert_eq!(
        (done["type"].as_str(), done["score"].as_f64()),
        (Some("ASSESSMENT_COMPLETED"), Some(2.0))
    );
    app.stop().await;
}

/// A correction reaches an attempt in progress that has not answered the question yet:
/// its stream records `QuestionCorrected`, its socket is told, and the answer it gives
/// afterwards is graded with the corrected key and points, not its version's.
async fn a_correction_reaches_an_open_attempt_before_its_answer(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("exam", small_test(1, None)).await;
    let mut live = app.connect("o1").await;
    let (started, s1) = live.start("exam").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    assert_eq!(s1["question_id"], "s1");
    let admin = admin(&app);
    let body = |question: &str, fix: Value, dry_run: bool| {
        let mut body =
            json!({"question_id": question, "reason": "the key was wrong", "dry_run": dry_run});
        body.as_object_mut()
            .unwrap()
            .extend(fix.as_object().unwrap().clone());
        body
    };
    let path = "/api/admin/tests/exam/regrade";
    let (status, preview) = send_json(
        &app,
        "POST",
        path,
        &admin,
        Some(body("s1", json!({"answer": "b"}), true)),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        (
            preview["attempts_affected"].as_u64(),
            preview["open_attempts_corrected"].as_u64()
        ),
        (Some(0), Some(1)),
        "{preview}"
    );
    // The key of s1 (shown) becomes b; s2 (not shown yet) becomes worth 3 points.
    let job = run_job(&app, body("s1", json!({"answer": "b"}), false)).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(
        (
            job["answers_regraded"].as_u64(),
            job["open_attempts_corrected"].as_u64()
        ),
        (Some(0), Some(1)),
        "the job counts what its dry run foresaw: {job}"
    );
    let changed = live.recv_type("SCORE_CHANGED").await;
    assert_eq!(
        (
            changed["question_id"].as_str(),
            changed["max_score"].as_f64()
        ),
        (Some("s1"), Some(2.0))
    );
    let job = run_job(&app, body("s2", json!({"points": 3}), false)).await;
    assert_eq!(job["status"], "done", "{job}");
    let changed = live.recv_type("SCORE_CHANGED").await;
    assert_eq!(
        (
            changed["question_id"].as_str(),
            changed["max_score"].as_f64()
        ),
        (Some("s2"), Some(4.0))
    );
    let stream = app.stream_of("o1").await;
    let corrected: Vec<&Value> = stream
        .iter()
        .filter(|e| e["event_type"] == "QuestionCorrected")
        .collect();
    assert_eq!(corrected.len(), 2, "{stream:?}");
    assert_eq!(
        corrected[0]["payload"]["correction"],
        json!({"answer": "b"})
    );
    assert_eq!(corrected[0]["payload"]["actor"], "admin:root");

    // The corrected key earns the point; s2 is shown and graded at its new points.
    let (feedback, _, s2) = live.answer(&id, "s1", json!("b")).await;
    assert_eq!(
        (feedback["correct"].as_bool(), feedback["score"].as_f64()),
        (Some(true), Some(1.0)),
        "{feedback}"
    );
    assert_eq!(
        (s2["question_id"].as_str(), s2["points"].as_f64()),
        (Some("s2"), Some(3.0)),
        "{s2}"
    );
    let (feedback, _, done) = live.answer(&id, "s2", json!("red")).await;
    assert_eq!(feedback["score"].as_f64(), Some(3.0), "{feedback}");
    assert_eq!(
        (
            done["type"].as_str(),
            done["score"].as_f64(),
            done["max_score"].as_f64()
        ),
        (Some("ASSESSMENT_COMPLETED"), Some(4.0), Some(4.0)),
        "{done}"
    );
    // The same corrections again record nothing.
    let before = app.stream_of("o1").await.len();
    let again = run_job(&app, body("s1", json!({"answer": "b"}), false)).await;
    assert_eq!(again["answers_regraded"].as_u64(), Some(0), "{again}");
    assert_eq!(app.stream_of("o1").await.len(), before);
    app.stop().await;
}

/// Bad corrections are refused with the field to blame, and change nothing.
async fn a_bad_regrade_changes_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("exam", small_test(1, None)).await;
    take(&app, "u1", "a", "red").await;
    let admin = admin(&app);
    let before = app.stream_of("u1").await.len();
    let path = "/api/admin/tests/exam/regrade";
    let cases = [
        (
            json!({"question_id": "zz", "answer": "b", "reason": "r", "dry_run": false}),
            422,
            Some("question_id"),
        ),
        (
            json!({"question_id": "s1", "answer": "z", "reason": "r", "dry_run": false}),
            422,
            Some("answer"),
        ),
        (
            json!({"question_id": "s1", "answer": ["a", "b"], "reason": "r", "dry_run": false}),
            422,
            Some("answer"),
        ),
        (
            json!({"question_id": "s2", "answer": "a", "reason": "r", "dry_run": false}),
            422,
            Some("answer"),
        ),
        (
            json!({"question_id": "s1", "keywords": ["x"], "reason": "r", "dry_run": false}),
            422,
            Some("keywords"),
        ),
        (
            json!({"question_id": "s1", "points": -1, "reason": "r", "dry_run": false}),
            422,
            Some("points"),
        ),
        (
            json!({"question_id": "s1", "reason": "r", "dry_run": false}),
            422,
            Some("answer"),
        ),
        (
            json!({"question_id": "s1", "answer": "b", "reason": "", "dry_run": false}),
            422,
            Some("reason"),
        ),
        (
            json!({"question_id": "s1", "answer": "b", "reason": "r"}),
            422,
            Some("dry_run"),
        ),
    ];
    for (body, status, field) in cases {
        let (got, reply) = send_json(&app, "POST", path, &admin, Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {reply}");
        assert_eq!(reply["error"]["field"].as_str(), field, "{body}: {reply}");
    }
    let body = json!({"question_id": "s1", "answer": "b", "reason": "r", "dry_run": false});
    assert_eq!(
        send_json(
            &app,
            "POST",
            "/api/admin/tests/nope/regrade",
            &admin,
            Some(body.clone())
        )
        .await
        .0,
        404
    );
    for role in [Role::Taker, Role::Auditor] {
        let token = app.token("u1", role);
        assert_eq!(
            send_json(&app, "POST", path, &token, Some(body.clone()))
                .await
                .0,
            403
        );
    }
    assert_eq!(app.stream_of("u1").await.len(), before, "nothing recorded");
    assert_eq!(exam(&app).await["version"], 1, "no version stored");
    app.stop().await;
}

crate::on_both_backends!(
    extra_time_reaches_the_open_attempt,
    extra_time_refuses_what_it_must,
    an_override_is_for_one_user_of_one_test,
    a_regrade_changes_exactly_the_affected_scores,
    a_correction_reaches_an_open_attempt_before_its_answer,
    a_bad_regrade_changes_nothing,
);
