//! What the nodes on one PostgreSQL tell each other, through `LISTEN`/`NOTIFY` on the
//! channel [`CHANNEL`]:
//!
//! - `owner`: a session claimed a user ([`crate::ownership::claim`] sends it after its commit).
//!   A node holding a session of that user with a lower generation evicts it as a local
//!   eviction does: `SESSION_REPLACED`, then close 4001.
//! - `changed`: someone other than the user's own session (an admin, or a grade recorded
//!   after the user moved to another node) changed the stream; the node holding the user's
//!   socket tells it to read the stream again ([`Registry::notify`]).
//!
//! Each node listens on a connection of its own (a pool of one beside the main pool, named
//! `assessd-listener:<node id>` in `pg_stat_activity`). When that connection is lost (a
//! database restart, a terminated backend) the listener connects again by itself, with a
//! growing delay, and then checks every local session against the owner table: a
//! notification sent while it was away is never needed to evict a replaced session. The
//! same check runs every few seconds anyway, for a notice that was never sent.
//! Payloads come from the database and are parsed, never trusted: one that does not read
//! is logged and skipped.
//!
//! [`Registry::notify`]: crate::registry::Registry::notify

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgNotification, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ownership;
pub use crate::ownership::CHANNEL;
use crate::state::{AppState, Shared};
use crate::store::{Database, StoreError};

/// The first delay before connecting again, doubled after each failure up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// How often every local session is checked against the owner table, whatever the
/// notifications said: a notice can be lost (its sender died between claim and notice).
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// One notification on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// `session_id` on `node_id` now owns `user_id`, with `generation`.
    Owner {
        user_id: String,
        session_id: Uuid,
        node_id: String,
        generation: i64,
    },
    /// `user_id`'s stream was changed by `node_id` on behalf of someone else than the user's
    /// session.
    Changed { user_id: String, node_id: String },
}

/// Tells every other node that `user_id`'s stream changed, so the node holding the user's
/// socket pushes what is new. Nothing to do on SQLite (one node). A failure is logged: the
/// change is recorded, and the user sees it at the latest on the next reconnect.
pub async fn publish_changed(state: &Shared, user_id: &str) {
    let Database::Postgres(pool) = &state.db else {
        return;
    };
    let notice = Notice::Changed {
        user_id: user_id.to_string(),
        node_id: state.node_id.clone(),
    };
    if let Err(e) = publish(pool, &notice).await {
        tracing::warn!(user_id, error = %e, "could not tell the other nodes that a stream changed");
    }
}

async fn publish(pool: &PgPool, notice: &Notice) -> Result<(), StoreError> {
    let payload =
        serde_json::to_string(notice).map_err(|e| StoreError::EventStore(e.to_string()))?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

/// Listens on [`CHANNEL`] until `stop`, connecting again after every loss, and checks the
/// local sessions against the owner table every [`RECHECK_EVERY`]. Returns at once on
/// SQLite.
pub async fn run(state: AppState, stop: CancellationToken) {
    let Database::Postgres(pool) = &state.db else {
        return;
    };
    tokio::join!(
        listen_until(&state, pool, &stop),
        recheck_until(&state, pool, &stop)
    );
}

async fn recheck_until(state: &Shared, pool: &PgPool, stop: &CancellationToken) {
    let mut every = tokio::time::interval(RECHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = resync(state, pool).await {
            tracing::debug!(error = %e, "could not check the sessions against their owners");
        }
    }
}

async fn listen_until(state: &Shared, pool: &PgPool, stop: &CancellationToken) {
    // A dedicated connection: LISTEN holds it for the life of the node, and it must not
    // wait behind the commands for a pooled one.
    let options = (*pool.connect_options())
        .clone()
        .application_name(&format!("assessd-listener:{}", state.node_id));
    let dedicated = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let mut delay = FIRST_DELAY;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = listen(state, pool, &dedicated, &mut delay) => outcome,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, retry_in = ?delay, "the cluster listener lost its connection; connecting again");
            state.metrics.cluster_listener_up.set(0);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
    dedicated.close().await;
}

