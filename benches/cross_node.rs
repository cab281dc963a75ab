//! What several nodes on one PostgreSQL cost, measured (docs/scaling.md cites it):
//!
//! 1. **Cross-node eviction latency.** Two real `assessd` processes on one fresh database;
//!    one user's socket alternates between them. Each round opens a socket on the other
//!    node and times from its `CONNECTED` (as the client receives it) to the close frame
//!    the older socket receives. Prints p50 / p99 / max over `BENCH_EVICTIONS` rounds
//!    (default 500).
//! 2. **The owner check per append.** In process, through the real append path
//!    (`Streams::execute`): the same command appended with and without the session-owner
//!    check, interleaved, `BENCH_APPENDS` times each (default 1000); prints p50 / p99 of both
//!    and the difference.
//! 3. **NOTIFY.** `pg_notify` of an owner-sized payload from 1 and from 16 connections, as
//!    fast as they go, with a listener counting what arrives: notifications sent and
//!    delivered per second (`BENCH_NOTIFIES`, default 20000).
//! 4. **Claims.** `ownership::claim` (an upsert, then a NOTIFY: what one connection costs
//!    the database) from 1 and 16 connections, and batched as a node makes them
//!    (`store::claims`, 1,000 connects at once), per second.
//!
//! `cargo bench --bench cross_node`. PostgreSQL at `BENCH_POSTGRES_URL`, else
//! `DATABASE_TEST_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`; the bench creates
//! `assessd_bench_nodes_<pid>` and drops it at the end.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assessd::auth::{JwtKeys, Role, Secret};
use assessd::config::Settings;
use assessd::ownership;
use assessd::store::streams::EventMetadata;
use assessd::store::Database;
use chrono::Utc;
use domain::UserCommand;
use futures_util::StreamExt;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const SECRET: &str = "benchmark-secret-0123456789abcdef";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50, p99 and max of `samples` (sorted here), in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        at(0.5),
        at(0.99),
        at(1.0),
        samples.len()
    )
}

async fn start_node(url: &str, node_id: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_assessd"))
        .arg("serve")
        .env("ASSESSD_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", url)
        .env("ASSESSD_JWT_SECRET", SECRET)
        .env("ASSESSD_NODE_ID", node_id)
        .env("ASSESSD_RATE_PER_SEC", "100000")
        .env("ASSESSD_RATE_BURST", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start assessd");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .expect("read stdout")
            .expect("assessd listens");
        if let Some(a) = line.strip_prefix("assessd listening on http://") {
            break a.to_string();
        }
    };
    (child, addr)
}

/// Opens a socket and waits for CONNECTED; returns it with the instant CONNECTED arrived.
async fn connect(addr: &str, token: &str) -> (Socket, Instant) {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.as_str().contains("\"CONNECTED\"") => {
                return (socket, Instant::now())
            }
            Some(Ok(_)) => continue,
            other => panic!("no CONNECTED: {other:?}"),
        }
    }
}

/// Reads until the close frame; returns when it arrived and its code.
async fn closed(socket: &mut Socket) -> (Instant, Option<u16>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(frame))) => {
                return (Instant::now(), frame.map(|f| u16::from(f.code)))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (Instant::now(), None),
        }
    }
}

async fn eviction_latency(url: &str) {
    let rounds = env_usize("BENCH_EVICTIONS", 500);
    let (mut a, addr_a) = start_node(url, "bench-a").await;
    let (mut b, addr_b) = start_node(url, "bench-b").await;
    let token = JwtKeys::hs256(&Secret::new(SECRET), None, None)
        .mint("evictee", &[Role::Taker], Duration::from_secs(3600))
        .unwrap();
    // Warm up both nodes' pools and listeners.
    let (mut old, _) = connect(&addr_a, &token).await;
    for addr in [&addr_b, &addr_a, &addr_b] {
        let (new, _) = connect(addr, &token).await;
        closed(&mut old).await;
        old = new;
    }
    // The old socket is read while the new one connects, so each instant is taken when the
    // frame arrives. The claim commits (and notifies) before the new session's greeting, so
    // the old close often arrives first: those rounds count as 0.
    let (mut after_connected, mut after_request) = (Vec::new(), Vec::new());
    let mut close_first = 0;
    for round in 0..rounds {
        let addr = if round % 2 == 0 { &addr_a } else { &addr_b };
        let requested_at = Instant::now();
        let ((new, connected_at), (closed_at, code)) =
            tokio::join!(connect(addr, &token), closed(&mut old));
        assert_eq!(code, Some(4001), "the old socket closes with 4001");
        if closed_at < connected_at {
            close_first += 1;
        }
        after_connected.push(closed_at.saturating_duration_since(connected_at));
        after_request.push(closed_at.saturating_duration_since(requested_at));
        old = new;
    }
    println!(
        "cross_node: eviction, new socket's CONNECTED -> old socket's close on the other node: {} ({close_first} of {rounds} closed before CONNECTED, counted as 0)",
        summary(&mut after_connected)
    );
    println!(
        "cross_node: eviction, new socket's upgrade request sent -> old socket's close: {}",
        summary(&mut after_request)
    );
    a.kill().await.ok();
    b.kill().await.ok();
}

