//! [`Application`]: builds the shared state and the router, binds a listener and serves
//! until a shutdown future resolves. `main.rs` and the tests both use it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::rate_limit::UserRateLimit;
use crate::registry::Registry;
use crate::state::{AppState, Shared};
use crate::store::catalog::Catalog;
use crate::store::streams::Streams;
use crate::store::Database;
use crate::tutor::OfflineTutor;
use crate::{definitions, http};

/// A built server: listening, migrated, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_grace: Duration,
}

impl Application {
    /// Builds the shared state ([`state`]) and binds the listener (port 0 picks a free
    /// port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let state = state(&settings).await?;
        // Before this node can start a job: any job running under its id was left by an
        // earlier process with the same id.
        match state.jobs.fail_left_running().await {
            Ok(0) => {}
            Ok(left) => tracing::warn!(
                jobs = left,
                "jobs left running by an earlier process of this node are marked failed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not mark the jobs an earlier process of this node left running")
            }
        }
        let listener = TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("Failed to bind {}", settings.bind))?;
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
        // The read models run until the sessions are done, so their last events are applied.
        let projections_stop = CancellationToken::new();
        let projections = tokio::spawn(
            state
                .projections
                .clone()
                .run(projections_stop.clone().cancelled_owned()),
        );
        // The heartbeat stops when the sessions are done, so this node counts as live (and
        // its sockets as open) until they are.
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(crate::nodes::run(state.clone(), heartbeat_stop.clone()));
        // Cross-node eviction and "stream changed" notices, for as long as the heartbeat.
        let cluster = tokio::spawn(crate::cluster::run(state.clone(), heartbeat_stop.clone()));
        let router = router(state.clone());
        let stop = state.shutdown.clone();
        // TCP_NODELAY: a WebSocket sends small frames one after another (AGENT_THINKING
        // deltas, then the recorded result); without it each waits for the client's
        // delayed ACK of the one before (~40 ms on Linux).
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, router)
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
        heartbeat_stop.cancel();
        if tokio::time::timeout(self.shutdown_grace, heartbeat)
            .await
            .is_err()
        {
            tracing::warn!("the node heartbeat did not stop within the shutdown grace period");
        }
        if tokio::time::timeout(self.shutdown_grace, cluster)
            .await
            .is_err()
        {
            tracing::warn!("the cluster listener did not stop within the shutdown grace period");
        }
        projections_stop.cancel();
        if tokio::time::timeout(self.shutdown_grace, projections)
            .await
            .is_err()
        {
            tracing::warn!("the read models did not stop within the shutdown grace period");
        }
        state.db.close().await;
        tracing::info!("shut down");
        Ok(())
    }
}

/// The state a server shares between its requests and sessions: connects to the database,
/// applies migrations, loads the demo test when missing and prepares the read models. The
/// server builds it, and so does `assessd dev seed`, whose commands must take exactly the
/// server's path.
pub async fn state(settings: &Settings) -> anyhow::Result<AppState> {
    let db = Database::connect(&settings.database_url, settings.db_pool).await?;
    db.migrate().await?;
    let catalog = Catalog::new(db.clone());
    if settings.load_demo {
        definitions::ensure_demo_loaded(&catalog).await?;
    }
    let keys = settings.jwt_keys()?;
    let projections = projections::Projections::new(db.for_projections());
    projections
        .prepare()
        .await
        .context("Failed to prepare the read models")?;
    let limits = settings.limits.clone();
    let jobs = crate::jobs::Jobs::new(
        db.clone(),
        settings.node_id.clone(),
        settings.membership.lease,
    );
    let claims = match &db {
        Database::Postgres(pool) => Some(crate::store::claims::Claims::start(pool.clone())),
        Database::Sqlite(_) => None,
    };
    Ok(AppState::new(Shared {
        claims,
        streams: Streams::new(&db, settings.snapshot_every),
        db,
        catalog,
        keys,
        registry: Registry::new(limits.max_connections),
        metrics: Metrics::new(),
        projections,
        jobs,
        rate: UserRateLimit::new(limits.rate_per_sec, limits.rate_burst),
        limits,
        node_id: settings.node_id.clone(),
        membership: settings.membership,
        dev_sign_in: settings.dev_sign_in,
        tutor: Arc::new(OfflineTutor),
        ai: Arc::new(crate::ai::Ai::new(&settings.ai)),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
    }))
}

/// The whole HTTP surface with its request log.
pub fn router(state: AppState) -> Router {
    http::routes()
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