/// One life of the listening connection: LISTEN, check the local sessions, then handle
/// notifications until the connection fails. Resets `delay` once listening.
async fn listen(
    state: &Shared,
    pool: &PgPool,
    dedicated: &PgPool,
    delay: &mut Duration,
) -> Result<(), StoreError> {
    let mut listener = PgListener::connect_with(dedicated).await?;
    // A lost connection is reported (Ok(None)) rather than silently replaced, so the
    // local sessions are checked again after every reconnect.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Listening first, then checking: a claim committed in between is either seen by the
    // check or arrives as a notification.
    resync(state, pool).await?;
    *delay = FIRST_DELAY;
    state.metrics.cluster_listener_up.set(1);
    tracing::info!("listening for the other nodes");
    loop {
        match listener.try_recv().await? {
            Some(notification) => handle(state, &notification),
            None => {
                return Err(StoreError::EventStore(
                    "the listening connection was closed".into(),
                ))
            }
        }
    }
}

/// Evicts every local session whose user a newer session owns now (on any node).
async fn resync(state: &Shared, pool: &PgPool) -> Result<(), StoreError> {
    let local = state.registry.sessions_with_generation();
    if local.is_empty() {
        return Ok(());
    }
    let users: Vec<String> = local.iter().map(|(user, _, _)| user.clone()).collect();
    let mut evicted = 0;
    for (user, owner) in ownership::owners_of(pool, &users).await? {
        if state
            .registry
            .evict_older(&user, owner.session_id, owner.generation)
        {
            state.metrics.evictions.inc();
            evicted += 1;
        }
    }
    if evicted > 0 {
        tracing::info!(
            evicted,
            "evicted sessions whose users connected elsewhere while this node was not listening"
        );
    }
    Ok(())
}

fn handle(state: &Shared, notification: &PgNotification) {
    // sqlx's accessor panics on a payload that is not UTF-8 (possible in a SQL_ASCII
    // database, and anyone with access may NOTIFY): such a payload is not ours.
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        notification.payload().to_string()
    }));
    let Ok(payload) = payload else {
        tracing::warn!("ignoring a notification whose payload is not UTF-8");
        return;
    };
    match serde_json::from_str::<Notice>(&payload) {
        Ok(notice) => apply(state, notice),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a notification this node does not understand")
        }
    }
}

/// What one notice does to this node.
pub fn apply(state: &Shared, notice: Notice) {
    match notice {
        Notice::Owner {
            user_id,
            session_id,
            node_id,
            generation,
        } => {
            if state.registry.announced(&user_id, session_id, generation) {
                state.metrics.evictions.inc();
                tracing::info!(%user_id, new_session = %session_id, new_node = %node_id, "evicted: the user connected on another node");
            }
        }
        Notice::Changed { user_id, node_id } => {
            // This node told its own session already.
            if node_id != state.node_id {
                state.registry.notify(&user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_as_the_database_writes_them() {
        // As json_build_object in ownership::claim renders it.
        let owner = r#"{"kind" : "owner", "user_id" : "al\"ice", "session_id" : "6f1c1d2e-0000-4000-8000-000000000001", "node_id" : "web-1", "generation" : 3}"#;
        assert_eq!(
            serde_json::from_str::<Notice>(owner).unwrap(),
            Notice::Owner {
                user_id: "al\"ice".into(),
                session_id: Uuid::parse_str("6f1c1d2e-0000-4000-8000-000000000001").unwrap(),
                node_id: "web-1".into(),
                generation: 3,
            }
        );
        let changed = Notice::Changed {
            user_id: "bob".into(),
            node_id: "web-2".into(),
        };
        let text = serde_json::to_string(&changed).unwrap();
        assert_eq!(serde_json::from_str::<Notice>(&text).unwrap(), changed);
        for junk in ["", "{}", "null", r#"{"kind":"owner"}"#, r#"{"kind":"x"}"#] {
            assert!(serde_json::from_str::<Notice>(junk).is_err(), "{junk}");
        }
    }
}
