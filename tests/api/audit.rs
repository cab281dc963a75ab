//! The rest of the audit API: commit-order paging that never passes over a late commit
//! (PostgreSQL), the NDJSON export, a user's state rebuilt at any point, `verify` of an
//! unknown user, the log of audit reads, and the live connections.

use std::time::{Duration, Instant};

use assessd::auth::Role;
use assessd::store::Database;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{spawn_app, Backend, TestApp, WAIT};

/// A `ChatExchanged` payload as stored, for events written with SQL.
const CHAT_PAYLOAD: &str = r#"{"ChatExchanged":{"assessment_id":null,"test_id":null,"question_id":null,"user_text":"hello","reply_text":"hi","tutor":"offline_tutor","exchanged_at":"2026-01-05T10:00:00Z"}}"#;

/// Calls `GET path` until its reply satisfies `done`, and returns that reply. On
/// PostgreSQL the listings show only transactions older than the oldest one still running
/// anywhere in the cluster, so a transaction of another test can hold back what this test
/// has just committed for a moment.
async fn eventually(
    app: &TestApp,
    path: &str,
    token: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = app.get(path, token).await;
        assert_eq!(status, 200, "{path}: {body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not reach the expected state: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().cloned().unwrap_or_default()
}

/// Follows `next_cursor` from `start` (the beginning when `None`) to the last page of
/// `GET path?query`. Returns the items and the last cursor it was given (`start` when the
/// first page was the last).
async fn read_pages(
    app: &TestApp,
    token: &str,
    path: &str,
    query: &str,
    start: Option<String>,
) -> (Vec<Value>, Option<String>) {
    let mut seen = Vec::new();
    let mut cursor = start;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?{query}&cursor={c}"),
            None => format!("{path}?{query}"),
        };
        let (status, page) = app.get(&url, token).await;
        assert_eq!(status, 200, "{url}: {page}");
        seen.extend(items(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return (seen, cursor),
        }
    }
}

/// [`read_pages`] again until it returns `count` items (see [`eventually`] for why).
async fn read_pages_until(
    app: &TestApp,
    token: &str,
    path: &str,
    query: &str,
    start: Option<String>,
    count: usize,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (seen, _) = read_pages(app, token, path, query, start.clone()).await;
        if seen.len() >= count || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn users_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{}#{}", e["user_id"].as_str().unwrap(), e["sequence"]))
        .collect()
}

/// A transaction that inserts an event and stays open: the events committed after it by
/// other connections have higher global positions, yet a reader that paged to the end
/// before it committed must still be given it, and in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_never_passed_over() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let auditor = app.token("aud", Role::Auditor);
    let mut early = app.connect("early").await;
    early.start("demo").await;
    eventually(&app, "/api/audit/events", &auditor, |page| {
        items(page).len() == 2
    })
    .await;

    // The held transaction writes the way the store does: one event, not yet committed.
    let mut held = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("begin").execute(&mut held).await.unwrap();
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         values ('user', 'held', 1, 'ChatExchanged', '1.0', $1::jsonb, '{}')",
    )
    .bind(CHAT_PAYLOAD)
    .execute(&mut held)
    .await
    .unwrap();

    // Committed after the held insert, through the real store path, from other connections.
    let mut late = app.connect("late").await;
    late.start("demo").await;
    let Database::Postgres(pool) = &app.state.db else {
        unreachable!("a PostgreSQL test")
    };
    let (positions_after,): (i64,) = sqlx::query_as(
        "select count(*) from events where aggregate_id = 'late' \
         and global_position > (select max(global_position) from events where aggregate_id = 'early')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(positions_after, 2, "the late events are committed");

    // To the end, one event a page: the held transaction delays the events after it.
    let (first_pass, last_cursor) =
        read_pages(&app, &auditor, "/api/audit/events", "limit=1", None).await;
    assert_eq!(users_of(&first_pass), ["early#1", "early#2"]);
    assert!(
        last_cursor.is_some(),
        "two pages, so a cursor to go on from"
    );

    sqlx::query("commit").execute(&mut held).await.unwrap();
    drop(held);

    // From the last cursor: the page it names again, then everything that committed since.
    let rest = read_pages_until(
        &app,
        &auditor,
        "/api/audit/events",
        "limit=1",
        last_cursor,
        4,
    )
    .await;
    assert_eq!(
        users_of(&rest),
        ["early#2", "held#1", "late#1", "late#2"],
        "nothing passed over, in commit order"
    );
    // The held event was inserted first, so its position is below the late ones'.
    assert!(rest[1]["global_position"].as_i64() < rest[2]["global_position"].as_i64());
    app.stop().await;
}

