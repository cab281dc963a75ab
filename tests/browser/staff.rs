//! The auditor's timeline and the admin's console. The attempts they look at are made over
//! the WebSocket from here (the taker's page has its own scenarios).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{until, Server, Stage};

/// Chat events added to the admin scenario's history: several batches of a rebuild.
const BULK_CHATS: i64 = 60_000;

/// Writes `count` chat events of one user into `server`'s database, past the API.
async fn bulk_chats(server: &Server, count: i64) {
    let db = assessd::store::Database::connect(&server.database_url(), 1)
        .await
        .expect("the server's database");
    let assessd::store::Database::Sqlite(pool) = &db else {
        unreachable!("the browser tests' server runs on SQLite");
    };
    sqlx::query(
        "with recursive n(i) as (select 1 union all select i + 1 from n where i < ?) \
         insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         select 'user', 'bulk', i, 'ChatExchanged', '1.0', ?, '{}' from n",
    )
    .bind(count)
    .bind(
        r#"{"ChatExchanged":{"assessment_id":null,"test_id":null,"question_id":null,"user_text":"hello","reply_text":"hi","tutor":"offline_tutor","exchanged_at":"2026-01-05T10:00:00Z"}}"#,
    )
    .execute(pool)
    .await
    .expect("bulk chat events");
    db.close().await;
}

/// The right answer to each demo question.
fn right(question: &str) -> Value {
    match question {
        "q1" => json!("b"),
        "q2" => json!(["a", "c"]),
        "q3" => json!("a"),
        _ => json!("Ownership and borrowing, checked through lifetimes"),
    }
}

/// `user` starts the demo test and answers `answers` of its questions over the WebSocket
/// (`None` for the right answer, else the one given).
async fn take_demo(server: &Server, user: &str, answers: &[Option<Value>]) {
    let token = server.token(user, "taker").await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?access_token={token}", server.addr))
            .await
            .expect("socket");
    let mut assessment = String::new();
    let mut given = answers.iter();
    loop {
        let frame = tokio::time::timeout(crate::harness::WAIT, socket.next())
            .await
            .expect("a message")
            .expect("open")
            .expect("a frame");
        let Message::Text(text) = frame else { continue };
        let message: Value = serde_json::from_str(text.as_str()).expect("JSON");
        match message["type"].as_str() {
            Some("CONNECTED") => {
                socket
                    .send(Message::Text(
                        json!({"type": "START_ASSESSMENT", "test_id": "demo"})
                            .to_string()
                            .into(),
                    ))
                    .await
                    .unwrap();
            }
            Some("ASSESSMENT_STARTED") => {
                assessment = message["assessment_id"].as_str().unwrap().to_string();
            }
            Some("QUESTION") => {
                let question = message["question_id"].as_str().unwrap().to_string();
                let Some(answer) = given.next() else { break };
                let answer = answer.clone().unwrap_or_else(|| right(&question));
                socket
                    .send(Message::Text(
                        json!({"type": "SUBMIT_ANSWER", "assessment_id": assessment,
                               "question_id": question, "answer": answer})
                        .to_string()
                        .into(),
                    ))
                    .await
                    .unwrap();
            }
            Some("ASSESSMENT_COMPLETED") => break,
            Some("ERROR") => panic!("{message}"),
            _ => {}
        }
    }
    let _ = socket.close(None).await;
}

/// An auditor reads an attempt's timeline: the question as shown, the answer as given, the
/// feedback; the chain verifies; and the state can be seen as it was after an early event.
#[tokio::test]
async fn the_auditor_reads_the_timeline() {
    let Some(mut stage) = Stage::new("audit").await else {
        return;
    };
    // erin: q1 wrong ("a", which is "let"), q2 right, then stops at q3.
    take_demo(&stage.server, "erin", &[Some(json!("a")), None]).await;

    let page = stage.browser("/audit").await;
    page.wait_visible("#mode").await;
    page.type_into("#name", "ann").await;
    page.click("#sign-in-button").await;
    page.wait_text("#who", "ann (auditor)").await;
    page.type_into("#user-id", "erin").await;
    page.click("#lookup-button").await;
    page.wait_text("#result-title", "erin: 8 events").await;
    page.wait_text("#verify", "Hash chain verified: all 8 events")
        .await;
    let timeline = page.text("#timeline").await;
    for shown in [
        "AssessmentStarted",
        "Rust basics (demo)",
        "Which keyword declares a constant?",
        // The answer as given, with the text of the choice it names.
        "Answer to q1: a (let)",
        "Not correct",
        "const declares a compile-time constant.",
        "Answer to q2: a (u8), c (i64)",
        "Question 3 (q3, single_choice)",
    ] {
        assert!(timeline.contains(shown), "{shown:?} is not in {timeline}");
    }
    page.wait_text("#state-title", "State now (after event 8)")
        .await;
    assert!(page.text("#state-table").await.contains("2 of 4"));
    page.screenshot("1-timeline").await;

    // Time travel: the state after event 2 (started, first question shown).
    page.click("button[data-sequence=\"2\"]").await;
    page.wait_text("#state-title", "State after event 2").await;
    let state = page.text("#state-table").await;
    assert!(state.contains("0 of 4") && state.contains("q1"), "{state}");
    assert!(page.visible("#event-2.selected").await);
    page.screenshot("2-time-travel").await;

    // An unknown user is said so.
    page.js(
        "document.getElementById('user-id').value = '';",
        Value::Null,
    )
    .await;
    page.type_into("#user-id", "nobody").await;
    page.click("#lookup-button").await;
    page.wait_text("#lookup-status", "No events recorded for nobody")
        .await;
    stage.finish(vec![page]).await;
}

