//! Where each projection stands in commit order. A checkpoint moves only inside the
//! transaction that writes the rows of the events it passes, and only from the position
//! the runner read it at: a second runner that raced this one finds the row moved, and its
//! transaction is rolled back instead of applying the same events twice.

use chrono::{DateTime, Utc};

use crate::feed::Position;
use crate::{on_db, Db, ProjectionError};

/// A projection's state, as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub name: String,
    pub position: Position,
    pub events_applied: i64,
    pub last_rebuilt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Creates the checkpoint row of `name` at the start of the history, if it is missing.
///
/// # Errors
/// A database error.
pub async fn ensure(db: &Db, name: &str) -> Result<(), ProjectionError> {
    let sql =
        "insert into projection_checkpoints (name, tx, position, events_applied, updated_at) \
               values ($1, 0, 0, 0, $2) on conflict (name) do nothing";
    on_db!(db, pool => {
        sqlx::query(sql).bind(name).bind(Utc::now()).execute(pool).await?;
    });
    Ok(())
}

/// The checkpoint of `name`.
///
/// # Errors
/// [`ProjectionError::Unknown`] when there is none.
pub async fn read(db: &Db, name: &str) -> Result<Checkpoint, ProjectionError> {
    let sql = "select tx, position, events_applied, last_rebuilt_at, updated_at \
               from projection_checkpoints where name = $1";
    type Row = (i64, i64, i64, Option<DateTime<Utc>>, DateTime<Utc>);
    let row: Option<Row> =
        on_db!(db, pool => sqlx::query_as(sql).bind(name).fetch_optional(pool).await?);
    let (tx, global, events_applied, last_rebuilt_at, updated_at) =
        row.ok_or_else(|| ProjectionError::Unknown(name.to_string()))?;
    Ok(Checkpoint {
        name: name.to_string(),
        position: Position { tx, global },
        events_applied,
        last_rebuilt_at,
        updated_at,
    })
}

/// The SQL that moves a checkpoint from where it was read to `to`, counting `applied`
/// events; it changes no row when another runner moved it first.
pub(crate) const ADVANCE: &str = "update projection_checkpoints \
    set tx = $1, position = $2, events_applied = events_applied + $3, updated_at = $4 \
    where name = $5 and tx = $6 and position = $7";
