//! The log of audit reads: every read an auditor or admin makes of users' data through the
//! audit API, who made it, what it asked and when. The audit handlers write a row before
//! they read, in the same request, so no read goes unrecorded; admins list the rows with
//! the same commit-order paging as the event history (see [`super::audit`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::audit::{
    decode_commit, decode_position, encode_commit, encode_position, parse_sqlite_time,
    parse_transaction_id, push_commit_keyset_on, BadCursor,
};
use super::{Database, StoreError};

/// A read about to be made.
#[derive(Debug, Clone)]
pub struct NewRead {
    /// The caller's token `sub`.
    pub reader: String,
    /// The caller's roles, such as `auditor`.
    pub roles: Vec<String>,
    /// The method and route, such as `GET /api/audit/users/{user_id}/state`.
    pub endpoint: String,
    /// Whose data; `None` for a read across users.
    pub user_id: Option<String>,
    /// The query parameters as the server understood them.
    pub parameters: Value,
}

/// One recorded read, as `GET /api/admin/audit-reads` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordedRead {
    /// Unique, in the order the reads were recorded.
    pub id: i64,
    /// When the read was made.
    pub read_at: DateTime<Utc>,
    /// The caller's token `sub`.
    pub reader: String,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// The method and route template, such as `GET /api/audit/users/{user_id}/state`.
    pub endpoint: String,
    /// The user whose data was read; null for a read across users (the event listing
    /// without a `user_id` filter, or its NDJSON export).
    #[schema(required = true)]
    pub user_id: Option<String>,
    /// The query parameters the read was made with, such as `at_sequence` or `limit`; an
    /// export adds `"format": "ndjson"`.
    #[schema(value_type = Object)]
    pub parameters: Value,
}

/// Which reads to list.
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    /// Only this caller's reads.
    pub reader: Option<String>,
    /// Only reads that could have returned this user's data: those naming the user, and
    /// those across users.
    pub user_id: Option<String>,
}

/// Where a listing of reads stands: the last row returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCursor {
    /// SQLite: the id (one writer, so insertion order is commit order).
    Id(i64),
    /// PostgreSQL: (transaction id, id), read below the transaction horizon.
    Commit(u64, i64),
}

impl ReadCursor {
    /// Reads a cursor given out by [`list`] on this backend.
    ///
    /// # Errors
    /// [`BadCursor`] for anything else.
    pub fn parse(db: &Database, text: &str) -> Result<Self, BadCursor> {
        match db {
            Database::Sqlite(_) => decode_position(text).map(ReadCursor::Id),
            Database::Postgres(_) => decode_commit(text).map(|(tx, id)| ReadCursor::Commit(tx, id)),
        }
        .ok_or(BadCursor)
    }

    fn encode(self) -> String {
        match self {
            ReadCursor::Id(id) => encode_position(id),
            ReadCursor::Commit(tx, id) => encode_commit(tx, id),
        }
    }
}

