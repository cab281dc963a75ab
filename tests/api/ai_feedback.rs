//! Model feedback and scores for free-text answers through the real WebSocket, against the
//! fake OpenAI-compatible server of [`crate::ai`]: a graded answer with its provenance, a
//! score above the points clamped, unusable replies, a 500 and a slow model falling back
//! to the offline grader, a reconnect while the model grades, and choice questions that
//! never reach the model. Ends with the latency a model grade adds (printed, not asserted).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use assessd::ai::AiConfig;

use crate::ai::{
    app_with_ai, fake_provider, metrics, of_type, profile, until, Mode, API_KEY, MODEL,
};
use crate::helpers::{spawn_app_with, Backend, TestApp, WsClient};

const ANSWER: &str = "Ownership and borrowing rules";
const GRADED: &str = r#"{"score": 2, "feedback": "You name two of the rules; now think about how long a reference may live."}"#;

/// A free-text question worth 3 points, then a choice question.
fn borrow_test(profile: Option<&str>, time_limit_secs: Option<u32>) -> Value {
    let mut test = json!({
        "title": "Borrowing",
        "pass_ratio": 0.5,
        "time_limit_secs": time_limit_secs,
        "questions": [
            {"id": "f1", "kind": "free_text", "prompt": "What does the borrow checker enforce?",
             "keywords": ["ownership", "borrow", "lifetime"], "points": 3},
            {"id": "c1", "kind": "single_choice", "prompt": "Which keyword declares a constant?",
             "choices": [{"id": "a", "text": "let"}, {"id": "b", "text": "const"}], "answer": "b"}
        ]
    });
    if let Some(profile) = profile {
        test["ai"] = json!({"profile": profile});
    }
    test
}

async fn start(app: &TestApp, user: &str) -> (WsClient, String) {
    let mut client = app.connect(user).await;
    let (started, question) = client.start("borrow").await;
    assert_eq!(question["question_id"], "f1");
    (
        client,
        started["assessment_id"].as_str().unwrap().to_string(),
    )
}

async fn submit(client: &mut WsClient, id: &str, question: &str, answer: &str, request: &str) {
    client
        .send(
            json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": question,
                     "answer": answer, "request_id": request}),
        )
        .await;
}

/// The user's events of `kind` about question `question`.
async fn events(app: &TestApp, user: &str, kind: &str, question: &str) -> Vec<Value> {
    app.stream_of(user)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == kind && e["payload"]["question_id"] == question)
        .map(|e| e["payload"].clone())
        .collect()
}

/// The one FeedbackGiven of `question`.
async fn feedback_given(app: &TestApp, user: &str, question: &str) -> Value {
    let mut given = events(app, user, "FeedbackGiven", question).await;
    assert_eq!(given.len(), 1, "{given:?}");
    given.remove(0)
}

