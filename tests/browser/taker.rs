//! The test-taker's page: the whole demo test, a reload mid-test, the server killed and
//! restarted mid-test, a second browser of the same user, and an admin's extra time and
//! regrade reaching the open page.

use std::time::Duration;

use assessd::auth::{JwtKeys, Role, Secret};
use fantoccini::key::Key;
use serde_json::{json, Value};

use crate::harness::{answers_recorded, until, Stage};

/// Sign in, see the tests, take the demo test to the end with a question to the tutor on
/// the way, and see the result in the list.
#[tokio::test]
async fn the_whole_demo_test() {
    let Some(mut stage) = Stage::new("demo").await else {
        return;
    };
    let page = stage.browser("/").await;
    page.wait_visible("#name").await;
    page.screenshot("1-sign-in").await;
    page.sign_in("alice").await;
    page.wait_connected().await;
    page.wait_text("#tests tbody", "Rust basics (demo)").await;
    assert_eq!(
        page.text("tr[data-test-id=\"demo\"] .attempts").await,
        "0 of 3"
    );
    page.screenshot("2-tests").await;

    page.start_demo().await;
    assert_eq!(page.text("#q-heading").await, "Question 1 of 4");
    assert!(page.text("#timer").await.starts_with("Time left 1"));
    assert_eq!(page.text("#progress-text").await, "0 of 4 answered");
    // Focus moves to each new question.
    assert_eq!(page.focused().await, "q-heading");
    page.type_into("#chat-input", "Any hint?").await;
    page.click("#chat-send").await;
    page.wait_text("#chat-log", "Tutor:").await;
    page.fill_right_answer().await;
    page.screenshot("3-question").await;
    page.click("#submit").await;
    page.wait_visible("#feedback").await;
    page.wait_text("#fb-verdict", "Correct").await;
    assert!(page
        .text("#fb-text")
        .await
        .contains("const declares a compile-time constant"));
    page.screenshot("4-feedback").await;
    page.next().await;

    for position in 2..=4 {
        page.wait_text("#q-heading", &format!("Question {position} of 4"))
            .await;
        assert_eq!(page.focused().await, "q-heading");
        if position == 3 {
            // By keyboard alone: Tab to the first choice (the right one), Space to choose
            // it, Tab to the button, Enter to send; the feedback takes the focus.
            for key in [Key::Tab, Key::Space, Key::Tab, Key::Enter] {
                page.press(key).await;
            }
            page.wait_visible("#feedback").await;
            page.wait_text("#fb-verdict", "Correct").await;
            assert_eq!(page.focused().await, "feedback");
        } else {
            page.answer_rightly().await;
        }
        page.wait_text("#progress-text", &format!("{position} of 4 answered"))
            .await;
        let label = if position == 4 {
            "See your result"
        } else {
            "Next question"
        };
        page.wait_text("#next", label).await;
        page.next().await;
    }
    page.wait_visible("#done").await;
    assert_eq!(page.text("#done-score").await, "Score: 6 of 6");
    assert_eq!(page.text("#done-verdict").await, "Passed");
    page.screenshot("5-complete").await;

    page.click("#back").await;
    page.wait_text("#results tbody", "passed").await;
    assert_eq!(
        page.text("tr[data-test-id=\"demo\"] .attempts").await,
        "1 of 3"
    );
    page.screenshot("6-results").await;

    // Phone width: still readable, the question still answerable.
    page.client.set_window_size(390, 844).await.expect("resize");
    page.start_demo().await;
    page.screenshot("7-phone").await;
    stage.finish(vec![page]).await;
}

/// A reload in the middle of the test comes back to the same question, with the progress
/// as it was.
#[tokio::test]
async fn a_reload_mid_test_resumes() {
    let Some(mut stage) = Stage::new("reload").await else {
        return;
    };
    let page = stage.browser("/").await;
    page.sign_in("bob").await;
    page.wait_connected().await;
    page.start_demo().await;
    page.answer_rightly().await;
    page.next().await;
    page.wait_text("#q-heading", "Question 2 of 4").await;
    page.screenshot("1-before").await;

    page.reload().await;
    page.wait_text("#who", "bob").await;
    page.wait_text("#q-heading", "Question 2 of 4").await;
    assert_eq!(page.question_id().await, "q2");
    assert_eq!(page.text("#progress-text").await, "1 of 4 answered");
    page.screenshot("2-after-reload").await;
    page.answer_rightly().await;
    assert_eq!(answers_recorded(&stage.server, "bob", "q1").await, 1);
    stage.finish(vec![page]).await;
}

