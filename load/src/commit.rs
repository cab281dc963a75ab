//! The store's own limit, the yardstick for answers/s: single-row INSERT+COMMIT
//! transactions from `--concurrency` connections for a few seconds, on the same settings
//! the server uses (SQLite: WAL, `synchronous=FULL`; PostgreSQL: as configured, with
//! synchronous commit unless the server says otherwise). The row is about the size of a
//! recorded answer's events.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::time::Instant;

use crate::cli::CommitArgs;
use crate::stats::{Latency, Summary};

#[derive(Debug, Serialize)]
pub struct CommitReport {
    pub store: &'static str,
    pub concurrency: usize,
    pub secs: f64,
    pub commits: u64,
    pub per_sec: f64,
    pub latency: Summary,
    pub errors: u64,
}

impl CommitReport {
    pub fn table(&self) -> String {
        let l = &self.latency;
        format!(
            "{} INSERT+COMMIT at concurrency {}: {:.0}/s ({} in {:.1} s), p50 {:.2} ms p99 {:.2} ms max {:.2} ms, {} errors\n",
            self.store, self.concurrency, self.per_sec, self.commits, self.secs, l.p50_ms, l.p99_ms, l.max_ms, self.errors
        )
    }
}

/// A JSON row about the size of an answer's stored events.
fn payload() -> String {
    let filler = "x".repeat(600);
    format!(
        r#"{{"AnswerSubmitted":{{"assessment_id":"0190a8b2-0000-7000-8000-000000000000","question_id":"q1","answer":"a","note":"{filler}"}}}}"#
    )
}

pub async fn run(args: &CommitArgs) -> anyhow::Result<CommitReport> {
    let concurrency = args.concurrency.max(1);
    let duration = Duration::from_secs_f64(args.duration_secs.max(0.1));
    let latency = Arc::new(Latency::new());
    let commits = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let payload = payload();
    let store = if args.database_url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(&args.database_url)
            .context("Failed to parse the SQLite URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(concurrency as u32)
            .connect_with(options)
            .await
            .context("Failed to open the SQLite file")?;
        sqlx::query("create table if not exists commit_probe (id integer primary key autoincrement, payload text not null)")
            .execute(&pool)
            .await?;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (pool, latency, commits, errors, payload) = (
                    pool.clone(),
                    latency.clone(),
                    commits.clone(),
                    errors.clone(),
                    payload.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match sqlx::query("insert into commit_probe (payload) values (?)")
                            .bind(&payload)
                            .execute(&pool)
                            .await
                        {
                            Ok(_) => {
                                latency.record(t.elapsed());
                                commits.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        futures_util::future::join_all(tasks).await;
        pool.close().await;
        "sqlite"
    } else {
        let pool = PgPoolOptions::new()
            .max_connections(concurrency as u32)
            .connect(&args.database_url)
            .await
            .context("Failed to connect to PostgreSQL")?;
        let table = format!("assessd_load_commit_probe_{:08x}", rand::random::<u32>());
        sqlx::query(&format!(
            "create table {table} (id bigint generated always as identity primary key, payload jsonb not null)"
        ))
        .execute(&pool)
        .await?;
        let insert = format!("insert into {table} (payload) values ($1::jsonb)");
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (pool, latency, commits, errors, payload, insert) = (
                    pool.clone(),
                    latency.clone(),
                    commits.clone(),
                    errors.clone(),
                    payload.clone(),
                    insert.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match sqlx::query(&insert).bind(&payload).execute(&pool).await {
                            Ok(_) => {
                                latency.record(t.elapsed());
                                commits.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        futures_util::future::join_all(tasks).await;
        sqlx::query(&format!("drop table {table}"))
            .execute(&pool)
            .await?;
        pool.close().await;
        "postgres"
    };
    let secs = started.elapsed().as_secs_f64();
    let commits = commits.load(Ordering::Relaxed);
    Ok(CommitReport {
        store,
        concurrency,
        secs,
        commits,
        per_sec: commits as f64 / secs,
        latency: latency.summary(),
        errors: errors.load(Ordering::Relaxed),
    })
}
