//! `GET /api/openapi.json`: an OpenAPI 3.1 description of the HTTP API, generated from the
//! handlers' `#[utoipa::path]` attributes. No token, so tools and people can read it before
//! they have one.
//!
//! [`ApiDoc`] lists every operation; a route without its entry here is undocumented, which
//! the API tests catch by comparing the routes in `src/http/*.rs` with this document. The
//! WebSocket message protocol is out of OpenAPI's reach and stays in `docs/protocol.md`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::accommodations;
use super::{admin, audit, catalog, home, me, pages, projections, sign_in, socket, statistics};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(openapi_json))
}

/// The OpenAPI document of the whole HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "assessd",
        version = env!("CARGO_PKG_VERSION"),
        description = "The HTTP API of assessd, an event-sourced assessment server.\n\n\
                       Tokens are JWTs sent as `Authorization: Bearer <token>`; each \
                       operation's description names the roles (claim `role`: `taker`, \
                       `auditor` or `admin`) it accepts, and so does its `x-roles` \
                       extension. A bad or missing token gets 401, a token without one of \
                       those roles 403.\n\n\
                       Every error body is `ErrorBody`. An unknown path gets 404 `not_found` \
                       (\"no such endpoint\"); a known path called with another method gets a \
                       bare 405 without a body.\n\n\
                       Test-takers use the WebSocket at `GET /ws`, whose message protocol is \
                       described in `docs/protocol.md` in the assessd repository.",
    ),
    paths(
        pages::take_page,
        pages::audit_page,
        pages::admin_page,
        pages::asset,
        sign_in::dev_config,
        sign_in::dev_token,
        home::healthz,
        home::readyz,
        home::metrics,
        socket::websocket,
        catalog::list_tests,
        catalog::admin_list_tests,
        catalog::admin_put_test,
        me::my_assessments,
        statistics::test_statistics,
        projections::list_projections,
        projections::rebuild_projection,
        projections::get_job,
        admin::end_assessment,
        admin::audit_reads,
        admin::connections,
        accommodations::extend,
        accommodations::set_override,
        accommodations::clear_override,
        accommodations::list_overrides,
        accommodations::regrade,
        audit::audit_events,
        audit::audit_user_events,
        audit::audit_state,
        audit::audit_verify,
        openapi_json,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "pages", description = "The browser pages and their development sign-in. No token."),
        (name = "home", description = "Liveness, readiness and metrics. No token."),
        (name = "socket", description = "The test-taker's WebSocket."),
        (name = "catalog", description = "The tests a taker may take, and test definitions for admins."),
        (name = "me", description = "A test-taker's own attempts."),
        (name = "projections", description = "The read models: state, lag, rebuilds and their jobs."),
        (name = "admin", description = "Admin commands on a user's stream, the log of audit reads, and live connections."),
        (name = "audit", description = "The event history, for auditors and admins."),
        (name = "accommodations", description = "Extra time, per-user overrides and regrades: admin changes recorded in the user's own stream."),
        (name = "openapi", description = "This document."),
    ),
)]
pub struct ApiDoc;

/// The two ways to present a token. Operations name the ones they accept.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT with `sub` (the user), `role` (`taker`, `auditor`, `admin`, or \
                         an array of them) and `exp`; HS256 by default, RS256 or EdDSA with an \
                         identity provider's key.",
                    ))
                    .build(),
            ),
        );
        // Browsers cannot set headers on a WebSocket, so `/ws` also takes the token here.
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The same JWT as a query parameter; accepted by `GET /ws` only. The \
                 `Authorization` header wins when both are present.",
            ))),
        );
    }
}

#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "openapi",
    summary = "This OpenAPI description",
    description = "The OpenAPI 3.1 description of this HTTP API. No token.",
    responses(
        (status = 200, description = "The document.", body = Object),
    ),
)]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    // Built per request: it takes well under a millisecond and is rarely asked for, and
    // nothing has to be kept or invalidated. A serialization failure is axum's 500.
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::*;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).expect("the document serializes")
    }

    /// The property names of component schema `name`.
    fn properties(document: &Value, name: &str) -> BTreeSet<String> {
        document["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {name} with properties"))
            .keys()
            .cloned()
            .collect()
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }

    /// A definition with every optional field set, as `GET /api/admin/tests` returns it.
    fn full_definition() -> Value {
        let body = json!({
            "id": "full", "version": 3, "title": "Full", "max_attempts": 2,
            "time_limit_secs": 60, "pass_ratio": 0.5, "shuffle": true,
            "questions": [
                {"id": "q1", "kind": "single_choice", "prompt": "?",
                 "choices": [{"id": "a", "text": "A"}, {"id": "b", "text": "B"}],
                 "answer": "a", "points": 2, "explanation": "because"},
                {"id": "q2", "kind": "free_text", "prompt": "?", "keywords": ["k"]}
            ],
            "ai": {"adaptive": true, "question_count": 3, "topic": "t"}
        });
        let definition: domain::TestDefinition =
            serde_json::from_value(body).expect("a valid definition");
        serde_json::to_value(definition).expect("serializes")
    }

    /// The documentation mirror of `domain::TestDefinition` must name exactly the fields
    /// the real type reads and writes, at every level.
    #[test]
    fn the_test_definition_schema_mirrors_the_domain_type() {
        let document = document();
        let full = full_definition();
        assert_eq!(properties(&document, "TestDefinition"), keys(&full));
        let questions = full["questions"].as_array().expect("questions");
        let mut question_keys = keys(&questions[0]);
        question_keys.extend(keys(&questions[1]));
        assert_eq!(properties(&document, "QuestionDefinition"), question_keys);
        assert_eq!(
            properties(&document, "ChoiceDefinition"),
            keys(&questions[0]["choices"][0])
        );
        assert_eq!(properties(&document, "AiSettings"), keys(&full["ai"]));
        // And the mirror takes what the real type takes, unknown fields refused alike.
        serde_json::from_value::<catalog::TestDefinitionSchema>(full.clone())
            .expect("the mirror reads a full definition");
        let demo: Value =
            serde_json::from_str(crate::definitions::DEMO_TEST).expect("the demo test is JSON");
        serde_json::from_value::<catalog::TestDefinitionSchema>(demo)
            .expect("the mirror reads the demo test");
        let mut unknown = full;
        unknown["questions"][0]["hint"] = json!("x");
        assert!(serde_json::from_value::<catalog::TestDefinitionSchema>(unknown).is_err());
    }

    #[test]
    fn the_document_is_openapi_3_1_with_both_security_schemes() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["info"]["title"], "assessd");
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["access_token"]["in"], "query");
    }
}
