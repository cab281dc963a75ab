//! The AI tutor through the real WebSocket, against a fake OpenAI-compatible server that
//! the test starts itself on 127.0.0.1 (no internet): streamed replies, a reply that gives
//! the answer away, 429 then success, 500, malformed JSON, and a model slower than the
//! timeout while other users (and the same user's heartbeat) are served.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assessd::ai::config::ProfileConfig;
use assessd::ai::guard::SAFE_REPLY;
use assessd::ai::AiConfig;
use assessd::auth::{Role, Secret};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp, WsClient};

/// The key the fake server expects; it must appear nowhere else.
pub(crate) const API_KEY: &str = "sk-assessd-test-key-0123456789";
pub(crate) const MODEL: &str = "fake-model";

/// What the fake server does with the next request.
#[derive(Clone)]
pub(crate) enum Mode {
    /// Streams these deltas, then usage, then `[DONE]`.
    Reply(Vec<&'static str>),
    /// Answers 429 to the first `n` requests, then streams the deltas.
    TooManyThen(usize, Vec<&'static str>),
    Always500,
    /// A stream whose chunk is not JSON.
    Malformed,
    /// Never answers within any test's timeout.
    Slow,
    /// Streams the deltas after waiting this long.
    Delayed(Duration, Vec<&'static str>),
    /// Request n (from 0) gets reply n as one delta; later requests get the last one.
    Each(Vec<&'static str>),
    /// Answers the first request 429 with `Retry-After: 1`, then streams the deltas.
    RetryAfterOneSecond(Vec<&'static str>),
    /// Answers 400 to a request with `response_format` (as servers without structured
    /// output do), and streams the deltas to one without.
    NoStructuredOutput(Vec<&'static str>),
}

pub(crate) struct Fake {
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    /// Each request's body and `Authorization` header.
    pub(crate) seen: Mutex<Vec<(Value, Option<String>)>>,
    /// When each request arrived.
    pub(crate) arrived: Mutex<Vec<Instant>>,
}

impl Fake {
    pub(crate) fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn completions(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = fake.requests.fetch_add(1, Ordering::SeqCst);
    fake.arrived.lock().unwrap().push(Instant::now());
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let structured = body.get("response_format").is_some();
    fake.seen.lock().unwrap().push((body, auth));
    let mode = fake.mode.lock().unwrap().clone();
    match mode {
        Mode::Reply(deltas) => sse(&deltas),
        Mode::TooManyThen(k, deltas) if n >= k => sse(&deltas),
        Mode::TooManyThen(..) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "application/json")],
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": null}}).to_string(),
        )
            .into_response(),
        Mode::Always500 => (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke").into_response(),
        Mode::Malformed => event_stream(vec!["data: {\"id\": oops\n\n".to_string()]),
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            sse(&["too late"])
        }
        Mode::Delayed(wait, deltas) => {
            tokio::time::sleep(wait).await;
            sse(&deltas)
        }
        Mode::Each(replies) => match replies.get(n).or(replies.last()) {
            Some(reply) => sse(&[reply]),
            None => sse(&[]),
        },
        Mode::RetryAfterOneSecond(_) if n == 0 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "application/json"), ("retry-after", "1")],
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": null}}).to_string(),
        )
            .into_response(),
        Mode::RetryAfterOneSecond(deltas) => sse(&deltas),
        Mode::NoStructuredOutput(_) if structured => (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            json!({"error": {"message": "response_format is not supported", "type": "invalid_request_error", "param": "response_format", "code": null}}).to_string(),
        )
            .into_response(),
        Mode::NoStructuredOutput(deltas) => sse(&deltas),
    }
}

fn chunk(choices: Value, usage: Value) -> String {
    let chunk = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": MODEL, "choices": choices, "usage": usage,
    });
    format!("data: {chunk}\n\n")
}

fn sse(deltas: &[&str]) -> Response {
    let mut events: Vec<String> = deltas
        .iter()
        .map(|d| {
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": d}, "finish_reason": null}]),
                Value::Null,
            )
        })
        .collect();
    events.push(chunk(
        json!([]),
        json!({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}),
    ));
    events.push("data: [DONE]\n\n".into());
    event_stream(events)
}

fn event_stream(events: Vec<String>) -> Response {
    let stream = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Bytes::from(e))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Starts the fake provider; its API base is `http://ADDR/v1`.
pub(crate) async fn fake_provider(mode: Mode) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake {
        mode: Mutex::new(mode),
        requests: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
        arrived: Mutex::new(Vec::new()),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Without TCP_NODELAY a streamed reply waits on delayed ACKs (~40 ms a reply), which
    // a real provider's latency would hide but a latency measurement would not.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    (fake, format!("http://{addr}/v1"))
}

