//! Which server processes share the database: each node beats its row in `nodes` every
//! [`Membership::every`](crate::config::Membership) with its live socket count, and a node whose last beat is older
//! than the lease is gone (killed, cut off, or stopped without saying so). A node that
//! stops cleanly deletes its row. `GET /api/admin/connections` on any node lists the live
//! ones from here (docs/protocol.md, section 7).
//!
//! Heartbeats are stamped with the database's clock, so nodes whose own clocks disagree
//! still agree on who is alive.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub use crate::config::Membership;
use crate::state::AppState;
pub use crate::store::nodes::{beat, leave, live, LiveNode};

/// Beats this node's row every `state.membership.every` until `stop`, then leaves. A failed
/// beat (the database is away) is logged and tried again at the next one: the node's
/// sockets do not depend on it.
pub async fn run(state: AppState, stop: CancellationToken) {
    let (db, node_id) = (&state.db, &state.node_id);
    let started_at = Utc::now();
    let mut every = tokio::time::interval(state.membership.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        if let Err(e) = beat(db, node_id, started_at, state.registry.live()).await {
            tracing::warn!(error = %e, "node heartbeat failed; trying again at the next one");
        }
    }
    if let Err(e) = leave(db, node_id).await {
        tracing::warn!(error = %e, "could not remove this node's heartbeat; it expires by itself");
    }
}
