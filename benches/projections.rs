//! Read-side throughput on a large history, on SQLite and PostgreSQL: how fast every read
//! model is rebuilt from the first event, and how fast the real server streams the whole
//! history as the NDJSON audit export, with its memory before and during the export.
//!
//! `cargo bench --bench projections` (figures on stdout; BENCH_EVENTS events, default
//! 1,000,000). The history is seeded once per size through `assessd dev seed` (the real
//! command path) and kept for the next run: the SQLite file under the target directory
//! (`target/tmp/assessd-bench/`), the PostgreSQL database as `assessd_bench_<events>`
//! (the bench says how to drop it). PostgreSQL is reached at `BENCH_POSTGRES_URL`, else
//! `DATABASE_TEST_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`; when it does
//! not answer, its half is skipped with a message. `BENCH_BACKENDS=sqlite` (or
//! `postgres`) runs one half only; `BENCH_SEED_CONCURRENCY` is passed to the seed; an
//! export run that takes longer than `BENCH_EXPORT_SECS` (default 300) is cut there and its
//! rate taken over what it read, so a slow export cannot hold the bench for an hour.
//! `BENCH_PARTS=rebuild` (or `export`) measures one of the two only. On PostgreSQL each is
//! measured twice: with TLS when the server offers it (sqlx's default), and without.
//!
//! A benchmark, not a test: it asserts nothing about speed and prints what it measured.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use assessd::auth::{JwtKeys, Role, Secret};
use assessd::store::Database;
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};

const SECRET: &str = "benchmark-secret-0123456789abcdef";
/// Runs of each measurement; the median is reported.
const RUNS: usize = 3;
/// How often the server's memory is read during an export.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let target: u64 = env_or("BENCH_EVENTS", "1000000")
        .replace('_', "")
        .parse()
        .context("BENCH_EVENTS must be a number of events")?;
    let backends = env_or("BENCH_BACKENDS", "sqlite,postgres");
    println!(
        "projections bench: {} events, commit {}, {}",
        thousands(target),
        commit(),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    if backends.contains("sqlite") {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("assessd-bench");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("Failed to create {}", dir.display()))?;
        let file = dir.join(format!("projections-{target}.db"));
        let url = format!("sqlite://{}", file.display());
        measure("sqlite", &url, target).await?;
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
        match postgres_database(&admin, target).await {
            Ok((url, name)) => {
                measure("postgres", &url, target).await?;
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

/// The benchmark's PostgreSQL database (created when missing) and its name, or why there
/// is none.
async fn postgres_database(admin: &str, target: u64) -> anyhow::Result<(String, String)> {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(admin))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {admin} within 5 s"))?
        .with_context(|| format!("no PostgreSQL at {admin}"))?;
    let name = format!("assessd_bench_{target}");
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("Failed to create database {name}"))?;
    }
    conn.close().await.ok();
    let base = admin
        .split_once('?')
        .map_or(admin, |(base, _)| base)
        .rsplit_once('/')
        .map_or(admin, |(base, _)| base);
    Ok((format!("{base}/{name}"), name))
}

/// Seeds `url` up to `target` events, then measures the rebuild and the export.
async fn measure(backend: &str, url: &str, target: u64) -> anyhow::Result<()> {
    let events = seed(backend, url, target).await?;
    if backend == "postgres" {
        // What autovacuum does after a large insert in any deployment; without statistics
        // the planner misjudges `aggregate_type = 'user'` (every row) and the feed scans
        // the whole primary key per batch. (This machine's PostgreSQL has autovacuum off.)
        // SQLite gathers no statistics by itself, and the server does not ask it to.
        let db = Database::connect(url, 1).await?;
        if let Database::Postgres(pool) = &db {
            sqlx::query("analyze events").execute(pool).await?;
        }
        db.close().await;
    }
    // PostgreSQL offers TLS here (Debian's default), and sqlx takes it when offered
    // (`sslmode=prefer`): each figure is measured with it and without it.
    let mut connections = vec![(backend.to_string(), url.to_string())];
    if backend == "postgres" {
        connections.push((
            format!("{backend} (sslmode=disable)"),
            format!("{url}?sslmode=disable"),
        ));
    }
    let parts = env_or("BENCH_PARTS", "rebuild,export");
    for (label, url) in &connections {
        if parts.contains("rebuild") {
            rebuild(label, url, events).await?;
        }
        if parts.contains("export") {
            export(label, url, events).await?;
        }
    }
    Ok(())
}

