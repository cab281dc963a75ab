//! The server process killed with SIGKILL in the middle of an assessment, started again on
//! the same database: the user resumes with nothing acknowledged lost.

use std::net::SocketAddr;
use std::process::Stdio;

use assessd::auth::{JwtKeys, Role, Secret};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{demo_answer, ws_connect, Backend, TestDb, WsClient, SECRET, WAIT};

/// The real `assessd` binary, serving on a free port against `database_url`.
pub async fn start_process(database_url: &str, data_dir: &std::path::Path) -> (Child, SocketAddr) {
    start_process_logging(database_url, data_dir, "warn", Stdio::inherit()).await
}

/// Like [`start_process`], with the log level and where its log goes.
pub async fn start_process_logging(
    database_url: &str,
    data_dir: &std::path::Path,
    log_level: &str,
    log: Stdio,
) -> (Child, SocketAddr) {
    start_process_with(database_url, data_dir, log_level, log, &[]).await
}

/// Like [`start_process_logging`], with more environment variables (`ASSESSD_NODE_ID`, ...).
pub async fn start_process_with(
    database_url: &str,
    data_dir: &std::path::Path,
    log_level: &str,
    log: Stdio,
    envs: &[(&str, &str)],
) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_assessd"))
        .arg("serve")
        .envs(envs.iter().copied())
        .env("ASSESSD_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", database_url)
        .env("ASSESSD_JWT_SECRET", SECRET)
        .env("ASSESSD_DATA_DIR", data_dir)
        .env("RUST_LOG", log_level)
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("assessd starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(addr) = line.strip_prefix("assessd listening on http://") {
                return addr.parse::<SocketAddr>().expect("an address");
            }
        }
        panic!("assessd exited before listening");
    })
    .await
    .expect("assessd listens in time");
    (child, addr)
}

async fn connect(addr: SocketAddr, user: &str) -> WsClient {
    let keys = JwtKeys::hs256(&Secret::new(SECRET), None, None);
    let token = keys
        .mint(user, &[Role::Taker], std::time::Duration::from_secs(600))
        .unwrap();
    let mut client = ws_connect(addr, &token).await.expect("connect");
    client.recv_type("CONNECTED").await;
    client
}

async fn kill_9_mid_assessment_loses_nothing(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();

    let (mut first, addr) = start_process(&db.url, data_dir.path()).await;
    let mut client = connect(addr, "survivor").await;
    let (started, _) = client.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    client.answer(&id, "q1", demo_answer("q1")).await;
    client.answer(&id, "q2", demo_answer("q2")).await;
    // The third answer is in flight when the process dies: it may or may not be recorded,
    // but the two acknowledged ones must be.
    client
        .send(json!({"type":"SUBMIT_ANSWER","assessment_id":id,"question_id":"q3","answer":"a"}))
        .await;
    first.kill().await.expect("SIGKILL"); // tokio's Child::kill sends SIGKILL
    first.wait().await.unwrap();
    drop(client);

    let (mut second, addr) = start_process(&db.url, data_dir.path()).await;
    let mut client = connect(addr, "survivor").await;
    let resumed = client.recv_type("ASSESSMENT_RESUMED").await;
    assert_eq!(resumed["assessment_id"], id);
    let answered = resumed["answered"].as_u64().unwrap();
    assert!(answered == 2 || answered == 3, "answered {answered}");
    let question = client.recv_type("QUESTION").await;
    let expected_next = if answered == 2 { "q3" } else { "q4" };
    assert_eq!(question["question_id"], expected_next);

    // Finish the test on the new process.
    let mut next = question;
    loop {
        let qid = next["question_id"].as_str().unwrap().to_string();
        let (_, _, after) = client.answer(&id, &qid, demo_answer(&qid)).await;
        if after["type"] == "ASSESSMENT_COMPLETED" {
            assert_eq!(after["reason"], "all_answered");
            break;
        }
        next = after;
    }

    // The stream is whole: contiguous sequences, every question answered exactly once.
    let events = stream_from_db(&db).await;
    for (i, (seq, _)) in events.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "sequences are contiguous");
    }
    let answers = events
        .iter()
        .filter(|(_, t)| t == "AnswerSubmitted")
        .count();
    assert_eq!(answers, 4);
    second.kill().await.unwrap();
}

async fn stream_from_db(db: &TestDb) -> Vec<(i64, String)> {
    let sql =
        "select sequence, event_type from events where aggregate_id = 'survivor' order by sequence";
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
    }
}

crate::on_both_backends!(kill_9_mid_assessment_loses_nothing);

/// Tokens and the signing secret never reach the log, even at the most verbose level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let Some(db) = TestDb::create(Backend::Sqlite).await else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();
    let log_path = data_dir.path().join("assessd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut server, addr) =
        start_process_logging(&db.url, data_dir.path(), "trace", Stdio::from(log)).await;
    let keys = JwtKeys::hs256(&Secret::new(SECRET), None, None);
    let taker = keys
        .mint("logged", &[Role::Taker], std::time::Duration::from_secs(60))
        .unwrap();
    let auditor = keys
        .mint("aud", &[Role::Auditor], std::time::Duration::from_secs(60))
        .unwrap();

    // The browser way: the token in the query string.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?access_token={taker}"))
            .await
            .expect("connect");
    use futures_util::{SinkExt, StreamExt};
    socket.next().await.unwrap().unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"HEARTBEAT"}"#.into(),
        ))
        .await
        .unwrap();
    socket.next().await.unwrap().unwrap();
    // The header way, and a refused token.
    let http = reqwest::Client::new();
    let ok = http
        .get(format!("http://{addr}/api/audit/events"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = http
        .get(format!("http://{addr}/api/tests"))
        .bearer_auth(format!("{taker}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    drop(socket);
    server.kill().await.unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.len() > 1000,
        "the trace log was written: {} bytes",
        log.len()
    );
    // A token's signature is the part that must never leak; check it and the whole token.
    for token in [&taker, &auditor] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token signature is in the log");
    }
    assert!(!log.contains(SECRET), "the secret is in the log");
}
