//! Adaptive tests through the real WebSocket, against the fake OpenAI-compatible server of
//! [`crate::ai`]: generated questions graded from their recorded key (which the client
//! never sees), the topic and the previous answers in the model's prompt, unusable
//! replies, a 500, a timeout and no provider at all falling back to the bank (until it is
//! used up), a reconnect during a slow generation, and replays that never call the model.

use std::time::Duration;

use serde_json::{json, Value};

use assessd::auth::Role;

use crate::ai::{app_with_ai, fake_provider, metrics, of_type, until, Mode, MODEL};
use crate::helpers::{spawn_app, Backend, TestApp, WsClient};

const TOPIC: &str = "Rust ownership";
const CHOICE: &str = r#"{"kind":"single_choice","prompt":"Which type is moved on assignment?","choices":[{"id":"a","text":"String"},{"id":"b","text":"i32"}],"answer":"a","explanation":"SECRET-EXPLANATION: heap data moves."}"#;
const FREE: &str = r#"{"kind":"free_text","prompt":"What happens to a value when its owner goes out of scope?","keywords":["dropped"],"explanation":"Its destructor runs."}"#;
const GRADE: &str = r#"{"score": 0.5, "feedback": "Right; now say what runs when it is dropped."}"#;

/// An adaptive test of `count` questions on [`TOPIC`], with a bank of two.
fn adaptive(count: u32) -> Value {
    json!({
        "title": "Ownership",
        "pass_ratio": 0.5,
        "questions": [
            {"id": "k1", "kind": "single_choice", "prompt": "Which keyword declares a constant?",
             "choices": [{"id": "a", "text": "let"}, {"id": "b", "text": "const"}], "answer": "b",
             "points": 5},
            {"id": "k2", "kind": "free_text", "prompt": "What does the borrow checker enforce?",
             "keywords": ["borrow"]}
        ],
        "ai": {"adaptive": true, "question_count": count, "topic": TOPIC}
    })
}

async fn submit(client: &mut WsClient, id: &str, question: &str, answer: Value) {
    client
        .send(
            json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": question,
                     "answer": answer}),
        )
        .await;
}

/// The payloads of the user's QuestionPresented events.
async fn presented(app: &TestApp, user: &str) -> Vec<Value> {
    app.stream_of(user)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "QuestionPresented")
        .map(|e| e["payload"].clone())
        .collect()
}

/// Asserts a QUESTION message carries nothing of the key.
fn keyless(question: &Value) {
    for field in ["answer", "keywords", "explanation", "key"] {
        assert!(question.get(field).is_none(), "{question}");
    }
    assert!(!question.to_string().contains("SECRET"), "{question}");
}