async fn owner_check_cost(url: &str) {
    let n = env_usize("BENCH_APPENDS", 1000);
    let settings = Settings::new(
        "127.0.0.1:0".parse().unwrap(),
        url.to_string(),
        Secret::new(SECRET),
    );
    let state = assessd::app::state(&settings).await.expect("state");
    let session = Uuid::new_v4();
    let _registration = ownership::take(&state, "appender", session)
        .await
        .expect("claim");
    let chat = || UserCommand::Chat {
        assessment_id: None,
        text: "hello".into(),
        reply: "reply".into(),
        tutor: "offline_tutor".into(),
        ai: None,
        now: Utc::now(),
    };
    let metadata = |must_own| EventMetadata {
        node_id: "bench".into(),
        actor: "user:appender".into(),
        connection_id: Some(session.to_string()),
        must_own,
        ..Default::default()
    };
    let (checked, unchecked) = (metadata(Some(session)), metadata(None));
    // The stream as a live session keeps it between commands; both kinds of append share
    // it, as they share the stream.
    let mut known = assessd::store::streams::Known::default();
    // Warm up.
    for _ in 0..50 {
        state
            .streams
            .execute("appender", chat(), &checked, &mut known)
            .await
            .unwrap();
    }
    let (mut with, mut without) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let started = Instant::now();
        state
            .streams
            .execute("appender", chat(), &checked, &mut known)
            .await
            .unwrap();
        with.push(started.elapsed());
        let started = Instant::now();
        state
            .streams
            .execute("appender", chat(), &unchecked, &mut known)
            .await
            .unwrap();
        without.push(started.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let (m_with, m_without) = (median(&mut with), median(&mut without));
    println!(
        "cross_node: one command appended (decide from memory, append), with the owner check: {}",
        summary(&mut with)
    );
    println!(
        "cross_node: the same without the owner check: {}",
        summary(&mut without)
    );
    println!(
        "cross_node: the owner check adds {:.3} ms at p50 ({:.1} %)",
        m_with - m_without,
        (m_with - m_without) / m_without * 100.0
    );
    state.db.close().await;
}

async fn notify_rate(url: &str) {
    let n = env_usize("BENCH_NOTIFIES", 20_000);
    let payload = serde_json::json!({
        "kind": "owner", "user_id": "seed-000000001",
        "session_id": Uuid::new_v4(), "node_id": "web-1-4242", "generation": 12,
    })
    .to_string();
    for senders in [1usize, 16] {
        let mut listener = PgListener::connect(url).await.expect("listener");
        listener.listen("bench_notify").await.expect("listen");
        let received = Arc::new(AtomicU64::new(0));
        let counting = {
            let received = received.clone();
            tokio::spawn(async move {
                while received.load(Ordering::Relaxed) < n as u64 {
                    match listener.recv().await {
                        Ok(_) => {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("listener: {e}"),
                    }
                }
            })
        };
        let pool = PgPoolOptions::new()
            .max_connections(senders as u32)
            .connect(url)
            .await
            .expect("pool");
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..senders {
            let (pool, payload) = (pool.clone(), payload.clone());
            let count = n / senders + usize::from(s < n % senders);
            tasks.push(tokio::spawn(async move {
                for _ in 0..count {
                    sqlx::query("select pg_notify('bench_notify', $1)")
                        .bind(&payload)
                        .execute(&pool)
                        .await
                        .expect("notify");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let sent = started.elapsed();
        tokio::time::timeout(Duration::from_secs(60), counting)
            .await
            .expect("every notification arrives")
            .unwrap();
        let delivered = started.elapsed();
        println!(
            "cross_node: NOTIFY from {senders} connection(s): {n} sent in {sent:.2?} ({:.0}/s), all delivered to one listener in {delivered:.2?} ({:.0}/s)",
            n as f64 / sent.as_secs_f64(),
            n as f64 / delivered.as_secs_f64()
        );
        pool.close().await;
    }
}

/// Runs `call(caller, i)` `each` times from each of `callers` tasks at once; returns how
/// many calls ran and how long they took.
async fn concurrently<F, Fut>(callers: usize, each: usize, call: F) -> (usize, Duration)
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    call(c, i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (callers * each, started.elapsed())
}

fn print_rate(what: &str, (done, took): (usize, Duration)) {
    println!(
        "cross_node: {what}: {done} in {took:.2?} ({:.0}/s)",
        done as f64 / took.as_secs_f64()
    );
}

async fn pool_of(url: &str, connections: usize) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(connections as u32)
        .connect(url)
        .await
        .expect("pool")
}

async fn claim_rate(url: &str) {
    let n = env_usize("BENCH_CLAIMS", 10_000);
    for workers in [1usize, 16] {
        let pool = pool_of(url, workers).await;
        let claim = move |w: usize, i: usize| {
            let pool = pool.clone();
            async move {
                let user = format!("claimer-{workers}-{w}-{}", i % 500);
                ownership::claim(&pool, &user, Uuid::new_v4(), "bench")
                    .await
                    .expect("claim");
            }
        };
        let what = format!("claims (a connection taking its user) from {workers} connection(s)");
        print_rate(&what, concurrently(workers, n / workers, claim).await);
    }
    // As a node claims since claims are batched: every waiting connect's claim in one
    // statement and one announcing transaction (`store::claims`), here from 1,000
    // connects at once.
    {
        let claims = assessd::store::claims::Claims::start(pool_of(url, 16).await);
        let callers = 1000;
        let claim = move |c: usize, i: usize| {
            let claims = claims.clone();
            async move {
                let user = format!("batched-{c}-{i}");
                claims
                    .claim(&user, Uuid::new_v4(), "bench")
                    .await
                    .expect("claim");
            }
        };
        let what = format!("batched claims (store::claims) from {callers} connects at once");
        print_rate(&what, concurrently(callers, n / callers, claim).await);
    }
    // For comparison: the claim's upsert without its NOTIFY.
    for workers in [1usize, 16] {
        let pool = pool_of(url, workers).await;
        let upsert = move |w: usize, i: usize| {
            let pool = pool.clone();
            async move {
                let user = format!("plain-{workers}-{w}-{}", i % 500);
                sqlx::query(
                    "insert into session_owners (user_id, session_id, node_id, generation) \
                     values ($1, $2, 'bench', 1) on conflict (user_id) do update \
                     set session_id = excluded.session_id, \
                         generation = session_owners.generation + 1, since = now()",
                )
                .bind(&user)
                .bind(Uuid::new_v4())
                .execute(&pool)
                .await
                .expect("upsert");
            }
        };
        let what = format!("the same upsert without NOTIFY from {workers} connection(s)");
        print_rate(&what, concurrently(workers, n / workers, upsert).await);
    }
}

#[tokio::main]
async fn main() {
    let admin = env_or(
        "BENCH_POSTGRES_URL",
        &env_or(
            "DATABASE_TEST_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
    );
    let name = format!("assessd_bench_nodes_{}", std::process::id());
    let Ok(mut conn) = PgConnection::connect(&admin).await else {
        println!("cross_node: PostgreSQL does not answer at {admin}; skipped");
        return;
    };
    sqlx::query(&format!("create database {name}"))
        .execute(&mut conn)
        .await
        .expect("create the bench database");
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("the PostgreSQL URL names no database: {admin}"),
    };
    // Migrate once, before two processes race to.
    Database::connect(&url, 4)
        .await
        .expect("connect")
        .migrate()
        .await
        .expect("migrate");
    let parts = env_or("BENCH_PARTS", "eviction,append,notify,claim");
    if parts.contains("eviction") {
        eviction_latency(&url).await;
    }
    if parts.contains("append") {
        owner_check_cost(&url).await;
    }
    if parts.contains("notify") {
        notify_rate(&url).await;
    }
    if parts.contains("claim") {
        claim_rate(&url).await;
    }
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(&mut conn)
        .await
        .expect("drop the bench database");
}
