//! The load test: a definition with enough single-choice questions and attempts that no
//! user runs out during a run, put through the admin API (`PUT /api/admin/tests/{id}`).
//! The same body every time for a given question count, so a second run reuses the
//! stored version (the server answers 200, `created: false`).

use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::token::Signer;

/// More attempts than any run can use: a user restarts the test each time it completes.
const MAX_ATTEMPTS: u32 = 1_000_000;

/// The id of the load test with `questions` questions.
pub fn test_id(questions: usize) -> String {
    format!("assessd-load-q{questions}")
}

pub fn definition(questions: usize) -> Value {
    let questions: Vec<Value> = (1..=questions)
        .map(|i| {
            let answer = ["a", "b", "c", "d"][i % 4];
            json!({
                "id": format!("q{i}"),
                "kind": "single_choice",
                "prompt": format!("Load question {i}: which choice is right?"),
                "choices": [
                    {"id": "a", "text": "the first"},
                    {"id": "b", "text": "the second"},
                    {"id": "c", "text": "the third"},
                    {"id": "d", "text": "the fourth"}
                ],
                "answer": answer,
                "points": 1,
                "explanation": "Written by assessd-load."
            })
        })
        .collect();
    json!({
        "title": "assessd-load",
        "max_attempts": MAX_ATTEMPTS,
        "time_limit_secs": null,
        "pass_ratio": 0.5,
        "shuffle": false,
        "questions": questions
    })
}

/// Puts the load test on the server as an admin; returns its id.
pub async fn ensure_test(
    server: &str,
    signer: &Signer,
    questions: usize,
) -> anyhow::Result<String> {
    let id = test_id(questions.max(1));
    let token = signer.sign("assessd-load-admin", "admin", Duration::from_secs(600))?;
    let url = format!("{}/api/admin/tests/{id}", server.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .put(&url)
        .bearer_auth(token)
        .json(&definition(questions.max(1)))
        .send()
        .await
        .with_context(|| format!("Failed to PUT {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("PUT {url} answered {status}: {body}");
    }
    Ok(id)
}
