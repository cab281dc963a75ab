//! The whole flow of taking the demo test, and what it records.

use assessd::auth::Role;
use serde_json::json;

use crate::helpers::{demo_answer, spawn_app, Backend};

async fn the_demo_test_is_taken_to_completion(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut alice = app.connect("alice").await;

    let (started, mut question) = alice.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    assert_eq!(started["attempt"], 1);
    assert_eq!(started["total_questions"], 4);
    assert_eq!(started["seq"], 1);
    assert!(started["deadline"].is_string());
    assert_eq!(question["position"], 1);
    assert!(question.get("answer").is_none() && question.get("explanation").is_none());

    let mut last = json!(null);
    for position in 1..=4 {
        assert_eq!(question["position"], position);
        let qid = question["question_id"].as_str().unwrap().to_string();
        let (feedback, progress, next) = alice.answer(&id, &qid, demo_answer(&qid)).await;
        assert_eq!(feedback["correct"], true, "{feedback}");
        assert_eq!(progress["answered"], position);
        assert!(feedback["seq"].as_u64().unwrap() > question["seq"].as_u64().unwrap());
        if position < 4 {
            question = next;
        } else {
            last = next;
        }
    }
    assert_eq!(last["type"], "ASSESSMENT_COMPLETED");
    assert_eq!(last["reason"], "all_answered");
    assert_eq!(last["passed"], true);
    assert_eq!(last["score"], last["max_score"]);

    // Every action is an event of alice's stream, in order, with its metadata.
    let stream = app.stream_of("alice").await;
    let types: Vec<&str> = stream
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types[0], "AssessmentStarted");
    assert_eq!(types.iter().filter(|t| **t == "AnswerSubmitted").count(), 4);
    assert_eq!(types.last(), Some(&"AssessmentCompleted"));
    for (i, event) in stream.iter().enumerate() {
        assert_eq!(event["sequence"], i as u64 + 1);
        assert_eq!(event["user_id"], "alice");
        assert_eq!(event["event_version"], "1.0");
        assert!(event["metadata"]["connection_id"].is_string(), "{event}");
        assert!(event["metadata"]["node_id"].is_string());
        assert!(event["metadata"]["time"].is_string());
    }
    // The presented question is recorded as shown, for auditors.
    assert_eq!(
        stream[1]["payload"]["question"]["prompt"],
        "Which keyword declares a constant?"
    );
    assert_eq!(stream[1]["payload"]["source"], "question_bank");

    // The test list shows the attempt used.
    let (status, tests) = app
        .get("/api/tests", &app.token("alice", Role::Taker))
        .await;
    assert_eq!(status, 200);
    let demo = tests["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "demo")
        .unwrap()
        .clone();
    assert_eq!(demo["attempts_used"], 1);
    assert_eq!(demo["status"], "available");
    app.stop().await;
}

async fn request_ids_are_echoed_and_chat_is_recorded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = app.connect("bob").await;
    bob.send(json!({"type": "START_ASSESSMENT", "test_id": "demo", "request_id": "start-1"}))
        .await;
    let started = bob.recv_type("ASSESSMENT_STARTED").await;
    assert_eq!(started["request_id"], "start-1");
    assert_eq!(bob.recv_type("QUESTION").await["request_id"], "start-1");

    let id = started["assessment_id"].as_str().unwrap();
    bob.send(json!({"type": "CHAT_MESSAGE", "text": "What is the answer?", "assessment_id": id, "request_id": "c1"})).await;
    let reply = bob.recv_type("SYSTEM_MESSAGE").await;
    assert_eq!(reply["request_id"], "c1");
    assert!(reply["seq"].is_u64());
    let text = reply["text"].as_str().unwrap();
    // The prompt says "constant"; the right choice is the word "const" on its own.
    let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).collect();
    assert!(
        !words.contains(&"const"),
        "the tutor must not reveal the answer: {text}"
    );

    let stream = app.stream_of("bob").await;
    let chat = stream
        .iter()
        .find(|e| e["event_type"] == "ChatExchanged")
        .expect("chat recorded");
    assert_eq!(chat["payload"]["user_text"], "What is the answer?");
    assert_eq!(chat["payload"]["reply_text"], text);
    assert_eq!(chat["payload"]["question_id"], "q1");
    assert_eq!(chat["metadata"]["request_id"], "c1");

    bob.send(json!({"type": "GET_QUESTION", "assessment_id": id, "request_id": "g"}))
        .await;
    let q = bob.recv_type("QUESTION").await;
    assert_eq!(
        (q["question_id"].as_str(), q["request_id"].as_str()),
        (Some("q1"), Some("g"))
    );
    app.stop().await;
}

crate::on_both_backends!(
    the_demo_test_is_taken_to_completion,
    request_ids_are_echoed_and_chat_is_recorded,
);
