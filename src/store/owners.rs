//! The table `session_owners` (PostgreSQL): who owns each user's stream, claimed by a new
//! connection and checked inside every append of a session. The design, and what it
//! guarantees, is in [`crate::ownership`]; this is its storage. The append checks the
//! owner inside its own statement ([`super::pg_append`]); [`check_in`] takes the same lock
//! inside a transaction of the caller's.

use sqlx::PgPool;
use thiserror::Error;
use uuid::Uuid;

use super::StoreError;

/// The channel every node listens on ([`crate::cluster`]).
pub const CHANNEL: &str = "assessd_sessions";

/// The appending session no longer owns the user: nothing was recorded.
#[derive(Debug, Error)]
#[error("session {session_id} no longer owns the stream of {user_id}")]
pub struct NotOwner {
    pub user_id: String,
    pub session_id: Uuid,
}

/// The user's owner as the database records it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Owner {
    pub session_id: Uuid,
    pub node_id: String,
    pub generation: i64,
}

/// Records `session_id` on `node_id` as the owner of `user_id` with the next generation,
/// then announces it on [`CHANNEL`]. Waits for an append of the previous owner that is in
/// flight. Returns the new generation.
///
/// The announcement is a statement of its own, after the claim's commit: PostgreSQL holds
/// one lock for every notifying commit through its WAL flush, so a NOTIFY inside the claim
/// would queue every connection of the cluster behind one another (measured in
/// docs/scaling.md: 620 claims/s from 16 connections instead of 3,743). A notice that is
/// lost (this node dies in between, or the statement fails) costs only time: the old
/// session can record nothing anyway, its next command evicts it, and every node re-checks
/// its sessions against this table periodically ([`crate::cluster`]).
///
/// # Errors
/// A database error of the claim (a failed announcement is logged, not returned).
pub async fn claim(
    pool: &PgPool,
    user_id: &str,
    session_id: Uuid,
    node_id: &str,
) -> Result<i64, StoreError> {
    let generation: i64 = sqlx::query_scalar(
        "insert into session_owners (user_id, session_id, node_id, generation, since) \
         values ($1, $2, $3, 1, now()) \
         on conflict (user_id) do update \
         set session_id = excluded.session_id, node_id = excluded.node_id, \
             generation = session_owners.generation + 1, since = excluded.since \
         returning generation",
    )
    .bind(user_id)
    .bind(session_id)
    .bind(node_id)
    .fetch_one(pool)
    .await?;
    let announced = sqlx::query(
        "select pg_notify($1, json_build_object('kind', 'owner', 'user_id', $2::text, \
           'session_id', $3::uuid, 'node_id', $4::text, 'generation', $5::bigint)::text)",
    )
    .bind(CHANNEL)
    .bind(user_id)
    .bind(session_id)
    .bind(node_id)
    .bind(generation)
    .execute(pool)
    .await;
    if let Err(e) = announced {
        tracing::warn!(user_id, error = %e, "could not announce a claim; the other nodes find it at their next check");
    }
    Ok(generation)
}

/// The user's current owner, if one ever connected.
///
/// # Errors
/// A database error.
pub async fn owner_of(pool: &PgPool, user_id: &str) -> Result<Option<Owner>, StoreError> {
    Ok(sqlx::query_as(
        "select session_id, node_id, generation from session_owners where user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?)
}

/// The current owners of `users` (those that have one), as (user, owner).
///
/// # Errors
/// A database error.
pub async fn owners_of(
    pool: &PgPool,
    users: &[String],
) -> Result<Vec<(String, Owner)>, StoreError> {
    let rows: Vec<(String, Uuid, String, i64)> = sqlx::query_as(
        "select user_id, session_id, node_id, generation from session_owners \
         where user_id = any($1)",
    )
    .bind(users)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(user, session_id, node_id, generation)| {
            (
                user,
                Owner {
                    session_id,
                    node_id,
                    generation,
                },
            )
        })
        .collect())
}

/// Inside a transaction: locks the owner row of `user_id` `for share`, as every append of
/// a session does (a claim waits for this transaction), and fails unless `session_id`
/// owns it.
///
/// # Errors
/// [`NotOwner`] inside [`OwnerCheckError::NotOwner`], or a database error.
pub async fn check_in(
    tx: &mut sqlx::PgConnection,
    user_id: &str,
    session_id: Uuid,
) -> Result<(), OwnerCheckError> {
    let owner: Option<Uuid> =
        sqlx::query_scalar("select session_id from session_owners where user_id = $1 for share")
            .bind(user_id)
            .fetch_optional(tx)
            .await?;
    if owner == Some(session_id) {
        Ok(())
    } else {
        Err(OwnerCheckError::NotOwner(NotOwner {
            user_id: user_id.to_string(),
            session_id,
        }))
    }
}

/// Why [`check_in`] refused.
#[derive(Debug, Error)]
pub enum OwnerCheckError {
    #[error(transparent)]
    NotOwner(NotOwner),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}
