//! A regrade of many attempts (PROTOCOL section 6), on SQLite and PostgreSQL: how long the
//! real run takes (`POST /api/admin/tests/{id}/regrade` until its job is done), and the
//! answer latency of live test-takers answering over real WebSockets meanwhile, against
//! the same users answering on a quiet server just before.
//!
//! `cargo bench --bench regrade` (figures on stdout). `BENCH_ATTEMPTS` attempts (default
//! 10,000, one per user, so each is a stream of its own: the regrade's worst case) of a copy
//! of the demo test are seeded once through the command path (`assessd::dev::seed`, what
//! `assessd dev seed` runs) and kept for the next run: the SQLite file under the target
//! directory, the PostgreSQL database `assessd_bench_regrade_<attempts>`. Each run corrects
//! the key of q1 to the other of two choices, so every run regrades about a third of the
//! answers. `BENCH_LIVE_USERS` live users (default 4) answer one question every 100 ms each
//! on another test; `BENCH_BACKENDS=sqlite` (or `postgres`) runs one half only.
//!
//! A benchmark, not a test: it asserts nothing about speed and prints what it measured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use assessd::auth::{JwtKeys, Role, Secret};
use assessd::config::Settings;
use assessd::store::Database;
use assessd::Application;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "benchmark-secret-0123456789abcdef";
const TEST_ID: &str = "regrade-bench";
const LIVE_TEST_ID: &str = "live-bench";
/// How long the live users answer on a quiet server first, for comparison.
const QUIET: Duration = Duration::from_secs(5);
/// Each live user's pause between answers (its budget is 20 messages a second).
const THINK: Duration = Duration::from_millis(100);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let attempts: u64 = env_or("BENCH_ATTEMPTS", "10000")
        .replace('_', "")
        .parse()
        .context("BENCH_ATTEMPTS must be a number")?;
    let live_users: usize = env_or("BENCH_LIVE_USERS", "4").parse()?;
    let backends = env_or("BENCH_BACKENDS", "sqlite,postgres");
    println!(
        "regrade bench: {attempts} attempts (one per user), {live_users} live users, commit {}, {}",
        commit(),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    if backends.contains("sqlite") {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("assessd-bench");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("regrade-{attempts}.db"));
        measure(
            "sqlite",
            &format!("sqlite://{}", file.display()),
            attempts,
            live_users,
        )
        .await?;
        println!(
            "sqlite: database kept at {} for the next run",
            file.display()
        );
    }
    if backends.contains("postgres") {
        let admin = env_or(
            "BENCH_POSTGRES_URL",
            &env_or(
                "DATABASE_TEST_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
        );
        match postgres_database(&admin, attempts).await {
            Ok((url, name)) => {
                measure("postgres", &url, attempts, live_users).await?;
                println!(
                    "postgres: database {name} kept for the next run \
                     (drop it with `dropdb -h 127.0.0.1 -U postgres {name}`)"
                );
            }
            Err(e) => println!("postgres: SKIPPED ({e:#})"),
        }
    }
    Ok(())
}

async fn postgres_database(admin: &str, attempts: u64) -> anyhow::Result<(String, String)> {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(admin))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {admin} within 5 s"))??;
    let name = format!("assessd_bench_regrade_{attempts}");
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await.ok();
    let base = admin
        .split_once('?')
        .map_or(admin, |(base, _)| base)
        .rsplit_once('/')
        .map_or(admin, |(base, _)| base);
    Ok((format!("{base}/{name}"), name))
}

/// The demo test under `id`, with `max_attempts`.
fn demo_as(id: &str, max_attempts: u32) -> anyhow::Result<domain::TestDefinition> {
    let mut test = assessd::definitions::parse(assessd::definitions::DEMO_TEST.as_bytes(), None)
        .map_err(|e| anyhow::anyhow!("the demo test: {e}"))?;
    test.id = id.to_string();
    test.max_attempts = max_attempts;
    test.time_limit_secs = None;
    Ok(test)
}

