//! Admin jobs live in the database (src/jobs.rs): a finished job is still there after its
//! server restarts; a job left running by a node that is gone reads as failed, and no
//! longer holds its projection; on PostgreSQL every node answers for every job, a second
//! rebuild of a projection is refused on another node while the first runs, and a job of a
//! node killed with SIGKILL reads as failed on the other once its lease runs out.

use std::process::Stdio;
use std::time::Duration;

use assessd::auth::Role;
use assessd::nodes::{self, Membership};
use assessd::store::Database;
use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::durability::start_process_with;
use crate::helpers::{small_test, spawn_app_with, start_on, Backend, TestApp, TestDb, SECRET};
use crate::nodes::{two_postgres_nodes, until};

fn admin(app: &TestApp) -> String {
    app.token("root", Role::Admin)
}

/// Inserts a job row as a node would have left it: running, 3 of 10 done.
async fn insert_running(db: &Database, kind: &str, projection: &str, node_id: &str) -> String {
    let job_id = Uuid::now_v7().to_string();
    let regrade = kind == "regrade";
    let sql = "insert into jobs (job_id, kind, projection, test_id, node_id, status, \
               events_done, events_total, answers_regraded, started_at) \
               values ($1, $2, $3, $4, $5, 'running', 3, 10, $6, '2026-12-01T10:00:00.000Z')";
    macro_rules! insert {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(&job_id)
                .bind(kind)
                .bind(projection)
                .bind(regrade.then_some("exam"))
                .bind(node_id)
                .bind(regrade.then_some(1i64))
                .execute($pool)
                .await
                .map(|_| ())
                .unwrap()
        };
    }
    match db {
        Database::Sqlite(pool) => insert!(pool),
        Database::Postgres(pool) => insert!(pool),
    };
    job_id
}

/// Polls `GET /api/admin/jobs/{job_id}` on `app` until the job is no longer running.
async fn ended(app: &TestApp, job_id: &str) -> Value {
    let token = admin(app);
    until("the job to end", || async {
        let (status, job) = app.get(&format!("/api/admin/jobs/{job_id}"), &token).await;
        assert_eq!(status, 200, "{job}");
        (job["status"] != "running").then_some(job)
    })
    .await
}

async fn rebuild(app: &TestApp, projection: &str) -> (u16, Value) {
    app.post(
        &format!("/api/admin/projections/{projection}/rebuild"),
        &admin(app),
    )
    .await
}

async fn projection_status(app: &TestApp, projection: &str) -> Value {
    let (status, list) = app.get("/api/admin/projections", &admin(app)).await;
    assert_eq!(status, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == projection)
        .map(|p| p["status"].clone())
        .unwrap_or_else(|| panic!("no {projection} in {list}"))
}

/// A finished rebuild reads the same after the server restarts on its database; a job
/// the earlier process of this node left running reads as failed once it is back.
async fn a_finished_job_outlives_a_restart(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let node = |s: &mut assessd::config::Settings| s.node_id = "node-r".into();
    let app = start_on(db, node).await;
    let (status, started) = rebuild(&app, "assessments").await;
    assert_eq!(status, 202, "{started}");
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let before = ended(&app, &job_id).await;
    assert_eq!(before["status"], "done", "{before}");
    assert_eq!(
        (before["kind"].as_str(), before["projection"].as_str()),
        (Some("rebuild"), Some("assessments"))
    );
    assert!(before["finished_at"].is_string(), "{before}");
    // A job of this very node runs here, whatever the heartbeats say.
    let left = insert_running(&app.state.db, "rebuild", "test_statistics", "node-r").await;
    let path = format!("/api/admin/jobs/{left}");
    let (_, running) = app.get(&path, &admin(&app)).await;
    assert_eq!(running["status"], "running", "{running}");

    let app = start_on(app.stop().await, node).await;
    let (status, after) = app
        .get(&format!("/api/admin/jobs/{job_id}"), &admin(&app))
        .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before);
    let (status, left) = app.get(&path, &admin(&app)).await;
    assert_eq!(status, 200, "{left}");
    assert_eq!(left["status"], "failed", "{left}");
    assert_eq!(left["error"], "the node running it stopped (node-r)");
    assert!(left["finished_at"].is_string(), "{left}");
    assert_ne!(
        projection_status(&app, "test_statistics").await,
        "rebuilding"
    );
    app.stop().await;
}