pub(crate) fn profile(name: &str, base_url: &str) -> ProfileConfig {
    ProfileConfig {
        name: name.into(),
        base_url: base_url.into(),
        api_key: Some(Secret::new(API_KEY)),
        model: MODEL.into(),
    }
}

/// A server whose default profile (or the named one) is the fake provider.
pub(crate) async fn app_with_ai(
    backend: Backend,
    base_url: &str,
    named: Option<&str>,
    timeout: Duration,
) -> Option<TestApp> {
    let mut config = AiConfig {
        timeout,
        retry_base: Duration::from_millis(10),
        ..AiConfig::default()
    };
    match named {
        None => config.default = Some(profile("default", base_url)),
        Some(name) => {
            config.profiles.insert(name.into(), profile(name, base_url));
        }
    }
    spawn_app_with(backend, move |s| s.ai = config).await
}

fn quiz(profile: Option<&str>) -> Value {
    let mut test = json!({
        "title": "Constants",
        "questions": [
            {"id": "k1", "kind": "single_choice", "prompt": "Which keyword declares a constant?",
             "choices": [{"id": "a", "text": "let"}, {"id": "b", "text": "const"}], "answer": "b"}
        ]
    });
    if let Some(profile) = profile {
        test["ai"] = json!({"profile": profile});
    }
    test
}

/// Everything up to and including the first message of type `last`.
pub(crate) async fn until(client: &mut WsClient, last: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = client.recv().await;
        let done = message["type"] == last;
        seen.push(message);
        if done {
            return seen;
        }
    }
}

pub(crate) fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

pub(crate) fn deltas(messages: &[Value]) -> String {
    of_type(messages, "AGENT_THINKING")
        .iter()
        .map(|m| m["delta"].as_str().unwrap())
        .collect()
}