/// The server is killed (SIGKILL) mid-test: the page says it is reconnecting, keeps the
/// answer given meanwhile (across a reload too), reconnects by itself once the server is
/// back, and the answer is recorded exactly once.
#[tokio::test]
async fn the_page_survives_a_server_restart() {
    let Some(mut stage) = Stage::new("restart").await else {
        return;
    };
    let page = stage.browser("/").await;
    page.sign_in("carol").await;
    page.wait_connected().await;
    page.start_demo().await;
    page.answer_rightly().await;
    page.next().await;
    page.wait_text("#q-heading", "Question 2 of 4").await;

    stage.server.kill().await;
    until("the page to notice the server is gone", || async {
        (page.socket_state().await == "closed").then_some(())
    })
    .await;
    page.wait_text("#conn", "Reconnecting").await;
    page.screenshot("1-reconnecting").await;

    // Answer while the server is down: kept, and said so.
    page.fill_right_answer().await;
    page.click("#submit").await;
    page.wait_text("#answer-status", "offline").await;
    let kept = page
        .js(
            "return JSON.parse(sessionStorage.getItem('assessd.pending'));",
            Value::Null,
        )
        .await;
    assert_eq!(kept["question_id"], "q2", "{kept}");
    assert_eq!(kept["answer"], json!(["a", "c"]), "{kept}");
    page.screenshot("2-answer-kept-offline").await;

    stage.server.restart().await;
    // Nothing to click: the page reconnects, resumes and sends the kept answer.
    page.wait_visible("#feedback").await;
    page.wait_text("#fb-verdict", "Correct").await;
    page.wait_connected().await;
    page.wait_text("#progress-text", "2 of 4 answered").await;
    let kept = page
        .js(
            "return sessionStorage.getItem('assessd.pending');",
            Value::Null,
        )
        .await;
    assert_eq!(kept, Value::Null, "the answer is no longer pending");
    page.screenshot("3-recovered").await;
    assert_eq!(answers_recorded(&stage.server, "carol", "q2").await, 1);

    // Once more, with reloads while the answer is pending: kill, answer, reload (the
    // browser shows its own error page while the server is down), restart, reload.
    page.next().await;
    page.wait_text("#q-heading", "Question 3 of 4").await;
    stage.server.kill().await;
    page.wait_text("#conn", "Reconnecting").await;
    page.fill_right_answer().await;
    page.click("#submit").await;
    page.wait_text("#answer-status", "offline").await;
    let _ = page.client.refresh().await;
    stage.server.restart().await;
    page.goto("/").await;
    page.wait_text("#fb-verdict", "Correct").await;
    page.screenshot("4-recovered-after-reload").await;
    assert_eq!(answers_recorded(&stage.server, "carol", "q3").await, 1);
    assert_eq!(answers_recorded(&stage.server, "carol", "q2").await, 1);
    stage.finish(vec![page]).await;
}

/// A second browser of the same user takes over: the first says the test is open in
/// another window and stays quiet; "Continue here" takes it back.
#[tokio::test]
async fn a_second_browser_takes_over_and_the_first_stays_quiet() {
    let Some(mut stage) = Stage::new("second-window").await else {
        return;
    };
    let first = stage.browser("/").await;
    first.sign_in("dave").await;
    first.wait_connected().await;
    first.start_demo().await;

    let second = stage.browser("/").await;
    second.sign_in("dave").await;
    second.wait_connected().await;
    // The attempt in progress resumes in the new window.
    second.wait_text("#q-heading", "Question 1 of 4").await;
    first.wait_visible("#replaced").await;
    assert_eq!(first.socket_state().await, "replaced");
    assert!(first.text("#conn").await.contains("open in another window"));
    assert_eq!(
        first
            .js(
                "return document.getElementById('submit').disabled;",
                Value::Null
            )
            .await,
        true,
        "nothing can be sent from the replaced window"
    );
    first.screenshot("1-first-replaced").await;

    // The second keeps working...
    second.answer_rightly().await;
    second.screenshot("2-second-answers").await;
    // ...while the first has not come back (it would have evicted the second).
    assert_eq!(first.socket_state().await, "replaced");
    assert!(first.visible("#replaced").await);
    assert_eq!(second.socket_state().await, "connected");
    let admin = stage.server.token("root", "admin").await;
    let (_, connections) = stage.server.get("/api/admin/connections", &admin).await;
    assert_eq!(connections["total"], 1, "{connections}");

    // "Continue here" takes the test back, and the other window gives way in turn.
    first.click("#continue-here").await;
    first.wait_connected().await;
    second.wait_visible("#replaced").await;
    first.wait_text("#q-heading", "Question 2 of 4").await;
    first.screenshot("3-continued-here").await;
    second.screenshot("4-second-replaced").await;
    stage.finish(vec![first, second]).await;
}