/// A running job of a node with no live heartbeat reads as failed and does not hold its
/// projection; one of a live node reads as running and does. Unknown and malformed job ids
/// are 404.
async fn a_running_job_of_a_gone_node_reads_failed(backend: Backend) {
    // A lease no slow machine outlives during the test: "alive" beats once.
    let Some(app) = spawn_app_with(backend, |s| {
        s.node_id = "node-a".into();
        s.membership = Membership {
            every: Duration::from_millis(100),
            lease: Duration::from_secs(120),
        };
    })
    .await
    else {
        return;
    };
    let token = admin(&app);
    let db = &app.state.db;
    nodes::beat(db, "alive", Utc::now(), 0).await.unwrap();
    let alive = insert_running(db, "rebuild", "assessments", "alive").await;
    let gone = insert_running(db, "rebuild", "test_statistics", "gone").await;
    let gone_regrade = insert_running(db, "regrade", "", "gone").await;

    assert_eq!(projection_status(&app, "assessments").await, "rebuilding");
    assert_ne!(
        projection_status(&app, "test_statistics").await,
        "rebuilding"
    );
    let (status, refused) = rebuild(&app, "assessments").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");

    let (status, job) = app.get(&format!("/api/admin/jobs/{alive}"), &token).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "running", "{job}");
    assert!(
        job["error"].is_null() && job["finished_at"].is_null(),
        "{job}"
    );
    assert_eq!(
        (job["events_done"].as_u64(), job["events_total"].as_u64()),
        (Some(3), Some(10))
    );

    let (status, job) = app
        .get(&format!("/api/admin/jobs/{gone_regrade}"), &token)
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"], "the node running it stopped (gone)");
    assert_eq!(
        (job["test_id"].as_str(), job["answers_regraded"].as_u64()),
        (Some("exam"), Some(1))
    );
    assert!(job["finished_at"].is_string(), "{job}");
    // Written back: the same on the next read.
    let (_, again) = app
        .get(&format!("/api/admin/jobs/{gone_regrade}"), &token)
        .await;
    assert_eq!(again, job);

    // The gone node's rebuild does not hold test_statistics: a new one starts and ends.
    let (status, started) = rebuild(&app, "test_statistics").await;
    assert_eq!(status, 202, "{started}");
    let done = ended(&app, started["job_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "done", "{done}");
    let (_, job) = app.get(&format!("/api/admin/jobs/{gone}"), &token).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"], "the node running it stopped (gone)");

    for path in [
        format!("/api/admin/jobs/{}", Uuid::now_v7()),
        "/api/admin/jobs/nope".to_string(),
        "/api/admin/jobs/1%27%20or%201=1".to_string(),
    ] {
        let (status, body) = app.get(&path, &token).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    app.stop().await;
}

crate::on_both_backends!(
    a_finished_job_outlives_a_restart,
    a_running_job_of_a_gone_node_reads_failed,
);

/// Holds every rebuild of `assessments` on PostgreSQL at its first step: the rebuild drops
/// and creates its table beside the live one (`assessments_rebuild`), which waits for the
/// lock this transaction holds on it. Dropping or committing the transaction lets it go.
async fn hold_rebuilds(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    sqlx::query("create table if not exists assessments_rebuild (held int)")
        .execute(pool)
        .await
        .unwrap();
    let mut held = pool.begin().await.unwrap();
    sqlx::query("lock table assessments_rebuild in access exclusive mode")
        .execute(&mut *held)
        .await
        .unwrap();
    held
}

/// A client of a real node, as an admin.
struct Node {
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    token: String,
}

impl Node {
    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn job(&self, job_id: &str) -> Value {
        let (status, job) = self
            .call(reqwest::Method::GET, &format!("/api/admin/jobs/{job_id}"))
            .await;
        assert_eq!(status, 200, "{job}");
        job
    }

    async fn rebuild(&self) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/api/admin/projections/assessments/rebuild",
        )
        .await
    }

    /// Polls the job until `done(job)`, for at most `within`.
    async fn job_until(
        &self,
        job_id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let job = self.job(job_id).await;
            if done(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job never matched: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Two real processes on one PostgreSQL database: a rebuild started on A is followed on
/// B to its end, with A's answer; while it runs, B refuses a second rebuild of the same
/// projection. Then A is killed with SIGKILL mid-rebuild: B reports that job failed once
/// A's lease has run out, and starts the rebuild itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_rebuild_jobs() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let start = |node_id: &'static str| {
        let (url, dir) = (db.url.clone(), dir.path().to_path_buf());
        async move {
            let envs = [("ASSESSD_NODE_ID", node_id)];
            start_process_with(&url, &dir, "warn", Stdio::inherit(), &envs).await
        }
    };
    let (mut process_a, addr_a) = start("proc-a").await;
    let (mut process_b, addr_b) = start("proc-b").await;
    let keys = assessd::auth::JwtKeys::hs256(&assessd::auth::Secret::new(SECRET), None, None);
    let token = keys
        .mint("root", &[Role::Admin], Duration::from_secs(600))
        .unwrap();
    let node = |addr| Node {
        addr,
        http: reqwest::Client::new(),
        token: token.clone(),
    };
    let (a, b) = (node(addr_a), node(addr_b));
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();

    let held = hold_rebuilds(&pool).await;
    let (status, started) = a.rebuild().await;
    assert_eq!(status, 202, "{started}");
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let running = b.job(&job_id).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["projection"], "assessments", "{running}");
    let (status, refused) = b.rebuild().await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict", "{refused}");
    let (_, list) = b.call(reqwest::Method::GET, "/api/admin/projections").await;
    assert_eq!(list["items"][0]["name"], "assessments", "{list}");
    assert_eq!(list["items"][0]["status"], "rebuilding", "{list}");

    held.commit().await.unwrap();
    let on_b = b
        .job_until(&job_id, Duration::from_secs(15), |j| {
            j["status"] != "running"
        })
        .await;
    assert_eq!(on_b["status"], "done", "{on_b}");
    assert_eq!(a.job(&job_id).await, on_b);

    // A dies mid-rebuild.
    let held = hold_rebuilds(&pool).await;
    let (status, started) = a.rebuild().await;
    assert_eq!(status, 202, "{started}");
    let killed_job = started["job_id"].as_str().unwrap().to_string();
    process_a.kill().await.expect("SIGKILL");
    process_a.wait().await.unwrap();
    assert_eq!(
        b.job(&killed_job).await["status"],
        "running",
        "A's lease has not run out yet"
    );
    held.commit().await.unwrap();
    // The default lease is 10 s.
    let failed = b
        .job_until(&killed_job, Duration::from_secs(30), |j| {
            j["status"] != "running"
        })
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["error"], "the node running it stopped (proc-a)",
        "{failed}"
    );
    let (status, started) = b.rebuild().await;
    assert_eq!(status, 202, "{started}");
    let again = b
        .job_until(
            started["job_id"].as_str().unwrap(),
            Duration::from_secs(15),
            |j| j["status"] != "running",
        )
        .await;
    assert_eq!(again["status"], "done", "{again}");
    pool.close().await;
    process_b.kill().await.unwrap();
}

