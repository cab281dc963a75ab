//! Many users at once, kept strictly apart.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::Value;

use crate::helpers::{demo_answer, spawn_app, spawn_app_with, Backend, WAIT};

/// How many users take the test at once (`ASSESSD_TEST_USERS`, default 25).
fn users() -> usize {
    std::env::var("ASSESSD_TEST_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

async fn many_users_at_once_are_kept_apart(backend: Backend) {
    // Far fewer database connections than users: a socket borrows one per command only.
    let Some(app) = spawn_app_with(backend, |s| s.db_pool = 4).await else {
        return;
    };
    let n = users();
    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let user = format!("user{i:03}");
        let mut client = app.connect(&user).await;
        tasks.push(tokio::spawn(async move {
            let (started, mut question) = client.start("demo").await;
            let id = started["assessment_id"].as_str().unwrap().to_string();
            let mut seen: Vec<Value> = vec![started, question.clone()];
            loop {
                assert_eq!(
                    question["assessment_id"], id,
                    "{user} saw another assessment"
                );
                let qid = question["question_id"].as_str().unwrap().to_string();
                let (feedback, progress, next) = client.answer(&id, &qid, demo_answer(&qid)).await;
                seen.extend([feedback, progress, next.clone()]);
                if next["type"] == "ASSESSMENT_COMPLETED" {
                    break;
                }
                question = next;
            }
            for message in &seen {
                if let Some(other) = message.get("assessment_id") {
                    assert_eq!(other, &Value::String(id.clone()), "{user} got {message}");
                }
            }
            (user, id)
        }));
    }
    let mut ids = HashSet::new();
    let mut results = Vec::new();
    for task in tasks {
        let (user, id) = task.await.expect("user task");
        assert!(ids.insert(id.clone()), "assessment ids are unique");
        results.push((user, id));
    }
    let took = began.elapsed();
    eprintln!("{n} users completed the demo test concurrently on {backend:?} in {took:?}");

    // Each stream holds only its own user's attempt.
    for (user, id) in &results {
        let stream = app.stream_of(user).await;
        assert_eq!(
            stream
                .iter()
                .filter(|e| e["event_type"] == "AssessmentStarted")
                .count(),
            1
        );
        for event in &stream {
            assert_eq!(&event["user_id"], user);
            assert_eq!(
                event["payload"]["assessment_id"].as_str(),
                Some(id.as_str()),
                "{event}"
            );
        }
    }
    app.stop().await;
}

/// A socket that dies without a close frame ends its session at once (no spinning on a
/// dead socket), and nobody else notices.
async fn a_dead_socket_ends_only_its_own_session(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut alive = app.connect("alive").await;
    let mut dying = app.connect("dying").await;
    dying.start("demo").await;
    assert_eq!(app.state.registry.live(), 2);
    // Drop the TCP connection under the WebSocket: no close handshake.
    let tcp = match dying.stream.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("plain TCP in tests"),
    };
    use tokio::io::AsyncWriteExt;
    tcp.shutdown().await.unwrap();
    drop(dying);
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.state.registry.live() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead session never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    alive.assert_alive().await;
    // The dying user's progress is intact for their next connection.
    let mut back = app.connect("dying").await;
    assert_eq!(back.recv_type("ASSESSMENT_RESUMED").await["answered"], 0);
    app.stop().await;
}

crate::on_both_backends!(
    many_users_at_once_are_kept_apart,
    a_dead_socket_ends_only_its_own_session
);
