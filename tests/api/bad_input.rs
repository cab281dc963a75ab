//! Every bad input of PROTOCOL section 2 gets an ERROR with a contract code and the socket
//! stays open; bad tokens are refused before the upgrade.

use assessd::auth::Role;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app, spawn_app_with, Backend};

async fn each_bad_message_gets_its_error_and_the_socket_stays_open(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut kim = app.connect("kim").await;
    let (started, _) = kim.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();

    let long_id = "r".repeat(200);
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::Binary(vec![1, 2, 3].into()), "bad_request", None),
        (
            Message::Text("this is not json".into()),
            "bad_request",
            None,
        ),
        (Message::Text("[1,2,3]".into()), "bad_request", None),
        (Message::Text("{}".into()), "bad_request", None),
        (
            text(json!({"type": 42, "request_id": "t1"})),
            "bad_request",
            Some("t1"),
        ),
        (
            text(json!({"type": "LAUNCH_MISSILES", "request_id": "t2"})),
            "unknown_type",
            Some("t2"),
        ),
        (
            text(json!({"type": "start_assessment", "test_id": "demo"})),
            "unknown_type",
            None,
        ),
        (
            text(json!({"type": "START_ASSESSMENT", "request_id": "t3"})),
            "bad_request",
            Some("t3"),
        ),
        (
            text(json!({"type": "START_ASSESSMENT", "test_id": ["demo"]})),
            "bad_request",
            None,
        ),
        (
            text(json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": "q1"})),
            "bad_request",
            None,
        ),
        (
            text(
                json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": "q1", "answer": 7}),
            ),
            "bad_request",
            None,
        ),
        (
            text(
                json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": "q1", "answer": "zzz", "request_id": "t4"}),
            ),
            "bad_request",
            Some("t4"),
        ),
        (
            text(
                json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": "q1", "answer": ["b"]}),
            ),
            "bad_request",
            None,
        ),
        (
            text(
                json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": "q3", "answer": "a"}),
            ),
            "wrong_question",
            None,
        ),
        (
            text(
                json!({"type": "SUBMIT_ANSWER", "assessment_id": "nope", "question_id": "q1", "answer": "b"}),
            ),
            "not_found",
            None,
        ),
        (text(json!({"type": "GET_QUESTION"})), "bad_request", None),
        (
            text(json!({"type": "GET_QUESTION", "assessment_id": "nope"})),
            "not_found",
            None,
        ),
        (
            text(json!({"type": "CHAT_MESSAGE", "text": ""})),
            "bad_request",
            None,
        ),
        (
            text(json!({"type": "CHAT_MESSAGE", "text": "x".repeat(5000)})),
            "bad_request",
            None,
        ),
        (
            text(json!({"type": "CHAT_MESSAGE", "text": "hi", "assessment_id": "nope"})),
            "not_found",
            None,
        ),
        (
            text(json!({"type": "HEARTBEAT", "request_id": 12})),
            "bad_request",
            None,
        ),
        (
            text(json!({"type": "HEARTBEAT", "request_id": long_id})),
            "bad_request",
            Some(long_id.as_str()),
        ),
    ];
    for (message, code, echoed) in cases {
        let shown = format!("{message:?}");
        kim.send_raw(message).await;
        let error = kim.recv_type("ERROR").await;
        assert_eq!(error["code"], code, "for {shown}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(error["request_id"].as_str(), echoed, "for {shown}");
    }
    kim.assert_alive().await;

    // Nothing was recorded by any of them: the stream is still start + first question.
    assert_eq!(app.stream_of("kim").await.len(), 2);
    // And a user id in a body is ignored: kim's messages never touch mallory's stream.
    kim.send(json!({"type": "GET_QUESTION", "assessment_id": id, "user_id": "mallory"}))
        .await;
    assert_eq!(kim.recv_type("QUESTION").await["question_id"], "q1");
    assert!(app.stream_of("mallory").await.is_empty());
    app.stop().await;
}