/// Writes `count` chat events into `user`'s stream with one SQL statement.
async fn insert_chats(db: &Database, user: &str, count: i64) {
    match db {
        Database::Sqlite(pool) => sqlx::query(
            "with recursive n(i) as (select 1 union all select i + 1 from n where i < ?) \
             insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             select 'user', ?, i, 'ChatExchanged', '1.0', ?, '{}' from n",
        )
        .bind(count)
        .bind(user)
        .bind(CHAT_PAYLOAD)
        .execute(pool)
        .await
        .map(|_| ()),
        Database::Postgres(pool) => sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             select 'user', $1, i, 'ChatExchanged', '1.0', $2::jsonb, '{}' from generate_series(1, $3) as i",
        )
        .bind(user)
        .bind(CHAT_PAYLOAD)
        .bind(count)
        .execute(pool)
        .await
        .map(|_| ()),
    }
    .unwrap();
}

/// `GET path` with `Accept: application/x-ndjson`: (status, content type, body).
async fn export(app: &TestApp, path: &str, token: &str) -> (u16, String, String) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, response.text().await.unwrap())
}

/// The lines of an NDJSON body, each parsed; every line must be one JSON object.
fn ndjson_lines(body: &str) -> Vec<Value> {
    assert!(
        body.is_empty() || body.ends_with('\n'),
        "the last line ends"
    );
    body.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("each line is JSON");
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// More events than one batch come out of the export complete, in the listing's order, one
/// JSON object per line.
async fn the_export_streams_every_event(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let auditor = app.token("aud", Role::Auditor);
    let mut real = app.connect("real").await;
    real.start("demo").await;
    insert_chats(&app.state.db, "bulk-a", 5300).await;
    insert_chats(&app.state.db, "bulk-b", 4700).await;
    // Written past the API (which refuses control characters in a user id): a stored id
    // reads back exactly, whatever it holds.
    let odd = "odd \"ü\" \u{1f} | \\ id";
    insert_chats(&app.state.db, odd, 3).await;
    let total = 2 + 5300 + 4700 + 3;
    let paged = read_pages_until(
        &app,
        &auditor,
        "/api/audit/events",
        "limit=1000",
        None,
        total,
    )
    .await;
    assert_eq!(paged.len(), total);

    let (status, content_type, body) = export(&app, "/api/audit/events", &auditor).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/x-ndjson"),
        "{content_type}"
    );
    let lines = ndjson_lines(&body);
    assert_eq!(lines.len(), total);
    assert_eq!(lines, paged, "the export is the listing, in the same order");
    let odd_lines: Vec<_> = lines.iter().filter(|e| e["user_id"] == odd).collect();
    assert_eq!(odd_lines.len(), 3);
    assert_eq!(
        odd_lines[2]["payload"],
        serde_json::from_str::<serde_json::Value>(CHAT_PAYLOAD).unwrap()["ChatExchanged"]
    );

    // One user's stream, in sequence order.
    let (status, _, body) = export(&app, "/api/audit/users/bulk-a/events", &auditor).await;
    assert_eq!(status, 200);
    let sequences: Vec<i64> = ndjson_lines(&body)
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=5300).collect::<Vec<_>>());
    // The same filters as the listing.
    let (_, _, body) = export(
        &app,
        "/api/audit/events?user_id=real&event_type=QuestionPresented",
        &auditor,
    )
    .await;
    let lines = ndjson_lines(&body);
    assert_eq!(users_of(&lines), ["real#2"]);
    let (_, _, body) = export(&app, "/api/audit/events?user_id=nobody", &auditor).await;
    assert_eq!(body, "", "no events, no lines");

    // The export has no pages, so it takes no paging parameters.
    for query in ["limit=10", "cursor=g1", "limit=10&cursor=g1"] {
        let (status, content_type, body) =
            export(&app, &format!("/api/audit/events?{query}"), &auditor).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
    }
    let (status, _, _) = export(&app, "/api/audit/events", &app.token("t", Role::Taker)).await;
    assert_eq!(status, 403);
    app.stop().await;
}