/// With a configured signing key the server mints no tokens: the page says to sign in
/// through the organisation, and takes the token the host application puts in the URL
/// fragment (and takes it out of the address bar).
#[tokio::test]
async fn a_host_application_hands_over_the_token() {
    const SECRET: &str = "browser-test-secret-0123456789";
    let Some(mut stage) = Stage::with_secret("handover", Some(SECRET)).await else {
        return;
    };
    let token = JwtKeys::hs256(&Secret::new(SECRET), None, None)
        .mint("frank", &[Role::Taker], Duration::from_secs(600))
        .expect("a token");
    let page = stage.browser(&format!("/#token={token}")).await;
    page.wait_text("#who", "frank (taker)").await;
    let address = page.client.current_url().await.expect("the address");
    assert!(
        !address.as_str().contains("token"),
        "the token is left in the address bar: {address}"
    );
    page.wait_connected().await;
    page.start_demo().await;
    page.answer_rightly().await;
    page.screenshot("1-signed-in-from-fragment").await;

    // Signed out, the page has no name field to offer: only a token.
    page.click("#sign-out").await;
    page.wait_text("#mode", "Sign in through your organisation")
        .await;
    assert!(!page.visible("#name").await);
    page.type_into("#token-input", "not-a-token").await;
    page.click("#sign-in-button").await;
    page.wait_text("#sign-in-error", "not a token").await;
    page.screenshot("2-organisation-sign-in").await;
    let (status, _) = stage.server.get("/api/dev/config", "").await;
    assert_eq!(status, 200);
    stage.finish(vec![page]).await;
}

/// An admin gives extra time while the page counts down, then regrades a wrong key after
/// the test: the countdown and the result on screen change without a reload.
#[tokio::test]
async fn extra_time_and_a_regrade_reach_the_open_page() {
    let Some(mut stage) = Stage::new("accommodations").await else {
        return;
    };
    let page = stage.browser("/").await;
    page.sign_in("gina").await;
    page.wait_connected().await;
    page.start_demo().await;
    assert!(page.text("#timer").await.starts_with("Time left 1"));
    let server = &stage.server;
    let admin = server.token("dean", "admin").await;
    let (_, attempts) = server.get("/api/audit/users/gina/events", &admin).await;
    let assessment = attempts["items"][0]["payload"]["assessment_id"]
        .as_str()
        .expect("the attempt")
        .to_string();
    let (status, reply) = server
        .post(
            &format!("/api/admin/users/gina/assessments/{assessment}/extend"),
            &admin,
            &json!({"extra_secs": 3600, "reason": "extra time accommodation"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    // 15 minutes and an hour more: 74 and some minutes left.
    page.wait_text("#timer", "Time left 7").await;
    page.screenshot("1-extended").await;

    // q1 answered with `let` (wrong by the key), the rest rightly: 5 of 6.
    page.click("#q-choices input[value=\"a\"]").await;
    page.click("#submit").await;
    page.wait_text("#fb-verdict", "Not").await;
    page.next().await;
    for _ in 2..=4 {
        page.wait_visible("#question-form").await;
        page.answer_rightly().await;
        page.next().await;
    }
    page.wait_visible("#done").await;
    assert_eq!(page.text("#done-score").await, "Score: 5 of 6");

    // The key said `let` should have counted: corrected, the score on screen follows.
    let (status, reply) = server
        .post(
            "/api/admin/tests/demo/regrade",
            &admin,
            &json!({"question_id": "q1", "answer": "a", "reason": "wrong key", "dry_run": false}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    page.wait_text("#done-score", "Score: 6 of 6").await;
    assert!(page.text("#done-reason").await.contains("regraded"));
    page.screenshot("2-regraded").await;
    stage.finish(vec![page]).await;
}
