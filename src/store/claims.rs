//! Claims of many connections, committed together (PostgreSQL): one task takes every
//! claim waiting and writes them with one statement, then announces them all with one
//! more ([`super::owners::claim`] does the same for one connection).
//!
//! Every connect claims its user before reading the stream, so claims bound how fast a
//! node accepts connections: one at a time they are a commit and a `NOTIFY` each, and
//! notifying transactions queue on one lock cluster-wide (docs/scaling.md). Gathered, a
//! burst of connects costs one commit and one announcing transaction per batch. Each caller
//! hears of its claim only after the commit that holds it, as before; the announcement
//! follows, as before (a lost one only delays an eviction).
//!
//! A batch takes each user once (a second claim of the same user waits for the next
//! statement, so generations still rise one claim at a time) and locks its rows in user
//! order, so two nodes' batches cannot deadlock each other. A batch whose statement fails
//! is claimed again one connection at a time, so each caller gets its own outcome.

use std::collections::HashSet;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::owners::{self, CHANNEL};
use super::StoreError;

/// The most claims one statement takes.
const MAX_BATCH: usize = 512;
/// Claims waiting for the task before callers wait for room.
const QUEUE: usize = 8192;

struct Claim {
    user_id: String,
    session_id: Uuid,
    node_id: String,
    done: oneshot::Sender<Result<i64, StoreError>>,
}

/// A handle on the claiming task of one database; the task ends when every handle is
/// dropped.
#[derive(Clone)]
pub struct Claims {
    queue: mpsc::Sender<Claim>,
}

impl Claims {
    /// Starts the claiming task on the current tokio runtime.
    pub fn start(pool: PgPool) -> Self {
        let (queue, claims) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, claims));
        Self { queue }
    }

    /// Records `session_id` on `node_id` as the owner of `user_id` with the next
    /// generation, and returns the generation once that is committed; the announcement on
    /// [`CHANNEL`] follows.
    ///
    /// # Errors
    /// A database error of the claim; nothing was claimed then.
    pub async fn claim(
        &self,
        user_id: &str,
        session_id: Uuid,
        node_id: &str,
    ) -> Result<i64, StoreError> {
        let (done, outcome) = oneshot::channel();
        let claim = Claim {
            user_id: user_id.to_string(),
            session_id,
            node_id: node_id.to_string(),
            done,
        };
        let stopped = || StoreError::EventStore("the claiming task stopped".into());
        self.queue.send(claim).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Claim>) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        while !waiting.is_empty() {
            let (batch, later) = once_per_user(std::mem::take(&mut waiting));
            commit(&pool, batch).await;
            waiting = later;
        }
    }
}

/// Splits `claims` into the first claim of each user, in arrival order, and the rest.
fn once_per_user(claims: Vec<Claim>) -> (Vec<Claim>, Vec<Claim>) {
    let mut seen = HashSet::with_capacity(claims.len());
    claims
        .into_iter()
        .partition(|claim| seen.insert(claim.user_id.clone()))
}

async fn commit(pool: &PgPool, mut batch: Vec<Claim>) {
    // The same lock order in every batch of every node.
    batch.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let users: Vec<&str> = batch.iter().map(|c| c.user_id.as_str()).collect();
    let sessions: Vec<Uuid> = batch.iter().map(|c| c.session_id).collect();
    let nodes: Vec<&str> = batch.iter().map(|c| c.node_id.as_str()).collect();
    let claimed: Result<Vec<(String, i64)>, sqlx::Error> = sqlx::query_as(
        "insert into session_owners (user_id, session_id, node_id, generation, since) \
         select u, s, n, 1, now() from unnest($1::text[], $2::uuid[], $3::text[]) as c(u, s, n) \
         order by u \
         on conflict (user_id) do update \
         set session_id = excluded.session_id, node_id = excluded.node_id, \
             generation = session_owners.generation + 1, since = excluded.since \
         returning user_id, generation",
    )
    .bind(&users)
    .bind(&sessions)
    .bind(&nodes)
    .fetch_all(pool)
    .await;
    let generations: std::collections::HashMap<String, i64> = match claimed {
        Ok(rows) => rows.into_iter().collect(),
        Err(e) => {
            tracing::warn!(claims = batch.len(), error = %e, "a batch of claims failed; claiming them one by one");
            for claim in batch {
                let outcome =
                    owners::claim(pool, &claim.user_id, claim.session_id, &claim.node_id).await;
                let _ = claim.done.send(outcome);
            }
            return;
        }
    };
    // What to announce, column by column as `unnest` takes it.
    let (mut to_users, mut to_sessions, mut to_nodes, mut to_generations) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for claim in batch {
        let outcome = generations.get(&claim.user_id).copied().ok_or_else(|| {
            StoreError::Corrupt(format!("no generation came back for {}", claim.user_id))
        });
        if let Ok(generation) = outcome {
            to_users.push(claim.user_id.clone());
            to_sessions.push(claim.session_id);
            to_nodes.push(claim.node_id.clone());
            to_generations.push(generation);
        }
        // A caller that stopped waiting (its socket closed) still holds the claim; its
        // session never registers, and the next claim of the user takes over.
        let _ = claim.done.send(outcome);
    }
    let sent = sqlx::query(
        "select pg_notify($1, json_build_object('kind', 'owner', 'user_id', u, \
           'session_id', s, 'node_id', n, 'generation', g)::text) \
         from unnest($2::text[], $3::uuid[], $4::text[], $5::bigint[]) as c(u, s, n, g)",
    )
    .bind(CHANNEL)
    .bind(&to_users)
    .bind(&to_sessions)
    .bind(&to_nodes)
    .bind(&to_generations)
    .execute(pool)
    .await;
    if let Err(e) = sent {
        tracing::warn!(claims = to_users.len(), error = %e, "could not announce claims; the other nodes find them at their next check");
    }
}
