//! The browser pages as HTTP sees them (served from the binary, with a strict policy) and
//! the development sign-in behind them: tokens are minted only when the server runs with
//! its generated development secret. (The pages themselves are driven in Chromium by the
//! `browser` test binary.)

use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{spawn_app, spawn_app_with, ws_connect, Backend, TestApp, WAIT};

async fn post_json(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_assets_are_served_with_a_strict_policy() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    for (path, content_type, contains) in [
        ("/", "text/html", "/assets/take.js"),
        ("/audit", "text/html", "/assets/audit.js"),
        ("/admin", "text/html", "/assets/admin.js"),
        ("/assets/app.css", "text/css", "font-family"),
        ("/assets/common.js", "text/javascript", "sessionStorage"),
        ("/assets/take.js", "text/javascript", "SUBMIT_ANSWER"),
        ("/assets/audit.js", "text/javascript", "at_sequence"),
        ("/assets/admin.js", "text/javascript", "/rebuild"),
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            header(&response, "content-type").starts_with(content_type),
            "{path}"
        );
        assert_eq!(header(&response, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        let policy = header(&response, "content-security-policy");
        assert!(
            policy.contains("default-src 'self'") && policy.contains("script-src 'self'"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        let body = response.text().await.unwrap();
        assert!(body.contains(contains), "{path} lacks {contains}");
    }
    for path in [
        "/assets/nope.js",
        "/assets/..%2FCargo.toml",
        "/assets/index.html",
    ] {
        let (status, body) = app.get(path, "").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_sign_in_mints_tokens_that_work() {
    let Some(app) = spawn_app_with(Backend::Sqlite, |s| s.dev_sign_in = true).await else {
        return;
    };
    let (status, config) = app.get("/api/dev/config", "").await;
    assert_eq!(status, 200);
    assert_eq!(config["dev_sign_in"], true);
    assert_eq!(config["database"], "sqlite");
    assert_eq!(config["version"], env!("CARGO_PKG_VERSION"));

    // A taker by default: the token opens the socket and the taker's endpoints.
    let (status, minted) = post_json(&app, "/api/dev/token", r#"{"name": "Ann Lee"}"#).await;
    assert_eq!(status, 200, "{minted}");
    assert_eq!(minted["user_id"], "Ann Lee");
    assert_eq!(minted["role"], "taker");
    assert!(minted["expires_at"].is_string());
    let token = minted["token"].as_str().unwrap();
    let (status, tests) = app.get("/api/tests", token).await;
    assert_eq!(status, 200, "{tests}");
    let mut socket = ws_connect(app.addr, token).await.expect("upgrade");
    let connected = socket.recv_type("CONNECTED").await;
    assert_eq!(connected["user_id"], "Ann Lee");

    // The role asked for, and only that one.
    let (status, minted) = post_json(
        &app,
        "/api/dev/token",
        r#"{"name": "ann", "role": "auditor"}"#,
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    let auditor = minted["token"].as_str().unwrap();
    assert_eq!(
        app.get("/api/audit/events?user_id=ann", auditor).await.0,
        200
    );
    assert_eq!(app.get("/api/tests", auditor).await.0, 403);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_secret_turns_development_sign_in_off() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let (status, config) = app.get("/api/dev/config", "").await;
    assert_eq!((status, &config["dev_sign_in"]), (200, &json!(false)));
    for body in [
        r#"{"name": "alice"}"#,
        r#"{"name": "alice", "role": "admin"}"#,
        "junk",
    ] {
        let (status, reply) = post_json(&app, "/api/dev/token", body).await;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{body}: {reply}"
        );
        assert!(reply.get("token").is_none());
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("development sign-in is off"),
            "{reply}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sign_in_requests_get_clear_errors() {
    let Some(app) = spawn_app_with(Backend::Sqlite, |s| s.dev_sign_in = true).await else {
        return;
    };
    let long = format!(r#"{{"name": "{}"}}"#, "a".repeat(65));
    for (body, status, field) in [
        (r#"{"name": ""}"#, 422, Some("name")),
        (r#"{"name": "   "}"#, 422, Some("name")),
        (r#"{"name": " alice"}"#, 422, Some("name")),
        (r#"{"name": "a/b"}"#, 422, Some("name")),
        (r#"{"name": "<script>"}"#, 422, Some("name")),
        (r#"{"name": "tab\there"}"#, 422, Some("name")),
        (long.as_str(), 422, Some("name")),
        (r#"{"name": "alice", "role": "root"}"#, 422, Some("role")),
        (r#"{"name": 7}"#, 400, None),
        (r#"{"role": "taker"}"#, 400, None),
        (r#"{"name": "alice", "sub": "bob"}"#, 400, None),
        ("not json", 400, None),
        ("", 400, None),
        ("[]", 400, None),
    ] {
        let (got, reply) = post_json(&app, "/api/dev/token", body).await;
        assert_eq!(got, status, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{body}: {reply}");
        assert_eq!(reply["error"]["field"].as_str(), field, "{body}: {reply}");
        assert!(
            !reply["error"]["message"].as_str().unwrap().is_empty(),
            "{body}"
        );
    }
    app.stop().await;
}

/// The replies of the sign-in endpoints, successes and errors, have the documented shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_replies_have_the_documented_shapes() {
    let Some(dev) = spawn_app_with(Backend::Sqlite, |s| s.dev_sign_in = true).await else {
        return;
    };
    let Some(configured) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let document = crate::openapi::document(&dev).await;
    let mut replies = vec![(
        "GET",
        "/api/dev/config",
        dev.get("/api/dev/config", "").await,
    )];
    for (app, body) in [
        (&dev, r#"{"name": "shape", "role": "admin"}"#),
        (&dev, r#"{"name": "a/b"}"#),
        (&dev, "junk"),
        (&configured, r#"{"name": "shape"}"#),
    ] {
        replies.push((
            "POST",
            "/api/dev/token",
            post_json(app, "/api/dev/token", body).await,
        ));
    }
    let statuses: Vec<u16> = replies.iter().map(|r| r.2 .0).collect();
    assert_eq!(statuses, [200, 200, 422, 400, 404]);
    for (method, path, (status, body)) in &replies {
        let schema = crate::openapi::response_schema(&document, method, path, *status);
        let mut errors = Vec::new();
        crate::openapi::check(&document, schema, body, "body", &mut errors);
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:#?}\n{body}"
        );
    }
    dev.stop().await;
    configured.stop().await;
}

/// The real binary: without `ASSESSD_JWT_SECRET` it turns development sign-in on; with it,
/// off; and off on an address that is not loopback, where anyone could mint a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_turns_development_sign_in_on_only_with_the_generated_secret() {
    for (bind, secret, expected) in [
        ("127.0.0.1:0", None, true),
        ("127.0.0.1:0", Some("a-configured-secret-0123"), false),
        ("0.0.0.0:0", None, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_assessd"));
        command
            .arg("serve")
            .env("ASSESSD_BIND", bind)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.path().join("a.db").display()),
            )
            .env("ASSESSD_DATA_DIR", dir.path())
            .env_remove("ASSESSD_JWT_SECRET")
            .env_remove("ASSESSD_JWT_PUBLIC_KEY")
            .env_remove("ASSESSD_NODE_ID")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(secret) = secret {
            command.env("ASSESSD_JWT_SECRET", secret);
        }
        let mut child = command.spawn().expect("assessd starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = line.strip_prefix("assessd listening on http://") {
                    return addr.replace("0.0.0.0", "127.0.0.1");
                }
            }
            panic!("assessd exited before listening");
        })
        .await
        .expect("assessd listens in time");
        let http = reqwest::Client::new();
        let config: Value = http
            .get(format!("http://{addr}/api/dev/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(config["dev_sign_in"], expected, "{bind}, secret {secret:?}");
        // Without ASSESSD_NODE_ID: the host name and this process's id.
        let pid = child.id().expect("the server runs");
        let node = config["node_id"].as_str().unwrap_or_default();
        assert!(
            node.ends_with(&format!("-{pid}")) && node.len() > format!("-{pid}").len(),
            "{node}"
        );
        let minted = http
            .post(format!("http://{addr}/api/dev/token"))
            .json(&json!({"name": "alice"}))
            .send()
            .await
            .unwrap();
        assert_eq!(minted.status().as_u16(), if expected { 200 } else { 404 });
        child.kill().await.unwrap();
    }
}
