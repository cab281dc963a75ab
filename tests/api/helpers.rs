//! The test harness: the real server on port 0 against a fresh database (a SQLite file in
//! a temporary directory, or a new PostgreSQL database that is dropped afterwards), and a
//! typed WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use assessd::auth::{JwtKeys, Role, Secret};
use assessd::config::Settings;
use assessd::Application;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret-0123456789";
/// How long a test waits for a message it expects before failing.
pub const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(Backend)` as two tests, `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}

fn postgres_admin_url() -> String {
    std::env::var("DATABASE_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    /// A fresh database, or `None` when PostgreSQL is wanted but unreachable outside CI
    /// (the skip is announced loudly; under `CI=true` it is a failure).
    pub async fn create(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("assessd.db").display());
                Some(TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = match sqlx::PgConnection::connect(&admin).await {
                    Ok(c) => c,
                    Err(e) => {
                        if std::env::var("CI").is_ok_and(|v| v == "true") {
                            panic!("PostgreSQL is required under CI=true but unreachable at {admin}: {e}");
                        }
                        eprintln!(
                            "\n*** SKIPPED: PostgreSQL test (no server at {admin}: {e}). \
                             Start PostgreSQL or set DATABASE_TEST_URL to run it. ***\n"
                        );
                        return None;
                    }
                };
                let name = format!("assessd_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("create database {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(admin);
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                })
            }
        }
    }
}

impl TestDb {
    /// The same database for a second server; only the first owner drops it.
    pub fn alias(&self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            backend: self.backend,
            _dir: None,
            pg_name: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime; use a thread with its own to drop the database.
        let admin = postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&mut conn)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
    }
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub keys: JwtKeys,
    pub http: reqwest::Client,
    pub state: assessd::state::AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    // Dropped last: the server must stop using the database before it is dropped.
    pub db: TestDb,
}

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    let db = TestDb::create(backend).await?;
    Some(start_on(db, configure).await)
}

/// Starts a server on an existing test database.
pub async fn start_on(db: TestDb, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::new(
        "127.0.0.1:0".parse().unwrap(),
        db.url.clone(),
        Secret::new(SECRET),
    );
    settings.db_pool = 8;
    settings.shutdown_grace = Duration::from_secs(5);
    configure(&mut settings);
    let app = Application::build(settings).await.expect("server builds");
    let addr = app.local_addr().unwrap();
    let state = app.state();
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        keys: JwtKeys::hs256(&Secret::new(SECRET), None, None),
        http: reqwest::Client::new(),
        state,
        shutdown: Some(tx),
        server: Some(server),
        db,
    }
}

impl TestApp {
    pub fn token(&self, sub: &str, role: Role) -> String {
        self.keys
            .mint(sub, &[role], Duration::from_secs(3600))
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connects `sub` as a taker and reads CONNECTED.
    pub async fn connect(&self, sub: &str) -> WsClient {
        let mut client = self
            .connect_with_token(&self.token(sub, Role::Taker))
            .await
            .expect("upgrade accepted");
        let connected = client.recv_type("CONNECTED").await;
        assert_eq!(connected["user_id"], sub);
        client
    }

    pub async fn connect_with_token(
        &self,
        token: &str,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        ws_connect(self.addr, token).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_json(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Stores a test definition as an admin.
    pub async fn put_test(&self, id: &str, body: Value) {
        let (status, reply) = self
            .put_json(
                &format!("/api/admin/tests/{id}"),
                &self.token("root", Role::Admin),
                &body,
            )
            .await;
        assert!(status == 201 || status == 200, "{status} {reply}");
    }

    /// One user's whole stream, as the audit API gives it.
    pub async fn stream_of(&self, user: &str) -> Vec<Value> {
        let (status, body) = self
            .get(
                &format!("/api/audit/users/{user}/events?limit=1000"),
                &self.token("auditor", Role::Auditor),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(mut self) -> TestDb {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server ran cleanly");
        }
        self.db
    }
}

/// Opens `/ws` on `addr` with `token` in the Authorization header.
pub async fn ws_connect(
    addr: SocketAddr,
    token: &str,
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(WsClient { stream })
}

/// A WebSocket client that reads JSON messages, skipping pings and pongs.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the next frame was.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<CloseFrame>),
}

impl WsClient {
    pub async fn send(&mut self, message: Value) {
        self.stream
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.expect("send");
    }

    /// The next JSON message or the close, waiting at most [`WAIT`].
    pub async fn next_frame(&mut self) -> Frame {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a message within the wait");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Frame::Json(
                        serde_json::from_str(text.as_str()).expect("server sends JSON"),
                    )
                }
                Some(Ok(Message::Close(frame))) => return Frame::Closed(frame),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("the server never sends binary frames"),
                Some(Err(_)) | None => return Frame::Closed(None),
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self.next_frame().await {
            Frame::Json(v) => v,
            Frame::Closed(frame) => panic!("connection closed: {frame:?}"),
        }
    }

    /// The next message, which must be of type `kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let message = self.recv().await;
        assert_eq!(message["type"], kind, "expected {kind}, got {message}");
        message
    }