/// An admin sees the read models, rebuilds one and watches it finish, and sees the
/// connections and the item statistics.
#[tokio::test]
async fn the_admin_rebuilds_a_read_model() {
    let Some(mut stage) = Stage::new("admin").await else {
        return;
    };
    // A history long enough that the rebuild is seen running: written straight into the
    // server's database (recording them through the API would take minutes), then read by
    // the live read models when the attempts below wake them.
    bulk_chats(&stage.server, BULK_CHATS).await;
    for (user, answers) in [
        ("s1", vec![None, None, None, None]),
        ("s2", vec![Some(json!("a")), None, None, None]),
        ("s3", vec![Some(json!("a")), Some(json!(["b"])), None, None]),
    ] {
        take_demo(&stage.server, user, &answers).await;
    }
    let admin = stage.server.token("probe", "admin").await;
    let events: u64 = until("the read models to catch up", || async {
        let (_, body) = stage.server.get("/api/admin/projections", &admin).await;
        let items = body["items"].as_array()?.clone();
        let caught_up = items
            .iter()
            .all(|p| p["lag"] == 0 && p["events_applied"] != 0);
        caught_up.then(|| items[0]["events_applied"].as_u64().unwrap_or(0))
    })
    .await;

    let page = stage.browser("/admin").await;
    page.wait_visible("#mode").await;
    page.type_into("#name", "root").await;
    page.click("#sign-in-button").await;
    page.wait_text("#who", "root (admin)").await;
    page.wait_text("tr[data-name=\"assessments\"] .status", "live")
        .await;
    page.wait_text("#connections-total", "live connection")
        .await;
    page.wait_visible("table[data-test-id=\"demo\"]").await;
    let statistics = page.text("table[data-test-id=\"demo\"]").await;
    assert!(
        statistics.contains("q1: Which keyword declares a constant?"),
        "{statistics}"
    );
    page.screenshot("1-console").await;

    page.click("button[data-rebuild=\"assessments\"]").await;
    page.wait_visible("#rebuild").await;
    page.wait_text("#rebuild-status", "Running: ").await;
    // The job counts the history first; the picture is taken once it reports progress
    // against that count, unless the rebuild ends before a poll sees it.
    let seen = until("the rebuild to report progress or end", || async {
        let status = page.text("#rebuild-status").await;
        let done = page.attr("#rebuild", "data-status").await.as_deref() == Some("done");
        (status.ends_with(&format!(" of {events} events")) || done).then_some(status)
    })
    .await;
    page.screenshot("2-running").await;
    println!("admin: the page showed {seen:?} during the rebuild");
    until("the rebuild to finish", || async {
        (page.attr("#rebuild", "data-status").await.as_deref() == Some("done")).then_some(())
    })
    .await;
    let status = page.text("#rebuild-status").await;
    assert!(
        status.starts_with(&format!("Done: {events} events")),
        "{status}"
    );
    let bar = page
        .js(
            "const b = document.getElementById('rebuild-progress'); return [b.value, b.max];",
            Value::Null,
        )
        .await;
    assert_eq!(bar[0], bar[1], "the progress bar is full: {bar}");
    assert_eq!(bar[1], events, "{bar}");
    page.wait_text("tr[data-name=\"assessments\"] td:nth-child(5)", ":")
        .await;
    page.screenshot("3-rebuilt").await;
    stage.finish(vec![page]).await;
}
