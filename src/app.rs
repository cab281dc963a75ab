//! The application: shared state, the router, and [`Application`], which binds a listener
//! and serves until a shutdown future resolves. `main.rs` and the tests both use it.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::{get, post, put};
use axum::Router;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::auth::JwtKeys;
use crate::config::{Limits, Settings};
use crate::metrics::Metrics;
use crate::store::catalog::Catalog;
use crate::store::streams::Streams;
use crate::store::Database;
use crate::tutor::{OfflineTutor, Tutor};
use crate::ws::registry::Registry;
use crate::{definitions, http};

/// Everything a request or a session needs, shared by all of them.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub db: Database,
    pub streams: Streams,
    pub catalog: Catalog,
    pub keys: JwtKeys,
    pub registry: Registry,
    pub metrics: Metrics,
    pub limits: Limits,
    pub node_id: String,
    pub tutor: Arc<dyn Tutor>,
    pub rate: UserRateLimit,
    /// Cancelled when the server shuts down; sessions then close with 1001.
    pub shutdown: CancellationToken,
    /// Every live session, so shutdown can wait for them to finish.
    pub sessions: TaskTracker,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Each user's own message budget; one user going over it never slows another.
pub struct UserRateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl UserRateLimit {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(per_sec);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
        }
    }

    /// `Err(wait)` when the user must wait before their next message.
    pub fn check(&self, user_id: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&user_id.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets users whose budget is full again, so the map does not grow forever.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// A built server: listening, migrated, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_grace: Duration,
}

impl Application {
    /// Connects to the database, applies migrations, loads the demo test when missing and
    /// binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = Database::connect(&settings.database_url, settings.db_pool).await?;
        db.migrate().await?;
        let catalog = Catalog::new(db.clone());
        if settings.load_demo {
            definitions::ensure_demo_loaded(&catalog).await?;
        }
        let listener = TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("Failed to bind {}", settings.bind))?;
        let keys = settings.jwt_keys()?;
        let limits = settings.limits.clone();
        let state = AppState(Arc::new(Shared {
            streams: Streams::new(&db, settings.snapshot_every),
            db,
            catalog,
            keys,
            registry: Registry::new(limits.max_connections),
            metrics: Metrics::new(),
            rate: UserRateLimit::new(limits.rate_per_sec, limits.rate_burst),
            limits,
            node_id: settings.node_id.clone(),
            tutor: Arc::new(OfflineTutor),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
        }));
        Ok(Self {
            listener,
            state,
            shutdown_grace: settings.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("Failed to read the bound address")
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then closes every socket with 1001 once its
    /// in-flight command has finished, and waits (up to the grace period) for them.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let janitor = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    state.rate.forget_idle();
                }
            })
        };
        let token = state.shutdown.clone();
        tokio::spawn(async move {
            shutdown.await;
            token.cancel();
        });
        let router = router(state.clone());
        let stop = state.shutdown.clone();
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("Server error")?;
        state.sessions.close();
        if tokio::time::timeout(self.shutdown_grace, state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not finish within the shutdown grace period");
        }
        janitor.abort();
        state.db.close().await;
        tracing::info!("shut down");
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/ws", get(http::websocket))
        .route("/api/tests", get(http::list_tests))
        .route("/api/admin/tests", get(http::admin_list_tests))
        .route("/api/admin/tests/{test_id}", put(http::admin_put_test))
        .route(
            "/api/admin/users/{user_id}/assessments/{assessment_id}/end",
            post(http::admin_end_assessment),
        )
        .route("/api/audit/events", get(http::audit_events))
        .route("/api/audit/users/{user_id}/verify", get(http::audit_verify))
        .route(
            "/api/audit/users/{user_id}/events",
            get(http::audit_user_events),
        )
        .fallback(http::not_found)
        .layer(
            // Method and path only: the query may hold an access token, headers hold them too.
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::extract::Request| {
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}