async fn user_events(db: &Database) -> anyhow::Result<u64> {
    let sql = "select count(*) from events where aggregate_type = 'user'";
    let n: i64 = match db {
        Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    };
    Ok(n.max(0) as u64)
}

/// Tops the history of `url` up to about `target` events with `assessd dev seed`; returns
/// the events it then holds.
async fn seed(backend: &str, url: &str, target: u64) -> anyhow::Result<u64> {
    let db = Database::connect(url, 2).await?;
    db.migrate().await?;
    let have = user_events(&db).await?;
    if have >= target {
        println!("{backend}: {} events already seeded", thousands(have));
        db.close().await;
        return Ok(have);
    }
    // An attempt of the demo test: its start and first question, then per answer the
    // answer, its feedback and the next question or the completion.
    let demo = assessd::definitions::parse(assessd::definitions::DEMO_TEST.as_bytes(), None)
        .map_err(|e| anyhow::anyhow!("the demo test: {e}"))?;
    let per_attempt = 2 + 3 * demo.questions.len() as u64;
    let attempts = (target - have).div_ceil(per_attempt);
    println!(
        "{backend}: {} events there, seeding {} attempts (about {} events)",
        thousands(have),
        thousands(attempts),
        thousands(attempts * per_attempt)
    );
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_assessd"));
    command
        .args(["dev", "seed", "--attempts", &attempts.to_string()])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Ok(concurrency) = std::env::var("BENCH_SEED_CONCURRENCY") {
        command.args(["--concurrency", &concurrency]);
    }
    // Not `output()`, which captures stderr too: the seed's progress shows as it goes.
    let output = command
        .spawn()
        .context("Failed to run assessd dev seed")?
        .wait_with_output()
        .await?;
    let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() {
        bail!("assessd dev seed failed: {line}");
    }
    println!("{backend}: {line}");
    let now = user_events(&db).await?;
    db.close().await;
    Ok(now)
}

/// Rebuilds every read model [`RUNS`] times, in this process, through the projections
/// crate (what `assessd projections rebuild --all` runs).
async fn rebuild(backend: &str, url: &str, events: u64) -> anyhow::Result<()> {
    let db = Database::connect(url, 4).await?;
    let read_models = projections::Projections::new(db.for_projections());
    read_models.prepare().await?;
    let mut rates = Vec::new();
    for run in 1..=RUNS {
        let started = Instant::now();
        // All read models in one pass over the history: events/s is history events per
        // second for the whole rebuild, not a sum over the read models.
        let done =
            projections::rebuild::rebuild_many(&read_models.db(), projections::runner::ALL, |_| {})
                .await
                .context("Failed to rebuild the read models")?
                .events;
        let took = started.elapsed();
        let rate = done as f64 / took.as_secs_f64();
        println!(
            "{backend}: rebuild run {run}: {} events in {:.2} s ({} events/s)",
            thousands(done),
            took.as_secs_f64(),
            thousands(rate as u64)
        );
        if done != events {
            println!("{backend}: note: the rebuild read {done} events, the history holds {events}");
        }
        rates.push(rate);
    }
    println!(
        "{backend}: rebuild median {} events/s (target >= 100,000)",
        thousands(median(&mut rates) as u64)
    );
    db.close().await;
    Ok(())
}