/// The state rebuilt from the events at several points, against the live aggregate.
async fn state_is_rebuilt_from_the_events(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let auditor = app.token("aud", Role::Auditor);
    let admin = app.token("root", Role::Admin);
    let mut taker = app.connect("st").await;
    let (started, _) = taker.start("demo").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    taker.answer(&id, "q1", json!("b")).await;

    let (status, now) = app.get("/api/audit/users/st/state", &auditor).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["user_id"], "st");
    assert_eq!(now["sequence"], 5);
    let attempt = &now["assessments"][0];
    assert_eq!(now["assessments"].as_array().unwrap().len(), 1);
    for (field, value) in [
        ("assessment_id", json!(id)),
        ("test_id", json!("demo")),
        ("attempt", json!(1)),
        ("status", json!("in_progress")),
        ("answered", json!(1)),
        ("total_questions", json!(4)),
        ("score", json!(1.0)),
        ("max_score", json!(6.0)),
        ("current_question_id", json!("q2")),
        ("passed", Value::Null),
        ("reason", Value::Null),
        ("completed_at", Value::Null),
        ("time_limit_secs", json!(900)),
    ] {
        assert_eq!(attempt[field], value, "{field}: {attempt}");
    }
    // The socket shows milliseconds; the audit API every digit recorded.
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let shown = time(&started["deadline"]);
    assert!(
        (time(&attempt["deadline"]) - shown).num_milliseconds() == 0,
        "{attempt}"
    );
    // The same as the aggregate the commands use.
    let live = app.state.streams.load("st").await.unwrap();
    assert_eq!(now["sequence"], live.sequence);
    assert_eq!(attempt["score"], live.attempts[0].score);

    let (status, two) = app
        .get("/api/audit/users/st/state?at_sequence=2", &auditor)
        .await;
    assert_eq!(status, 200);
    assert_eq!(two["sequence"], 2);
    assert_eq!(two["assessments"][0]["answered"], 0);
    assert_eq!(two["assessments"][0]["current_question_id"], "q1");
    assert_eq!(two["assessments"][0]["score"], 0.0);
    let (_, zero) = app
        .get("/api/audit/users/st/state?at_sequence=0", &auditor)
        .await;
    assert_eq!(
        zero,
        json!({"user_id": "st", "sequence": 0, "assessments": []})
    );
    let (status, body) = app
        .get("/api/audit/users/st/state?at_sequence=6", &auditor)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (_, five) = app
        .get("/api/audit/users/st/state?at_sequence=5", &auditor)
        .await;
    assert_eq!(five, now);

    // At a time: the events recorded at or before it.
    let stream = app.stream_of("st").await;
    let at = stream[1]["recorded_at"].as_str().unwrap().to_string();
    let recorded_by_then = stream
        .iter()
        .filter(|e| {
            let t =
                chrono::DateTime::parse_from_rfc3339(e["recorded_at"].as_str().unwrap()).unwrap();
            t <= chrono::DateTime::parse_from_rfc3339(&at).unwrap()
        })
        .count();
    let (status, then) = app
        .get(
            &format!(
                "/api/audit/users/st/state?at_time={}",
                at.replace('+', "%2B")
            ),
            &auditor,
        )
        .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["sequence"], recorded_by_then, "{then}");
    let (_, same) = app
        .get(
            &format!("/api/audit/users/st/state?at_sequence={recorded_by_then}"),
            &auditor,
        )
        .await;
    assert_eq!(then, same);
    let (_, before) = app
        .get(
            "/api/audit/users/st/state?at_time=2000-01-01T00:00:00Z",
            &auditor,
        )
        .await;
    assert_eq!(before["sequence"], 0);
    let (_, after) = app
        .get(
            "/api/audit/users/st/state?at_time=2999-01-01T00:00:00Z",
            &auditor,
        )
        .await;
    assert_eq!(after, now);

    // Ended by an admin: completed, with its reason and result.
    let (status, _) = app
        .post(&format!("/api/admin/users/st/assessments/{id}/end"), &admin)
        .await;
    assert_eq!(status, 200);
    let (_, ended) = app.get("/api/audit/users/st/state", &admin).await;
    let attempt = &ended["assessments"][0];
    assert_eq!(ended["sequence"], 6);
    assert_eq!(attempt["status"], "completed");
    assert_eq!(attempt["reason"], "ended_by_admin");
    assert_eq!(attempt["passed"], false);
    assert!(attempt["completed_at"].is_string());
    assert_eq!(attempt["current_question_id"], Value::Null);

    for (query, status) in [
        ("at_sequence=1&at_time=2999-01-01T00:00:00Z", 400),
        ("at_time=yesterday", 400),
        ("at_sequence=-1", 400),
        ("at_sequence=x", 400),
        ("colour=red", 400),
    ] {
        let (got, body) = app
            .get(&format!("/api/audit/users/st/state?{query}"), &auditor)
            .await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some("bad_request")),
            "{query}"
        );
    }
    for path in [
        "/api/audit/users/nobody/state",
        "/api/audit/users/nobody/verify",
    ] {
        let (status, body) = app.get(path, &auditor).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {body}"
        );
    }
    let (status, report) = app.get("/api/audit/users/st/verify", &auditor).await;
    assert_eq!(
        (status, report["ok"].as_bool()),
        (200, Some(true)),
        "{report}"
    );
    app.stop().await;
}

