//! The OpenAPI description at `GET /api/openapi.json`: served without a token, OpenAPI 3,
//! and true to the server. Every route is documented and every documented operation is
//! routed, checked three ways: against [`ROUTES`], against the `.route(...)` calls in
//! `src/http/*.rs`, and against the running router. The documented roles are the ones the
//! handlers enforce, and real replies have the documented shapes.

use std::collections::BTreeSet;

use assessd::auth::Role;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{small_test, spawn_app, Backend, TestApp};

/// Every route the router serves, by method and path (in OpenAPI's `{param}` form, which
/// is axum's too), with the roles it lets in (none: public, no token needed).
const ROUTES: &[(&str, &str, &[&str])] = &[
    ("GET", "/", &[]),
    ("GET", "/audit", &[]),
    ("GET", "/admin", &[]),
    ("GET", "/assets/{file}", &[]),
    ("GET", "/api/dev/config", &[]),
    ("POST", "/api/dev/token", &[]),
    ("GET", "/healthz", &[]),
    ("GET", "/readyz", &[]),
    ("GET", "/metrics", &[]),
    ("GET", "/ws", &["taker"]),
    ("GET", "/api/tests", &["taker"]),
    ("GET", "/api/admin/tests", &["admin"]),
    ("PUT", "/api/admin/tests/{test_id}", &["admin"]),
    ("GET", "/api/me/assessments", &["taker"]),
    ("GET", "/api/admin/tests/{test_id}/statistics", &["admin"]),
    ("GET", "/api/admin/projections", &["admin"]),
    ("POST", "/api/admin/projections/{name}/rebuild", &["admin"]),
    ("GET", "/api/admin/jobs/{job_id}", &["admin"]),
    (
        "POST",
        "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
        &["admin"],
    ),
    ("GET", "/api/admin/audit-reads", &["admin"]),
    ("GET", "/api/admin/connections", &["admin"]),
    (
        "POST",
        "/api/admin/users/{user_id}/assessments/{assessment_id}/extend",
        &["admin"],
    ),
    (
        "PUT",
        "/api/admin/tests/{test_id}/overrides/{user_id}",
        &["admin"],
    ),
    (
        "DELETE",
        "/api/admin/tests/{test_id}/overrides/{user_id}",
        &["admin"],
    ),
    ("GET", "/api/admin/tests/{test_id}/overrides", &["admin"]),
    ("POST", "/api/admin/tests/{test_id}/regrade", &["admin"]),
    ("GET", "/api/audit/events", &["auditor", "admin"]),
    (
        "GET",
        "/api/audit/users/{user_id}/events",
        &["auditor", "admin"],
    ),
    (
        "GET",
        "/api/audit/users/{user_id}/state",
        &["auditor", "admin"],
    ),
    (
        "GET",
        "/api/audit/users/{user_id}/verify",
        &["auditor", "admin"],
    ),
    ("GET", "/api/openapi.json", &[]),
];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn route_set(routes: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect()
}

/// Fetches the document without a token.
pub(crate) async fn document(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).expect("the document is JSON")
}