/// Starts the real server on `url` and streams the whole history as NDJSON [`RUNS`] times,
/// sampling the server's memory meanwhile.
async fn export(backend: &str, url: &str, events: u64) -> anyhow::Result<()> {
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_assessd"))
        .env("ASSESSD_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", url)
        .env("ASSESSD_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("Failed to start assessd")?;
    let pid = server.id().context("assessd exited at once")?;
    // Kept until the end: the server writes nothing more, but a closed pipe would fail it.
    let mut lines = BufReader::new(server.stdout.take().context("stdout")?).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await?
            .context("assessd stopped before it listened")?;
        if let Some(addr) = line.strip_prefix("assessd listening on http://") {
            break addr.to_string();
        }
    };
    let token = JwtKeys::hs256(&Secret::new(SECRET), None, None).mint(
        "bench-auditor",
        &[Role::Auditor],
        Duration::from_secs(3600),
    )?;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/audit/events");
    // Warm up: one small page, so connections and one-off allocations are in the baseline.
    let warm = http
        .get(format!("{url}?limit=10"))
        .bearer_auth(&token)
        .send()
        .await?;
    if !warm.status().is_success() {
        bail!("GET {url}?limit=10 answered {}", warm.status());
    }
    warm.bytes().await?;
    let before = status_kib(pid, "VmRSS:");
    let hwm_before = status_kib(pid, "VmHWM:");
    println!(
        "{backend}: server RSS before the exports {:.1} MiB (high-water mark {:.1} MiB)",
        mib(before),
        mib(hwm_before)
    );
    let limit = Duration::from_secs(
        env_or("BENCH_EXPORT_SECS", "300")
            .parse()
            .context("BENCH_EXPORT_SECS must be a number of seconds")?,
    );
    let mut rates = Vec::new();
    for run in 1..=RUNS {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
            })
        };
        let started = Instant::now();
        let mut response = http
            .get(&url)
            .bearer_auth(&token)
            .header("accept", "application/x-ndjson")
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("the export answered {}", response.status());
        }
        let (mut lines_read, mut bytes) = (0u64, 0u64);
        let deadline = started + limit;
        let mut cut = false;
        loop {
            let Ok(chunk) = tokio::time::timeout_at(deadline.into(), response.chunk()).await else {
                cut = true;
                break;
            };
            let Some(chunk) = chunk? else {
                break;
            };
            lines_read += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            bytes += chunk.len() as u64;
        }
        let took = started.elapsed();
        // Dropping the response closes the connection: the server stops the export.
        drop(response);
        stop.store(true, Ordering::Relaxed);
        sampler.await?;
        let rate = lines_read as f64 / took.as_secs_f64();
        println!(
            "{backend}: export run {run}: {} events ({:.0} MiB) in {:.2} s ({} events/s), \
             server RSS peak {:.1} MiB (before {:.1} MiB)",
            thousands(lines_read),
            bytes as f64 / (1024.0 * 1024.0),
            took.as_secs_f64(),
            thousands(rate as u64),
            mib(peak.load(Ordering::Relaxed)),
            mib(before)
        );
        if cut {
            println!(
                "{backend}: note: run {run} was cut short after {} s (BENCH_EXPORT_SECS)",
                limit.as_secs()
            );
        } else if lines_read != events {
            println!("{backend}: note: the export had {lines_read} lines, the history holds {events} events");
        }
        rates.push(rate);
    }
    let hwm_after = status_kib(pid, "VmHWM:");
    println!(
        "{backend}: export median {} events/s (target >= 200,000); server high-water mark \
         {:.1} MiB after the exports, {:.1} MiB before",
        thousands(median(&mut rates) as u64),
        mib(hwm_after),
        mib(hwm_before)
    );
    server.kill().await.ok();
    drop(lines);
    Ok(())
}

/// A `kB` line of /proc/PID/status, such as `VmRSS:`; 0 when it cannot be read.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
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