async fn an_adaptive_test_runs_on_generated_questions(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Each(vec![CHOICE, FREE, GRADE])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("own", adaptive(2)).await;
    let mut alice = app.connect("alice").await;
    alice
        .send(json!({"type": "START_ASSESSMENT", "test_id": "own"}))
        .await;
    let messages = until(&mut alice, "QUESTION").await;
    let started = of_type(&messages, "ASSESSMENT_STARTED")[0].clone();
    assert_eq!(started["total_questions"], 2);
    let id = started["assessment_id"].as_str().unwrap().to_string();
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[1], "AGENT_STARTED", "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 2], "AGENT_COMPLETED", "{kinds:?}");
    assert!(of_type(&messages, "AGENT_STARTED")
        .iter()
        .all(|m| m["task"] == "question"));
    let question = messages.last().unwrap();
    assert_eq!(question["question_id"], "ai-1");
    let (request, _) = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(request["response_format"]["type"], "json_schema");
    assert_eq!(
        request["response_format"]["json_schema"]["name"],
        "adaptive_question"
    );
    assert_eq!(
        request["response_format"]["json_schema"]["schema"]["properties"]["kind"]["enum"],
        json!(["single_choice", "multiple_choice", "free_text"])
    );
    assert_eq!(question["kind"], "single_choice");
    keyless(question);

    // Graded from the key recorded with the question.
    submit(&mut alice, &id, "ai-1", json!("a")).await;
    let feedback = alice.recv_type("ANSWER_FEEDBACK").await;
    assert_eq!(
        (feedback["correct"].as_bool(), feedback["score"].as_f64()),
        (Some(true), Some(1.0))
    );
    let next = until(&mut alice, "QUESTION").await;
    let second = next.last().unwrap();
    assert_eq!(
        (second["question_id"].as_str(), second["kind"].as_str()),
        (Some("ai-2"), Some("free_text"))
    );
    keyless(second);

    // The second prompt carries the topic and the first answer with its grade.
    let prompt = fake.seen.lock().unwrap()[1].0["messages"].to_string();
    assert!(prompt.contains(TOPIC), "{prompt}");
    assert!(
        prompt.contains("Which type is moved on assignment?"),
        "{prompt}"
    );
    assert!(
        prompt.contains("Answer: a") && prompt.contains("Result: correct"),
        "{prompt}"
    );

    // The free-text answer is graded by the model, from the recorded keywords, out of 1.
    submit(&mut alice, &id, "ai-2", json!("It is dropped.")).await;
    let done = until(&mut alice, "ASSESSMENT_COMPLETED").await;
    assert_eq!(
        of_type(&done, "AGENT_STARTED")
            .iter()
            .map(|m| m["task"].as_str())
            .collect::<Vec<_>>(),
        [Some("feedback")]
    );
    let feedback = of_type(&done, "ANSWER_FEEDBACK")[0];
    assert_eq!(
        (feedback["score"].as_f64(), feedback["max_score"].as_f64()),
        (Some(0.5), Some(1.0))
    );
    assert_eq!(
        feedback["feedback"],
        "Right; now say what runs when it is dropped."
    );
    let completed = done.last().unwrap();
    assert_eq!(
        (completed["score"].as_f64(), completed["max_score"].as_f64()),
        (Some(1.5), Some(2.0))
    );
    let grader = fake.seen.lock().unwrap()[2].0.clone();
    assert_eq!(grader["response_format"]["json_schema"]["name"], "grade");
    let system = grader["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("Key ideas: dropped"), "{system}");
    assert!(system.contains("0 to 1 points"), "{system}");
    assert!(system.contains("Its destructor runs."), "{system}");
    let graded: Vec<Value> = app
        .stream_of("alice")
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "FeedbackGiven" && e["payload"]["question_id"] == "ai-2")
        .collect();
    assert_eq!(graded.len(), 1);
    assert_eq!(graded[0]["payload"]["graded_by"], MODEL);

    let events = presented(&app, "alice").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["source"], MODEL);
    assert_eq!(events[0]["model"], MODEL);
    assert_eq!(events[0]["provider_profile"], "default");
    assert_eq!(events[0]["usage"]["total_tokens"], 49);
    assert_eq!(events[0]["key"]["answer"], "a");
    assert_eq!(events[1]["key"]["keywords"], json!(["dropped"]));
    assert!(events[0].get("fallback").is_none());

    // Replays never call the model: a reconnect, and time travel through the audit API.
    assert_eq!(fake.requests(), 3);
    drop(alice);
    let mut again = app.connect("alice").await;
    again.send(json!({"type": "HEARTBEAT"})).await;
    again.recv_type("PONG").await;
    let auditor = app.token("auditor", Role::Auditor);
    for at in ["", "?at_sequence=4"] {
        let (status, body) = app
            .get(&format!("/api/audit/users/alice/state{at}"), &auditor)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(fake.requests(), 3);
    app.stop().await;
}

async fn unusable_replies_and_a_500_fall_back_to_the_bank_until_it_runs_out(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Reply(vec![
        r#"{"kind":"single_choice","prompt":"x","choices":[],"answer":"a"}"#,
    ]))
    .await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("own", adaptive(3)).await;
    let mut alice = app.connect("alice").await;
    alice
        .send(json!({"type": "START_ASSESSMENT", "test_id": "own"}))
        .await;
    let messages = until(&mut alice, "QUESTION").await;
    let id = of_type(&messages, "ASSESSMENT_STARTED")[0]["assessment_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Asked twice, then the first bank question, worth one point like every other.
    assert_eq!(messages.last().unwrap()["question_id"], "k1");
    assert_eq!(fake.requests(), 2);
    let events = presented(&app, "alice").await;
    assert_eq!(events[0]["fallback"], "invalid_output");
    assert_eq!(events[0]["source"], "question_bank");
    assert_eq!(events[0]["question"]["points"], 1.0);
    assert!(events[0].get("key").is_none());

    fake.set(Mode::Always500);
    submit(&mut alice, &id, "k1", json!("b")).await;
    let feedback = alice.recv_type("ANSWER_FEEDBACK").await;
    assert_eq!(feedback["max_score"], 1.0);
    let next = until(&mut alice, "QUESTION").await;
    assert_eq!(next.last().unwrap()["question_id"], "k2");
    assert_eq!(presented(&app, "alice").await[1]["fallback"], "error");

    // The bank is used up before the third question: the attempt completes.
    submit(&mut alice, &id, "k2", json!("borrow rules")).await;
    let done = until(&mut alice, "ASSESSMENT_COMPLETED").await;
    let completed = done.last().unwrap();
    assert_eq!(completed["reason"], "all_answered");
    assert_eq!(
        (completed["score"].as_f64(), completed["max_score"].as_f64()),
        (Some(2.0), Some(3.0))
    );
    assert_eq!(presented(&app, "alice").await.len(), 2);
    // The free-text bank question went to the model grader, which failed: graded offline,
    // and the attempt went on (here: to its end) all the same.
    assert_eq!(of_type(&done, "AGENT_STARTED")[0]["task"], "feedback");
    let graded = app
        .stream_of("alice")
        .await
        .into_iter()
        .find(|e| e["event_type"] == "FeedbackGiven" && e["payload"]["question_id"] == "k2")
        .unwrap();
    assert_eq!(
        (
            &graded["payload"]["graded_by"],
            &graded["payload"]["fallback"]
        ),
        (&json!("offline"), &json!("error"))
    );
    assert!(metrics(&app)
        .await
        .contains(r#"assessd_ai_fallbacks_total{profile="default",task="question"} 3"#));
    app.stop().await;
}

async fn a_slow_model_times_out_to_the_bank(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Slow).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_millis(300)).await else {
        return;
    };
    app.put_test("own", adaptive(2)).await;
    let mut alice = app.connect("alice").await;
    alice
        .send(json!({"type": "START_ASSESSMENT", "test_id": "own"}))
        .await;
    let messages = until(&mut alice, "QUESTION").await;
    assert_eq!(messages.last().unwrap()["question_id"], "k1");
    // A timeout is not retried: the call used its budget.
    assert_eq!(fake.requests(), 1);
    let events = presented(&app, "alice").await;
    assert_eq!(events[0]["fallback"], "timeout");
    assert_eq!(events[0]["model"], MODEL);
    app.stop().await;
}