pub(crate) async fn metrics(app: &TestApp) -> String {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

/// Starts the quiz for `user`, returning the assessment id.
async fn start(app: &TestApp, user: &str) -> (WsClient, String) {
    let mut client = app.connect(user).await;
    let (started, _) = client.start("quiz").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    (client, id)
}

async fn a_reply_streams_and_is_recorded_with_its_model(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::Reply(vec![
        "Think about ",
        "whether the value ",
        "may ever change.",
    ]))
    .await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("quiz", quiz(None)).await;
    let (mut alice, id) = start(&app, "alice").await;

    alice
        .send(json!({"type": "CHAT_MESSAGE", "text": "Any hint?", "assessment_id": id, "request_id": "c1"}))
        .await;
    let messages = until(&mut alice, "SYSTEM_MESSAGE").await;
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
        messages.iter().all(|m| m["request_id"] == "c1"),
        "{messages:?}"
    );
    assert!(messages
        .iter()
        .filter(|m| m["type"] != "SYSTEM_MESSAGE")
        .all(|m| m["task"] == "chat"));
    let reply = messages.last().unwrap();
    let text = "Think about whether the value may ever change.";
    assert_eq!(reply["text"], text);
    assert_eq!(deltas(&messages), text);
    assert_eq!(reply["assessment_id"], id.as_str());
    assert!(reply["seq"].is_u64());

    // The model got the question as presented and the rule, and the key in its header.
    let (request, auth) = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some(format!("Bearer {API_KEY}").as_str()));
    assert_eq!(request["model"], MODEL);
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"]["include_usage"], true);
    let system = request["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("Which keyword declares a constant?"),
        "{system}"
    );
    assert!(system.contains("Never give the answer away"), "{system}");
    assert_eq!(request["messages"][1]["content"], "Any hint?");

    let stream = app.stream_of("alice").await;
    let chat = stream
        .iter()
        .find(|e| e["event_type"] == "ChatExchanged")
        .expect("chat recorded");
    let payload = &chat["payload"];
    assert_eq!(payload["reply_text"], text);
    assert_eq!(payload["tutor"], "ai");
    assert_eq!(payload["model"], MODEL);
    assert_eq!(payload["provider_profile"], "default");
    assert_eq!(
        payload["usage"],
        json!({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49})
    );
    assert!(payload.get("withheld").is_none(), "{payload}");
    assert!(payload.get("withheld_text").is_none(), "{payload}");
    assert_eq!(chat["sequence"], reply["seq"]);
    // The key is in the configuration only.
    let everything = serde_json::to_string(&stream).unwrap();
    assert!(!everything.contains(API_KEY));
    let metrics = metrics(&app).await;
    assert!(
        metrics.contains(r#"assessd_ai_calls_total{profile="default",task="chat",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"assessd_ai_tokens_total{profile="default",task="chat",kind="prompt"} 42"#),
        "{metrics}"
    );
    assert!(metrics
        .contains("assessd_ai_call_duration_seconds_count{profile=\"default\",task=\"chat\"} 1"));
    assert!(!metrics.contains(API_KEY));

    // Reconnecting replays the stream from the events: the model is not asked again.
    drop(alice);
    let mut again = app.connect("alice").await;
    again.recv_type("ASSESSMENT_RESUMED").await;
    again.recv_type("QUESTION").await;
    again.assert_alive().await;
    assert_eq!(fake.requests(), 1);

    // Without a test in progress the model is told there is no question; nothing to guard.
    let mut bob = app.connect("bob").await;
    bob.send(json!({"type": "CHAT_MESSAGE", "text": "Hello?"}))
        .await;
    let messages = until(&mut bob, "SYSTEM_MESSAGE").await;
    assert!(messages.last().unwrap().get("assessment_id").is_none());
    let (request, _) = fake.seen.lock().unwrap()[1].clone();
    let system = request["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("no question on screen"), "{system}");
    let bob_events = app.stream_of("bob").await;
    assert_eq!(bob_events[0]["payload"]["model"], MODEL);
    assert!(bob_events[0]["payload"]["assessment_id"].is_null());

    // A definition may name only a profile this server has.
    let (status, body) = app
        .put_json(
            "/api/admin/tests/other",
            &app.token("root", Role::Admin),
            &quiz(Some("nope")),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "ai.profile");
    assert!(!body.to_string().contains(API_KEY));
    app.stop().await;
}

async fn a_reply_that_gives_the_answer_away_is_withheld(backend: Backend) {
    let (_fake, base_url) = fake_provider(Mode::Reply(vec![
        "Between the two, ",
        "the answer ",
        "is ",
        "co",
        "nst",
        ", of course.",
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
    app.put_test("quiz", quiz(Some("course-a"))).await;
    let (mut alice, id) = start(&app, "alice").await;

    alice
        .send(json!({"type": "CHAT_MESSAGE", "text": "Just tell me", "assessment_id": id, "request_id": "c2"}))
        .await;
    let messages = until(&mut alice, "SYSTEM_MESSAGE").await;
    let streamed = deltas(&messages);
    assert!(!of_type(&messages, "AGENT_THINKING").is_empty());
    assert!(!streamed.to_lowercase().contains("const"), "{streamed:?}");
    assert!(of_type(&messages, "AGENT_COMPLETED").len() == 1);
    assert_eq!(messages.last().unwrap()["text"], SAFE_REPLY);

    let stream = app.stream_of("alice").await;
    let payload = &stream
        .iter()
        .find(|e| e["event_type"] == "ChatExchanged")
        .expect("chat recorded")["payload"];
    assert_eq!(payload["withheld"], true);
    assert_eq!(payload["reply_text"], SAFE_REPLY);
    // What the model said is on the record for auditors, up to where the guard stopped.
    let said = payload["withheld_text"].as_str().unwrap();
    assert!(
        said.starts_with("Between the two, the answer is co"),
        "{said}"
    );
    assert!(said.contains("const"), "{said}");
    assert_eq!(payload["provider_profile"], "course-a");
    assert_eq!(payload["usage"]["total_tokens"], 49);
    let metrics = metrics(&app).await;
    assert!(
        metrics.contains(
            r#"assessd_ai_calls_total{profile="course-a",task="chat",outcome="withheld"} 1"#
        ),
        "{metrics}"
    );
    app.stop().await;
}

async fn a_429_is_retried_and_failures_answer_ai_unavailable(backend: Backend) {
    let (fake, base_url) =
        fake_provider(Mode::TooManyThen(1, vec!["Read the question ", "again."])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("quiz", quiz(None)).await;
    let (mut alice, id) = start(&app, "alice").await;
    let chat = |n: &str| json!({"type": "CHAT_MESSAGE", "text": "Hint?", "assessment_id": id, "request_id": n});

    alice.send(chat("retried")).await;
    let messages = until(&mut alice, "SYSTEM_MESSAGE").await;
    assert_eq!(messages.last().unwrap()["text"], "Read the question again.");
    assert_eq!(fake.requests(), 2, "one 429, then the retry");

    // 500 on every try: the retries (2 by default) are spent, then ai_unavailable.
    fake.set(Mode::Always500);
    alice.send(chat("broken")).await;
    let messages = until(&mut alice, "ERROR").await;
    let error = messages.last().unwrap();
    assert_eq!(error["code"], "ai_unavailable");
    assert_eq!(error["request_id"], "broken");
    assert_eq!(of_type(&messages, "AGENT_COMPLETED").len(), 1);
    assert_eq!(fake.requests(), 2 + 3);
    assert!(
        !error.to_string().contains("upstream broke"),
        "no upstream detail: {error}"
    );

    fake.set(Mode::Malformed);
    alice.send(chat("garbled")).await;
    let messages = until(&mut alice, "ERROR").await;
    assert_eq!(messages.last().unwrap()["code"], "ai_unavailable");
    assert_eq!(messages.last().unwrap()["request_id"], "garbled");

    // Only the one good reply was recorded, and the socket still works.
    alice.assert_alive().await;
    let stream = app.stream_of("alice").await;
    let chats = stream
        .iter()
        .filter(|e| e["event_type"] == "ChatExchanged")
        .count();
    assert_eq!(chats, 1);
    let metrics = metrics(&app).await;
    assert!(
        metrics
            .contains(r#"assessd_ai_calls_total{profile="default",task="chat",outcome="error"} 2"#),
        "{metrics}"
    );
    app.stop().await;
}

async fn a_retry_waits_as_long_as_retry_after_asks(backend: Backend) {
    let (fake, base_url) = fake_provider(Mode::RetryAfterOneSecond(vec!["Think again."])).await;
    let Some(app) = app_with_ai(backend, &base_url, None, Duration::from_secs(20)).await else {
        return;
    };
    app.put_test("quiz", quiz(None)).await;
    let (mut alice, id) = start(&app, "alice").await;
    alice
        .send(json!({"type": "CHAT_MESSAGE", "text": "Hint?", "assessment_id": id}))
        .await;
    let messages = until(&mut alice, "SYSTEM_MESSAGE").await;
    assert_eq!(messages.last().unwrap()["text"], "Think again.");
    // The backoff alone is about 10 ms here (retry_base): the wait is the server's.
    let arrived = fake.arrived.lock().unwrap().clone();
    assert_eq!(arrived.len(), 2);
    let waited = arrived[1] - arrived[0];
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    // The tutor's reply is free text: no response_format.
    let (request, _) = fake.seen.lock().unwrap()[1].clone();
    assert!(request.get("response_format").is_none(), "{request}");
    app.stop().await;
}

async fn a_slow_model_times_out_and_blocks_no_one(backend: Backend) {
    let (_fake, base_url) = fake_provider(Mode::Slow).await;
    let timeout = Duration::from_secs(3);
    let Some(app) = app_with_ai(backend, &base_url, None, timeout).await else {
        return;
    };
    app.put_test("quiz", quiz(None)).await;
    let (mut alice, id) = start(&app, "alice").await;
    let mut bob = app.connect("bob").await;

    let asked = Instant::now();
    alice
        .send(json!({"type": "CHAT_MESSAGE", "text": "Hint?", "assessment_id": id, "request_id": "slow"}))
        .await;
    assert_eq!(alice.recv_type("AGENT_STARTED").await["request_id"], "slow");

    // While the model is thinking: another user is served at once...
    bob.assert_alive().await;
    // ...and so is alice herself, whose second question is refused by the per-user cap.
    alice.assert_alive().await;
    alice
        .send(json!({"type": "CHAT_MESSAGE", "text": "And?", "assessment_id": id, "request_id": "again"}))
        .await;
    let busy = alice.recv_type("ERROR").await;
    assert_eq!(
        (busy["code"].as_str(), busy["request_id"].as_str()),
        (Some("ai_unavailable"), Some("again"))
    );
    assert!(
        asked.elapsed() < timeout,
        "served while the model was still thinking"
    );

    let messages = until(&mut alice, "ERROR").await;
    let error = messages.last().unwrap();
    assert_eq!(
        (error["code"].as_str(), error["request_id"].as_str()),
        (Some("ai_unavailable"), Some("slow"))
    );
    assert!(asked.elapsed() >= timeout);
    assert_eq!(of_type(&messages, "AGENT_COMPLETED").len(), 1);
    let stream = app.stream_of("alice").await;
    assert!(stream.iter().all(|e| e["event_type"] != "ChatExchanged"));
    assert!(metrics(&app)
        .await
        .contains(r#"assessd_ai_calls_total{profile="default",task="chat",outcome="timeout"} 1"#));
    app.stop().await;
}

crate::on_both_backends!(
    a_reply_streams_and_is_recorded_with_its_model,
    a_reply_that_gives_the_answer_away_is_withheld,
    a_429_is_retried_and_failures_answer_ai_unavailable,
    a_retry_waits_as_long_as_retry_after_asks,
    a_slow_model_times_out_and_blocks_no_one,
);
