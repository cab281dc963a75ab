//! Which session owns each user's stream, across every node on one database.
//!
//! The mission allows one connection per user: a new one evicts the old. Inside one process
//! the [`Registry`](crate::registry::Registry) and its per-user command lock enforce that.
//! Across processes on one PostgreSQL the database does, with the table `session_owners`
//! (user, session, node, generation):
//!
//! - **Taking over.** A new connection claims the user in one statement, which raises the
//!   row's generation, then announces it with `NOTIFY assessd_sessions`. Only then does the
//!   session read the stream.
//! - **Recording.** Every append of a session ([`Origin::Session`](crate::commands::Origin))
//!   locks the owner row `for share` inside the transaction that inserts its events
//!   ([`crate::store::pg_append`]) and records nothing unless the session still owns the
//!   user ([`NotOwner`], reported as `Replaced`). A claim's update waits for an append in
//!   flight, and the new session reads the stream after the claim: it sees every event
//!   the old session recorded, and the old one records nothing after it.
//! - **Evicting.** Every node listens on the channel ([`crate::cluster`]) and evicts its
//!   local session of that user with a lower generation: `SESSION_REPLACED`, close 4001.
//!   A notice that comes before an older claim's session has registered is remembered a
//!   few seconds, and that session is born evicted (the registry's module documentation),
//!   so a connect needs no second look at the table. Each node also checks all its
//!   sessions against the table every few seconds, and a session whose append the
//!   database refused evicts itself, so a lost notice only delays.
//!   The optimistic concurrency of the stream (a unique sequence) is the last line under
//!   all of this: two writers can never both append at one position.
//!
//! On SQLite the single process is the whole cluster: the claim is the registry's alone
//! (with a generation from a local counter), and the command lock plus the registry's
//! live-session check keep the replaced session from recording, as before.

use uuid::Uuid;

use crate::registry::Registration;
use crate::state::AppState;
pub use crate::store::owners::{
    check_in, claim, owner_of, owners_of, NotOwner, Owner, OwnerCheckError, CHANNEL,
};
use crate::store::{Database, StoreError};

/// Makes `session_id` the owner of `user_id` on every node and registers it on this one.
/// On PostgreSQL the claim is committed (and announced) before this returns, so the caller
/// may read the stream. The registration may come back already evicted when a newer claim
/// of the user overtook this one.
///
/// # Errors
/// A database error; nothing is registered then.
pub async fn take(
    state: &AppState,
    user_id: &str,
    session_id: Uuid,
) -> Result<Registration, StoreError> {
    let pool = match &state.db {
        Database::Sqlite(_) => {
            let generation = state.registry.next_local_generation();
            return Ok(state.registry.register(user_id, session_id, generation));
        }
        Database::Postgres(pool) => pool,
    };
    let generation = match &state.claims {
        Some(claims) => claims.claim(user_id, session_id, &state.node_id).await?,
        None => claim(pool, user_id, session_id, &state.node_id).await?,
    };
    // A newer claim announced between our commit and this registration was remembered by
    // the registry, which makes this session born evicted; later notices find it.
    Ok(state.registry.register(user_id, session_id, generation))
}
