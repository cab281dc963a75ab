//! The browser pages, served from the binary itself: `GET /` (the test-taker's page),
//! `GET /audit` (an auditor's timeline), `GET /admin` (an admin's console) and their
//! scripts and style sheet under `GET /assets/{file}`.
//!
//! The files are plain HTML, CSS and JavaScript in `src/http/pages/`, embedded at compile
//! time, so the pages work offline and behind a firewall: nothing is fetched from anywhere
//! but this server. Every reply carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script) and `Cache-Control: no-cache`, so a new
//! binary's pages are picked up at once. The pages need no token to load; they sign in
//! and then call the API (see `docs/protocol.md`, section 4).

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(take_page))
        .route("/audit", get(audit_page))
        .route("/admin", get(admin_page))
        .route("/assets/{file}", get(asset))
}

/// Scripts, styles and connections from this origin only (the socket is `ws:`/`wss:` to
/// it); no inline script, no framing, no plug-ins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";

/// The files under `/assets/`: name, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("pages/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("pages/common.js"),
    ),
    (
        "take.js",
        "text/javascript; charset=utf-8",
        include_str!("pages/take.js"),
    ),
    (
        "audit.js",
        "text/javascript; charset=utf-8",
        include_str!("pages/audit.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("pages/admin.js"),
    ),
];

/// `body` with its content type and the headers every page and asset carries.
fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[utoipa::path(
    get,
    path = "/",
    tag = "pages",
    summary = "The test-taker's page",
    description = "No token to load it. Sign in (in development mode with a name; otherwise \
                   with a token handed over in the URL fragment `#token=...` or pasted), see \
                   the tests with attempts used and past results, take a test over the \
                   WebSocket (reconnecting by itself, keeping an answer given offline), and \
                   chat with the tutor.",
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html; charset=utf-8"),
    ),
)]
async fn take_page() -> Response {
    serve(HTML, include_str!("pages/index.html"))
}

#[utoipa::path(
    get,
    path = "/audit",
    tag = "pages",
    summary = "The auditor's page",
    description = "No token to load it; its calls need an auditor or admin token. Look up a \
                   user: their stream as a timeline, the hash-chain check, and their state \
                   after any event.",
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html; charset=utf-8"),
    ),
)]
async fn audit_page() -> Response {
    serve(HTML, include_str!("pages/audit.html"))
}

#[utoipa::path(
    get,
    path = "/admin",
    tag = "pages",
    summary = "The admin's console",
    description = "No token to load it; its calls need an admin token. Read models with \
                   their lag and a rebuild with its progress, live connections, and test \
                   definitions with their item statistics.",
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html; charset=utf-8"),
    ),
)]
async fn admin_page() -> Response {
    serve(HTML, include_str!("pages/admin.html"))
}

#[utoipa::path(
    get,
    path = "/assets/{file}",
    tag = "pages",
    summary = "A script or style sheet of the pages",
    description = "No token. The pages' files, embedded in the binary: `app.css`, \
                   `common.js`, `take.js`, `audit.js`, `admin.js`.",
    params(("file" = String, Path, description = "The file name, such as `take.js`.")),
    responses(
        (status = 200, description = "The file.", body = String, content_type = "text/javascript; charset=utf-8"),
        (status = 404, description = "`not_found`: no such asset.", body = ErrorBody),
    ),
)]
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => serve(content_type, body),
        None => {
            ApiError::new(ErrorCode::NotFound, format!("no such asset {file:?}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages load only what is embedded: every `src`/`href` under `/assets/` names an
    /// asset, and no page has an inline script or style (the policy would block it).
    #[test]
    fn pages_refer_only_to_embedded_assets() {
        for page in [
            include_str!("pages/index.html"),
            include_str!("pages/audit.html"),
            include_str!("pages/admin.html"),
        ] {
            let mut rest = page;
            while let Some(at) = rest.find("/assets/") {
                rest = &rest[at + "/assets/".len()..];
                let end = rest.find('"').expect("a quoted path");
                let name = &rest[..end];
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "{name} is not embedded"
                );
            }
            assert!(!page.contains("<script>"), "an inline script");
            assert!(!page.contains("<style"), "an inline style");
            assert!(!page.contains(" style="), "an inline style attribute");
            assert!(!page.contains("http://") && !page.contains("https://"));
        }
    }
}