    /// The close code the server ends the connection with.
    pub async fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.next_frame().await {
                Frame::Json(_) => continue,
                Frame::Closed(frame) => return frame.map(|f| u16::from(f.code)),
            }
        }
    }

    /// Sends HEARTBEAT and expects PONG: proves the connection is still open and serving.
    pub async fn assert_alive(&mut self) {
        self.send(json!({"type": "HEARTBEAT", "request_id": "alive?"}))
            .await;
        let pong = self.recv_type("PONG").await;
        assert_eq!(pong["request_id"], "alive?");
    }

    /// Starts `test_id`, returning (ASSESSMENT_STARTED, first QUESTION).
    pub async fn start(&mut self, test_id: &str) -> (Value, Value) {
        self.send(json!({"type": "START_ASSESSMENT", "test_id": test_id}))
            .await;
        let started = self.recv_type("ASSESSMENT_STARTED").await;
        let question = self.recv_type("QUESTION").await;
        (started, question)
    }

    /// Answers and returns (ANSWER_FEEDBACK, PROGRESS_UPDATE, next QUESTION or COMPLETED).
    pub async fn answer(
        &mut self,
        assessment_id: &str,
        question_id: &str,
        answer: Value,
    ) -> (Value, Value, Value) {
        self.send(json!({
            "type": "SUBMIT_ANSWER", "assessment_id": assessment_id,
            "question_id": question_id, "answer": answer,
        }))
        .await;
        let feedback = self.recv_type("ANSWER_FEEDBACK").await;
        let progress = self.recv_type("PROGRESS_UPDATE").await;
        let next = self.recv().await;
        (feedback, progress, next)
    }
}

/// The right answer to each question of the demo test.
pub fn demo_answer(question_id: &str) -> Value {
    match question_id {
        "q1" => json!("b"),
        "q2" => json!(["c", "a"]),
        "q3" => json!("a"),
        "q4" => json!("Ownership and borrow rules, checked through lifetimes"),
        other => panic!("the demo test has no question {other}"),
    }
}

/// A small test definition for scenarios that need their own limits.
pub fn small_test(max_attempts: u32, time_limit_secs: Option<u32>) -> Value {
    json!({
        "title": "Small test",
        "max_attempts": max_attempts,
        "time_limit_secs": time_limit_secs,
        "pass_ratio": 0.5,
        "questions": [
            {"id": "s1", "kind": "single_choice", "prompt": "2 + 2?",
             "choices": [{"id": "a", "text": "4"}, {"id": "b", "text": "5"}], "answer": "a", "points": 1},
            {"id": "s2", "kind": "free_text", "prompt": "Name a primary colour.",
             "keywords": ["red"], "points": 1}
        ]
    })
}