/// An empty selection would be graded wrong for good, so it is refused, not recorded.
async fn an_empty_multiple_choice_answer_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut mo = app.connect("mo").await;
    let (started, _) = mo.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    let (_, _, next) = mo.answer(&id, "q1", json!("b")).await;
    assert_eq!(next["kind"], "multiple_choice");
    mo.send(
        json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": "q2", "answer": []}),
    )
    .await;
    let error = mo.recv_type("ERROR").await;
    assert_eq!(error["code"], "bad_request", "{error}");
    let (feedback, _, _) = mo.answer(&id, "q2", json!(["a", "c"])).await;
    assert_eq!(feedback["correct"], true, "the question is still open");
    app.stop().await;
}

fn text(value: Value) -> Message {
    Message::Text(value.to_string().into())
}

async fn no_active_assessment_without_an_attempt(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut lee = app.connect("lee").await;
    lee.send(json!({"type": "GET_QUESTION", "assessment_id": "x"}))
        .await;
    assert_eq!(lee.recv_type("ERROR").await["code"], "no_active_assessment");
    lee.send(
        json!({"type": "SUBMIT_ANSWER", "assessment_id": "x", "question_id": "q1", "answer": "b"}),
    )
    .await;
    assert_eq!(lee.recv_type("ERROR").await["code"], "no_active_assessment");
    lee.assert_alive().await;
    app.stop().await;
}

async fn another_users_assessment_is_invisible(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut owner = app.connect("owner").await;
    let (started, _) = owner.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    let mut thief = app.connect("thief").await;
    thief.start("demo").await;
    for message in [
        json!({"type": "SUBMIT_ANSWER", "assessment_id": id, "question_id": "q1", "answer": "b"}),
        json!({"type": "GET_QUESTION", "assessment_id": id}),
        json!({"type": "CHAT_MESSAGE", "text": "hi", "assessment_id": id}),
    ] {
        thief.send(message).await;
        assert_eq!(thief.recv_type("ERROR").await["code"], "not_found");
    }
    assert_eq!(
        app.stream_of("owner").await.len(),
        2,
        "the owner's stream is untouched"
    );
    app.stop().await;
}

async fn a_frame_over_the_limit_closes_with_1009(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.limits.max_message_bytes = 1024).await else {
        return;
    };
    let mut big = app.connect("big").await;
    let padding = "x".repeat(2048);
    big.send(json!({"type": "HEARTBEAT", "padding": padding}))
        .await;
    assert_eq!(big.recv_close().await, Some(1009));
    // The server is fine and the user can reconnect.
    app.connect("big").await.assert_alive().await;
    app.stop().await;
}

async fn bad_tokens_are_refused_before_the_upgrade(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let ws = app.url("/ws");
    // No token, a malformed one, one signed with another key, an expired one.
    let other = assessd::auth::JwtKeys::hs256(
        &assessd::auth::Secret::new("some-other-secret-123456"),
        None,
        None,
    )
    .mint("mo", &[Role::Taker], std::time::Duration::from_secs(60))
    .unwrap();
    let expired = expired_token();
    for (header, why) in [
        (None, "missing"),
        (Some("Bearer not.a.jwt".to_string()), "malformed"),
        (Some("Basic abc".to_string()), "wrong scheme"),
        (Some(format!("Bearer {other}")), "wrong key"),
        (Some(format!("Bearer {expired}")), "expired"),
    ] {
        let mut request = app
            .http
            .get(&ws)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(h) = header {
            request = request.header("authorization", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{why}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{why}: {body}");
    }
    // The query parameter works for browsers; a non-taker role is 403.
    let token = app.token("nina", Role::Taker);
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?access_token={token}", app.addr))
            .await
            .expect("query token accepted");
    use futures_util::StreamExt;
    let first = socket.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("CONNECTED"));
    let auditor = app.token("audrey", Role::Auditor);
    match app.connect_with_token(&auditor).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| "a socket")),
    }
    app.stop().await;
}

fn expired_token() -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let now = jsonwebtoken::get_current_timestamp();
    encode(
        &Header::default(),
        &json!({"sub": "old", "role": "taker", "exp": now - 3600}),
        &EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
    )
    .unwrap()
}

crate::on_both_backends!(
    an_empty_multiple_choice_answer_is_refused,
    each_bad_message_gets_its_error_and_the_socket_stays_open,
    no_active_assessment_without_an_attempt,
    another_users_assessment_is_invisible,
    a_frame_over_the_limit_closes_with_1009,
    bad_tokens_are_refused_before_the_upgrade,
);