/// Every operation of the document: (METHOD, path, operation).
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let paths = document["paths"].as_object().expect("paths");
    let mut found = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            if HTTP_METHODS.contains(&method.as_str()) {
                found.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// `path` with each `{param}` replaced by a placeholder.
fn with_placeholders(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("placeholder");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn secured(operation: &Value) -> bool {
    operation["security"]
        .as_array()
        .is_some_and(|s| !s.is_empty())
}

async fn send(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The names called in `code` (`name(` after a character that cannot be part of a name),
/// with whether the call is a method call (`.name(`).
fn calls(code: &str) -> Vec<(String, bool)> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    for (i, c) in chars.iter().enumerate() {
        if *c != '(' {
            continue;
        }
        let mut start = i;
        while start > 0 && (chars[start - 1].is_alphanumeric() || chars[start - 1] == '_') {
            start -= 1;
        }
        if start < i {
            let name: String = chars[start..i].iter().collect();
            let method_call = start > 0 && chars[start - 1] == '.';
            found.push((name, method_call));
        }
    }
    found
}

/// The `.route("PATH", get(..).post(..))` calls in `src/http/*.rs`, as (METHOD, PATH).
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // Other ways to attach handlers would escape this scan: fail rather than miss them.
        for (name, method_call) in calls(&source) {
            let other = matches!(
                name.as_str(),
                "nest" | "nest_service" | "route_service" | "fallback_service"
            ) && method_call
                || matches!(name.as_str(), "any" | "on" | "any_service" | "on_service")
                    && !method_call;
            assert!(
                !other,
                "{} attaches handlers with `{name}`: teach this test to read it",
                path.display()
            );
        }
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let literal = rest.trim_start();
            let literal = literal.strip_prefix('"').expect("a route path literal");
            let end = literal.find('"').expect("the end of the literal");
            let route = &literal[..end];
            // The method router runs to the parenthesis that closes `.route(`.
            let after = &literal[end + 1..];
            let mut depth = 1;
            let mut close = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let method_router = &after[..close];
            let mut methods = 0;
            for (name, _) in calls(method_router) {
                assert!(
                    HTTP_METHODS.contains(&name.as_str()),
                    "{route} in {} calls `{name}`: teach this test to read it",
                    path.display()
                );
                routes.insert((name.to_uppercase(), route.to_string()));
                methods += 1;
            }
            assert!(
                methods > 0,
                "no method found for {route} in {}",
                path.display()
            );
            rest = after;
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_with_the_error_schema_and_bearer_tokens() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let document = document(&app).await;
    let version = document["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "{version}");
    assert_eq!(document["info"]["title"], "assessd");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));

    let bearer = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (bearer["type"].as_str(), bearer["scheme"].as_str()),
        (Some("http"), Some("bearer")),
        "{bearer}"
    );
    assert_eq!(bearer["bearerFormat"], "JWT");

    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail = &schemas["ErrorDetail"]["properties"];
    for field in ["code", "message", "field"] {
        assert!(detail.get(field).is_some(), "ErrorDetail has no {field}");
    }
    // Every error response of every operation is the one error schema.
    for (method, path, operation) in operations(&document) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    // Every operation has a tag and a description; a secured one accepts the bearer token.
    for (method, path, operation) in operations(&document) {
        assert!(
            operation["tags"][0].is_string(),
            "{method} {path} has no tag"
        );
        assert!(
            operation["description"].is_string(),
            "{method} {path} has no description"
        );
        if secured(&operation) {
            assert!(
                operation["security"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s.get("bearer").is_some()),
                "{method} {path} does not take the bearer token"
            );
        }
    }
    app.stop().await;
}

/// The document, the list above and the source name the same routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let document = document(&app).await;
    let documented: BTreeSet<(String, String)> = operations(&document)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    assert_eq!(documented, route_set(ROUTES), "the document vs ROUTES");
    assert_eq!(
        routes_in_source(),
        route_set(ROUTES),
        "src/http/*.rs vs ROUTES"
    );

    // The public GET endpoints answer as themselves, without a token.
    for (method, path, operation) in operations(&document) {
        if method == "GET" && !path.contains('{') && !secured(&operation) {
            let (status, _) = send(&app, &method, &path, None).await;
            assert_eq!(status, 200, "{method} {path}");
        }
    }
    app.stop().await;
}

/// No documented operation falls through to the router's fallback (404 "no such
/// endpoint") or to a 405 for its method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let fallback = json!({"error": {"code": "not_found", "message": "no such endpoint"}});
    let (status, body) = send(&app, "GET", "/api/nowhere", None).await;
    assert_eq!((status, &body), (404, &fallback), "the fallback itself");

    let admin = app.token("root", Role::Admin);
    let document = document(&app).await;
    for (method, path, _) in operations(&document) {
        let concrete = with_placeholders(&path);
        let (status, body) = send(&app, &method, &concrete, Some(&admin)).await;
        assert_ne!(body, fallback, "{method} {path} ({concrete}) is not routed");
        assert_ne!(status, 405, "{method} {path} ({concrete}): wrong method");
    }
    app.stop().await;
}

/// Each secured operation names its roles in `x-roles` and its description, and the
/// handler lets exactly those roles in; the others are refused with 403, and no token
/// with 401. Public operations need no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_roles_are_the_enforced_ones() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let document = document(&app).await;
    let roles = [
        ("taker", Role::Taker),
        ("auditor", Role::Auditor),
        ("admin", Role::Admin),
    ];
    for (method, path, operation) in operations(&document) {
        let concrete = with_placeholders(&path);
        if !secured(&operation) {
            assert!(operation.get("x-roles").is_none(), "{method} {path}");
            let (status, _) = send(&app, &method, &concrete, None).await;
            assert_ne!(status, 401, "{method} {path} wants a token");
            continue;
        }
        let allowed: Vec<&str> = operation["x-roles"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no x-roles"))
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let description = operation["description"].as_str().unwrap();
        assert!(
            description.starts_with("Role: "),
            "{method} {path}: {description}"
        );
        for role in &allowed {
            assert!(
                description.lines().next().unwrap().contains(role),
                "{method} {path}: the description does not name {role}"
            );
        }
        assert!(
            operation["responses"].get("401").is_some(),
            "{method} {path}"
        );
        assert!(
            operation["responses"].get("403").is_some(),
            "{method} {path}"
        );

        let (status, _) = send(&app, &method, &concrete, None).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        for (name, role) in roles {
            let token = app.token("someone", role);
            let (status, body) = send(&app, &method, &concrete, Some(&token)).await;
            if allowed.contains(&name) {
                assert_ne!(status, 403, "{method} {path} refuses {name}: {body}");
            } else {
                assert_eq!(status, 403, "{method} {path} lets {name} in: {body}");
            }
        }
    }
    app.stop().await;
}