async fn audit_reads_in_table(db: &Database) -> i64 {
    let sql = "select count(*) from audit_reads";
    match db {
        Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
    }
    .unwrap()
}

/// Every read of users' data through the audit API is recorded, and admins (only) list
/// the records.
async fn audit_reads_are_recorded_for_admins(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut subject = app.connect("subject").await;
    subject.start("demo").await;
    let auditor = app.token("aud-1", Role::Auditor);
    let admin = app.token("root", Role::Admin);
    let before = chrono::Utc::now();

    let (status, _) = app
        .get("/api/audit/users/subject/events?limit=5", &auditor)
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .get("/api/audit/users/subject/state?at_sequence=1", &auditor)
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .get("/api/audit/events?event_type=AssessmentStarted", &auditor)
        .await;
    assert_eq!(status, 200);
    // A request refused for its parameters reads nothing and is not recorded.
    let (status, _) = app
        .get("/api/audit/users/subject/state?at_sequence=x", &auditor)
        .await;
    assert_eq!(status, 400);
    assert_eq!(audit_reads_in_table(&app.state.db).await, 3);
    let after = chrono::Utc::now();

    let reads = eventually(
        &app,
        "/api/admin/audit-reads?reader=aud-1",
        &admin,
        |page| items(page).len() == 3,
    )
    .await;
    let reads = items(&reads);
    let shown: Vec<(Value, Value, Value)> = reads
        .iter()
        .map(|r| {
            (
                r["endpoint"].clone(),
                r["user_id"].clone(),
                r["parameters"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                json!("GET /api/audit/users/{user_id}/events"),
                json!("subject"),
                json!({"user_id": "subject", "limit": 5})
            ),
            (
                json!("GET /api/audit/users/{user_id}/state"),
                json!("subject"),
                json!({"at_sequence": 1})
            ),
            (
                json!("GET /api/audit/events"),
                Value::Null,
                json!({"event_type": "AssessmentStarted"})
            ),
        ]
    );
    for read in &reads {
        assert_eq!(read["reader"], "aud-1");
        assert_eq!(read["roles"], json!(["auditor"]));
        let at = chrono::DateTime::parse_from_rfc3339(read["read_at"].as_str().unwrap()).unwrap();
        // Database clocks may round to the millisecond.
        assert!(
            at >= before - chrono::Duration::milliseconds(5)
                && at <= after + chrono::Duration::milliseconds(5),
            "{read}"
        );
        assert!(
            !read.to_string().contains(&auditor),
            "no token in the record"
        );
    }

    // Whose data: a user's own reads plus those across users.
    let (_, for_subject) = app
        .get("/api/admin/audit-reads?user_id=subject", &admin)
        .await;
    assert_eq!(items(&for_subject).len(), 3);
    let (_, for_other) = app
        .get("/api/admin/audit-reads?user_id=other", &admin)
        .await;
    assert_eq!(items(&for_other).len(), 1);
    assert_eq!(for_other["items"][0]["user_id"], Value::Null);
    let (_, by_nobody) = app
        .get("/api/admin/audit-reads?reader=nobody", &admin)
        .await;
    assert!(items(&by_nobody).is_empty());

    // Admins' reads are recorded too; reading the log is not a read of users' data.
    let (status, _) = app.get("/api/audit/users/subject/verify", &admin).await;
    assert_eq!(status, 200);
    let all = eventually(&app, "/api/admin/audit-reads", &admin, |page| {
        items(page).len() == 4
    })
    .await;
    assert_eq!(all["items"][3]["reader"], "root");
    assert_eq!(
        all["items"][3]["endpoint"],
        "GET /api/audit/users/{user_id}/verify"
    );
    assert_eq!(all["items"][3]["parameters"], json!({}));
    let (paged, _) = read_pages(&app, &admin, "/api/admin/audit-reads", "limit=1", None).await;
    assert_eq!(paged, items(&all));

    for (query, status) in [("limit=0", 400), ("cursor=zzz", 400), ("colour=red", 400)] {
        let (got, _) = app
            .get(&format!("/api/admin/audit-reads?{query}"), &admin)
            .await;
        assert_eq!(got, status, "{query}");
    }
    for role in [Role::Taker, Role::Auditor] {
        let (status, body) = app
            .get("/api/admin/audit-reads", &app.token("x", role))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden"))
        );
    }
    app.stop().await;
}