/// Records `read`.
///
/// # Errors
/// A database error; the caller must then not make the read.
pub async fn record(db: &Database, read: &NewRead) -> Result<(), StoreError> {
    let roles = Value::from(read.roles.clone());
    match db {
        Database::Sqlite(pool) => {
            sqlx::query(
                "insert into audit_reads (reader, reader_roles, endpoint, user_id, parameters) \
                 values (?, ?, ?, ?, ?)",
            )
            .bind(&read.reader)
            .bind(roles.to_string())
            .bind(&read.endpoint)
            .bind(&read.user_id)
            .bind(read.parameters.to_string())
            .execute(pool)
            .await?;
        }
        Database::Postgres(pool) => {
            sqlx::query(
                "insert into audit_reads (reader, reader_roles, endpoint, user_id, parameters) \
                 values ($1, $2, $3, $4, $5)",
            )
            .bind(&read.reader)
            .bind(roles)
            .bind(&read.endpoint)
            .bind(&read.user_id)
            .bind(&read.parameters)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// At most `limit` recorded reads matching `filter` after `after`, oldest first, each with
/// the cursor that continues after it.
///
/// # Errors
/// A database error or a row that cannot be read.
pub async fn list(
    db: &Database,
    filter: &ReadFilter,
    after: Option<ReadCursor>,
    limit: i64,
) -> Result<Vec<(RecordedRead, String)>, StoreError> {
    const COLUMNS: &str = "id, read_at, reader, reader_roles, endpoint, user_id, parameters";
    macro_rules! narrow {
        ($qb:expr) => {{
            let qb = $qb;
            if let Some(v) = &filter.reader {
                qb.push(" and reader = ").push_bind(v.clone());
            }
            if let Some(v) = &filter.user_id {
                qb.push(" and (user_id = ")
                    .push_bind(v.clone())
                    .push(" or user_id is null)");
            }
        }};
    }
    match db {
        Database::Sqlite(pool) => {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "select {COLUMNS} from audit_reads where 1 = 1"
            ));
            narrow!(&mut qb);
            match after {
                Some(ReadCursor::Id(id)) => {
                    qb.push(" and id > ").push_bind(id);
                }
                None => {}
                // ReadCursor::parse reads only SQLite cursors on SQLite.
                Some(ReadCursor::Commit(..)) => {
                    return Err(StoreError::EventStore(
                        "a PostgreSQL cursor reached SQLite".into(),
                    ))
                }
            }
            qb.push(" order by id limit ").push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let read_at: String = row.try_get("read_at")?;
                    let read = recorded_read(
                        row.try_get("id")?,
                        parse_sqlite_time(&read_at)?,
                        row.try_get("reader")?,
                        row.try_get("reader_roles")?,
                        row.try_get("endpoint")?,
                        row.try_get("user_id")?,
                        row.try_get("parameters")?,
                    )?;
                    let cursor = ReadCursor::Id(read.id).encode();
                    Ok((read, cursor))
                })
                .collect()
        }
        Database::Postgres(pool) => {
            let mut qb = QueryBuilder::<Postgres>::new(format!(
                "select {COLUMNS}, transaction_id::text as transaction_id from audit_reads \
                 where true"
            ));
            narrow!(&mut qb);
            let after = match after {
                Some(ReadCursor::Commit(tx, id)) => Some((tx, id)),
                None => None,
                Some(ReadCursor::Id(_)) => {
                    return Err(StoreError::EventStore(
                        "a SQLite cursor reached PostgreSQL".into(),
                    ))
                }
            };
            push_commit_keyset_on(&mut qb, "id", after, None);
            // The table's column, not the text alias: as text, '100000' sorts before '99999'.
            qb.push(" order by audit_reads.transaction_id, id limit ")
                .push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let transaction_id: String = row.try_get("transaction_id")?;
                    let read = recorded_read(
                        row.try_get("id")?,
                        row.try_get("read_at")?,
                        row.try_get("reader")?,
                        row.try_get("reader_roles")?,
                        row.try_get("endpoint")?,
                        row.try_get("user_id")?,
                        row.try_get("parameters")?,
                    )?;
                    let cursor =
                        ReadCursor::Commit(parse_transaction_id(&transaction_id)?, read.id)
                            .encode();
                    Ok((read, cursor))
                })
                .collect()
        }
    }
}

fn recorded_read(
    id: i64,
    read_at: DateTime<Utc>,
    reader: String,
    roles: Value,
    endpoint: String,
    user_id: Option<String>,
    parameters: Value,
) -> Result<RecordedRead, StoreError> {
    let roles = serde_json::from_value(roles)
        .map_err(|e| StoreError::Corrupt(format!("roles of audit read {id}: {e}")))?;
    Ok(RecordedRead {
        id,
        read_at,
        reader,
        roles,
        endpoint,
        user_id,
        parameters,
    })
}