/// A token that is well formed and signed with the server's secret, but expired (beyond
/// the 5 s leeway).
fn expired_token() -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let exp = chrono::Utc::now().timestamp() - 600;
    encode(
        &Header::default(),
        &json!({"sub": "someone", "role": "admin", "exp": exp}),
        &EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
    )
    .unwrap()
}

/// Every route in [`ROUTES`], with no token, with bad tokens (garbage, expired, signed with
/// another secret) and with each role: 401 `unauthorized` for every missing or bad token,
/// 403 `forbidden` for each role the route does not let in, neither for the roles it does.
/// Public routes answer whatever the token. The roles in `ROUTES` are the documented ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_tokens_and_wrong_roles() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let document = document(&app).await;
    let foreign = assessd::auth::JwtKeys::hs256(
        &assessd::auth::Secret::new("another-secret-0123456789"),
        None,
        None,
    )
    .mint(
        "someone",
        &[Role::Admin],
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let bad_tokens = [
        ("no token", None),
        ("garbage", Some("garbage".to_string())),
        ("expired", Some(expired_token())),
        ("another secret", Some(foreign)),
    ];
    let roles = [
        ("taker", Role::Taker),
        ("auditor", Role::Auditor),
        ("admin", Role::Admin),
    ];
    for (method, path, allowed) in ROUTES {
        let documented: Vec<&str> = document["paths"][path][method.to_lowercase()]["x-roles"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            &documented, allowed,
            "{method} {path}: ROUTES vs the document"
        );
        let concrete = with_placeholders(path);
        for (what, token) in &bad_tokens {
            let (status, body) = send(&app, method, &concrete, token.as_deref()).await;
            if allowed.is_empty() {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} is public, yet {what} gets {status}"
                );
            } else {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (401, Some("unauthorized")),
                    "{method} {path} with {what}: {body}"
                );
            }
        }
        for (name, role) in roles {
            let token = app.token("someone", role);
            let (status, body) = send(&app, method, &concrete, Some(&token)).await;
            if allowed.is_empty() || allowed.contains(&name) {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} refuses {name}: {status} {body}"
                );
            } else {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (403, Some("forbidden")),
                    "{method} {path} lets {name} in: {body}"
                );
            }
        }
    }
    app.stop().await;
}

