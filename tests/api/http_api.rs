//! The HTTP API: health, roles, test definitions (validated, versioned), audit queries with
//! filters and cursor paging, and the command-line tools.

use assessd::auth::Role;
use serde_json::{json, Value};

use crate::helpers::{small_test, spawn_app, Backend};

async fn health_and_readiness(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for path in ["/healthz", "/readyz"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let (status, body) = app.get("/nowhere", "x").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // The address the README's first command serves is the test-taker's page.
    let home = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    assert!(home.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = home.text().await.unwrap();
    assert!(
        page.contains("assessd") && page.contains("/assets/take.js"),
        "{page}"
    );
    app.stop().await;
}

async fn roles_are_enforced(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let taker = app.token("t", Role::Taker);
    let auditor = app.token("a", Role::Auditor);
    for (path, token, status) in [
        ("/api/audit/events", &taker, 403),
        // The role is checked before the parameters: a taker learns nothing more.
        ("/api/audit/events?limit=zero&colour=red", &taker, 403),
        ("/api/audit/users/t/events", &taker, 403),
        ("/api/audit/users/t/verify", &taker, 403),
        ("/api/audit/users/t/state", &taker, 403),
        ("/api/admin/audit-reads", &taker, 403),
        ("/api/admin/audit-reads", &auditor, 403),
        ("/api/admin/connections", &taker, 403),
        ("/api/admin/connections", &auditor, 403),
        ("/api/admin/tests", &taker, 403),
        ("/api/admin/tests", &auditor, 403),
        ("/api/tests", &auditor, 403),
        ("/api/audit/events", &auditor, 200),
        ("/api/tests", &taker, 200),
    ] {
        let (got, body) = app.get(path, token).await;
        assert_eq!(got, status, "{path}: {body}");
        if status == 403 {
            assert_eq!(body["error"]["code"], "forbidden");
        }
    }
    let (status, body) = app.get("/api/tests", "garbage").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    app.stop().await;
}

async fn test_definitions_are_validated_and_versioned(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.token("root", Role::Admin);

    let mut bad = small_test(1, None);
    bad["questions"][0]["answer"] = json!("z");
    let (status, body) = app.put_json("/api/admin/tests/t1", &admin, &bad).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "questions[0].answer", "{body}");
    let (status, body) = app
        .put_json(
            "/api/admin/tests/t1",
            &admin,
            &json!({"title": "x", "questions": "no"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("questions"))
    );

    let (status, body) = app
        .put_json("/api/admin/tests/t1", &admin, &small_test(2, None))
        .await;
    assert_eq!((status, body["version"].as_u64()), (201, Some(1)));
    let (status, body) = app
        .put_json("/api/admin/tests/t1", &admin, &small_test(2, None))
        .await;
    assert_eq!(
        (status, body["version"].as_u64(), body["created"].as_bool()),
        (200, Some(1), Some(false))
    );

    // An attempt started on version 1 keeps it after version 2 changes the questions.
    let mut taker = app.connect("versioned").await;
    let (started, q) = taker.start("t1").await;
    let id = started["assessment_id"].as_str().unwrap().to_string();
    assert_eq!(q["prompt"], "2 + 2?");
    let mut v2 = small_test(2, None);
    v2["questions"][1]["prompt"] = json!("Name a secondary colour.");
    v2["questions"][1]["keywords"] = json!(["green"]);
    let (status, body) = app.put_json("/api/admin/tests/t1", &admin, &v2).await;
    assert_eq!((status, body["version"].as_u64()), (201, Some(2)));
    let (_, _, next) = taker.answer(&id, "s1", json!("a")).await;
    assert_eq!(
        next["prompt"], "Name a primary colour.",
        "the attempt keeps version 1"
    );
    let (feedback, _, _) = taker.answer(&id, "s2", json!("red")).await;
    assert_eq!(
        feedback["correct"], true,
        "graded against version 1's keywords"
    );

    let (status, list) = app.get("/api/admin/tests", &admin).await;
    assert_eq!(status, 200);
    let t1 = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "t1")
        .unwrap()
        .clone();
    assert_eq!(t1["version"], 2);
    assert!(list["next_cursor"].is_null());
    let stream = app.stream_of("versioned").await;
    assert_eq!(stream[0]["payload"]["test_version"], 1);
    app.stop().await;
}

async fn audit_filters_and_pages(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut ann = app.connect("ann").await;
    let (started, _) = ann.start("demo").await;
    let ann_id = started["assessment_id"].as_str().unwrap().to_string();
    ann.answer(&ann_id, "q1", json!("b")).await;
    let mut ben = app.connect("ben").await;
    ben.start("demo").await;
    let auditor = app.token("aud", Role::Auditor);

    let get = |query: String| {
        let app = &app;
        let auditor = auditor.clone();
        async move {
            app.get(&format!("/api/audit/events?{query}"), &auditor)
                .await
        }
    };
    // On PostgreSQL the listing holds back what committed after any transaction still
    // running in the cluster (another test's, say) until that one ends: wait for it.
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    let all = loop {
        let (_, all) = get(String::new()).await;
        let all = all["items"].as_array().unwrap().clone();
        if all.len() >= 5 + 2 || std::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(all.len(), 5 + 2);
    let (_, by_user) = get("user_id=ben".into()).await;
    assert!(by_user["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["user_id"] == "ben"));
    let (_, by_type) = get("event_type=AnswerSubmitted".into()).await;
    assert_eq!(by_type["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_type["items"][0]["payload"]["answer"], "b");
    let (_, by_attempt) = get(format!("assessment_id={ann_id}")).await;
    assert_eq!(by_attempt["items"].as_array().unwrap().len(), 5);
    let (_, by_test) = get("test_id=demo".into()).await;
    assert_eq!(by_test["items"].as_array().unwrap().len(), 7);
    let (_, future) = get("from=2999-01-01T00:00:00Z".into()).await;
    assert!(future["items"].as_array().unwrap().is_empty());
    let (_, past) = get("to=2999-01-01T00:00:00Z&from=2000-01-01T00:00:00Z".into()).await;
    assert_eq!(past["items"].as_array().unwrap().len(), 7);

    // Paging with the cursor returns everything once, in order.
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=3&cursor={c}"),
            None => "limit=3".into(),
        };
        let (status, page) = get(query).await;
        assert_eq!(status, 200);
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, all);

    for bad in [
        "limit=0",
        "limit=5000",
        "cursor=zzz",
        // A cursor is taken only by the kind of listing that gave it out.
        "cursor=s1",
        "user_id=ann&cursor=g1",
        "user_id=ann&cursor=p1.1",
        "from=yesterday",
        "bogus=1",
    ] {
        let (status, body) = get(bad.into()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, stream) = app
        .get(
            "/api/audit/users/ann/events",
            &app.token("boss", Role::Admin),
        )
        .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = stream["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    app.stop().await;
}

crate::on_both_backends!(
    health_and_readiness,
    roles_are_enforced,
    test_definitions_are_validated_and_versioned,
    audit_filters_and_pages,
);

/// `assessd migrate`, `assessd tests import` and `assessd token`, as a user runs them.
#[test]
fn the_command_line_tools_work() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_assessd"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("ASSESSD_DATA_DIR", dir.path())
            .env_remove("ASSESSD_JWT_SECRET")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["migrate"]);
    assert!(ok, "{out}{err}");

    let file = dir.path().join("colours.json");
    std::fs::write(&file, small_test(1, None).to_string()).unwrap();
    let (ok, out, err) = run(&["tests", "import", file.to_str().unwrap()]);
    assert!(ok && out.contains("\"colours\" as version 1"), "{out}{err}");
    let (ok, out, _) = run(&["tests", "import", file.to_str().unwrap()]);
    assert!(ok && out.contains("unchanged"), "{out}");

    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"title":"t","questions":[{"id":"q","kind":"free_text","prompt":"p","points":1}]}"#,
    )
    .unwrap();
    let (ok, _, err) = run(&["tests", "import", broken.to_str().unwrap()]);
    assert!(!ok && err.contains("questions[0].keywords"), "{err}");

    // Tokens are signed with the development secret the server would use.
    let (ok, token, err) = run(&["token", "--sub", "zoe", "--role", "auditor", "--ttl", "5m"]);
    assert!(ok, "{err}");
    let secret = std::fs::read_to_string(dir.path().join(".assessd-dev-secret")).unwrap();
    let keys =
        assessd::auth::JwtKeys::hs256(&assessd::auth::Secret::new(secret.trim()), None, None);
    let identity = keys.verify(token.trim()).unwrap();
    assert_eq!(
        (identity.user_id.as_str(), identity.roles.as_slice()),
        ("zoe", &[Role::Auditor][..])
    );
    let (ok, token2, _) = run(&["token", "--sub", "zoe"]);
    assert!(
        ok && keys.verify(token2.trim()).is_ok(),
        "the secret is kept between runs"
    );
}

/// Behind an identity provider: EdDSA tokens verified with its public key, and the
/// server's own HS256 tokens no longer accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_an_identity_provider_are_verified_with_its_public_key() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let public = include_bytes!("../fixtures/ed25519-public.pem").to_vec();
    let Some(app) =
        crate::helpers::spawn_app_with(Backend::Sqlite, |s| s.jwt_public_key = Some(public)).await
    else {
        return;
    };
    let private =
        EncodingKey::from_ed_pem(include_bytes!("../fixtures/ed25519-private.pem")).unwrap();
    let claims = json!({"sub": "idp-user", "role": ["taker"], "exp": jsonwebtoken::get_current_timestamp() + 60});
    let token = encode(&Header::new(Algorithm::EdDSA), &claims, &private).unwrap();
    let mut client = app
        .connect_with_token(&token)
        .await
        .expect("EdDSA token accepted");
    assert_eq!(client.recv_type("CONNECTED").await["user_id"], "idp-user");
    let (status, _) = app.get("/api/tests", &token).await;
    assert_eq!(status, 200);
    // The HS256 token the test harness mints with the shared secret is refused.
    let (status, _) = app
        .get("/api/tests", &app.token("idp-user", Role::Taker))
        .await;
    assert_eq!(status, 401);
    app.stop().await;
}