async fn statistics_leave_out_each_attempt_s_own_generated_questions(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Reply(vec![CHOICE])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("own", adaptive(1)).await;
    // alice and bob each get an `ai-1` of their own; for carol the bank's k1 stands in.
    for user in ["alice", "bob", "carol"] {
        if user == "carol" {
            fake.set(Mode::Always500);
        }
        let mut client = app.connect(user).await;
        client
            .send(json!({"type": "START_ASSESSMENT", "test_id": "own"}))
            .await;
        let messages = until(&mut client, "QUESTION").await;
        let question = messages.last().unwrap();
        let id = of_type(&messages, "ASSESSMENT_STARTED")[0]["assessment_id"]
            .as_str()
            .unwrap()
            .to_string();
        let q = question["question_id"].as_str().unwrap().to_string();
        assert_eq!(q, if user == "carol" { "k1" } else { "ai-1" });
        submit(&mut client, &id, &q, json!("a")).await;
        until(&mut client, "ASSESSMENT_COMPLETED").await;
    }
    crate::projections::caught_up(&app.state).await;
    let admin = app.token("root", Role::Admin);
    let (status, stats) = app.get("/api/admin/tests/own/statistics", &admin).await;
    assert_eq!(status, 200, "{stats}");
    let version = &stats["versions"][0];
    assert_eq!(version["attempts_completed"], 3);
    let ids: Vec<&str> = version["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["k1", "k2"], "{stats}");
    assert_eq!(version["questions"][0]["answered"], 1);
    app.stop().await;
}

async fn without_a_provider_the_bank_asks_and_says_so(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.put_test("own", adaptive(1)).await;
    let mut alice = app.connect("alice").await;
    let (started, question) = alice.start("own").await;
    assert_eq!(started["total_questions"], 1);
    assert_eq!(question["question_id"], "k1");
    let events = presented(&app, "alice").await;
    assert_eq!(events[0]["fallback"], "offline");
    assert!(events[0].get("model").is_none(), "{events:?}");
    let id = started["assessment_id"].as_str().unwrap();
    let (feedback, _, completed) = alice.answer(id, "k1", json!("b")).await;
    assert_eq!(
        (feedback["score"].as_f64(), feedback["max_score"].as_f64()),
        (Some(1.0), Some(1.0))
    );
    assert_eq!(completed["type"], "ASSESSMENT_COMPLETED");
    assert_eq!(completed["max_score"], 1.0);
    app.stop().await;
}

async fn a_reconnect_during_a_slow_generation_gives_one_question(backend: Backend) {
    let (fake, base_url) =
        fake_provider(Mode::Delayed(Duration::from_millis(1500), vec![CHOICE])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("own", adaptive(2)).await;
    let mut alice = app.connect("alice").await;
    alice
        .send(json!({"type": "START_ASSESSMENT", "test_id": "own"}))
        .await;
    alice.recv_type("ASSESSMENT_STARTED").await;
    alice.recv_type("AGENT_STARTED").await;
    drop(alice);

    // The new connection is greeted once the question is recorded, with that question.
    let mut again = app.connect("alice").await;
    again.recv_type("ASSESSMENT_RESUMED").await;
    assert_eq!(again.recv_type("QUESTION").await["question_id"], "ai-1");
    let id = presented(&app, "alice").await[0]["assessment_id"]
        .as_str()
        .unwrap()
        .to_string();
    again
        .send(json!({"type": "GET_QUESTION", "assessment_id": id}))
        .await;
    assert_eq!(again.recv_type("QUESTION").await["question_id"], "ai-1");
    again.assert_alive().await;

    let events = presented(&app, "alice").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(fake.requests(), 1);
    app.stop().await;
}

crate::on_both_backends!(
    statistics_leave_out_each_attempt_s_own_generated_questions,
    an_adaptive_test_runs_on_generated_questions,
    unusable_replies_and_a_500_fall_back_to_the_bank_until_it_runs_out,
    a_reconnect_during_a_slow_generation_gives_one_question,
    a_slow_model_times_out_to_the_bank,
    without_a_provider_the_bank_asks_and_says_so,
);