/// A regrade started on one node is followed on the other, which gives the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regrade_job_is_read_on_the_other_node() {
    let Some((a, b)) = two_postgres_nodes().await else {
        return;
    };
    a.put_test("exam", small_test(1, None)).await;
    crate::accommodations::take(&a, "u1", "a", "red").await;
    crate::accommodations::take(&a, "u2", "b", "blue").await;
    let response = a
        .http
        .post(a.url("/api/admin/tests/exam/regrade"))
        .bearer_auth(admin(&a))
        .json(&json!({"question_id": "s1", "answer": "b", "reason": "the key was wrong", "dry_run": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let on_b = ended(&b, &job_id).await;
    assert_eq!(on_b["status"], "done", "{on_b}");
    assert_eq!(
        (
            on_b["kind"].as_str(),
            on_b["test_id"].as_str(),
            on_b["answers_regraded"].as_u64()
        ),
        (Some("regrade"), Some("exam"), Some(2)),
        "{on_b}"
    );
    assert_eq!(
        (on_b["events_done"].as_u64(), on_b["events_total"].as_u64()),
        (Some(2), Some(2))
    );
    let (_, on_a) = a
        .get(&format!("/api/admin/jobs/{job_id}"), &admin(&a))
        .await;
    assert_eq!(on_a, on_b);
    b.stop().await;
}
