//! The smoke run CI keeps: the real server (in process, on port 0) on SQLite and on
//! PostgreSQL, and the real `assessd-load` binary against it for a couple of seconds at a
//! low rate: `answer` (every answer due is fed back, none refused, and each one is in the
//! database as `AnswerSubmitted` and `FeedbackGiven`), then `connect` (each user resumes
//! the attempt it started).

use std::net::SocketAddr;
use std::time::Duration;

use assessd::auth::Secret;
use assessd::config::Settings;
use assessd::Application;
use serde_json::Value;
use sqlx::Connection;
use tokio::sync::oneshot;

const SECRET: &str = "load-smoke-secret-0123456789abcdef";
/// How long one generator run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

fn postgres_admin_url() -> String {
    std::env::var("DATABASE_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database for one test: a SQLite file in a temporary directory, or a new PostgreSQL
/// database dropped afterwards.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl Db {
    /// `None` when PostgreSQL is unreachable outside CI (announced; under `CI=true` a
    /// failure), as the API tests do.
    async fn create(backend: Backend) -> Option<Db> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("smoke.db").display());
                Some(Db {
                    url,
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
                        eprintln!("\n*** SKIPPED: load smoke test on PostgreSQL (no server at {admin}: {e}) ***\n");
                        return None;
                    }
                };
                let name = format!("assessd_load_smoke_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("create database {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create the smoke database");
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(admin);
                Some(Db {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    pg_name: Some(name),
                })
            }
        }
    }

    /// Events of `event_type` in the streams of users named `<prefix>-*`.
    async fn count(&self, event_type: &str, prefix: &str) -> i64 {
        let sql = "select count(*) from events where event_type = $1 and aggregate_id like $2";
        let pattern = format!("{prefix}-%");
        if self.url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&self.url)
                .await
                .expect("open SQLite");
            sqlx::query_scalar(sql)
                .bind(event_type)
                .bind(pattern)
                .fetch_one(&mut conn)
                .await
                .expect("count events")
        } else {
            let mut conn = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connect PostgreSQL");
            sqlx::query_scalar(sql)
                .bind(event_type)
                .bind(pattern)
                .fetch_one(&mut conn)
                .await
                .expect("count events")
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = postgres_admin_url();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
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

/// Runs the generator with `args` and returns its JSON report.
async fn generator(addr: SocketAddr, args: &[&str]) -> Value {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_assessd-load"))
        .args(args)
        .args(["--server", &format!("http://{addr}"), "--json"])
        .args(["--server-pid", &std::process::id().to_string()])
        .env("ASSESSD_JWT_SECRET", SECRET)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the generator finishes in time")
        .expect("the generator runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "assessd-load {args:?} failed: {stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "assessd-load printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn number(report: &Value, path: &str) -> f64 {
    report
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {report}"))
}

async fn smoke(backend: Backend) {
    let Some(db) = Db::create(backend).await else {
        return;
    };
    let mut settings = Settings::new(
        "127.0.0.1:0".parse().expect("address"),
        db.url.clone(),
        Secret::new(SECRET),
    );
    settings.db_pool = 8;
    settings.shutdown_grace = Duration::from_secs(5);
    let app = Application::build(settings)
        .await
        .expect("the server builds");
    let addr = app.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    // Answers: 10 users, 20 answers/s for 2 s after a 0.5 s warm-up; a test of 3
    // questions, so attempts complete and restart during the run.
    let prefix = format!("smoke-{}", uuid::Uuid::new_v4().simple());
    let report = generator(
        addr,
        &[
            "answer",
            "--users",
            "10",
            "--rate",
            "20",
            "--duration-secs",
            "2",
            "--warmup-secs",
            "0.5",
            "--questions",
            "3",
            "--source-ips",
            "4",
            "--user-prefix",
            &prefix,
        ],
    )
    .await;
    assert_eq!(report["errors_total"], 0, "errors: {report}");
    assert_eq!(number(&report, "/connect/connected"), 10.0, "{report}");
    let due = number(&report, "/answers/due");
    assert!(
        due >= 30.0,
        "about 40 answers were due in 2 s at 20/s: {report}"
    );
    assert_eq!(
        number(&report, "/answers/done"),
        due,
        "every due answer is fed back: {report}"
    );
    assert!(number(&report, "/answers/latency/count") >= due, "{report}");
    assert!(
        number(&report, "/answers/attempts_completed") >= 1.0,
        "attempts restart: {report}"
    );
    assert!(
        number(&report, "/server/rss_kib_before") > 0.0,
        "server memory read: {report}"
    );
    // Every answer fed back is in the users' streams, graded.
    let total = number(&report, "/answers/answers_total") as i64;
    assert_eq!(
        db.count("AnswerSubmitted", &prefix).await,
        total,
        "{report}"
    );
    assert_eq!(db.count("FeedbackGiven", &prefix).await, total, "{report}");

    // Connects: 20 users start an attempt, then all reconnect at 100/s and resume it.
    let report = generator(
        addr,
        &[
            "connect",
            "--users",
            "20",
            "--connect-rate",
            "100",
            "--questions",
            "3",
        ],
    )
    .await;
    assert_eq!(report["errors_total"], 0, "errors: {report}");
    assert_eq!(number(&report, "/connect/connected"), 20.0, "{report}");
    assert_eq!(
        number(&report, "/connect/resume/count"),
        20.0,
        "each connect resumed: {report}"
    );

    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .expect("server stops cleanly");
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    smoke(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    smoke(Backend::Postgres).await
}
