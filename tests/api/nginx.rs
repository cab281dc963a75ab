//! Two real nodes on one PostgreSQL behind nginx, configured by `docs/nginx.conf` as
//! shipped: users take the demo test through the balancer, a second connection of a user
//! replaces the first whichever node it lands on, and a node killed with SIGKILL mid-test
//! leaves every user able to finish on the other, with every answer recorded once.
//!
//! Needs Debian's nginx (`/usr/sbin/nginx`, or `ASSESSD_NGINX`); without it the test says
//! so and passes, unless `ASSESSD_REQUIRE_NGINX=1` (CI sets it).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use assessd::auth::{JwtKeys, Role, Secret};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::durability::start_process;
use crate::helpers::{demo_answer, ws_connect, Backend, Frame, TestDb, WsClient, SECRET, WAIT};

fn nginx_binary() -> Option<String> {
    let path = std::env::var("ASSESSD_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    if Path::new(&path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var("ASSESSD_REQUIRE_NGINX").as_deref() != Ok("1"),
        "nginx is required (ASSESSD_REQUIRE_NGINX=1) but {path} does not exist"
    );
    eprintln!("skipped: no nginx at {path} (install Debian's nginx-light)");
    None
}

/// `docs/nginx.conf` with the nodes' addresses and a free port; one process, so its
/// round robin alternates strictly between the two nodes.
fn config(nodes: [SocketAddr; 2], port: u16) -> String {
    let shipped = include_str!("../../docs/nginx.conf");
    assert!(shipped.contains("127.0.0.1:8081") && shipped.contains("listen 8080;"));
    shipped
        .replace("127.0.0.1:8081", &nodes[0].to_string())
        .replace("127.0.0.1:8082", &nodes[1].to_string())
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
        .replace("worker_processes auto;", "worker_processes 1;")
}

async fn start_nginx(binary: &str, dir: &Path, nodes: [SocketAddr; 2]) -> (Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(nodes, port)).expect("write nginx.conf");
    // One process (no master and workers), so stopping it with SIGKILL, as the test and
    // `kill_on_drop` do, leaves nothing running.
    let globals = format!(
        "daemon off; master_process off; pid {}; error_log {} warn;",
        dir.join("nginx.pid").display(),
        dir.join("nginx-error.log").display()
    );
    let child = Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        .arg(globals)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx listens in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, addr)
}

fn token(user: &str) -> String {
    JwtKeys::hs256(&Secret::new(SECRET), None, None)
        .mint(user, &[Role::Taker], Duration::from_secs(600))
        .expect("a token")
}

/// Connects through the balancer; gives the socket and what followed CONNECTED up to the
/// resumed QUESTION, if an attempt is in progress.
async fn connect(balancer: SocketAddr, user: &str, resumes: bool) -> (WsClient, Option<Value>) {
    let mut client = ws_connect(balancer, &token(user))
        .await
        .expect("upgrade through nginx");
    client.recv_type("CONNECTED").await;
    if !resumes {
        return (client, None);
    }
    client.recv_type("ASSESSMENT_RESUMED").await;
    let question = client.recv_type("QUESTION").await;
    (client, Some(question))
}

/// Answers rightly from `question` to the end of the attempt.
async fn finish(client: &mut WsClient, id: &str, mut question: Value) {
    loop {
        let qid = question["question_id"]
            .as_str()
            .expect("a question id")
            .to_string();
        let (_, _, next) = client.answer(id, &qid, demo_answer(&qid)).await;
        if next["type"] == "ASSESSMENT_COMPLETED" {
            return;
        }
        question = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_finish_through_nginx_when_a_node_is_killed() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut node_a, addr_a) = start_process(&db.url, dir.path()).await;
    let (mut node_b, addr_b) = start_process(&db.url, dir.path()).await;
    let (mut nginx, balancer) = start_nginx(&binary, dir.path(), [addr_a, addr_b]).await;

    // Four users start and answer q1; the balancer alternates them over the two nodes.
    let users = ["nia", "omar", "pia", "quin"];
    let mut sessions = Vec::new();
    for user in users {
        let (mut client, _) = connect(balancer, user, false).await;
        let (started, question) = client.start("demo").await;
        let id = started["assessment_id"]
            .as_str()
            .expect("an id")
            .to_string();
        assert_eq!(question["question_id"], "q1");
        let (_, _, next) = client.answer(&id, "q1", demo_answer("q1")).await;
        assert_eq!(next["question_id"], "q2");
        sessions.push((user, client, id));
    }

    // A second connection of the first user, which lands on the next node in turn:
    // the first is replaced at once, and the new one resumes where the user stood.
    let (replacing, question) = connect(balancer, users[0], true).await;
    assert_eq!(question.expect("the resumed question")["question_id"], "q2");
    let old = &mut sessions[0].1;
    assert_eq!(
        old.recv_type("SESSION_REPLACED").await["type"],
        "SESSION_REPLACED"
    );
    assert_eq!(old.recv_close().await, Some(4001));
    sessions[0].1 = replacing;

    node_a.kill().await.expect("SIGKILL node A");
    node_a.wait().await.expect("node A gone");

    // Each user finishes: on the same socket if its node lives, else through the
    // balancer again, which now finds only B.
    let mut moved = 0;
    for (user, client, id) in &mut sessions {
        let _ = client
            .stream
            .send(Message::Text(
                json!({"type": "HEARTBEAT"}).to_string().into(),
            ))
            .await;
        let question = match client.next_frame().await {
            Frame::Json(pong) => {
                assert_eq!(pong["type"], "PONG", "{pong}");
                client
                    .send(json!({"type": "GET_QUESTION", "assessment_id": id}))
                    .await;
                client.recv_type("QUESTION").await
            }
            Frame::Closed(_) => {
                moved += 1;
                let (again, question) = connect(balancer, user, true).await;
                *client = again;
                question.expect("the resumed question")
            }
        };
        assert_eq!(question["question_id"], "q2", "{user} resumes at q2");
        finish(client, id, question).await;
    }
    assert!(moved >= 1, "some users were on the killed node");
    assert!(moved < users.len(), "some users were on the surviving node");

    // Every answer recorded once per user, in unbroken sequences.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("the database");
    for user in users {
        let events: Vec<(i64, String)> = sqlx::query_as(
            "select sequence, event_type from events where aggregate_id = $1 order by sequence",
        )
        .bind(user)
        .fetch_all(&pool)
        .await
        .expect("the stream");
        for (i, (sequence, _)) in events.iter().enumerate() {
            assert_eq!(*sequence, i as i64 + 1, "{user}: sequences are contiguous");
        }
        let answers = events
            .iter()
            .filter(|(_, kind)| kind == "AnswerSubmitted")
            .count();
        assert_eq!(answers, 4, "{user}: {events:?}");
        assert!(events.iter().any(|(_, kind)| kind == "AssessmentCompleted"));
    }
    pool.close().await;
    nginx.kill().await.expect("stop nginx");
    node_b.kill().await.expect("stop node B");
}