/// Live sessions of this node, by node and by the test of their attempt in progress.
async fn connections_are_counted(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.token("root", Role::Admin);
    let node = app.state.node_id.clone();
    let (_, none) = app.get("/api/admin/connections", &admin).await;
    assert_eq!(
        none,
        json!({"total": 0, "by_node": {&node: 0}, "by_test": {}})
    );

    let idle = app.connect("c-idle").await;
    let mut busy = app.connect("c-busy").await;
    let (started, _) = busy.start("demo").await;
    let (status, counts) = app.get("/api/admin/connections", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(
        counts,
        json!({"total": 2, "by_node": {&node: 2}, "by_test": {"demo": 1}})
    );

    // Ended attempts leave by_test at once; closed sockets leave the totals.
    let id = started["assessment_id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/api/admin/users/c-busy/assessments/{id}/end"),
            &admin,
        )
        .await;
    assert_eq!(status, 200);
    let (_, counts) = app.get("/api/admin/connections", &admin).await;
    assert_eq!(counts["by_test"], json!({}));
    drop(idle);
    eventually(&app, "/api/admin/connections", &admin, |counts| {
        counts == &json!({"total": 1, "by_node": {&node: 1}, "by_test": {}})
    })
    .await;

    for role in [Role::Taker, Role::Auditor] {
        let (status, _) = app
            .get("/api/admin/connections", &app.token("x", role))
            .await;
        assert_eq!(status, 403);
    }
    drop(busy);
    app.stop().await;
}

crate::on_both_backends!(
    the_export_streams_every_event,
    state_is_rebuilt_from_the_events,
    audit_reads_are_recorded_for_admins,
    connections_are_counted,
);