async fn a_free_text_answer_is_graded_by_the_model(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Reply(vec![
        r#"{"score": 2, "feedback": "You name two of the rules; "#,
        r#"now think about how long a reference may live."}"#,
    ]))
    .await;
    let Some(app) = app_with_ai(
        backend,
        &base_url,
        Some("course-a"),
        Duration::from_secs(20),
    )
    .await
    else {
        return;
    };
    app.put_test("borrow", borrow_test(Some("course-a"), None))
        .await;
    let (mut alice, id) = start(&app, "alice").await;

    submit(&mut alice, &id, "f1", ANSWER, "f1").await;
    let messages = until(&mut alice, "ANSWER_FEEDBACK").await;
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"AGENT_STARTED"), "{kinds:?}");
    assert!(
        !of_type(&messages, "AGENT_THINKING").is_empty(),
        "{kinds:?}"
    );
    assert_eq!(kinds[kinds.len() - 2], "AGENT_COMPLETED", "{kinds:?}");
    assert!(
        messages.iter().all(|m| m["request_id"] == "f1"),
        "{messages:?}"
    );
    assert!(messages
        .iter()
        .filter(|m| m["type"] != "ANSWER_FEEDBACK")
        .all(|m| m["task"] == "feedback"));
    let feedback = messages.last().unwrap();
    assert_eq!(
        (
            feedback["score"].as_f64(),
            feedback["max_score"].as_f64(),
            feedback["correct"].as_bool()
        ),
        (Some(2.0), Some(3.0), Some(false))
    );
    assert_eq!(
        feedback["feedback"],
        "You name two of the rules; now think about how long a reference may live."
    );
    assert_eq!(alice.recv_type("PROGRESS_UPDATE").await["score"], 2.0);
    assert_eq!(alice.recv_type("QUESTION").await["question_id"], "c1");

    // The grader saw the rubric and the points, and the answer as the user message.
    let (request, auth) = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some(format!("Bearer {API_KEY}").as_str()));
    let system = request["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("ownership; borrow; lifetime"), "{system}");
    assert!(system.contains("0 to 3 points"), "{system}");
    assert_eq!(request["messages"][1]["content"], ANSWER);
    // Asked for as structured output with the grade's schema.
    assert_eq!(request["response_format"]["type"], "json_schema");
    assert_eq!(request["response_format"]["json_schema"]["name"], "grade");
    assert_eq!(
        request["response_format"]["json_schema"]["schema"]["required"],
        json!(["score", "feedback"])
    );

    // Recorded with the model, the profile and the usage; the key nowhere.
    let given = feedback_given(&app, "alice", "f1").await;
    assert_eq!(given["graded_by"], MODEL);
    assert_eq!(given["model"], MODEL);
    assert_eq!(given["provider_profile"], "course-a");
    assert_eq!(
        given["usage"],
        json!({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49})
    );
    assert!(given.get("fallback").is_none(), "{given}");
    assert_eq!(given["score"], 2.0);

    // A choice question is graded offline: the model is not asked.
    let (choice, _, done) = alice.answer(&id, "c1", json!("b")).await;
    assert_eq!(choice["correct"], true);
    assert_eq!(done["type"], "ASSESSMENT_COMPLETED");
    assert_eq!(fake.requests(), 1);
    assert_eq!(
        feedback_given(&app, "alice", "c1").await["graded_by"],
        "offline"
    );

    // A score above the question's points is clamped, and full marks are correct.
    fake.set(Mode::Reply(vec![
        r#"{"score": 99, "feedback": "Complete."}"#,
    ]));
    let (mut bob, id) = start(&app, "bob").await;
    submit(&mut bob, &id, "f1", ANSWER, "b1").await;
    let feedback = until(&mut bob, "ANSWER_FEEDBACK").await.pop().unwrap();
    assert_eq!(
        (feedback["score"].as_f64(), feedback["correct"].as_bool()),
        (Some(3.0), Some(true))
    );
    assert_eq!(feedback_given(&app, "bob", "f1").await["score"], 3.0);

    let everything = serde_json::to_string(&app.stream_of("alice").await).unwrap();
    assert!(!everything.contains(API_KEY));
    let metrics = metrics(&app).await;
    assert!(
        metrics.contains(
            r#"assessd_ai_calls_total{profile="course-a",task="feedback",outcome="ok"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("assessd_ai_fallbacks_total{"),
        "{metrics}"
    );
    app.stop().await;
}

async fn unusable_replies_and_a_failing_model_fall_back_to_the_offline_grader(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Reply(vec!["Sure! I would give it a 2."])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("borrow", borrow_test(None, None)).await;

    // Not JSON twice: asked once more, then graded by the keyword rule (2 of 3 found).
    let (mut alice, id) = start(&app, "alice").await;
    submit(&mut alice, &id, "f1", ANSWER, "a1").await;
    let messages = until(&mut alice, "ANSWER_FEEDBACK").await;
    assert_eq!(of_type(&messages, "AGENT_STARTED").len(), 1);
    assert_eq!(of_type(&messages, "AGENT_COMPLETED").len(), 1);
    let feedback = messages.last().unwrap();
    assert_eq!(feedback["score"], 2.0);
    assert!(
        feedback["feedback"]
            .as_str()
            .unwrap()
            .starts_with("Your answer covers 2 of 3 key ideas."),
        "{feedback}"
    );
    assert_eq!(fake.requests(), 2);
    let given = feedback_given(&app, "alice", "f1").await;
    assert_eq!(given["graded_by"], "offline");
    assert_eq!(given["fallback"], "invalid_output");
    assert_eq!(given["model"], MODEL);
    assert_eq!(given["provider_profile"], "default");
    assert_eq!(given["usage"]["total_tokens"], 98, "both calls count");

    // A provider that answers 500 (after its retries): graded offline, and the test goes on.
    fake.set(Mode::Always500);
    let (mut bob, id) = start(&app, "bob").await;
    submit(&mut bob, &id, "f1", "lifetime", "b1").await;
    let feedback = until(&mut bob, "ANSWER_FEEDBACK").await.pop().unwrap();
    assert_eq!(feedback["score"], 1.0);
    bob.recv_type("PROGRESS_UPDATE").await;
    bob.recv_type("QUESTION").await;
    let (_, _, done) = bob.answer(&id, "c1", json!("b")).await;
    assert_eq!(done["type"], "ASSESSMENT_COMPLETED");
    assert_eq!(events(&app, "bob", "AnswerSubmitted", "f1").await.len(), 1);
    let given = feedback_given(&app, "bob", "f1").await;
    assert_eq!(
        (given["graded_by"].as_str(), given["fallback"].as_str()),
        (Some("offline"), Some("error"))
    );

    let metrics = metrics(&app).await;
    for line in [
        r#"assessd_ai_fallbacks_total{profile="default",task="feedback"} 2"#,
        r#"assessd_ai_calls_total{profile="default",task="feedback",outcome="invalid_output"} 2"#,
        r#"assessd_ai_calls_total{profile="default",task="feedback",outcome="error"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    app.stop().await;
}

async fn a_slow_model_falls_back_and_an_answer_in_time_counts_after_the_deadline(backend: Backend) {
    let (_fake, base_url) = fake_provider(Mode::Slow).await;
    let timeout = Duration::from_secs(3);
    let Some(app) = app_with_ai(backend, &base_url, None, timeout).await else {
        return;
    };
    // The deadline falls while the model is still thinking.
    app.put_test("borrow", borrow_test(None, Some(2))).await;
    let (mut alice, id) = start(&app, "alice").await;
    let mut bob = app.connect("bob").await;

    let asked = Instant::now();
    submit(&mut alice, &id, "f1", ANSWER, "slow").await;
    assert_eq!(alice.recv_type("AGENT_STARTED").await["task"], "feedback");
    bob.assert_alive().await;
    assert!(
        asked.elapsed() < timeout,
        "another user is served meanwhile"
    );

    let messages = until(&mut alice, "ANSWER_FEEDBACK").await;
    assert!(asked.elapsed() >= timeout);
    let feedback = messages.last().unwrap();
    assert_eq!(feedback["request_id"], "slow");
    assert_eq!(feedback["score"], 2.0);
    // The answer arrived in time: it counts, and the expiry is recorded after it.
    let completed = alice.recv_type("PROGRESS_UPDATE").await;
    assert_eq!(completed["answered"], 1);
    let next = until(&mut alice, "ASSESSMENT_COMPLETED")
        .await
        .pop()
        .unwrap();
    assert_eq!(next["reason"], "time_expired");
    assert_eq!(next["score"], 2.0);
    let given = feedback_given(&app, "alice", "f1").await;
    assert_eq!(given["fallback"], "timeout");
    let answered = events(&app, "alice", "AnswerSubmitted", "f1").await;
    assert_eq!(answered.len(), 1);
    assert!(metrics(&app).await.contains(
        r#"assessd_ai_calls_total{profile="default",task="feedback",outcome="timeout"} 1"#
    ));
    app.stop().await;
}

async fn a_server_without_structured_output_is_asked_in_words(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::NoStructuredOutput(vec![GRADED])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("borrow", borrow_test(None, None)).await;
    for (n, user) in ["alice", "bob"].into_iter().enumerate() {
        let (mut client, id) = start(&app, user).await;
        submit(&mut client, &id, "f1", ANSWER, user).await;
        let feedback = until(&mut client, "ANSWER_FEEDBACK").await.pop().unwrap();
        assert_eq!(feedback["score"], 2.0, "{feedback}");
        assert!(feedback_given(&app, user, "f1")
            .await
            .get("fallback")
            .is_none());
        // alice's grade: refused with response_format, then taken without it; bob's is
        // asked without it at once.
        assert_eq!(fake.requests(), 2 + n);
    }
    let seen = fake.seen.lock().unwrap().clone();
    let structured: Vec<bool> = seen
        .iter()
        .map(|(body, _)| body.get("response_format").is_some())
        .collect();
    assert_eq!(structured, [true, false, false]);
    let system = seen[2].0["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        system.contains(r#"{"score": <number>, "feedback": "<text>"}"#),
        "{system}"
    );
    let metrics = metrics(&app).await;
    assert!(
        metrics.contains(
            r#"assessd_ai_calls_total{profile="default",task="feedback",outcome="ok"} 2"#
        ),
        "{metrics}"
    );
    app.stop().await;
}

async fn a_reconnect_while_the_model_grades_gives_one_feedback(backend: Backend) {
    let (fake, base_url) =
        fake_provider(Mode::Delayed(Duration::from_millis(1500), vec![GRADED])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("borrow", borrow_test(None, None)).await;
    let (mut alice, id) = start(&app, "alice").await;
    submit(&mut alice, &id, "f1", ANSWER, "first").await;
    alice.recv_type("AGENT_STARTED").await;
    drop(alice);

    // The new connection hears CONNECTED at once, while the model still grades (1.5 s),
    // and resumes once the grade is recorded: at the next question.
    let mut again = app.connect("alice").await;
    assert!(
        events(&app, "alice", "AnswerSubmitted", "f1")
            .await
            .is_empty(),
        "CONNECTED came only after the grade was recorded"
    );
    again.recv_type("ASSESSMENT_RESUMED").await;
    assert_eq!(again.recv_type("QUESTION").await["question_id"], "c1");
    // The same answer sent again gets the recorded feedback, the model's.
    submit(&mut again, &id, "f1", ANSWER, "again").await;
    let feedback = again.recv_type("ANSWER_FEEDBACK").await;
    assert_eq!(feedback["score"], 2.0);
    assert!(feedback["feedback"]
        .as_str()
        .unwrap()
        .starts_with("You name two"));
    again.recv_type("PROGRESS_UPDATE").await;
    assert_eq!(again.recv_type("QUESTION").await["question_id"], "c1");
    again.assert_alive().await;

    assert_eq!(
        events(&app, "alice", "AnswerSubmitted", "f1").await.len(),
        1
    );
    assert_eq!(
        feedback_given(&app, "alice", "f1").await["graded_by"],
        MODEL
    );
    assert_eq!(fake.requests(), 1);
    app.stop().await;
}

async fn a_closed_socket_is_let_go_and_its_answer_still_graded(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Delayed(Duration::from_secs(4), vec![GRADED])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("borrow", borrow_test(None, None)).await;
    let (mut alice, id) = start(&app, "alice").await;
    submit(&mut alice, &id, "f1", ANSWER, "gone").await;
    alice.recv_type("AGENT_STARTED").await;
    let closed = Instant::now();
    drop(alice);

    // The connection ends while the model still works: the grading holds no socket open.
    loop {
        if metrics(&app).await.contains("assessd_connections 0") {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(3),
            "the connection outlived its socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The answer is graded and recorded all the same.
    loop {
        if !events(&app, "alice", "FeedbackGiven", "f1")
            .await
            .is_empty()
        {
            break;
        }
        assert!(closed.elapsed() < Duration::from_secs(15), "never recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        feedback_given(&app, "alice", "f1").await["graded_by"],
        MODEL
    );
    assert_eq!(
        events(&app, "alice", "AnswerSubmitted", "f1").await.len(),
        1
    );
    assert_eq!(fake.requests(), 1);
    app.stop().await;
}

async fn no_free_slot_grades_offline_at_once(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Slow).await;
    let timeout = Duration::from_secs(5);
    let Some(app) = app_with_ai(backend, &base_url, None, timeout).await else {
        return;
    };
    app.put_test("borrow", borrow_test(None, None)).await;
    let (mut alice, id) = start(&app, "alice").await;
    // The tutor holds alice's one slot (ASSESSD_AI_MAX_PER_USER is 1)...
    alice
        .send(json!({"type": "CHAT_MESSAGE", "text": "Hint?", "assessment_id": id}))
        .await;
    assert_eq!(alice.recv_type("AGENT_STARTED").await["task"], "chat");
    // ...so her answer is graded offline, without waiting for the model.
    let asked = Instant::now();
    submit(&mut alice, &id, "f1", ANSWER, "busy").await;
    let feedback = alice.recv_type("ANSWER_FEEDBACK").await;
    assert!(asked.elapsed() < timeout);
    assert_eq!(feedback["score"], 2.0);
    let given = feedback_given(&app, "alice", "f1").await;
    assert_eq!(
        (given["graded_by"].as_str(), given["fallback"].as_str()),
        (Some("offline"), Some("busy"))
    );
    assert_eq!(fake.requests(), 1, "only the tutor asked the model");
    assert!(metrics(&app)
        .await
        .contains(r#"assessd_ai_fallbacks_total{profile="default",task="feedback"} 1"#));
    app.stop().await;
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

/// Time from SUBMIT_ANSWER to ANSWER_FEEDBACK for `n` free-text answers on `app`.
async fn answer_times(app: &TestApp, n: usize) -> Vec<Duration> {
    let questions: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("f{i}"), "kind": "free_text", "prompt": "Why?",
                        "keywords": ["ownership", "borrow", "lifetime"], "points": 3})
        })
        .collect();
    app.put_test("long", json!({"title": "Long", "questions": questions}))
        .await;
    let mut client = app.connect("timer").await;
    let (started, _) = client.start("long").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let sent = Instant::now();
        submit(&mut client, &id, &format!("f{i}"), ANSWER, "t").await;
        until(&mut client, "ANSWER_FEEDBACK").await;
        took.push(sent.elapsed());
        client.recv_type("PROGRESS_UPDATE").await;
        client.recv().await; // the next QUESTION, or ASSESSMENT_COMPLETED
    }
    took
}

async fn the_latency_a_model_grade_adds_is_measured(backend: Backend) {
    const N: usize = 50;
    // Answers as fast as the server replies: lift the per-user message rate.
    let unthrottled = |s: &mut assessd::config::Settings| {
        s.limits.rate_per_sec = 10_000;
        s.limits.rate_burst = 10_000;
    };
    let (fake, base_url) = fake_provider(Mode::Reply(vec![GRADED])).await;
    let config = AiConfig {
        default: Some(profile("default", &base_url)),
        ..AiConfig::default()
    };
    let Some(app) = spawn_app_with(backend, move |s| {
        s.ai = config;
        unthrottled(s);
    })
    .await
    else {
        return;
    };
    let graded = percentiles(answer_times(&app, N).await);
    assert_eq!(fake.requests(), N);
    app.stop().await;
    let Some(app) = spawn_app_with(backend, unthrottled).await else {
        return;
    };
    let offline = percentiles(answer_times(&app, N).await);
    app.stop().await;
    println!(
        "{backend:?}: {N} free-text answers, SUBMIT_ANSWER to ANSWER_FEEDBACK: model (local fake) \
         p50 {:.1} ms p99 {:.1} ms; offline p50 {:.1} ms p99 {:.1} ms",
        graded.0, graded.1, offline.0, offline.1
    );
}

crate::on_both_backends!(
    a_server_without_structured_output_is_asked_in_words,
    a_free_text_answer_is_graded_by_the_model,
    unusable_replies_and_a_failing_model_fall_back_to_the_offline_grader,
    a_slow_model_falls_back_and_an_answer_in_time_counts_after_the_deadline,
    a_reconnect_while_the_model_grades_gives_one_feedback,
    a_closed_socket_is_let_go_and_its_answer_still_graded,
    no_free_slot_grades_offline_at_once,
    the_latency_a_model_grade_adds_is_measured,
);
