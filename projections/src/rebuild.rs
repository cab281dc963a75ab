//! Rebuilding a projection from the first event, beside the live one.
//!
//! The new version is written to a table of its own (`<table>_rebuild`) from position
//! zero, in batches, while the live view keeps serving and keeps being updated. Once it has
//! caught up, one transaction puts it in place of the live table and moves the checkpoint
//! to where it stands; the runner then goes on from there. Readers see the old view or the
//! new one, never a half-built one, and an event recorded during the rebuild is applied by
//! the rebuild or, after the swap, by the runner.
//!
//! - PostgreSQL: the new table is created `like` the live one (columns, keys, indexes) and
//!   swapped in by rename, under an exclusive lock on the live table taken before the
//!   checkpoint row, in the same order as a runner's batch, so the two cannot deadlock.
//! - SQLite: the new table gets the live one's columns and a unique key, and the swap copies
//!   its rows into the live table inside one write transaction (readers keep seeing the
//!   old rows until it commits).

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::Connection;

use crate::feed::{self, Position};
use crate::{assessments, test_statistics, Db, ProjectionError};

/// Events read per query while rebuilding: larger than a live batch, since no reader waits
/// on these.
const BATCH: i64 = 10_000;

/// How far a rebuild has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub events_done: u64,
    /// The events in the history when the rebuild started (more may arrive meanwhile).
    pub events_total: u64,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub name: String,
    pub events: u64,
    pub took: Duration,
    pub position: Position,
}

/// Rebuilds `name` from the first event and swaps it in, calling `progress` after every
/// batch.
///
/// # Errors
/// [`ProjectionError::Unknown`] for a name that is not a projection; a database error or
/// an unreadable event (then the live view is left as it was).
pub async fn rebuild(
    db: &Db,
    name: &str,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<Report, ProjectionError> {
    let tables: &[(&str, &str)] = match name {
        assessments::NAME => &[(assessments::TABLE, assessments::KEY)],
        test_statistics::NAME => &[
            (test_statistics::ATTEMPTS, assessments::KEY),
            (test_statistics::ANSWERS, test_statistics::ANSWER_KEY),
        ],
        other => return Err(ProjectionError::Unknown(other.to_string())),
    };
    let shadow = |table: &str| format!("{table}_rebuild");
    let started = Instant::now();
    // One rebuild of a projection at a time across processes (PostgreSQL); the guard is
    // a session lock on a connection that lives as long as this rebuild.
    let _guard = match db {
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?.detach();
            let taken: bool = sqlx::query_scalar(
                "select pg_try_advisory_lock(hashtext('assessd.rebuild'), hashtext($1))",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
            if !taken {
                let _ = conn.close().await;
                return Err(ProjectionError::Busy(name.to_string()));
            }
            Some(conn)
        }
        Db::Sqlite(_) => None,
    };
    let events_total = feed::count_all(db).await?.max(0) as u64;
    for (table, key) in tables {
        create_shadow(db, table, &shadow(table), key).await?;
    }
    let mut position = Position::default();
    let mut done = 0u64;
    progress(Progress {
        events_done: 0,
        events_total,
    });
    // The new table starts empty and sees every event in order, so the rows are folded in
    // memory (one per attempt) and written once, many per statement, instead of being read
    // back and written for every batch.
    let mut rows = assessments::Rows::new();
    let mut answers = test_statistics::Answers::new();
    loop {
        let events = feed::after(db, position, BATCH).await?;
        let Some(last) = events.last() else {
            break;
        };
        position = last.position;
        for event in &events {
            assessments::apply(&mut rows, event);
            if name == test_statistics::NAME {
                test_statistics::apply(&mut answers, event);
            }
        }
        done += events.len() as u64;
        progress(Progress {
            events_done: done,
            events_total: events_total.max(done),
        });
        if (events.len() as i64) < BATCH {
            break;
        }
    }
    // Every view of this crate keeps attempt rows in its first table; the statistics keep
    // answers in their second.
    let attempts_table = shadow(tables[0].0);
    let answers_table = shadow(test_statistics::ANSWERS);
    macro_rules! write_all {
        ($tx:ident) => {{
            assessments::write_rows!(&mut *$tx, &attempts_table, rows.values());
            if name == test_statistics::NAME {
                test_statistics::write_answers!(&mut *$tx, &answers_table, answers.values());
            }
            $tx.commit().await?;
        }};
    }
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("begin immediate").await?;
            write_all!(tx)
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            write_all!(tx)
        }
    }
    swap(db, name, tables, position, done).await?;
    Ok(Report {
        name: name.to_string(),
        events: done,
        took: started.elapsed(),
        position,
    })
}

/// A fresh, empty table beside `table`, with its columns and a unique `key`. A table left
/// by an interrupted rebuild is dropped first.
async fn create_shadow(
    db: &Db,
    table: &str,
    shadow: &str,
    key: &str,
) -> Result<(), ProjectionError> {
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("begin immediate").await?;
            sqlx::query(&format!("drop table if exists {shadow}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "create table {shadow} as select * from {table} where 0"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "create unique index {shadow}_key on {shadow} ({key})"
            ))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!("drop table if exists {shadow}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "create table {shadow} (like {table} including all)"
            ))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Puts the rebuilt tables in place of the live ones and moves the checkpoint to where the
/// rebuild stands, in one transaction.
async fn swap(
    db: &Db,
    name: &str,
    tables: &[(&str, &str)],
    position: Position,
    events: u64,
) -> Result<(), ProjectionError> {
    macro_rules! move_checkpoint {
        ($tx:ident) => {
            sqlx::query(
                "update projection_checkpoints set tx = $1, position = $2, \
                 events_applied = $3, last_rebuilt_at = $4, updated_at = $4 where name = $5",
            )
            .bind(position.tx)
            .bind(position.global)
            .bind(events as i64)
            .bind(Utc::now())
            .bind(name)
            .execute(&mut *$tx)
            .await?
        };
    }
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("begin immediate").await?;
            for (table, _) in tables {
                for sql in [
                    format!("delete from {table}"),
                    format!("insert into {table} select * from {table}_rebuild"),
                    format!("drop table {table}_rebuild"),
                ] {
                    sqlx::query(&sql).execute(&mut *tx).await?;
                }
            }
            move_checkpoint!(tx);
            tx.commit().await?;
        }
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            // The tables first (in the order a runner's batch writes them), then the
            // checkpoint row: the swap waits for a batch in flight instead of deadlocking.
            for (table, _) in tables {
                sqlx::query(&format!("lock table {table} in access exclusive mode"))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("select name from projection_checkpoints where name = $1 for update")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            for (table, _) in tables {
                for sql in [
                    format!("drop table {table}"),
                    format!("alter table {table}_rebuild rename to {table}"),
                ] {
                    sqlx::query(&sql).execute(&mut *tx).await?;
                }
            }
            move_checkpoint!(tx);
            tx.commit().await?;
        }
    }
    Ok(())
}