async fn started(db: &Database) -> anyhow::Result<u64> {
    let sql = "select count(*) from events where test_id = 'regrade-bench' \
               and event_type = 'AssessmentStarted'";
    let n: i64 = match db {
        Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    };
    Ok(n.max(0) as u64)
}

async fn measure(backend: &str, url: &str, attempts: u64, live_users: usize) -> anyhow::Result<()> {
    let settings = Settings::new("127.0.0.1:0".parse()?, url.to_string(), Secret::new(SECRET));
    let app = Application::build(settings).await?;
    let addr = app.local_addr()?;
    let state = app.state();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    if state.catalog.latest(TEST_ID).await?.is_none() {
        state.catalog.put(demo_as(TEST_ID, 1)?).await?;
    }
    state.catalog.put(demo_as(LIVE_TEST_ID, 1_000_000)?).await?;
    let have = started(&state.db).await?;
    if have < attempts {
        let missing = attempts - have;
        println!("{backend}: {have} attempts there, seeding {missing} (one user each)");
        let plan = assessd::dev::Plan {
            attempts: missing,
            users: Some(missing),
            concurrency: 16,
            test_id: TEST_ID.into(),
        };
        let report = assessd::dev::seed(&state, &plan, |_| {}).await?;
        println!(
            "{backend}: seeded {} attempts, {} events in {:.1} s",
            report.attempts,
            report.events,
            report.took.as_secs_f64()
        );
    }
    if let Database::Postgres(pool) = &state.db {
        // What autovacuum does after a large insert.
        sqlx::query("analyze events").execute(pool).await?;
    }
    let keys = JwtKeys::hs256(&Secret::new(SECRET), None, None);
    let admin = keys.mint("bench-admin", &[Role::Admin], Duration::from_secs(3600))?;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");

    // The key to correct to: the choice of q1 that is not the key now.
    let latest = state
        .catalog
        .latest(TEST_ID)
        .await?
        .context("the bench test")?;
    let key_now = latest
        .question("q1")
        .and_then(|q| q.answer.clone())
        .context("q1's key")?;
    let new_key = if key_now == domain::test_definition::AnswerKey::One("b".into()) {
        "c"
    } else {
        "b"
    };

    // Quiet: the live users alone.
    let quiet = live(addr, &keys, live_users, QUIET, None).await?;
    report(backend, "answer latency, quiet", &quiet);

    // A dry run first (it records nothing), for its duration.
    let body = json!({"question_id": "q1", "answer": new_key, "reason": "bench", "dry_run": true});
    let t = Instant::now();
    let preview: Value = http
        .post(format!("{base}/api/admin/tests/{TEST_ID}/regrade"))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!(
        "{backend}: dry run: {} attempts would change, listed in {:.2} s",
        preview["attempts_affected"],
        t.elapsed().as_secs_f64()
    );

    // The real run, with the live users answering throughout.
    let running = Arc::new(AtomicBool::new(true));
    let during = {
        let (keys, running) = (keys.clone(), running.clone());
        tokio::spawn(async move {
            live(
                addr,
                &keys,
                live_users,
                Duration::from_secs(3600),
                Some(running),
            )
            .await
        })
    };
    // Let the live users get going before the regrade starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut body = body;
    body["dry_run"] = json!(false);
    let t = Instant::now();
    let started: Value = http
        .post(format!("{base}/api/admin/tests/{TEST_ID}/regrade"))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let job_id = started["job_id"].as_str().context("job_id")?.to_string();
    let job = loop {
        let job: Value = http
            .get(format!("{base}/api/admin/jobs/{job_id}"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        if job["status"] != "running" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = t.elapsed();
    running.store(false, Ordering::Release);
    let during = during.await??;
    if job["status"] != "done" {
        bail!("the regrade job ended {job}");
    }
    let streams = job["events_done"].as_u64().unwrap_or(0);
    println!(
        "{backend}: regrade of {streams} streams ({} answers regraded) in {:.2} s: {:.0} streams/s",
        job["answers_regraded"],
        took.as_secs_f64(),
        streams as f64 / took.as_secs_f64()
    );
    report(backend, "answer latency during the regrade", &during);
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

/// `users` live users answering on the live test over real WebSockets until `running`
/// turns false (or `for_how_long` passes); the latency of every answer, from sending
/// `SUBMIT_ANSWER` to receiving its `ANSWER_FEEDBACK`.
async fn live(
    addr: std::net::SocketAddr,
    keys: &JwtKeys,
    users: usize,
    for_how_long: Duration,
    running: Option<Arc<AtomicBool>>,
) -> anyhow::Result<Vec<Duration>> {
    let until = Instant::now() + for_how_long;
    let mut tasks = Vec::new();
    for n in 0..users {
        let token = keys.mint(
            &format!("live-{n}"),
            &[Role::Taker],
            Duration::from_secs(3600),
        )?;
        let running = running.clone();
        tasks.push(tokio::spawn(async move {
            let going = || {
                Instant::now() < until && running.as_ref().is_none_or(|r| r.load(Ordering::Acquire))
            };
            let mut request = format!("ws://{addr}/ws").into_client_request()?;
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
            let mut latencies = Vec::new();
            let mut question: Option<Value> = None;
            let mut assessment = String::new();
            ws.send(Message::text(
                json!({"type": "START_ASSESSMENT", "test_id": LIVE_TEST_ID}).to_string(),
            ))
            .await?;
            // One answer in flight at a time: a resumed attempt shows its question twice
            // (the greeting's and START_ASSESSMENT's resume), and answering both would
            // time the second from the wrong send.
            let mut sent_at: Option<Instant> = None;
            let mut last_answered = String::new();
            while let Some(frame) = ws.next().await {
                let Message::Text(text) = frame? else {
                    continue;
                };
                let message: Value = serde_json::from_str(text.as_str())?;
                match message["type"].as_str() {
                    Some("ASSESSMENT_STARTED" | "ASSESSMENT_RESUMED") => {
                        assessment = message["assessment_id"].as_str().unwrap_or("").to_string();
                    }
                    Some("ANSWER_FEEDBACK") => {
                        if let Some(at) = sent_at.take() {
                            latencies.push(at.elapsed());
                        }
                    }
                    Some("QUESTION") => {
                        let fresh = message["question_id"].as_str() != Some(last_answered.as_str());
                        if sent_at.is_none() && fresh {
                            question = Some(message);
                        }
                    }
                    Some("ASSESSMENT_COMPLETED") => {
                        question = None;
                        last_answered.clear();
                        if !going() {
                            break;
                        }
                        ws.send(Message::text(
                            json!({"type": "START_ASSESSMENT", "test_id": LIVE_TEST_ID})
                                .to_string(),
                        ))
                        .await?;
                        continue;
                    }
                    Some("ERROR") => bail!("live user got {message}"),
                    _ => continue,
                }
                if let Some(q) = question.take() {
                    if !going() {
                        break;
                    }
                    tokio::time::sleep(THINK).await;
                    let qid = q["question_id"].as_str().unwrap_or("").to_string();
                    let answer = match qid.as_str() {
                        "q2" => json!(["a", "c"]),
                        "q4" => json!("ownership and borrowing"),
                        "q3" => json!("a"),
                        _ => json!("b"),
                    };
                    last_answered = qid.clone();
                    sent_at = Some(Instant::now());
                    ws.send(Message::text(
                        json!({"type": "SUBMIT_ANSWER", "assessment_id": assessment,
                               "question_id": qid, "answer": answer})
                        .to_string(),
                    ))
                    .await?;
                }
            }
            let _ = ws.close(None).await;
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

fn report(backend: &str, what: &str, latencies: &[Duration]) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |p: f64| -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i].as_secs_f64() * 1000.0
    };
    println!(
        "{backend}: {what}: {} answers, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sorted.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

/// The commit measured, for the record.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