/// Checks `value` against `schema` for the parts of JSON Schema the document uses
/// (`$ref`, `type`, `enum`, `properties`, `required`, `items`, `oneOf`), collecting every
/// mismatch. Stricter than JSON Schema on purpose: an object whose schema lists properties
/// may have no others, because a field missing from the document is a gap in it.
pub(crate) fn check(
    document: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    errors: &mut Vec<String>,
) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .expect("a local reference");
        let target = &document["components"]["schemas"][name];
        assert!(target.is_object(), "no schema {name}");
        return check(document, target, value, at, errors);
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        let fits = choices.iter().any(|choice| {
            let mut inner = Vec::new();
            check(document, choice, value, at, &mut inner);
            inner.is_empty()
        });
        if !fits {
            errors.push(format!("{at}: {value} fits none of oneOf"));
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let fits = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !fits {
            errors.push(format!("{at}: {value} is not {types:?}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(object), Some(properties)) = (value.as_object(), schema["properties"].as_object())
    {
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap();
            if !object.contains_key(required) {
                errors.push(format!("{at}: {required} is missing"));
            }
        }
        for (key, item) in object {
            match properties.get(key) {
                Some(property) => check(document, property, item, &format!("{at}.{key}"), errors),
                None => errors.push(format!("{at}: {key} is not documented")),
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(document, schema, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// The schema the document gives for `status` of `METHOD path`.
pub(crate) fn response_schema<'d>(
    document: &'d Value,
    method: &str,
    path: &str,
    status: u16,
) -> &'d Value {
    let response = &document["paths"][path][method.to_lowercase()]["responses"][status.to_string()];
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} documents no JSON body for {status}"
    );
    schema
}

/// Real replies, successes and errors, have exactly the documented fields and values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_have_the_documented_shapes() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let document = document(&app).await;
    let taker = app.token("shape", Role::Taker);
    let admin = app.token("root", Role::Admin);
    let auditor = app.token("aud", Role::Auditor);

    // A stream with an attempt ended by an admin, so every list has items.
    let mut socket = app.connect("shape").await;
    let (started, _) = socket.start("demo").await;
    let attempt = started["assessment_id"].as_str().unwrap().to_string();
    let end = format!("/api/admin/users/shape/assessments/{attempt}/end");
    let definition = small_test(1, Some(60));

    let mut replies: Vec<(&str, &str, u16, Value)> = Vec::new();
    for (method, template, path, token) in [
        ("GET", "/healthz", "/healthz".to_string(), None),
        ("GET", "/readyz", "/readyz".to_string(), None),
        ("GET", "/api/tests", "/api/tests".to_string(), Some(&taker)),
        (
            "GET",
            "/api/admin/tests",
            "/api/admin/tests".to_string(),
            Some(&admin),
        ),
        (
            "POST",
            "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
            end.clone(),
            Some(&admin),
        ),
        (
            "POST",
            "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
            end,
            Some(&admin),
        ),
        (
            "GET",
            "/api/audit/events",
            "/api/audit/events?limit=2".to_string(),
            Some(&auditor),
        ),
        (
            "GET",
            "/api/audit/users/{user_id}/events",
            "/api/audit/users/shape/events".to_string(),
            Some(&auditor),
        ),
        (
            "GET",
            "/api/audit/users/{user_id}/verify",
            "/api/audit/users/shape/verify".to_string(),
            Some(&auditor),
        ),
        (
            "GET",
            "/api/audit/users/{user_id}/state",
            "/api/audit/users/shape/state".to_string(),
            Some(&auditor),
        ),
        (
            "GET",
            "/api/admin/connections",
            "/api/admin/connections".to_string(),
            Some(&admin),
        ),
        (
            "GET",
            "/api/admin/audit-reads",
            "/api/admin/audit-reads".to_string(),
            Some(&admin),
        ),
        (
            "GET",
            "/api/audit/events",
            "/api/audit/events?limit=0".to_string(),
            Some(&auditor),
        ),
        (
            "GET",
            "/api/audit/users/{user_id}/state",
            "/api/audit/users/nobody/state".to_string(),
            Some(&auditor),
        ),
        (
            "GET",
            "/api/audit/users/{user_id}/verify",
            "/api/audit/users/nobody/verify".to_string(),
            Some(&auditor),
        ),
        (
            "GET",
            "/api/admin/audit-reads",
            "/api/admin/audit-reads".to_string(),
            Some(&auditor),
        ),
        ("GET", "/api/tests", "/api/tests".to_string(), None),
        (
            "GET",
            "/api/tests",
            "/api/tests".to_string(),
            Some(&auditor),
        ),
    ] {
        let (status, body) = send(&app, method, &path, token.map(String::as_str)).await;
        replies.push((method, template, status, body));
    }
    for (body, status) in [(definition.clone(), 201), (definition, 200)] {
        let (got, reply) = app.put_json("/api/admin/tests/shaped", &admin, &body).await;
        assert_eq!(got, status, "{reply}");
        replies.push(("PUT", "/api/admin/tests/{test_id}", got, reply));
    }
    let (status, reply) = app
        .put_json(
            "/api/admin/tests/shaped",
            &admin,
            &json!({"title": "x", "questions": []}),
        )
        .await;
    replies.push(("PUT", "/api/admin/tests/{test_id}", status, reply));

    let statuses: Vec<u16> = replies.iter().map(|r| r.2).collect();
    assert_eq!(
        statuses,
        [
            200, 200, 200, 200, 200, 409, 200, 200, 200, 200, 200, 200, 400, 404, 404, 403, 401,
            403, 201, 200, 422
        ],
        "the replies this test means to check"
    );
    for (method, path, status, body) in &replies {
        let schema = response_schema(&document, method, path, *status);
        let mut errors = Vec::new();
        check(&document, schema, body, "body", &mut errors);
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:#?}\n{body}"
        );
        // Empty lists would prove nothing about their items.
        if let Some(items) = body.get("items") {
            assert!(
                !items.as_array().unwrap().is_empty(),
                "{method} {path}: no items"
            );
        }
    }
    app.stop().await;
}
