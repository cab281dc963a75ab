//! Keeps every projection caught up with the history, and lets a reader wait for its own
//! writes.
//!
//! One runner per projection at a time, across every process on the database: on
//! PostgreSQL a runner holds a session advisory lock per projection (others skip it while
//! it is held); on both backends the checkpoint only moves from where the runner read it,
//! so two runners that raced anyway cannot apply an event twice.
//!
//! The runner wakes when this process records events ([`Projections::nudge`]) and polls
//! now and then for events written by other processes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::Connection;
use tokio::sync::{watch, Mutex, Notify};

use crate::checkpoint::{self, Checkpoint, ADVANCE};
use crate::feed;
use crate::{assessments, test_statistics, Db, ProjectionError};

/// Every projection, by name.
pub const ALL: &[&str] = &[assessments::NAME, test_statistics::NAME];

/// Events applied per transaction.
const BATCH: i64 = 500;
/// How often a runner looks for events from other processes.
const POLL: Duration = Duration::from_millis(500);

/// The projections of one process: a cheap handle.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    wake: Notify,
    /// Bumped after every batch this process applies, so waiting readers look again.
    applied: watch::Sender<u64>,
    /// The PostgreSQL connection holding this process's advisory locks, and which.
    locks: Mutex<Locks>,
    /// One catch-up at a time in this process (the background loop, a reader's nudge, a
    /// test), so they do not race each other for the same batch.
    catching_up: Mutex<()>,
}

#[derive(Default)]
struct Locks {
    conn: Option<sqlx::PgConnection>,
    held: std::collections::HashSet<String>,
}

impl Projections {
    pub fn new(db: Db) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                wake: Notify::new(),
                applied: watch::channel(0).0,
                locks: Mutex::new(Locks::default()),
                catching_up: Mutex::new(()),
            }),
        }
    }

    /// Creates the checkpoints of projections never run before.
    ///
    /// # Errors
    /// A database error.
    pub async fn prepare(&self) -> Result<(), ProjectionError> {
        for name in ALL {
            checkpoint::ensure(&self.inner.db, name).await?;
        }
        Ok(())
    }

    /// The database the read models live in.
    pub fn db(&self) -> Db {
        self.inner.db.clone()
    }

    /// New events were recorded: catch up soon.
    pub fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// Every projection's checkpoint.
    ///
    /// # Errors
    /// A database error.
    pub async fn status(&self) -> Result<Vec<Checkpoint>, ProjectionError> {
        let mut all = Vec::new();
        for name in ALL {
            all.push(checkpoint::read(&self.inner.db, name).await?);
        }
        Ok(all)
    }

    /// Keeps every projection caught up until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            for name in ALL {
                if let Err(e) = self.catch_up(name).await {
                    tracing::warn!(projection = name, error = %e, "projection could not catch up; retrying");
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Applies every event after `name`'s checkpoint, batch by batch, if this process may
    /// run `name` now. Returns how many events it applied.
    ///
    /// # Errors
    /// A database error, an unreadable event, or [`ProjectionError::Raced`].
    pub async fn catch_up(&self, name: &str) -> Result<u64, ProjectionError> {
        if !ALL.contains(&name) {
            return Err(ProjectionError::Unknown(name.to_string()));
        }
        if !self.lock(name).await? {
            return Ok(0);
        }
        let _turn = self.inner.catching_up.lock().await;
        let mut total = 0;
        loop {
            let applied = match self.step(name).await {
                Ok(applied) => applied,
                // Someone else (a rebuild's swap, another process) moved the checkpoint
                // first: read it again and go on from there.
                Err(ProjectionError::Raced(_)) => continue,
                Err(e) => return Err(e),
            };
            if applied == 0 {
                return Ok(total);
            }
            total += applied;
            self.inner.applied.send_modify(|n| *n += applied);
        }
    }

    /// One batch: read events after the checkpoint, apply them and move the checkpoint in
    /// one transaction.
    async fn step(&self, name: &str) -> Result<u64, ProjectionError> {
        let db = &self.inner.db;
        let from = checkpoint::read(db, name).await?.position;
        let events = feed::after(db, from, BATCH).await?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        let to = last.position;
        macro_rules! in_transaction {
            ($tx:ident) => {{
                if name == assessments::NAME {
                    assessments::apply_batch!(&mut *$tx, assessments::TABLE, &events);
                } else if name == test_statistics::NAME {
                    test_statistics::apply_batch!(
                        &mut *$tx,
                        test_statistics::ATTEMPTS,
                        test_statistics::ANSWERS,
                        &events
                    );
                }
                let moved = sqlx::query(ADVANCE)
                    .bind(to.tx)
                    .bind(to.global)
                    .bind(events.len() as i64)
                    .bind(Utc::now())
                    .bind(name)
                    .bind(from.tx)
                    .bind(from.global)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected();
                if moved != 1 {
                    // Dropping the transaction rolls the batch back.
                    return Err(ProjectionError::Raced(name.to_string()));
                }
                $tx.commit().await?;
            }};
        }
        match db {
            // IMMEDIATE: take the write lock first, so reading the rows and writing them
            // back cannot be refused half-way by another writer.
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("begin immediate").await?;
                in_transaction!(tx)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                in_transaction!(tx)
            }
        }
        Ok(events.len() as u64)
    }

    /// Whether this process may run `name` now: always on SQLite (the checkpoint guard
    /// suffices for the rare second process); on PostgreSQL when it holds the projection's
    /// advisory lock, taken once and kept on a connection of its own.
    async fn lock(&self, name: &str) -> Result<bool, ProjectionError> {
        let Db::Postgres(pool) = &self.inner.db else {
            return Ok(true);
        };
        let mut locks = self.inner.locks.lock().await;
        if locks.held.contains(name) {
            return Ok(true);
        }
        let conn = match locks.conn.take() {
            Some(conn) => conn,
            None => pool.acquire().await?.detach(),
        };
        let mut conn = conn;
        let taken: Result<bool, sqlx::Error> = sqlx::query_scalar(
            "select pg_try_advisory_lock(hashtext('assessd.projection'), hashtext($1))",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await;
        match taken {
            Ok(taken) => {
                locks.conn = Some(conn);
                if taken {
                    locks.held.insert(name.to_string());
                }
                Ok(taken)
            }
            Err(e) => {
                // The lock connection broke (say, the database restarted) and the locks
                // went with it: forget them, and start over on a new connection.
                locks.held.clear();
                let _ = conn.close().await;
                Err(e.into())
            }
        }
    }

    /// Waits (at most `timeout`) until projection `name` has applied every event of
    /// `user_id`, so a reader of that view sees its own writes. Returns whether it has.
    ///
    /// # Errors
    /// A database error, or [`ProjectionError::Unknown`].
    pub async fn wait_for_user(
        &self,
        name: &str,
        user_id: &str,
        timeout: Duration,
    ) -> Result<bool, ProjectionError> {
        let Some(target) = feed::last_of_user(&self.inner.db, user_id).await? else {
            return Ok(true);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut applied = self.inner.applied.subscribe();
        self.nudge();
        loop {
            if checkpoint::read(&self.inner.db, name).await?.position >= target {
                return Ok(true);
            }
            // Another process may be the one catching up: look again now and then.
            let wake = tokio::time::Instant::now() + Duration::from_millis(25);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(false),
                _ = applied.changed() => {}
                _ = tokio::time::sleep_until(wake.min(deadline)) => {}
            }
        }
    }
}
