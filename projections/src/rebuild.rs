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
    pub names: Vec<String>,
    pub events: u64,
    pub took: Duration,
    pub position: Position,
}

/// The tables of projection `name`, each with the columns that key it. The first holds
/// attempt rows (the same rows for every projection of this crate).
fn tables_of(name: &str) -> Result<&'static [(&'static str, &'static str)], ProjectionError> {
    match name {
        assessments::NAME => Ok(&[(assessments::TABLE, assessments::KEY)]),
        test_statistics::NAME => Ok(&[
            (test_statistics::ATTEMPTS, assessments::KEY),
            (test_statistics::ANSWERS, test_statistics::ANSWER_KEY),
        ]),
        other => Err(ProjectionError::Unknown(other.to_string())),
    }
}

fn shadow(table: &str) -> String {
    format!("{table}_rebuild")
}

/// Rebuilds `name` from the first event and swaps it in, calling `progress` after every
/// batch.
///
/// # Errors
/// As [`rebuild_many`].
pub async fn rebuild(
    db: &Db,
    name: &str,
    progress: impl FnMut(Progress) + Send,
) -> Result<Report, ProjectionError> {
    rebuild_many(db, &[name], progress).await
}

/// Rebuilds every projection in `names` from the first event, reading the history once for
/// all of them, and swaps each in, calling `progress` after every batch.
///
/// # Errors
/// [`ProjectionError::Unknown`] for a name that is not a projection,
/// [`ProjectionError::Busy`] when another rebuild of one of them runs; a database error or
/// an unreadable event (then the live views are left as they were).
pub async fn rebuild_many(
    db: &Db,
    names: &[&str],
    mut progress: impl FnMut(Progress) + Send,
) -> Result<Report, ProjectionError> {
    let started = Instant::now();
    let mut names: Vec<&str> = names.to_vec();
    names.sort_unstable();
    names.dedup();
    let mut tables = Vec::new();
    for name in &names {
        tables.push((*name, tables_of(name)?));
    }
    let guard = guard(db, &names).await?;
    let events_total = feed::count_all(db).await?.max(0) as u64;
    for (_, of_name) in &tables {
        for (table, key) in *of_name {
            create_shadow(db, table, &shadow(table), key).await?;
        }
    }
    progress(Progress {
        events_done: 0,
        events_total,
    });
    // Reading the next batch (the database's work) overlaps folding this one (ours).
    let (batches, mut incoming) = tokio::sync::mpsc::channel(2);
    let reader = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut position = Position::default();
            loop {
                let events = feed::after(&db, position, BATCH).await;
                let (last, full) = match &events {
                    Ok(events) => (
                        events.last().map(|e| e.position),
                        events.len() as i64 == BATCH,
                    ),
                    Err(_) => (None, false),
                };
                let empty = matches!(&events, Ok(events) if events.is_empty());
                if !empty && batches.send(events).await.is_err() {
                    return;
                }
                match last {
                    Some(last) if full => position = last,
                    _ => return,
                }
            }
        })
    };
    // Every new table starts empty and sees every event in order, so the rows are folded
    // in memory (one per attempt, shared by every view) and written once, many per
    // statement, instead of being read back and written for every batch.
    let mut rows = assessments::Rows::new();
    let mut answers = test_statistics::Answers::new();
    let with_answers = names.contains(&test_statistics::NAME);
    let mut position = Position::default();
    let mut done = 0u64;
    while let Some(events) = incoming.recv().await {
        let events = events?;
        let Some(last) = events.last() else {
            continue;
        };
        position = last.position;
        for event in &events {
            assessments::apply(&mut rows, event);
            if with_answers {
                test_statistics::apply(&mut answers, event);
            }
        }
        done += events.len() as u64;
        progress(Progress {
            events_done: done,
            events_total: events_total.max(done),
        });
    }
    reader
        .await
        .map_err(|e| ProjectionError::Failed(format!("the history reader stopped: {e}")))?;
    for (name, of_name) in &tables {
        let attempts_table = shadow(of_name[0].0);
        let answers_table = shadow(test_statistics::ANSWERS);
        macro_rules! write_all {
            ($tx:ident) => {{
                assessments::write_rows!(&mut *$tx, &attempts_table, rows.values());
                if *name == test_statistics::NAME {
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
        swap(db, name, of_name, position, done).await?;
    }
    // Closing the guard's connection releases its locks now, not when the server notices a
    // dropped socket, so the next rebuild may start at once.
    if let Some(conn) = guard {
        let _ = conn.close().await;
    }
    Ok(Report {
        names: names.iter().map(|n| n.to_string()).collect(),
        events: done,
        took: started.elapsed(),
        position,
    })
}

/// One rebuild of a projection at a time across processes (PostgreSQL): session locks on
/// a connection that lives as long as the returned guard.
async fn guard(db: &Db, names: &[&str]) -> Result<Option<sqlx::PgConnection>, ProjectionError> {
    let Db::Postgres(pool) = db else {
        return Ok(None);
    };
    let mut conn = pool.acquire().await?.detach();
    for name in names {
        let taken: bool = sqlx::query_scalar(
            "select pg_try_advisory_lock(hashtext('assessd.rebuild'), hashtext($1))",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
        if !taken {
            // Closing the connection lets go of the locks taken so far.
            let _ = conn.close().await;
            return Err(ProjectionError::Busy(name.to_string()));
        }
    }
    Ok(Some(conn))
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
