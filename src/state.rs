//! [`AppState`]: everything a request or a session needs, shared by all of them. It sits
//! below the router, the HTTP handlers and the WebSocket sessions, which all depend on it
//! and never on each other.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::JwtKeys;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::rate_limit::UserRateLimit;
use crate::registry::Registry;
use crate::store::catalog::Catalog;
use crate::store::streams::Streams;
use crate::store::Database;
use crate::tutor::Tutor;

/// A cheap handle on the [`Shared`] state.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

pub struct Shared {
    pub db: Database,
    /// Connections' claims of their users, batched (PostgreSQL; SQLite has one node).
    pub claims: Option<crate::store::claims::Claims>,
    pub streams: Streams,
    pub catalog: Catalog,
    pub keys: JwtKeys,
    pub registry: Registry,
    pub metrics: Metrics,
    pub limits: Limits,
    pub node_id: String,
    /// How often this node beats its row in `nodes`, and how long others wait for one.
    pub membership: crate::config::Membership,
    /// The server verifies tokens with the generated development secret, so the pages may
    /// ask it to mint one (`POST /api/dev/token`).
    pub dev_sign_in: bool,
    pub tutor: Arc<dyn Tutor>,
    /// The AI providers (none when offline) and the caps on model calls.
    pub ai: Arc<crate::ai::Ai>,
    pub rate: UserRateLimit,
    /// The read models, kept caught up in the background.
    pub projections: projections::Projections,
    /// Admin jobs (projection rebuilds, regrades) of every node on this database.
    pub jobs: crate::jobs::Jobs,
    /// Cancelled when the server shuts down; sessions then close with 1001.
    pub shutdown: CancellationToken,
    /// Every live session, so shutdown can wait for them to finish.
    pub sessions: TaskTracker,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
